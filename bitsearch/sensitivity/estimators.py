"""Sensitivity estimators (torch): how much the loss grows when a layer, or one kernel of
it, is quantized at b bits.  Each returns a :class:`SensitivityTable` the ``ilp``
searcher minimises.

Three methods, each per layer (layer granularity) or per kernel (kernel granularity):

``hessian``
    HAWQ-V3's estimate: ``Omega(b) = Tr(H) / n * ||Q_b(W) - W||^2`` with the trace of the
    Hessian of the training loss estimated by Hutchinson's method,
    ``Tr(H) = E[v^T H v]`` over Rademacher probes ``v``, from Hessian-vector products
    (double back-propagation).  The same probes give every layer's trace and every
    kernel's (the trace of the kernel's diagonal block: the probe's kernel slice dotted
    with the product's kernel slice).  Per layer, ``n`` and ``||Q_b(W) - W||^2`` are the
    layer's; per kernel, the kernel's.  ``Q_b`` is bitsearch's own per-kernel symmetric
    quantizer.  A kernel's trace from a few probes is noisy: it is shrunk towards its
    layer's mean by its own noise share (empirical Bayes, the noise measured from the
    spread of the probes).  A negative trace (noise, or negative curvature) counts as 0.
``bitgrad``
    BMPQ's bit-gradient, read as the derivative of the loss with respect to a relaxed
    (fractional) bit width: the weights of one layer are quantized at a width ``b`` that
    mixes ``Q_floor(b)`` and ``Q_ceil(b)`` (FracBits' relaxation), and
    ``g(b) = dL/db`` at each integer ``b`` is
    ``grad_W L(Q_b(W)) . (Q_{b+1}(W) - Q_b(W))``, per layer and per kernel (the dot
    product over the kernel's weights), averaged over the samples.  ``-g(b)`` is a
    first-order estimate of the loss saved by the (b+1)-th bit, so
    ``Omega(b) = sum_{b <= c < B} max(0, -g(c))`` with ``B`` the widest choice
    (``Omega(B) = 0``).  Each layer is relaxed alone, the others in float.
``empirical``
    Measured: the increase of the training-sample loss when one layer alone has its
    weights quantized at ``b`` bits (the others float), ``max(0, L_b - L_float)``.  Per
    kernel this would take ``kernels x widths`` evaluations; it is approximated by
    groups: the kernels of a layer are split into at most ``groups`` contiguous groups,
    each group is quantized alone, and its measured increase is shared among its kernels
    in proportion to their quantization errors ``||Q_b(w_k) - w_k||^2``.  With
    ``groups >= kernels`` every kernel is measured alone (exact).

When activations are searched, every method adds an activation table measured the
empirical way (one layer's input quantized at ``a`` bits, weights in float); the
activation Hessian is not estimated.

All three use ``samples`` samples (for a task: a seeded choice of its training samples;
for a model of your own: the first ``samples`` of its calibration loader), the evaluator's
loss of a batch (cross-entropy on ``(x, y)`` batches unless you give ``loss``), evaluate
the model in eval mode (batch norm with running statistics, no dropout), run on one CPU
thread, and are deterministic for a seed.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..errors import UserInputError
from ..space import SearchSpace
from ..training import batch_inputs, batch_size_of, cross_entropy_loss
from .table import SensitivityTable

LossFn = Callable[[nn.Module, object], torch.Tensor]

METHODS = ("hessian", "bitgrad", "empirical", "pairwise")
DEFAULTS = {
    "hessian": {"samples": 512, "probes": 64, "batch_size": 256},
    "bitgrad": {"samples": 512, "batch_size": 256},
    "empirical": {"samples": 512, "batch_size": 512, "groups": 8},
    # the separable part plus cross-layer terms (see bitsearch.sensitivity.interactions)
    "pairwise": {"samples": 512, "batch_size": 512, "pairs": "auto", "max_pairs": 400, "top_k": 8, "groups": 8},
}


# --- shared helpers ---------------------------------------------------------------------------
def _modules(model: nn.Module, space: SearchSpace) -> dict[str, nn.Module]:
    named = dict(model.named_modules())
    missing = [layer.name for layer in space.layers if layer.name not in named]
    if missing:
        raise UserInputError(f"the model has no layers {missing[:5]}: was the space discovered on this model "
                             "(same task and width multiplier)?")
    out = {}
    for layer in space.layers:
        module = named[layer.name]
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.shape[0] != layer.kernels:
            raise UserInputError(f"layer {layer.name!r}: its weight does not have {layer.kernels} kernels")
        out[layer.name] = module
    return out


def sample_batches(x: torch.Tensor, y: torch.Tensor, samples: int, batch_size: int, seed: int):
    """``samples`` training samples (a permutation seeded with ``seed``), in batches."""
    if samples < 1 or batch_size < 1:
        raise UserInputError(f"samples and batch_size must be >= 1 (got {samples}, {batch_size})")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(x), generator=generator)[:min(samples, len(x))]
    xs, ys = x[order], y[order]
    return [(xs[i:i + batch_size], ys[i:i + batch_size]) for i in range(0, len(xs), batch_size)]


def quantize_at(weight: torch.Tensor, choice, scale_group: int | None = None) -> torch.Tensor:
    """``Q_b(W)``: bitsearch's quantizer at a width or named format, with the space's scale
    granularity (one scale per kernel, or per ``scale_group`` weights)."""
    from ..quant.formats import fake_quantize_choice

    return fake_quantize_choice(weight, choice, scale_group=scale_group)


def quantization_errors(weight: torch.Tensor, bits: Sequence, scale_group: int | None = None) -> np.ndarray:
    """``||Q_b(w_k) - w_k||^2`` per kernel (rows) and width (columns), bitsearch's quantizer."""
    w = weight.detach().to(torch.float32)
    out = np.empty((w.shape[0], len(bits)))
    with torch.no_grad():
        for j, b in enumerate(bits):
            diff = quantize_at(w, b, scale_group) - w
            out[:, j] = diff.reshape(w.shape[0], -1).double().pow(2).sum(dim=1).numpy()
    return out


