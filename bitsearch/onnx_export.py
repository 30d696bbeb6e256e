"""A quantized model as ONNX, and the same model run by onnxruntime.

:func:`export_onnx` freezes a calibrated fake-quantized model
(:func:`bitsearch.quant.deploy.freeze`: integer weights, fixed input quantizers) and hands
it to torch's ONNX exporter (``torch.onnx.export(..., dynamo=True)``), which traces the
frozen forward and writes its ``quantized_decomposed`` ops as ONNX operators.  Nothing of
the graph is written by hand.  Every quantized layer becomes::

    x -> QuantizeLinear(scale, zero point 0, uint8|int8|uint16|int16) [-> Clip(qmin, qmax)]
      -> DequantizeLinear -> Conv | Gemm <- DequantizeLinear(axis 0, per-kernel scales) <- W_int

* weights are an integer initializer (int8 up to 8 bits, int16 up to 16) with one scale per
  output kernel; a kernel narrower than its layer keeps its own range and scale (the
  integers of a 3-bit kernel lie in ``[-3, 3]``, never re-scaled to the layer's widest);
* a layer whose every kernel has 4 bits or fewer is stored as ONNX ``INT4`` (opset 21),
  which onnxruntime dequantizes (``int4=False`` keeps int8 storage: see the latency notes
  in ``docs/deploy.md``); this is the one step after the exporter: the initializer's element
  type changes, its values do not;
* activations are quantized at their searched width: the integer container is the
  smallest that holds the range, and a ``Clip`` on the integers enforces a narrower range
  (``[0, 15]`` for a 4-bit unsigned input, ``[-127, 127]`` for a signed 8-bit one);
* layers kept in float stay plain float ``Conv`` / ``Gemm``; biases are float.

The file carries its provenance in ``metadata_props``: ``bitsearch.format``
(``bitsearch-onnx``, version 1), the policy JSON, the task, the model fingerprint, how the
quantizers were made (post-training calibration or a fine-tuned ``model.pt``) and the
top-1 that bitsearch's own fake-quantized evaluation gives on the task's test split.

**Rounding.**  Run without graph optimizations (or with ``float_bias``), onnxruntime
computes bitsearch's numbers: the same top-1 on every test set checked, logits within
float32 summation error (``QuantizeLinear`` divides by the scale where bitsearch multiplies
by its float32 reciprocal; the two round differently only where ``x / s`` lies within an ulp
of a half-integer).  With its graph optimizations (the default, what a deployment runs)
onnxruntime fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into integer kernels
(``QLinearConv``) and, to feed them, first rounds every float bias to the int32 grid of the
accumulator, one step ``s_x * s_w[k]`` per kernel (its ``WeightBiasQuantization``).  With
weights of 2 or 3 bits that step is coarse (``s_w = max|w| / 1`` at 2 bits), so outputs
move by up to half a step and a few predictions change.
:func:`bitsearch.quant.deploy.freeze` with ``integer_bias=True`` applies the same rounding
in torch and gives onnxruntime's top-1 exactly (tested).

Needs the ``deploy`` extra (``pip install bitsearch[deploy]``: onnx, onnxruntime; the
exporter also uses onnxscript).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UserInputError

FORMAT = "bitsearch-onnx"
FORMAT_VERSION = 1
DEFAULT_OPSET = 21  # the first opset with INT4 / UINT4 and 16-bit QuantizeLinear
INT4_MAX_BITS = 4
INPUT_NAME = "input"
OUTPUT_NAME = "output"


class OnnxError(UserInputError):
    """An ONNX file that cannot be read or does not fit the task, or a missing runtime."""


def require_runtime():
    """Import onnx and onnxruntime, or say how to install them (one line)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise OnnxError(f"ONNX export and onnxruntime need the deploy extra ({exc.name} is not installed): "
                        "pip install 'bitsearch[deploy]'") from None
    return onnxruntime


@dataclass(frozen=True)
class LayerExport:
    """How one quantized layer was written."""

    name: str
    weight_storage: str        # "float", "int4", "int8", "int16"
    weight_bits: tuple[int, ...]  # the distinct kernel widths
    act: str                   # "float" or e.g. "uint8 [0, 15]"


