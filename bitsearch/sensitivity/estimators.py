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

All three use ``samples`` training samples (a seeded choice), evaluate the model in eval
mode (batch norm with running statistics, no dropout), and are deterministic for a seed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import UserInputError
from ..space import SearchSpace
from .table import SensitivityTable

METHODS = ("hessian", "bitgrad", "empirical")
DEFAULTS = {
    "hessian": {"samples": 512, "probes": 64, "batch_size": 256},
    "bitgrad": {"samples": 512, "batch_size": 256},
    "empirical": {"samples": 512, "batch_size": 512, "groups": 8},
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


def quantization_errors(weight: torch.Tensor, bits: Sequence[int]) -> np.ndarray:
    """``||Q_b(w_k) - w_k||^2`` per kernel (rows) and width (columns), bitsearch's quantizer."""
    from ..quant import fake_quantize_weight

    w = weight.detach().to(torch.float32)
    out = np.empty((w.shape[0], len(bits)))
    with torch.no_grad():
        for j, b in enumerate(bits):
            diff = fake_quantize_weight(w, int(b)) - w
            out[:, j] = diff.reshape(w.shape[0], -1).double().pow(2).sum(dim=1).numpy()
    return out


def _mean_loss(model: nn.Module, batches, weights: Mapping[str, torch.Tensor] | None = None) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for xb, yb in batches:
            logits = model(xb) if not weights else functional_call(model, dict(weights), (xb,))
            total += float(F.cross_entropy(logits, yb, reduction="sum"))
            count += len(yb)
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
                      seed: int, with_variance: bool = False):
    """Per layer, the Hutchinson estimate of the trace of each kernel's diagonal Hessian
    block of the mean training loss (the layer's trace is their sum).

    With ``with_variance``, also the variance of each kernel's estimate (from the spread
    of the probes), as a second dict."""
    names = list(modules)
    weights = [modules[n].weight for n in names]
    frozen = _float_params(model)
    sums = {n: torch.zeros(modules[n].weight.shape[0], dtype=torch.float64) for n in names}
    variances = {n: torch.zeros(modules[n].weight.shape[0], dtype=torch.float64) for n in names}
    total = sum(len(yb) for _, yb in batches)
    generator = torch.Generator().manual_seed(int(seed))
    try:
        for w in weights:
            w.requires_grad_(True)
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            share = len(yb) / total
            samples = {n: [] for n in names}
            for _ in range(probes):
                vs = [torch.randint(0, 2, w.shape, generator=generator).to(w.dtype) * 2 - 1 for w in weights]
                hvs = torch.autograd.grad(grads, weights, grad_outputs=vs, retain_graph=True)
                for n, v, hv in zip(names, vs, hvs):
                    samples[n].append((v * hv).reshape(v.shape[0], -1).sum(dim=1).double().detach())
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


def hessian_table(model, space, batches, *, probes: int, seed: int) -> dict[str, np.ndarray]:
    modules = _modules(model, space)
    traces, variances = hutchinson_traces(model, modules, batches, probes=probes, seed=seed, with_variance=True)
    out = {}
    for layer in space.layers:
        errors = quantization_errors(modules[layer.name].weight, space.weight_bits)
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
def bit_gradients(model, modules, batches, bits_grid: Sequence[int]) -> dict[str, np.ndarray]:
    """Per layer, ``dL/db`` per kernel at each width of ``bits_grid`` but the last
    (shape ``(kernels, len(bits_grid) - 1)``), the layer relaxed alone.

    With the relaxed weight ``Q(w, b) = (1 - f) Q_floor(b) + f Q_floor(b)+1``, the
    derivative at an integer ``b`` (``f = 0``) is ``grad_Wq L . (Q_{b+1}(W) - Q_b(W))``,
    the gradient taken at the weights quantized at ``b``: that is what is computed.
    """
    from ..quant import fake_quantize_weight

    frozen = _float_params(model)
    total = sum(len(yb) for _, yb in batches)
    out = {}
    try:
        for name, module in modules.items():
            w = module.weight.detach()
            grads = np.zeros((w.shape[0], len(bits_grid) - 1))
            with torch.no_grad():
                quantized = [fake_quantize_weight(w, int(b)) for b in bits_grid]
            for j in range(len(bits_grid) - 1):
                wq = quantized[j].clone().requires_grad_(True)
                step = quantized[j + 1] - quantized[j]
                accumulated = torch.zeros_like(wq, dtype=torch.float64)
                for xb, yb in batches:
                    logits = functional_call(model, {f"{name}.weight": wq}, (xb,))
                    loss = F.cross_entropy(logits, yb, reduction="sum") / total
                    (g,) = torch.autograd.grad(loss, wq)
                    accumulated += g.double()
                grads[:, j] = (accumulated * step.double()).reshape(w.shape[0], -1).sum(dim=1).numpy()
            out[name] = grads
    finally:
        _restore(frozen)
    return out


