"""Small problems for tests: synthetic spaces with sensitivity tables (no torch)."""

from __future__ import annotations

import numpy as np

from bitsearch.problem import Problem
from bitsearch.sensitivity.table import SensitivityTable
from bitsearch.space import Layer, SearchSpace


def conv(name, cin, cout, k, hw, stride=1, groups=1):
    params = cout * cin // groups * k * k
    return Layer(name, "conv2d", params=params, macs=params * hw * hw, kernels=cout, in_channels=cin,
                 out_channels=cout, kernel_size=(k, k), stride=(stride, stride), groups=groups,
                 out_spatial=(hw, hw), bias_params=0)


def linear(name, fin, fout):
    return Layer(name, "linear", params=fin * fout, macs=fin * fout, kernels=fout, in_features=fin,
                 out_channels=fout, bias_params=fout)


def small_layers():
    """Five layers: a stem, a block whose conv1 and downsample read the same tensor, a classifier."""
    return (
        conv("stem", 3, 8, 3, 16),
        conv("block.conv1", 8, 12, 3, 8, stride=2),
        conv("block.conv2", 12, 12, 3, 8),
        conv("block.downsample", 8, 12, 1, 8, stride=2),
        linear("fc", 12, 10),
    )


def small_space(granularity="layer", weight_bits=(2, 3, 4, 8), act_bits=(8,), tied=True, pinned=()):
    return SearchSpace(small_layers(), weight_bits=weight_bits, act_bits=act_bits, granularity=granularity,
                       tied=(("block.conv1", "block.downsample"),) if tied else (), pinned=pinned,
                       model_name="small-synthetic", fingerprint="sha256:synthetic")


def synthetic_sensitivity(space, seed=0, bits=(1, 2, 3, 4, 5, 6, 7, 8), act_bits=(2, 3, 4, 5, 6, 7, 8)):
    """Per-kernel loss increase ~ c_k * 4^-b (quantization noise falls 4x per bit), c_k random."""
    rng = np.random.default_rng(seed)
    weight, act = {}, {}
    for layer in space.layers:
        scale = rng.lognormal(0.0, 1.0, size=(layer.kernels, 1)) * layer.params_per_kernel
        weight[layer.name] = scale * np.power(4.0, -np.asarray(bits, dtype=float))[None, :]
        act[layer.name] = rng.lognormal(0.0, 0.5) * layer.macs * 1e-3 * np.power(4.0, -np.asarray(act_bits, float))
    return SensitivityTable(bits, weight, act_bits, act, method="synthetic")


def small_problem(budgets=("size=3bit",), granularity="layer", seed=0, **space_kw):
    space = small_space(granularity, **space_kw)
    return Problem.build(space, budgets, sensitivity=synthetic_sensitivity(space, seed))


def assert_one_line_error(code, err, *needles):
    """A user error: exit code 2, one line on stderr, no traceback, naming every needle."""
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def assert_captured_one_line_error(capsys, code, *needles):
    """:func:`assert_one_line_error` on what ``capsys`` captured on stderr."""
    assert_one_line_error(code, capsys.readouterr().err, *needles)