@dataclass(frozen=True)
class OnnxExport:
    path: str
    layers: tuple[LayerExport, ...]
    ops: dict[str, int] = field(default_factory=dict)
    opset: int = DEFAULT_OPSET

    def summary(self) -> str:
        storage = {}
        for layer in self.layers:
            storage[layer.weight_storage] = storage.get(layer.weight_storage, 0) + 1
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(storage.items()))
        return (f"{len(self.layers)} quantized layers ({parts}); "
                + ", ".join(f"{op} x{n}" for op, n in sorted(self.ops.items()) if op in
                            ("QuantizeLinear", "DequantizeLinear", "Clip", "Conv", "Gemm", "MatMul")))


def _layer_exports(frozen) -> list[LayerExport]:
    from .quant.deploy import frozen_modules

    out = []
    for name, module in frozen_modules(frozen).items():
        if module.weight_is_float:
            storage, widths = "float", (32,)
        else:
            widths = tuple(sorted(set(module.weight_bits.tolist())))
            storage = "int8" if max(widths) <= 8 else "int16"
        act = "float" if module.act is None else \
            f"{str(module.act_dtype).replace('torch.', '')} [{module.act.qmin}, {module.act.qmax}]"
        out.append(LayerExport(name, storage, widths, act))
    return out


def _store_int4(model, layers: list[LayerExport]) -> list[LayerExport]:
    """Retype the weight initializers of layers whose kernels all have <= 4 bits as INT4
    (values unchanged; zero point omitted, i.e. 0)."""
    import numpy as np
    import onnx_ir as ir

    initializers = model.graph.initializers
    out = []
    for layer in layers:
        value = initializers.get(f"{layer.name}.weight_int")
        if layer.weight_storage == "int8" and max(layer.weight_bits) <= INT4_MAX_BITS and value is not None:
            array = value.const_value.numpy().astype(np.int8)
            if array.min() < -8 or array.max() > 7:  # pragma: no cover - widths <= 4 guarantee the range
                raise OnnxError(f"layer {layer.name!r}: integers outside the int4 range")
            value.const_value = ir.Tensor(array, dtype=ir.DataType.INT4, name=value.name)
            value.dtype = ir.DataType.INT4
            layer = LayerExport(layer.name, "int4", layer.weight_bits, layer.act)
        out.append(layer)
    return out


def export_onnx(qmodel, example_input, path: str | os.PathLike, *, int4: bool = True, opset: int = DEFAULT_OPSET,
                metadata: Mapping[str, Any] | None = None) -> OnnxExport:
    """Write the calibrated fake-quantized ``qmodel`` (from ``apply_policy`` with calibration,
    or a fine-tuned model) as ONNX to ``path`` (atomically); see the module docstring.

    ``example_input``: one batch of the model's input (its batch dimension is exported as
    dynamic).  ``metadata``: extra ``metadata_props`` (values JSON-encoded unless strings)."""
    require_runtime()
    import torch

    from . import __version__
    from ._io import atomic_write
    from .quant.deploy import freeze

    if opset < DEFAULT_OPSET:
        raise OnnxError(f"opset {opset}: the export needs opset {DEFAULT_OPSET} or later (INT4 and 16-bit "
                        "QuantizeLinear/DequantizeLinear)")
    frozen = freeze(qmodel)
    layers = _layer_exports(frozen)
    example = example_input[:2] if len(example_input) > 2 else example_input
    noise = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
        try:
            program = torch.onnx.export(frozen, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: "batch"},), verbose=False)
        except Exception as exc:  # the exporter's own errors are long: keep the first line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OnnxError(f"torch.onnx.export failed on the frozen model: {first[:300]}") from None
    model = program.model
    if int4:
        layers = _store_int4(model, layers)
    props = {"bitsearch.format": FORMAT, "bitsearch.format_version": str(FORMAT_VERSION),
             "bitsearch.version": __version__,
             "bitsearch.layers": json.dumps([{"name": l.name, "weight_storage": l.weight_storage,
                                              "weight_bits": list(l.weight_bits), "act": l.act} for l in layers])}
    for key, value in (metadata or {}).items():
        props[f"bitsearch.{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    model.metadata_props.update(props)
    model.producer_name = f"bitsearch {__version__} (torch {torch.__version__.split('+')[0]} exporter)"
    ops: dict[str, int] = {}
    for node in model.graph:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    import onnx_ir as ir

    proto = ir.serde.serialize_model(model)
    atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))
    return OnnxExport(str(path), tuple(layers), ops, opset)


