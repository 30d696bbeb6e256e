"""Named formats and per-group scales against hand-worked values, and their stored bits
against a hand count."""

import math

import pytest
import torch

from bitsearch import formats
from bitsearch.quant.formats import (
    fake_quantize_choice, group_scales_int, mxfp4_scales, nvfp4_scales, round_e2m1, round_e4m3, simulate,
)


def values(x):
    return [float(v) for v in x.reshape(-1)]


# --- FP8 E4M3 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, expected", [
    (0.0, 0.0), (1.0, 1.0), (-2.5, -2.5),
    (1.0625, 1.0),      # halfway between 1.0 (mantissa 000) and 1.125 (001): ties to even
    (1.1875, 1.25),     # halfway between 1.125 (001) and 1.25 (010): to even
    (0.3, 0.3125),      # binade [0.25, 0.5) has steps of 2**-5: 0.3 / 0.03125 = 9.6 -> 10
    (232.0, 224.0),     # [128, 256) in steps of 16: 232 halfway between 224 (110) and 240 (111)
    (240.0, 240.0), (448.0, 448.0),
    (464.0, 448.0),     # halfway to 480, which E4M3 does not have: saturates
    (1000.0, 448.0), (-1e9, -448.0),
    (2.0 ** -9, 2.0 ** -9),  # the smallest subnormal
    (2.0 ** -10, 0.0),       # half of it: a tie, to even (zero)
    (0.0015, 2.0 ** -9),     # 0.0015 / 2**-9 = 0.768 -> 1
    (0.0234375, 0.0234375),  # 1.5 * 2**-6, the smallest binade of normals
])
def test_e4m3_rounding_and_saturation(x, expected):
    assert values(round_e4m3(torch.tensor([x])))[0] == expected


def test_e4m3_agrees_with_torch_float8_inside_the_range():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=generator) * torch.exp2(torch.randint(-12, 8, (20000,), generator=generator))
    x = torch.clamp(x, -448, 448)
    assert torch.equal(round_e4m3(x), x.to(torch.float8_e4m3fn).to(torch.float32))


# --- FP4 E2M1 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, expected", [
    (0.0, 0.0), (0.25, 0.0), (0.3, 0.5), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0),
    (5.0, 4.0), (5.5, 6.0), (6.0, 6.0), (7.0, 6.0), (100.0, 6.0), (-0.8, -1.0), (-3.0, -3.0),
])
def test_e2m1_grid(x, expected):
    assert values(round_e2m1(torch.tensor([x])))[0] == expected


def test_e2m1_values_are_the_grid():
    x = torch.linspace(-8, 8, 4001)
    assert sorted(set(values(round_e2m1(x)))) == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]


# --- NVFP4 ----------------------------------------------------------------------------------------------
def test_nvfp4_block_scales_by_hand():
    # two blocks of 16: the first with max 6, the second with max 1.2
    row = torch.zeros(1, 32)
    row[0, :4] = torch.tensor([6.0, 3.0, 1.5, 0.7])
    row[0, 16:19] = torch.tensor([1.2, 0.5, -0.3])
    global_scale, block_scale = nvfp4_scales(row)
    assert float(global_scale) == pytest.approx(6 / (448 * 6))                 # max|W| / (448 * 6)
    # e4m3(6 / 6 / g) = e4m3(448) = 448; e4m3(1.2 / 6 / g) = e4m3(89.6) = 88 (steps of 8 in [64, 128))
    assert values(block_scale) == [448.0, 88.0]
    q = values(simulate(row, "nvfp4"))
    assert q[:4] == pytest.approx([6.0, 3.0, 1.5, 0.5])   # block scale * g = 1; 0.7 -> 0.5
    s = 88 / 448                                          # the second block's scale
    # 1.2 / s = 6.11 -> 6 (saturates); 0.5 / s = 2.55 -> 3; -0.3 / s = -1.53 -> -1.5
    assert q[16:19] == pytest.approx([6 * s, 3 * s, -1.5 * s])
    assert q[4:16] == [0.0] * 12 and q[19:] == [0.0] * 13


# --- MXFP4 ----------------------------------------------------------------------------------------------
def test_mxfp4_power_of_two_scales_by_hand():
    row = torch.zeros(1, 64)
    row[0, :3] = torch.tensor([5.0, 5.5, -2.6])   # max 5.5: 2**(floor(log2 5.5) - 2) = 1
    row[0, 32:34] = torch.tensor([0.3, 0.1])      # max 0.3: 2**(-2 - 2) = 1/16
    assert values(mxfp4_scales(row)) == [1.0, 0.0625]
    q = values(simulate(row, "mxfp4"))
    assert q[:3] == [4.0, 6.0, -3.0]               # 5 -> 4 (tie to even), 5.5 -> 6, -2.6 -> -3
    assert q[32:34] == [0.25, 0.09375]             # 0.3 * 16 = 4.8 -> 4; 0.1 * 16 = 1.6 -> 1.5
    big = torch.zeros(1, 32)
    big[0, 0] = 7.9                                # scale 2**(2 - 2) = 1, 7.9 saturates at 6
    assert values(simulate(big, "mxfp4"))[0] == 6.0


