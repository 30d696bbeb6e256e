"""Hand-built spaces and synthetic sensitivity tables for scale runs (no torch).

``resnet18_space`` writes down torchvision's ResNet-18 (ImageNet, 224x224) layer by
layer -- 20 convolutions and the classifier, 5,800 kernels, 11.68M weights, 1.81 GMACs
-- with each stage's first conv tied to its downsample (they read the same tensor).
It is what ``bitsearch.discover`` returns for that model, written out so the benchmark
runs without torch; :func:`resnet18_from_discover` uses discover when it is available.

``hessian_like_table`` is a synthetic but realistic sensitivity table in the form
HAWQ uses, Omega = trace(H) / n * ||Q(W) - W||^2, per kernel:

* the Hessian trace per weight is log-normal across layers (sigma 1.0, the spread
  HAWQ-V2 reports across ResNet layers is one to two orders of magnitude) and across the
  kernels of a layer (sigma 0.7);
* a kernel's weights span a range r_k (log-normal, sigma 0.4) and uniform b-bit
  quantization adds noise of variance r_k^2 / (12 (2^b - 1)^2) per weight, so the loss
  increase of a kernel at b bits is trace_k * params_per_kernel * r_k^2 / (12 (2^b - 1)^2);
* the first and last layers are 4x more sensitive (as every study finds).
"""

from __future__ import annotations

import numpy as np

from bitsearch.sensitivity.table import SensitivityTable
from bitsearch.space import Layer, SearchSpace


def _conv(name, cin, cout, k, out_hw, stride=1):
    params = cout * cin * k * k
    return Layer(name, "conv2d", params=params, macs=params * out_hw * out_hw, kernels=cout,
                 in_channels=cin, out_channels=cout, kernel_size=(k, k), stride=(stride, stride),
                 out_spatial=(out_hw, out_hw))


def resnet18_layers() -> tuple[Layer, ...]:
    layers = [_conv("conv1", 3, 64, 7, 112, 2)]
    cin, hw = 64, 56
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            if stride == 2:
                hw //= 2
            prefix = f"layer{stage}.{block}"
            layers.append(_conv(f"{prefix}.conv1", cin, cout, 3, hw, stride))
            layers.append(_conv(f"{prefix}.conv2", cout, cout, 3, hw))
            if stride == 2:
                layers.append(_conv(f"{prefix}.downsample.0", cin, cout, 1, hw, 2))
            cin = cout
    layers.append(Layer("fc", "linear", params=512 * 1000, macs=512 * 1000, kernels=1000, in_features=512,
                        out_channels=1000, bias_params=1000))
    return tuple(layers)


def resnet18_space(granularity="kernel", weight_bits=(2, 3, 4, 5, 6, 7, 8), act_bits=(8,)) -> SearchSpace:
    tied = tuple((f"layer{s}.0.conv1", f"layer{s}.0.downsample.0") for s in (2, 3, 4))
    return SearchSpace(resnet18_layers(), weight_bits=weight_bits, act_bits=act_bits, granularity=granularity,
                       tied=tied, model_name="resnet18", fingerprint="sha256:hand-built-resnet18")


def resnet18_from_discover(granularity="kernel", weight_bits=(2, 3, 4, 5, 6, 7, 8), act_bits=(8,)):
    """The same space from ``bitsearch.discover`` (needs torch, torchvision and discover.py)."""
    import torch
    import torchvision

    from bitsearch.discover import discover

    model = torchvision.models.resnet18(weights=None)
    return discover(model, torch.zeros(1, 3, 224, 224), granularity=granularity, weight_bits=weight_bits,
                    act_bits=act_bits, model_name="resnet18")


def hessian_like_table(space: SearchSpace, seed: int = 0, bits=tuple(range(1, 9)),
                       act_bits=tuple(range(2, 9))) -> SensitivityTable:
    rng = np.random.default_rng(seed)
    b = np.asarray(bits, dtype=float)
    noise = 1.0 / (12.0 * (2.0 ** b - 1.0) ** 2)
    weight, act = {}, {}
    names = [layer.name for layer in space.layers]
    for layer in space.layers:
        layer_trace = rng.lognormal(0.0, 1.0)
        if layer.name in (names[0], names[-1]):
            layer_trace *= 4.0
        trace = layer_trace * rng.lognormal(0.0, 0.7, size=layer.kernels)
        spread = rng.lognormal(0.0, 0.4, size=layer.kernels)
        per_kernel = trace * layer.params_per_kernel * spread ** 2
        weight[layer.name] = per_kernel[:, None] * noise[None, :] * 1e-4
        a = np.asarray(act_bits, dtype=float)
        act[layer.name] = layer_trace * layer.macs * 1e-9 / (12.0 * (2.0 ** a - 1.0) ** 2)
    return SensitivityTable(bits, weight, act_bits, act, method="synthetic-hessian")


def _shape_only_problem(task: str, space_options, options):
    """A suite problem (``bitsearch bench``'s ``problem = "synthetic:..."``): the shape-only
    torchvision model's space and costs, scored by :func:`hessian_like_table` (no data)."""
    import dataclasses

    from bitsearch.build import problem_for_task

    problem = problem_for_task(task, space_options, dataclasses.replace(options, sensitivity=None))
    problem.sensitivity = hessian_like_table(problem.space, seed=0)
    return problem


def resnet18_problem(space_options, options):
    return _shape_only_problem("resnet18", space_options, options)


def resnet50_problem(space_options, options):
    return _shape_only_problem("resnet50", space_options, options)