# --- running ---------------------------------------------------------------------------------
def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``bitsearch.*`` metadata of an ONNX file (keys without the prefix); raises
    :class:`OnnxError` for a file that is not ONNX or not written by bitsearch."""
    require_runtime()
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise OnnxError(f"{path}: no such file") from None
    except Exception as exc:  # onnx raises DecodeError and friends
        raise OnnxError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None
    meta = {p.key[len("bitsearch."):]: p.value for p in model.metadata_props if p.key.startswith("bitsearch.")}
    if meta.get("format") != FORMAT:
        raise OnnxError(f"{path}: not an ONNX model written by 'bitsearch export --to onnx' (no bitsearch metadata)")
    return meta


BIAS_ROUNDING_OPTIMIZER = "WeightBiasQuantization"  # onnxruntime's step that puts a float bias on the int32 grid


def session(path: str | os.PathLike, *, threads: int | None = 1, optimization: str = "all",
            float_bias: bool = False, profile: str | None = None):
    """An onnxruntime CPU session of ``path``: ``threads`` intra-op threads (None: the
    runtime's default), graph ``optimization`` ``all`` (what deployment runs: QDQ fusion
    into integer kernels), ``extended``, ``basic`` or ``none``.  ``float_bias``: turn off
    onnxruntime's rounding of float biases to the int32 accumulator grid; it then keeps
    float kernels (no integer fusion) and computes bitsearch's numbers.  ``profile``: a file
    prefix for the runtime's per-node profile."""
    ort = require_runtime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    extra = {"disabled_optimizers": [BIAS_ROUNDING_OPTIMIZER]} if float_bias else {}
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], **extra)
    except Exception as exc:
        raise OnnxError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None


def run_onnx(sess, x, batch_size: int = 1024):
    """The outputs of ``sess`` on the float32 inputs ``x`` (a tensor or array), batch by batch,
    as one numpy array."""
    import numpy as np

    array = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    array = np.ascontiguousarray(array, dtype=np.float32)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: array[start:start + batch_size]})[0] for start in range(0, len(array), batch_size)]
    return np.concatenate(outs, axis=0)


def evaluate_onnx(path_or_session, x, y, *, batch_size: int = 1024, threads: int | None = 1) -> dict[str, float]:
    """Top-1 and mean cross-entropy of the ONNX model on ``(x, y)`` as onnxruntime computes
    them (the logits go through the same float64 log-softmax as :func:`evaluate_model`)."""
    import torch
    import torch.nn.functional as F

    sess = session(path_or_session, threads=threads) if isinstance(path_or_session, (str, os.PathLike)) \
        else path_or_session
    logits = torch.from_numpy(run_onnx(sess, x, batch_size))
    labels = torch.as_tensor(y)
    loss = 0.0
    for start in range(0, len(labels), batch_size):
        loss += float(F.cross_entropy(logits[start:start + batch_size], labels[start:start + batch_size],
                                      reduction="sum"))
    return {"top1": int((logits.argmax(dim=1) == labels).sum()) / len(labels), "loss": loss / len(labels)}


def compare_outputs(onnx_logits, torch_logits) -> dict[str, float]:
    """How far onnxruntime's logits are from bitsearch's: the largest absolute difference
    and the fraction of samples whose top-1 class differs."""
    import numpy as np

    a, b = np.asarray(onnx_logits), np.asarray(torch_logits)
    return {"max_abs_diff": float(np.abs(a - b).max()) if a.size else 0.0,
            "top1_disagreement": float((a.argmax(axis=1) != b.argmax(axis=1)).mean()) if a.size else 0.0}