class _LossOf(nn.Module):
    """``loss(model, batch)`` as a module, so that ``functional_call`` can run it with some
    of the model's weights replaced (``model.<name>`` keys)."""

    def __init__(self, model: nn.Module, loss: LossFn):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch):
        return self.loss(self.model, batch)


def loss_with(model: nn.Module, batch, loss: LossFn = cross_entropy_loss,
              weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``loss(model, batch)``, with the tensors of ``weights`` (state-dict names) in place
    of the model's own for this one call (the model is not modified)."""
    if not weights:
        return loss(model, batch)
    return functional_call(_LossOf(model, loss), {f"model.{k}": v for k, v in weights.items()}, (batch,))


def _mean_loss(model: nn.Module, batches, weights: Mapping[str, torch.Tensor] | None = None,
               loss: LossFn = cross_entropy_loss) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            n = batch_size_of(batch)
            total += float(loss_with(model, batch, loss, weights)) * n
            count += n
    return total / count


def _float_params(model: nn.Module):
    """Freeze every parameter (gradients are taken with respect to chosen tensors only)."""
    state = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in state:
        p.requires_grad_(False)
    return state


def _restore(state) -> None:
    for p, flag in state:
        p.requires_grad_(flag)


# --- hessian ----------------------------------------------------------------------------------
def hutchinson_traces(model: nn.Module, modules: Mapping[str, nn.Module], batches, *, probes: int,
                      seed: int, with_variance: bool = False, loss: LossFn = cross_entropy_loss, progress=None):
    """Per layer, the Hutchinson estimate of the trace of each kernel's diagonal Hessian
    block of the mean training loss (the layer's trace is their sum).

    With ``with_variance``, also the variance of each kernel's estimate (from the spread
    of the probes), as a second dict.  ``progress(step, done, total, detail)``: told after
    each probe."""
    names = list(modules)
    weights = [modules[n].weight for n in names]
    frozen = _float_params(model)
    sums = {n: torch.zeros(modules[n].weight.shape[0], dtype=torch.float64) for n in names}
    variances = {n: torch.zeros(modules[n].weight.shape[0], dtype=torch.float64) for n in names}
    sizes = [batch_size_of(batch) for batch in batches]
    total = sum(sizes)
    generator = torch.Generator().manual_seed(int(seed))
    loss_fn = loss
    try:
        for w in weights:
            w.requires_grad_(True)
        for i, (batch, size) in enumerate(zip(batches, sizes)):
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            share = size / total
            samples = {n: [] for n in names}
            for k in range(probes):
                vs = [torch.randint(0, 2, w.shape, generator=generator).to(w.dtype) * 2 - 1 for w in weights]
                hvs = torch.autograd.grad(grads, weights, grad_outputs=vs, retain_graph=True)
                for n, v, hv in zip(names, vs, hvs):
                    samples[n].append((v * hv).reshape(v.shape[0], -1).sum(dim=1).double().detach())
                if progress is not None:
                    progress("Hessian traces", i * probes + k + 1, len(batches) * probes, "Hutchinson probes")
            for n in names:
                stacked = torch.stack(samples[n])
                sums[n] += stacked.mean(dim=0) * share
                if probes > 1:
                    variances[n] += stacked.var(dim=0) / probes * share ** 2
            del grads, loss
    finally:
        _restore(frozen)
    traces = {n: t.numpy() for n, t in sums.items()}
    if with_variance:
        return traces, {n: v.numpy() for n, v in variances.items()}
    return traces


def shrink_kernel_traces(traces: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Empirical-Bayes shrinkage of a layer's per-kernel trace estimates towards their
    mean: each moves towards the mean by its noise share ``var_k / (var_k + tau^2)``,
    where ``tau^2`` (the spread of the true traces) is the spread of the estimates less
    their mean noise.  Noisy kernels lean on the layer; well-measured ones keep their own
    value.  (With few probes, many kernel traces come out negative otherwise.)"""
    if traces.size < 2:
        return traces
    mean = float(traces.mean())
    tau2 = max(float(traces.var()) - float(variances.mean()), 0.0)
    weight = np.where(variances + tau2 > 0, tau2 / np.maximum(variances + tau2, 1e-300), 1.0)
    return mean + weight * (traces - mean)


def hessian_table(model, space, batches, *, probes: int, seed: int,
                  loss: LossFn = cross_entropy_loss, progress=None) -> dict[str, np.ndarray]:
    modules = _modules(model, space)
    traces, variances = hutchinson_traces(model, modules, batches, probes=probes, seed=seed, with_variance=True,
                                          loss=loss, progress=progress)
    out = {}
    for layer in space.layers:
        errors = quantization_errors(modules[layer.name].weight, space.weight_bits, space.scale_group)
        kernel_trace = traces[layer.name]
        if space.granularity == "kernel":
            shrunk = shrink_kernel_traces(kernel_trace, variances[layer.name])
            per_param = np.maximum(shrunk, 0.0) / max(1.0, layer.params_per_kernel)
            out[layer.name] = per_param[:, None] * errors
        else:
            per_param = max(float(kernel_trace.sum()), 0.0) / max(1, layer.params)
            out[layer.name] = per_param * errors.sum(axis=0, keepdims=True)
    return out


# --- bitgrad ----------------------------------------------------------------------------------
def bit_gradients(model, modules, batches, bits_grid: Sequence[int],
                  loss: LossFn = cross_entropy_loss, scale_group: int | None = None,
                  progress=None) -> dict[str, np.ndarray]:
    """Per layer, ``dL/db`` per kernel at each width of ``bits_grid`` but the last
    (shape ``(kernels, len(bits_grid) - 1)``), the layer relaxed alone.

    With the relaxed weight ``Q(w, b) = (1 - f) Q_floor(b) + f Q_floor(b)+1``, the
    derivative at an integer ``b`` (``f = 0``) is ``grad_Wq L . (Q_{b+1}(W) - Q_b(W))``,
    the gradient taken at the weights quantized at ``b``: that is what is computed.
    """
    frozen = _float_params(model)
    sizes = [batch_size_of(batch) for batch in batches]
    total = sum(sizes)
    out = {}
    try:
        for done, (name, module) in enumerate(modules.items(), start=1):
            w = module.weight.detach()
            grads = np.zeros((w.shape[0], len(bits_grid) - 1))
            with torch.no_grad():
                quantized = [quantize_at(w, int(b), scale_group) for b in bits_grid]
            for j in range(len(bits_grid) - 1):
                wq = quantized[j].clone().requires_grad_(True)
                step = quantized[j + 1] - quantized[j]
                accumulated = torch.zeros_like(wq, dtype=torch.float64)
                for batch, size in zip(batches, sizes):
                    value = loss_with(model, batch, loss, {f"{name}.weight": wq}) * (size / total)
                    (g,) = torch.autograd.grad(value, wq)
                    accumulated += g.double()
                grads[:, j] = (accumulated * step.double()).reshape(w.shape[0], -1).sum(dim=1).numpy()
            out[name] = grads
            if progress is not None:
                progress("bit gradients", done, len(modules), name)
    finally:
        _restore(frozen)
    return out


def bitgrad_table(model, space, batches, loss: LossFn = cross_entropy_loss, progress=None) -> dict[str, np.ndarray]:
    from .. import formats

    named = [b for b in space.weight_bits if formats.is_named(b)]
    if named:
        raise UserInputError(f"the bitgrad sensitivity relaxes integer widths into each other; named formats "
                             f"({', '.join(named)}) have no place on that line: use hessian or empirical")
    modules = _modules(model, space)
    low, high = min(space.weight_bits), max(space.weight_bits)
    grid = list(range(low, high + 1))
    grads = bit_gradients(model, modules, batches, grid, loss, space.scale_group, progress=progress)
    out = {}
    for layer in space.layers:
        saved = np.maximum(-grads[layer.name], 0.0)             # loss saved by bit c+1, per kernel
        to_top = np.cumsum(saved[:, ::-1], axis=1)[:, ::-1]      # saved from c up to the widest
        to_top = np.concatenate([to_top, np.zeros((layer.kernels, 1))], axis=1)  # Omega(B) = 0
        table = to_top[:, [grid.index(b) for b in space.weight_bits]]
        out[layer.name] = table if space.granularity == "kernel" else table.sum(axis=0, keepdims=True)
    return out


# --- empirical --------------------------------------------------------------------------------
def empirical_table(model, space, batches, *, groups: int,
                    loss: LossFn = cross_entropy_loss, progress=None) -> dict[str, np.ndarray]:
    modules = _modules(model, space)
    base = _mean_loss(model, batches, loss=loss)
    out = {}
    for done, layer in enumerate(space.layers):
        if progress is not None:  # the layer being measured
            progress("quantizing each layer alone", done, len(space.layers), layer.name)
        w = modules[layer.name].weight.detach()
        key = f"{layer.name}.weight"
        errors = quantization_errors(w, space.weight_bits, space.scale_group)
        if space.granularity == "layer":
            row = []
            for b in space.weight_bits:
                with torch.no_grad():
                    wq = quantize_at(w, b, space.scale_group)
                row.append(max(0.0, _mean_loss(model, batches, {key: wq}, loss) - base))
            out[layer.name] = np.array([row])
            continue
        n_groups = max(1, min(int(groups), layer.kernels))
        bounds = np.linspace(0, layer.kernels, n_groups + 1).round().astype(int)
        table = np.zeros((layer.kernels, len(space.weight_bits)))
        for j, b in enumerate(space.weight_bits):
            with torch.no_grad():
                wq_all = quantize_at(w, b, space.scale_group)
            for g in range(n_groups):
                lo, hi = int(bounds[g]), int(bounds[g + 1])
                if hi <= lo:
                    continue
                with torch.no_grad():
                    wq = w.clone()
                    wq[lo:hi] = wq_all[lo:hi]
                increase = max(0.0, _mean_loss(model, batches, {key: wq}, loss) - base)
                share = errors[lo:hi, j]
                total = share.sum()
                table[lo:hi, j] = increase * (share / total if total > 0 else 1.0 / (hi - lo))
        out[layer.name] = table
    if progress is not None:
        progress("quantizing each layer alone", len(space.layers), len(space.layers), "")
    return out


def _calibration_inputs(calibration):
    """Model inputs from ``calibration``: a tensor (in chunks of 256) or an iterable of
    batches (tensors, or tuples whose first item is the input)."""
    if isinstance(calibration, torch.Tensor):
        yield from torch.split(calibration, 256)
        return
    for batch in calibration:
        yield batch_inputs(batch) if isinstance(batch, (tuple, list)) else batch


def activation_table(model, space, batches, calibration, loss: LossFn = cross_entropy_loss,
                     progress=None) -> dict[str, np.ndarray]:
    """Per layer, the loss increase with that layer's input alone quantized at each
    activation width (weights float).  Ranges are the min/max of each layer's input over
    ``calibration`` (the float model), quantized as :mod:`bitsearch.quant` does
    (unsigned when the range is non-negative, else symmetric)."""
    from ..quant import activation_qparams, fake_quantize_activation

    modules = _modules(model, space)
    ranges: dict[str, list[float]] = {}

    def observer(name):
        def hook(module, args):
            x = args[0].detach()
            low, high = float(x.min()), float(x.max())
            seen = ranges.setdefault(name, [low, high])
            seen[0], seen[1] = min(seen[0], low), max(seen[1], high)
        return hook

    handles = [modules[n].register_forward_pre_hook(observer(n)) for n in modules]
    try:
        with torch.no_grad():
            for inputs in _calibration_inputs(calibration):
                model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    base = _mean_loss(model, batches, loss=loss)
    out = {}
    for layer in space.layers:
        low, high = ranges[layer.name]
        row = []
        for a in space.act_bits:
            qparams = activation_qparams(int(a), low, high)

            def quantize_input(module, args, _q=qparams):
                return (fake_quantize_activation(args[0], _q),) + tuple(args[1:])

            handle = modules[layer.name].register_forward_pre_hook(quantize_input)
            try:
                row.append(max(0.0, _mean_loss(model, batches, loss=loss) - base))
            finally:
                handle.remove()
        out[layer.name] = np.array(row)
        if progress is not None:
            progress("activation widths", len(out), len(space.layers), layer.name)
    return out


# --- the entry point --------------------------------------------------------------------------
def compute(source, space: SearchSpace, method: str, *, samples: int, seed: int,
            settings: Mapping, progress=None) -> SensitivityTable:
    """The table of ``method`` for ``source``'s trained float model: a model evaluator
    (:class:`bitsearch.problem.ModelEvaluator`: its ``model``, ``loss``,
    ``sensitivity_batches`` and ``calibration``), on one CPU thread.  ``progress(step,
    done, total, detail)``: told as each step of the estimate goes on."""
    from ..evaluate import single_thread

    if method not in METHODS:
        raise UserInputError(f"unknown sensitivity method {method!r}; methods: {', '.join(METHODS)}")
    model = source.model
    model.eval()
    loss = source.loss
    batch_size = int(settings.get("batch_size", DEFAULTS[method]["batch_size"]))
    with single_thread():
        batches = source.sensitivity_batches(int(samples), batch_size, int(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            if method == "pairwise":
                from dataclasses import replace

                from .interactions import pairwise_table

                table = pairwise_table(source, space, samples=int(samples), seed=int(seed),
                                       settings={**DEFAULTS["pairwise"], **settings}, progress=progress)
                if space.act_searched:
                    table = replace(table, act_bits=space.act_bits,
                                    act=activation_table(model, space, batches, source.calibration, loss, progress))
                return table
            if method == "hessian":
                weight = hessian_table(model, space, batches, seed=seed, loss=loss, progress=progress,
                                       probes=int(settings.get("probes", DEFAULTS["hessian"]["probes"])))
            elif method == "bitgrad":
                weight = bitgrad_table(model, space, batches, loss, progress=progress)
            else:
                weight = empirical_table(model, space, batches, loss=loss, progress=progress,
                                         groups=int(settings.get("groups", DEFAULTS["empirical"]["groups"])))
            act = {}
            if space.act_searched:
                act = activation_table(model, space, batches, source.calibration, loss, progress)
    return SensitivityTable(space.weight_bits, weight, space.act_bits if space.act_searched else (), act,
                            method=method)