def bitgrad_table(model, space, batches) -> dict[str, np.ndarray]:
    modules = _modules(model, space)
    low, high = min(space.weight_bits), max(space.weight_bits)
    grid = list(range(low, high + 1))
    grads = bit_gradients(model, modules, batches, grid)
    out = {}
    for layer in space.layers:
        saved = np.maximum(-grads[layer.name], 0.0)             # loss saved by bit c+1, per kernel
        to_top = np.cumsum(saved[:, ::-1], axis=1)[:, ::-1]      # saved from c up to the widest
        to_top = np.concatenate([to_top, np.zeros((layer.kernels, 1))], axis=1)  # Omega(B) = 0
        table = to_top[:, [grid.index(b) for b in space.weight_bits]]
        out[layer.name] = table if space.granularity == "kernel" else table.sum(axis=0, keepdims=True)
    return out


# --- empirical --------------------------------------------------------------------------------
def empirical_table(model, space, batches, *, groups: int) -> dict[str, np.ndarray]:
    from ..quant import fake_quantize_weight

    modules = _modules(model, space)
    base = _mean_loss(model, batches)
    out = {}
    for layer in space.layers:
        w = modules[layer.name].weight.detach()
        key = f"{layer.name}.weight"
        errors = quantization_errors(w, space.weight_bits)
        if space.granularity == "layer":
            row = []
            for b in space.weight_bits:
                with torch.no_grad():
                    wq = fake_quantize_weight(w, int(b))
                row.append(max(0.0, _mean_loss(model, batches, {key: wq}) - base))
            out[layer.name] = np.array([row])
            continue
        n_groups = max(1, min(int(groups), layer.kernels))
        bounds = np.linspace(0, layer.kernels, n_groups + 1).round().astype(int)
        table = np.zeros((layer.kernels, len(space.weight_bits)))
        for j, b in enumerate(space.weight_bits):
            with torch.no_grad():
                wq_all = fake_quantize_weight(w, int(b))
            for g in range(n_groups):
                lo, hi = int(bounds[g]), int(bounds[g + 1])
                if hi <= lo:
                    continue
                with torch.no_grad():
                    wq = w.clone()
                    wq[lo:hi] = wq_all[lo:hi]
                increase = max(0.0, _mean_loss(model, batches, {key: wq}) - base)
                share = errors[lo:hi, j]
                total = share.sum()
                table[lo:hi, j] = increase * (share / total if total > 0 else 1.0 / (hi - lo))
        out[layer.name] = table
    return out


def activation_table(model, space, batches, calibration: torch.Tensor) -> dict[str, np.ndarray]:
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
            for start in range(0, len(calibration), 256):
                model(calibration[start:start + 256])
    finally:
        for handle in handles:
            handle.remove()
    base = _mean_loss(model, batches)
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
                row.append(max(0.0, _mean_loss(model, batches) - base))
            finally:
                handle.remove()
        out[layer.name] = np.array(row)
    return out


# --- the entry point --------------------------------------------------------------------------
def compute(model: nn.Module, space: SearchSpace, data, method: str, *, samples: int, seed: int,
            settings: Mapping) -> SensitivityTable:
    """The table of ``method`` for ``model`` (trained float weights) on ``data`` (TaskData)."""
    if method not in METHODS:
        raise UserInputError(f"unknown sensitivity method {method!r}; methods: {', '.join(METHODS)}")
    model.eval()
    batch_size = int(settings.get("batch_size", DEFAULTS[method]["batch_size"]))
    batches = sample_batches(data.x_train, data.y_train, int(samples), batch_size, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if method == "hessian":
            weight = hessian_table(model, space, batches, probes=int(settings.get("probes", DEFAULTS["hessian"]["probes"])),
                                   seed=seed)
        elif method == "bitgrad":
            weight = bitgrad_table(model, space, batches)
        else:
            weight = empirical_table(model, space, batches,
                                     groups=int(settings.get("groups", DEFAULTS["empirical"]["groups"])))
        act = {}
        if space.act_searched:
            act = activation_table(model, space, batches, data.calibration)
    return SensitivityTable(space.weight_bits, weight, space.act_bits if space.act_searched else (), act,
                            method=method)