# --- from a task and a policy ----------------------------------------------------------------
def quantized_model_for_task(task, policy, *, model_path: str | os.PathLike | None = None,
                             source: str | None = None):
    """The model that ``bitsearch eval`` scores for ``policy`` on ``task`` and what the ONNX
    metadata says about it: ``(qmodel, metadata)``.

    Without ``model_path``: the task's trained float model, fake-quantized at the policy's
    widths and calibrated on the task's calibration inputs (post-training, as ``bitsearch
    eval``).  With it: the fine-tuned model of ``bitsearch finetune`` (its learned steps and
    clips), which must have been made at the same widths."""
    from ._io import file_digest
    from .build import TrainedModel
    from .errors import PolicyError, TaskError
    from .evaluate import Evaluator
    from .finetune import check_policy_for_task, load_finetuned, read_saved, saved_policy
    from .tasks import evaluate_model

    if isinstance(task, TrainedModel):
        return _quantized_trained_model(task, policy, model_path=model_path, source=source)
    if task.shape_only:
        raise TaskError(f"task {task.name!r} is shape-only (no data, no trained weights): there is nothing to "
                        "calibrate or score; export a task with data")
    width_mult = float((policy.meta.get("model") or {}).get("width_mult", 1.0))
    if model_path is not None:
        data = read_saved(model_path)
        width_mult = float(data.get("width_mult", width_mult))
    policy = check_policy_for_task(policy, task, width_mult, source=source)
    data_split = task.data()
    if model_path is None:
        evaluator = Evaluator(task, width_mult=width_mult)
        qmodel = evaluator.quantized_model(policy)
        quantizers = (f"post-training: weights max-based per kernel, activation ranges calibrated on the "
                      f"{len(evaluator.calibration)} calibration inputs of task {task.name}")
        kind = "ptq"
    else:
        qmodel = load_finetuned(model_path, task, saved=data)
        theirs = saved_policy(data)
        if theirs.as_dict() != policy.as_dict():
            differ = [n for n, b in theirs.bits if n not in policy.as_dict() or policy[n] != b]
            raise PolicyError(f"{model_path} was fine-tuned at other widths than this policy gives (layers "
                              f"{', '.join(differ[:6])}); export it with the policy it was made with", source)
        quantizers = f"fine-tuned (LSQ steps, PACT clips): {Path(model_path).name} {file_digest(model_path)}"
        kind = str((theirs.meta.get("metrics") or {}).get("metric_kind", "finetuned"))
    own = evaluate_model(qmodel, data_split.x_test, data_split.y_test)
    metadata = {"task": task.name, "model": dict(policy.meta["model"], width_mult=width_mult),
                "policy": json.loads(policy.to_json()), "quantizers": quantizers,
                "fake_quant_metrics": {"top1": own["top1"], "loss": own["loss"], "metric_kind": kind,
                                       "split": "test", "samples": len(data_split.y_test)}}
    return qmodel.eval(), metadata


def _quantized_trained_model(trained, policy, *, model_path, source):
    """:func:`quantized_model_for_task` for a user's trained model: post-training, calibrated
    on its calibration batches, scored by its own ``evaluate`` (when it has one)."""
    from .errors import TaskError
    from .finetune import check_policy_for_task

    if model_path is not None:
        raise TaskError(f"--model is a checkpoint of 'bitsearch finetune', which fine-tunes tasks; {trained.name!r} "
                        "is a trained model: export it post-training (fine-tune it in Python with its "
                        "train_loader, then export the model you get)")
    if trained.calibration is None:
        raise TaskError(f"{trained.name!r} has no calibration data: the activation ranges of the export are "
                        "calibrated on it (give calibration=, or --data for a task's architecture)")
    policy = check_policy_for_task(policy, trained, source=source)
    evaluator = trained.evaluator()
    qmodel = evaluator.quantized_model(policy)
    metrics = evaluator.score_model(qmodel) if trained.evaluate is not None else {}
    metadata = {"task": trained.name, "model": dict(policy.meta["model"], width_mult=1.0),
                "policy": json.loads(policy.to_json()),
                "quantizers": f"post-training: weights max-based per kernel, activation ranges calibrated on the "
                              f"calibration batches of {trained.name}",
                "fake_quant_metrics": dict(metrics, metric_kind="ptq", metric=trained.metric,
                                           split="the model's evaluate")}
    return qmodel.eval(), metadata


def runtime_module(sess):
    """An onnxruntime session as a ``torch.nn.Module`` (float32 input in, the output tensor
    out, no parameters): what a user's ``evaluate(model)`` can score like any model."""
    import numpy as np
    import torch

    class OnnxRuntimeModel(torch.nn.Module):
        def forward(self, x):
            array = x.detach().cpu().numpy().astype(np.float32, copy=False)
            return torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: array})[0])

    return OnnxRuntimeModel().eval()


def check_onnx_for_task(meta: Mapping[str, str], task, path) -> dict:
    """The ONNX file's model section, checked against ``task``'s model (the same
    fingerprint): raises :class:`OnnxError` for a file made for another model."""
    from .finetune import _space_of

    try:
        model = json.loads(meta.get("model", "{}"))
    except json.JSONDecodeError:
        model = {}
    width_mult = float(model.get("width_mult", 1.0))
    space = _space_of(task, width_mult)
    if model.get("fingerprint") and model["fingerprint"] != space.fingerprint:
        raise OnnxError(f"{path}: exported for model {model.get('name')!r} ({model['fingerprint']}), but task "
                        f"{task.name!r} gives {space.fingerprint}: an ONNX model of another model")
    return model
