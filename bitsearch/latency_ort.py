"""Latency tables measured in onnxruntime, on the ONNX models ``bitsearch export`` writes.

**What differs at run time.**  onnxruntime (CPU) runs a quantized layer one of a few ways,
whatever its exact width: weights stored as int4 (widths <= 4; dequantized to float on
every run, then a float kernel), int8 (<= 8; fused with the input's QuantizeLinear and the
next layer's into an integer ``QLinearConv`` kernel where the pattern allows), int16, or
float; its input quantized in an 8-bit container at full range, in an 8-bit container with a
``Clip`` to a narrower range (below 8 bits, or signed), in a 16-bit one, or left in float.
Each (weight class, activation width) of the table is measured once; the rows of every
width in the class get that number, and the file's ``classes`` line says which width was
measured for which rows.

**How.**  For each class the whole model is exported at that uniform width
(:func:`bitsearch.onnx_export.export_onnx`, the same graph a user deploys) and run by an
onnxruntime session with all graph optimizations, one intra-op thread by default, with
the runtime's profiler on: every node's time is attributed to the layer whose forward
produced it (the exporter records each node's module path; nodes onnxruntime creates
while fusing keep the name of the node they replace).  A layer's latency is the median
over ``repeats`` runs of the sum of its nodes (its input quantizer, its weight's
DequantizeLinear, its convolution or matrix product).  Nodes of no layer (ReLU, pooling,
reshapes, layout transposes) are reported as ``other``.  The end-to-end latency of each
uniform model is timed without the profiler (median of ``repeats`` runs of
``session.run``), and the file records how well the layer rows add up to it.

A policy that mixes classes runs in contexts no uniform model has (an int8 layer whose
reader keeps float inputs is not fused): the table is separable, the runtime is not
quite; ``benchmarks/onnx_latency.py`` measures how far apart they are.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from .errors import LatencyTableError
from .latency import Row, device_name

WEIGHT_CLASSES = ("int4", "int8", "int16", "float")


def weight_class(weight_bits: int, *, int4: bool = True) -> str:
    if weight_bits >= 32:
        return "float"
    if weight_bits <= 4 and int4:
        return "int4"
    return "int8" if weight_bits <= 8 else "int16"


_REPRESENTATIVE = {"int4": 4, "int8": 8, "int16": 16, "float": 32}


def _node_layers(model) -> dict[str, str]:
    """Exported node name -> the layer (module path) whose forward made it, '' for none."""
    layers = {}
    for node in model.graph.node:
        scopes = None
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = json.loads(prop.value.replace("'", '"'))
                except json.JSONDecodeError:
                    scopes = None
        layers[node.name] = ".".join(scopes[1:-1]) if scopes and len(scopes) > 2 else ""
    return layers


def _attribute(profiled: str, node_layers: dict[str, str], names: set[str]) -> str:
    """The layer of a profiled node: its own, or that of the exported node whose name it
    extends (onnxruntime names fused nodes ``<original>_token_N``, bias DQs ``<conv>_bias_dq``)."""
    if profiled in node_layers:
        layer = node_layers[profiled]
        return layer if layer in names else ""
    best = ""
    for name in node_layers:
        if profiled.startswith(name + "_") and len(name) > len(best):
            best = name
    layer = node_layers.get(best, "")
    return layer if layer in names else ""


def profile_layers(path, names, x, *, repeats: int, warmup: int, threads: int) -> tuple[dict[str, float], float]:
    """Median ms per run of each named layer's nodes and of the other nodes, from
    onnxruntime's profiler over ``repeats`` runs of the model at ``path`` on ``x``."""
    import onnx

    from .onnx_export import session

    node_layers = _node_layers(onnx.load(str(path), load_external_data=False))
    names = set(names)
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads=threads, profile=str(Path(tmp) / "profile"))
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(max(warmup, 1)):
            sess.run(None, feed)
        for _ in range(repeats):
            sess.run(None, feed)
        profile = sess.end_profiling()
        events = json.loads(Path(profile).read_text())
    # group node events by run: the profile holds one "model_run" event per run
    run_spans = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    run_spans = run_spans[-repeats:]
    per_run = [dict() for _ in run_spans]
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        node = event["name"][:-len("_kernel_time")]
        layer = _attribute(node, node_layers, names) or "other"
        for i, (start, stop) in enumerate(run_spans):
            if start <= event["ts"] <= stop:
                per_run[i][layer] = per_run[i].get(layer, 0.0) + event["dur"] / 1000.0
                break
    keys = set(names) | {"other"}
    medians = {k: statistics.median([r.get(k, 0.0) for r in per_run]) if per_run else 0.0 for k in keys}
    return medians, statistics.median([(stop - start) / 1000.0 for start, stop in run_spans]) if run_spans else 0.0


