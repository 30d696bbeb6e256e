"""Latency tables from real devices: the template a user fills on their own hardware, and
a measurement of what this machine's CPU can run.

The file is the CSV that :class:`bitsearch.cost.tables.LatencyTableCost` reads: ``#``
metadata lines (``device``, ``unit`` and how the numbers were made), then one row per
layer and (weight bits, act bits) with the columns ``layer,weight_bits,act_bits,latency``
and, for the reader's benefit, ``kernel,kind,macs,input_shape``.

Measurement (:func:`measure_latency`): every layer runs alone on the input it receives in
the model (recorded by a forward hook on the task's example input), timed with
``perf_counter`` as the median of ``repeats`` samples, each the mean of enough calls to
last about a millisecond, after warm-up calls.  This CPU has two kernels: float32
(torch's ``nn.Conv*``/``nn.Linear``) and int8 (``torch.ao.nn.quantized``, int8 weights
per output channel, uint8 activations).  A (w, a) pair with ``w <= 8`` and integer
``a <= 8`` is charged the int8 kernel, whatever the width below 8 (no faster sub-8-bit
kernel exists here); anything wider, or with float activations, is charged the float32
kernel.  The file's ``kernels`` and ``charged`` lines say so, and each row names its kernel.

Imports torch only inside the functions that need it.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .cost.tables import (LATENCY_COLUMNS, LatencyTableCost, _act_key, parse_table_key,  # noqa: F401
                          read_latency_csv, table_keys)
from .errors import LatencyTableError
from ._io import atomic_write_text, read_text_input
from .space import SearchSpace

EXTRA_COLUMNS = ("kernel", "kind", "macs", "input_shape")
TEMPLATE_DEVICE = "FILL IN: the device these latencies were measured on"
INT8_MAX_BITS = 8


@dataclass(frozen=True)
class Row:
    layer: str
    weight_bits: int
    act_bits: int | None
    latency: float | None = None
    kernel: str = ""
    kind: str = ""
    macs: int = 0
    input_shape: str = ""


def kernel_for(weight_bits: int, act_bits: int | None) -> str:
    """The kernel of this CPU that runs (w, a): ``int8`` or ``float32``."""
    if act_bits is not None and weight_bits <= INT8_MAX_BITS and act_bits <= INT8_MAX_BITS:
        return "int8"
    return "float32"


def _fmt_act(a) -> str:
    return "float" if a is None else str(a)


def write_table(path, rows: Iterable[Row], meta: Mapping[str, str], *, parents: bool = True) -> None:
    """Write the CSV atomically: ``# key: value`` lines, the header, the rows."""
    out = io.StringIO()
    for key, value in meta.items():
        out.write(f"# {key}: {value}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LATENCY_COLUMNS + EXTRA_COLUMNS)
    for row in rows:
        latency = "" if row.latency is None else f"{row.latency:.6g}"
        writer.writerow([row.layer, row.weight_bits, _fmt_act(row.act_bits), latency, row.kernel, row.kind,
                         row.macs, row.input_shape])
    atomic_write_text(path, out.getvalue(), parents=parents)


def read_template(path) -> tuple[dict[str, str], list[tuple[str, int, int | None]]]:
    """The metadata and the (layer, w, a) keys of a table, filled or not."""
    path = Path(path)
    text = read_text_input(path, "latency", error=lambda message: LatencyTableError(f"{path}: {message}"))
    meta, rows = read_latency_csv(text, str(path), LATENCY_COLUMNS[:3])
    keys, lines = [], {}
    for number, row in rows:
        key = parse_table_key(row, str(path), f"line {number}")
        if key in lines:
            raise LatencyTableError(f"{path}: line {number} repeats layer {key[0]!r} at w{key[1]}/"
                                    f"a{_fmt_act(key[2])} (line {lines[key]} gives it too): keep one row")
        lines[key] = number
        keys.append(key)
    return meta, keys


def template_meta(task_name: str, space: SearchSpace, weight_bits, act_bits) -> dict[str, str]:
    return {
        "device": TEMPLATE_DEVICE,
        "unit": "ms",
        "task": task_name,
        "model": f"{space.model_name} {space.fingerprint}",
        "widths": f"weights {','.join(map(str, weight_bits))}; activations {','.join(map(_fmt_act, act_bits))}",
        "how": "fill 'latency' with each layer's time alone at (weight_bits, act_bits), in the unit above; "
               "name the device above; every row is needed (a missing entry is an error, never a zero)",
    }


# --- measuring (torch) ------------------------------------------------------------------------
def device_name() -> str:
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({os.cpu_count()} logical cores, {platform.system()} {platform.machine()})"


def record_inputs(model, example, names: Iterable[str]) -> dict:
    """The input tensor and call count of every named layer, from one forward pass."""
    import torch

    wanted = set(names)
    modules = dict(model.named_modules())
    unknown = sorted(wanted - set(modules))
    if unknown:
        raise LatencyTableError(f"layers {', '.join(unknown[:8])} are not modules of the task's model")
    seen: dict[str, list] = {}
    handles = []
    for name in wanted:
        def hook(module, inputs, _name=name):
            entry = seen.setdefault(_name, [inputs[0].detach().clone(), 0])
            entry[1] += 1
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    never = sorted(wanted - set(seen))
    if never:
        raise LatencyTableError(f"layers {', '.join(never[:8])} never run on the example input")
    return {name: (x, calls) for name, (x, calls) in seen.items()}


def _time_call(fn, repeats: int, warmup: int, target_s: float = 1e-3) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` samples."""
    for _ in range(max(warmup, 1)):
        fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    number = max(1, min(1000, math.ceil(target_s / once)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def int8_module(module):
    """:func:`_int8_module` without torch's deprecation warning about quantized tensors
    (they are still its int8 CPU path)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _int8_module(module)


def _int8_module(module):
    """The torch.ao quantized twin of a Conv1d/Conv2d/Linear (int8 per-channel weights), or
    None when this torch has no int8 kernel for it."""
    import torch
    from torch import nn
    import torch.ao.nn.quantized as nnq

    if isinstance(module, nn.Linear):
        qmodule = nnq.Linear(module.in_features, module.out_features, bias_=module.bias is not None)
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode == "zeros" \
            and not isinstance(module.padding, str):
        cls = nnq.Conv1d if isinstance(module, nn.Conv1d) else nnq.Conv2d
        qmodule = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                      padding=module.padding, dilation=module.dilation, groups=module.groups,
                      bias=module.bias is not None)
    else:
        return None
    weight = module.weight.detach().float()
    absmax = weight.abs().reshape(weight.shape[0], -1).amax(dim=1).clamp(min=1e-8)
    scales = (absmax / 127).double()
    qweight = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.int64), 0, torch.qint8)
    bias = None if module.bias is None else module.bias.detach().float()
    qmodule.set_weight_bias(qweight, bias)
    qmodule.scale, qmodule.zero_point = 0.05, 128
    return qmodule


def measure_latency(task, keys: list[tuple[str, int, int | None]], *, width_mult: float = 1.0, batch: int = 1,
                    repeats: int = 20, warmup: int = 3, threads: int = 1, progress=None,
                    int8: bool = True) -> tuple[list[Row], dict[str, str]]:
    """Measure each layer of ``keys`` on this CPU (see the module doc).  Returns the rows
    (``latency`` in ms per sample, one call per layer call in the model) and the metadata."""
    import torch

    from .quant.modules import layer_kind

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = task.build_model(width_mult)
        model.eval()
        example = task.example_input(batch)
        names = list(dict.fromkeys(k[0] for k in keys))
        inputs = record_inputs(model, example, names)
        modules = dict(model.named_modules())
        engine = torch.backends.quantized.engine
        have_int8 = int8 and engine != "none" and bool(torch.backends.quantized.supported_engines)
        measured: dict[tuple[str, str], float] = {}
        fallbacks = []
        rows = []
        for done, (name, w, a) in enumerate(keys):
            module = modules[name]
            x, calls = inputs[name]
            kernel = kernel_for(w, a) if have_int8 else "float32"
            if (name, kernel) not in measured:
                seconds = None
                if kernel == "int8":
                    qmodule = int8_module(module)
                    if qmodule is None:
                        fallbacks.append(name)
                        kernel = "float32"
                    else:
                        qx = _quantize_input(x)
                        with torch.no_grad():
                            seconds = _time_call(lambda: qmodule(qx), repeats, warmup)
                if kernel == "float32" and (name, kernel) not in measured:
                    with torch.no_grad():
                        seconds = _time_call(lambda: module(x), repeats, warmup)
                if seconds is not None:
                    measured[(name, kernel)] = seconds * calls * 1e3 / batch
            layer_kind_name = layer_kind(module) or type(module).__name__
            macs = _macs(module, x, layer_kind_name)
            rows.append(Row(name, w, a, measured[(name, kernel)], kernel, layer_kind_name, macs,
                            "x".join(str(d) for d in x.shape)))
            if progress is not None:
                progress(done + 1, len(keys))
        meta = {
            "device": f"{device_name()}, torch {torch.__version__.split('+')[0]} CPU kernels, {threads} thread"
                      f"{'s' if threads != 1 else ''}",
            "unit": "ms",
            "task": task.name,
            "batch": str(batch),
            "method": f"each layer alone on the input it gets in the model (batch {batch}), median of {repeats} "
                      f"samples after {warmup} warm-up calls, per sample",
            "kernels": ("int8 = torch.ao.nn.quantized (int8 per-channel weights, uint8 activations, engine "
                        f"{engine}) for weights <= 8 and activations <= 8 bits; float32 = torch nn modules otherwise")
            if have_int8 else "float32 only (this torch has no quantized CPU engine)",
            "charged": "widths below 8 bits pay the int8 kernel's time (this CPU has no faster sub-8-bit kernel); "
                       "weights above 8 bits or float activations pay the float32 kernel's time",
        }
        if fallbacks:
            meta["fallback"] = (f"no int8 kernel for {', '.join(sorted(set(fallbacks)))}: charged the float32 "
                                "kernel at every width")
        return rows, meta
    finally:
        torch.set_num_threads(old_threads)


def _quantize_input(x):
    import warnings

    import torch

    # the 7-bit "reduce_range" of torch's x86/fbgemm observers: a full 8-bit uint8 input can
    # saturate the kernel's 16-bit intermediate sums
    absmax = max(float(x.abs().max()), 1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if float(x.min()) >= 0:
            return torch.quantize_per_tensor(x.float(), absmax / 127.0, 0, torch.quint8)
        return torch.quantize_per_tensor(x.float(), absmax / 63.0, 64, torch.quint8)


def _macs(module, x, kind) -> int:
    from torch import nn

    if isinstance(module, nn.Linear):
        return int(x.numel() // x.shape[-1] * module.in_features * module.out_features // max(x.shape[0], 1))
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        import torch

        with torch.no_grad():
            out = module(x)
        per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
        return int(out.numel() // out.shape[0] * per_out)
    return 0


def check_table(path, space: SearchSpace) -> LatencyTableCost:
    """Load a table and check it covers ``space`` (one clear error naming what is missing)."""
    table = LatencyTableCost.load(path)
    table.validate(space)
    return table