# --- integers with group scales ---------------------------------------------------------------------------
def test_int4_group_scales_by_hand():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.1, 0.2, -0.4, 0.3]])
    scales = group_scales_int(w, 4, 4)
    # fp16(4 / 7) = 0.5712890625 and fp16(0.4 / 7) = 0.05712890625 (10 mantissa bits)
    assert values(scales) == [0.5712890625, 0.05712890625]
    q = values(simulate(w, 4, scale_group=4))
    # 1 / s = 1.75 -> 2, 2 / s = 3.50 -> 4, 3 / s = 5.25 -> 5, 4 / s = 7.0017 -> 7; the second group alike
    assert q[:4] == [2 * 0.5712890625, 4 * 0.5712890625, 5 * 0.5712890625, 7 * 0.5712890625]
    assert q[4:] == pytest.approx([2 * 0.05712890625, 4 * 0.05712890625, -7 * 0.05712890625,
                                   5 * 0.05712890625], rel=1e-7)


def test_group_scales_with_a_short_last_group_and_per_kernel_widths():
    generator = torch.Generator().manual_seed(1)
    w = torch.randn(3, 10, generator=generator)
    q = simulate(w, [2, 4, 8], scale_group=4)     # groups of 4, 4 and 2 per row
    for row, bits in enumerate([2, 4, 8]):
        qmax = 2 ** (bits - 1) - 1
        for start in (0, 4, 8):
            block = w[row, start:start + 4]
            scale = float(torch.tensor(float(block.abs().max()) / qmax).half().float())
            expected = torch.clamp(torch.round(block / scale), -qmax, qmax) * scale
            assert torch.allclose(q[row, start:start + 4], expected, rtol=0, atol=1e-6)


def test_fp8_weights_per_kernel_and_per_group():
    w = torch.tensor([[448.0, 1.0, 232.0, 0.3], [2.0, -1.0, 0.5, 0.0]])
    q = simulate(w, "fp8_e4m3")                    # per kernel: scales 1 and 2 / 448
    assert values(q[0]) == [448.0, 1.0, 224.0, 0.3125]
    assert values(q[1]) == pytest.approx([2.0, -1.0, 0.5, 0.0])
    grouped = simulate(w, "fp8_e4m3", scale_group=2)
    assert values(grouped[0, :2]) == [448.0, 1.0]  # group max 448: fp16 scale exactly 1


def test_straight_through_gradient():
    w = torch.randn(4, 32, requires_grad=True)
    for choice, group in (("nvfp4", None), ("mxfp4", None), ("fp8_e4m3", 16), (4, 16)):
        out = fake_quantize_choice(w, choice, scale_group=group)
        (grad,) = torch.autograd.grad(out.sum(), w)
        assert torch.equal(grad, torch.ones_like(w))
        assert torch.equal(out.detach(), simulate(w, choice, scale_group=group))


# --- stored bits, by hand ---------------------------------------------------------------------------------
def test_stored_bits_hand_count():
    # a Linear 128 -> 64: 64 kernels of 128 weights (8192 weights)
    kw = dict(kernels=64, fan_in=128)
    assert formats.stored_bits(4, scale_group=None, **kw) == 8192 * 4 + 64 * 32          # fp32 per kernel
    assert formats.stored_bits(4, scale_group=128, **kw) == 8192 * 4 + 64 * 16           # one fp16 a row
    assert formats.stored_bits(4, scale_group=32, **kw) == 8192 * 4 + 64 * 4 * 16
    assert formats.stored_bits("nvfp4", scale_group=128, **kw) == 8192 * 4 + 64 * 8 * 8 + 32
    assert formats.stored_bits("mxfp4", scale_group=None, **kw) == 8192 * 4 + 64 * 4 * 8
    assert formats.stored_bits("fp8_e4m3", scale_group=64, **kw) == 8192 * 8 + 64 * 2 * 16
    assert formats.stored_bits(32, scale_group=128, **kw) == 8192 * 32                  # float: no scales
    assert formats.effective_bits(4, fan_in=128, scale_group=128) == 4.125
    assert formats.effective_bits("mxfp4", fan_in=128, scale_group=None) == 4.25
    # a row of 100 weights with groups of 32: 4 groups (the last one of 4 weights)
    assert formats.stored_bits(3, kernels=1, fan_in=100, scale_group=32) == 300 + 4 * 16


def test_choices_parse_and_sort():
    assert formats.parse_choices("4,8,fp8_e4m3") == (4, 8, "fp8_e4m3")
    assert formats.parse_choices("nvfp4,2-4,mxfp4,8") == (2, 3, 4, "mxfp4", "nvfp4", 8)
    from bitsearch.errors import UserInputError

    with pytest.raises(UserInputError, match="format names"):
        formats.parse_choices("4,fp4")
    with pytest.raises(UserInputError, match="outside"):
        formats.parse_choices("2-99999999999999,nvfp4")
    assert formats.ggml_type(4) == "q4_K" and formats.ggml_type("fp8_e4m3") is None
    assert formats.ggml_type(7) is None and formats.ggml_type(8) == "q8_0"
    assert math.isclose(formats.nominal_bits("nvfp4"), 4.5)