def time_session(path, x, *, repeats: int, warmup: int, threads: int) -> float:
    """Median ms of ``session.run`` on ``x`` (no profiler), each sample the mean of enough
    runs to last about 10 ms."""
    from .onnx_export import session

    sess = session(path, threads=threads)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(max(warmup, 1)):
        sess.run(None, feed)
    start = time.perf_counter()
    sess.run(None, feed)
    once = max(time.perf_counter() - start, 1e-6)
    number = max(1, min(1000, int(0.01 / once)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            sess.run(None, feed)
        samples.append((time.perf_counter() - start) / number * 1e3)
    return statistics.median(samples)


def uniform_model(task, model, space, weight_bits: int, act_bits, calibration, path, *, int4: bool) -> None:
    """Export ``model`` at one width everywhere (float for 32 / None) to ``path``."""
    from .onnx_export import export_onnx
    from .policy import LayerBits, Policy
    from .quant import apply_policy

    if weight_bits >= 32 and act_bits is None:
        qmodel = model
    else:
        bits = tuple((l.name, LayerBits(weight_bits, act_bits)) for l in space.layers)
        qmodel = apply_policy(model, Policy(bits), calibration=calibration if act_bits is not None else None)
    export_onnx(qmodel.eval(), task.example_input(2), path, int4=int4, metadata={"task": task.name})


def measure_onnxruntime(task, space, keys, *, batch: int = 1, repeats: int = 50, warmup: int = 5, threads: int = 1,
                        int4: bool = True, width_mult: float = 1.0, progress=None):
    """The rows of ``keys`` (layer, w, a) measured in onnxruntime (see the module doc) and
    the table's metadata (device, onnxruntime version, what was measured, how well the layer
    rows add up to each uniform model's end-to-end time)."""
    import numpy as np
    import onnxruntime
    import torch

    from .onnx_export import DEFAULT_OPSET, require_runtime

    require_runtime()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = task.build_model(width_mult).eval()  # shapes and op counts only: no training needed
        calibration = task.example_input(max(batch, 16))
        x = np.ascontiguousarray(task.example_input(batch).numpy(), dtype=np.float32)
        names = list(space.names)
        layers = {l.name: l for l in space.layers}
        classes = {}
        for name, w, a in keys:
            classes.setdefault((weight_class(w, int4=int4), a), []).append((name, w, a))
        measured, summary = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for done, ((wclass, a), rows) in enumerate(sorted(classes.items(), key=lambda kv: (
                    WEIGHT_CLASSES.index(kv[0][0]), -1 if kv[0][1] is None else kv[0][1]))):
                w = _REPRESENTATIVE[wclass]
                path = Path(tmp) / f"w{w}a{a}.onnx"
                uniform_model(task, model, space, w, a, calibration, path, int4=int4)
                per_layer, profiled_run = profile_layers(path, names, x, repeats=repeats, warmup=warmup,
                                                         threads=threads)
                end_to_end = time_session(path, x, repeats=repeats, warmup=warmup, threads=threads)
                measured[(wclass, a)] = per_layer
                layer_sum = sum(per_layer[n] for n in names)
                summary[f"w{w}/a{'float' if a is None else a}"] = {
                    "class": wclass, "end_to_end_ms": end_to_end, "layers_sum_ms": layer_sum,
                    "other_nodes_ms": per_layer["other"], "profiled_run_ms": profiled_run,
                    "layers_sum_over_end_to_end": layer_sum / end_to_end if end_to_end else None}
                if progress is not None:
                    progress(done + 1, len(classes))
        out = []
        for name, w, a in keys:
            wclass = weight_class(w, int4=int4)
            latency = measured[(wclass, a)][name] / batch
            rep = _REPRESENTATIVE[wclass]
            out.append(Row(name, w, a, latency, f"onnxruntime {wclass} weights (measured at w{rep}), "
                           f"{'float' if a is None else f'a{a}'} input", layers[name].kind, layers[name].macs, ""))
        meta = {
            "device": f"{device_name()}, onnxruntime {onnxruntime.__version__} CPUExecutionProvider, "
                      f"{threads} intra-op thread{'s' if threads != 1 else ''}",
            "unit": "ms",
            "task": task.name,
            "runtime": f"onnxruntime {onnxruntime.__version__}",
            "batch": str(batch),
            "opset": str(DEFAULT_OPSET),
            "weights": "int4 storage for widths <= 4, int8 <= 8, int16 <= 16" if int4 else
                       "int8 storage for widths <= 8 (no int4), int16 <= 16",
            "method": (f"each (weight class, activation width) exported as a uniform model and profiled by onnxruntime "
                       f"(all graph optimizations), a layer = the median over {repeats} runs of its nodes' time, "
                       f"per sample; {warmup} warm-up runs"),
            "classes": "; ".join(f"{k}: {v['class']}" for k, v in summary.items()),
            "end_to_end": json.dumps({k: {kk: (round(vv, 5) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                                      for k, v in summary.items()}, sort_keys=True),
        }
        return out, meta, summary
    finally:
        torch.set_num_threads(old_threads)


def check_keys_cover(keys, space) -> None:
    unknown = sorted({k[0] for k in keys} - set(space.names))
    if unknown:
        raise LatencyTableError(f"layers {', '.join(unknown[:8])} are not layers of the task's model")


__all__ = ["measure_onnxruntime", "weight_class", "profile_layers", "time_session", "uniform_model"]
