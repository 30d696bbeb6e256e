"""Quantization arithmetic, fake-quantized layers, apply_policy, calibration, STE, caching."""

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from bitsearch.errors import PolicyError, QuantizationError  # noqa: E402
from bitsearch.policy import LayerBits, Policy  # noqa: E402
from bitsearch.quant import (  # noqa: E402
    QuantConv1d, QuantConv2d, QuantLinear, activation_qparams, apply_policy, calibrate, fake_quantize,
    fake_quantize_activation, fake_quantize_weight, fake_quantize_weight_fractional, integer_weights,
    model_policy, quant_modules, quantize_activation_int, quantize_weight_int, round_ste, set_policy,
    weight_scales,
)


pytestmark = pytest.mark.usefixtures("one_thread")


W = torch.tensor([[0.7, -1.2, 0.25, 0.0]])


# --- the quantizer by hand ---------------------------------------------------------------
def test_weight_2_bits_by_hand():
    # qmax = 1, scale = 1.2: w / s = 0.583, -1, 0.208, 0 -> 1, -1, 0, 0
    assert torch.allclose(fake_quantize_weight(W, 2), torch.tensor([[1.2, -1.2, 0.0, 0.0]]))
    assert torch.allclose(weight_scales(W, 2), torch.tensor([1.2]))


def test_weight_3_bits_by_hand():
    # qmax = 3, scale = 0.4: w / s = 1.75, -3, 0.625, 0 -> 2, -3, 1, 0
    assert torch.allclose(fake_quantize_weight(W, 3), torch.tensor([[0.8, -1.2, 0.4, 0.0]]))
    ints = quantize_weight_int(W, 3)
    assert ints.values.tolist() == [[2, -3, 1, 0]]
    assert ints.values.dtype == torch.int8


def test_weight_8_bits_by_hand():
    # qmax = 127, scale = 1.2 / 127: 0.7 / s = 74.08 -> 74; 0.25 / s = 26.46 -> 26
    s = 1.2 / 127
    expected = torch.tensor([[74 * s, -127 * s, 26 * s, 0.0]])
    assert torch.allclose(fake_quantize_weight(W, 8), expected, atol=1e-7)
    assert quantize_weight_int(W, 8).values.tolist() == [[74, -127, 26, 0]]


def test_per_kernel_mixed_widths_match_layerwise_rows():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    bits = [2, 3, 5, 8]
    q = fake_quantize_weight(w, bits)
    for k, b in enumerate(bits):
        assert torch.equal(q[k], fake_quantize_weight(w[k:k + 1], b)[0])
        assert len(torch.unique(q[k])) <= 2 ** b - 1  # at most 2 * qmax + 1 levels
    assert torch.equal(q, fake_quantize_weight(w, torch.tensor(bits)))


def test_integer_weights_reproduce_fake_quant_bit_for_bit():
    torch.manual_seed(1)
    w = torch.randn(16, 8, 3)
    for bits in (2, 4, 8, [2, 3, 4, 5, 6, 7, 8, 8, 2, 3, 4, 5, 6, 7, 8, 8]):
        ints = quantize_weight_int(w, bits)
        assert torch.equal(ints.dequantize(), fake_quantize_weight(w, bits))
    wide = quantize_weight_int(w, 12)
    assert wide.values.dtype == torch.int16 and int(wide.values.abs().max()) == 2047


def test_zero_kernel_has_scale_one_and_zero_integers():
    w = torch.zeros(2, 3)
    w[1] = torch.tensor([0.5, -0.25, 0.0])
    assert weight_scales(w, 4).tolist()[0] == 1.0
    assert torch.equal(fake_quantize_weight(w, 4)[0], torch.zeros(3))
    assert torch.isfinite(fake_quantize_weight(w, 4)).all()


def test_activation_qparams_unsigned_and_signed():
    after_relu = activation_qparams(4, 0.0, 3.0)
    assert (after_relu.qmin, after_relu.qmax) == (0, 15)
    assert after_relu.scale == pytest.approx(0.2)
    signed = activation_qparams(4, -2.0, 1.0)
    assert (signed.qmin, signed.qmax) == (-7, 7)
    assert signed.scale == pytest.approx(2 / 7)
    x = torch.tensor([-0.1, 0.29, 0.31, 2.95, 7.0])
    # unsigned 4-bit, scale 0.2: -0.1 -> clamp 0; 0.29 -> 1; 0.31 -> 2; 2.95 -> 15; 7.0 -> clamp 15
    assert quantize_activation_int(x, after_relu).tolist() == [0, 1, 2, 15, 15]
    assert torch.allclose(fake_quantize_activation(x, after_relu), torch.tensor([0.0, 0.2, 0.4, 3.0, 3.0]))


def test_fake_quantize_agrees_with_torch_fused_kernel():
    torch.manual_seed(2)
    x = torch.randn(10_000) * 3
    for scale, qmin, qmax in ((0.037, -127, 127), (0.011, 0, 255), (0.3, -1, 1)):
        reference = torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax)
        assert torch.equal(fake_quantize(x, scale, qmin, qmax), reference)
        assert torch.equal(fake_quantize(x.clone().requires_grad_(), scale, qmin, qmax).detach(), reference)


def test_unsupported_widths_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        activation_qparams(1, 0.0, 1.0)
    layer = QuantLinear.from_float(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="outside"):
        layer.set_bits(1, None)
    with pytest.raises(ValueError, match="mix float"):
        layer.set_bits([32, 4], None)


# --- straight-through estimators ---------------------------------------------------------
def test_round_ste_gradient_is_identity():
    x = torch.tensor([0.2, 1.7, -2.5], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_weight_ste_gradient_flows():
    torch.manual_seed(3)
    w = torch.randn(4, 5, requires_grad=True)
    fake_quantize_weight(w, [2, 3, 4, 8]).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_activation_ste_passes_inside_range_only():
    # 2-bit unsigned, scale 1: -0.7 rounds to -1 (clamped), -0.4 to 0, 3.4 to 3, 3.6 to 4 (clamped)
    x = torch.tensor([-0.7, -0.4, 0.5, 2.0, 3.4, 3.6], requires_grad=True)
    fake_quantize_activation(x, activation_qparams(2, 0.0, 3.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    # the same gradient as torch's fused kernel
    torch.manual_seed(7)
    y = (torch.randn(1000) * 2).requires_grad_()
    fake_quantize(y, 0.05, -15, 15).sum().backward()
    z = y.detach().clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(z, 0.05, 0, -15, 15).sum().backward()
    assert torch.equal(y.grad, z.grad)


def test_learnable_scale_gets_lsq_gradient():
    x = torch.tensor([0.26, 0.74, 5.0])
    scale = torch.tensor(0.5, requires_grad=True)
    fake_quantize(x, scale, 0, 3).sum().backward()
    # inside: round(v) - v with v = x / s = 0.52, 1.48 -> 1 - 0.52 + 1 - 1.48 = 0; clamped: qmax = 3
    assert scale.grad.item() == pytest.approx(3.0, abs=1e-5)


def test_fractional_bits_mix_and_gradient():
    torch.manual_seed(4)
    w = torch.randn(3, 6)
    bits = torch.tensor(3.25, requires_grad=True)
    mixed = fake_quantize_weight_fractional(w, bits)
    q3, q4 = fake_quantize_weight(w, 3), fake_quantize_weight(w, 4)
    assert torch.allclose(mixed, 0.75 * q3 + 0.25 * q4)
    mixed.sum().backward()
    assert bits.grad.item() == pytest.approx(float((q4 - q3).sum()), rel=1e-5)
    per_kernel = torch.tensor([2.0, 4.5, 8.0], requires_grad=True)
    out = fake_quantize_weight_fractional(w, per_kernel)
    assert torch.equal(out[0], fake_quantize_weight(w[:1], 2)[0])
    assert torch.equal(out[2], fake_quantize_weight(w[2:], 8)[0])


# --- layers --------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.dw(x))
        return self.fc(x.mean(dim=(2, 3)))


def _net():
    torch.manual_seed(0)
    return Net().eval()


POLICY = Policy((("conv", LayerBits((8,) * 8, 8)), ("dw", LayerBits((2, 3, 4, 5, 6, 7, 8, 8), 4)),
                 ("fc", LayerBits((4,) * 4, 8))), "kernel")
X = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(5))


def test_apply_policy_leaves_the_original_untouched():
    model = _net()
    before = copy.deepcopy(model.state_dict())
    reference = model(X)
    qmodel = apply_policy(model, POLICY, calibration=X)
    assert type(model.conv) is nn.Conv2d and type(model.fc) is nn.Linear
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(X), reference)
    assert isinstance(qmodel.conv, QuantConv2d) and isinstance(qmodel.fc, QuantLinear)
    assert qmodel.conv.weight is not model.conv.weight
    assert not torch.equal(qmodel(X), reference)
    # the copy has the same parameter names (and values) plus the quantizer buffers
    qstate = qmodel.state_dict()
    assert set(before) <= set(qstate)
    assert {"dw.weight_bits", "dw.act_min", "dw.act_max"} <= set(qstate)
    assert qmodel.dw.weight_bits.tolist() == [2, 3, 4, 5, 6, 7, 8, 8]


def test_quantized_layer_computes_the_fake_quantized_product():
    model = _net()
    qmodel = apply_policy(model, POLICY, calibration=X)
    layer = qmodel.conv
    qparams = layer.act_qparams()
    expected = nn.functional.conv2d(fake_quantize_activation(X, qparams), fake_quantize_weight(layer.weight, 8),
                                    layer.bias, padding=1)
    with torch.no_grad():
        assert torch.allclose(layer(X), expected, atol=1e-5)
    # the straight-through path (gradients on) gives the same numbers
    assert torch.allclose(layer(X), expected, atol=1e-5)


def test_eight_bits_stay_close_to_float():
    model = _net()
    qmodel = apply_policy(model, Policy.uniform(_space_of(model), 8), calibration=X)
    with torch.no_grad():
        diff = (qmodel(X) - model(X)).abs().max() / model(X).abs().max()
    assert diff < 0.05


def _space_of(model):
    from bitsearch.discover import discover

    return discover(model, X[:1])


def test_apply_policy_with_space_validates():
    model = _net()
    space = _space_of(model)
    bad = Policy((("conv", LayerBits(9, 8)), ("fc", LayerBits(4, 8))))
    with pytest.raises(PolicyError) as info:
        apply_policy(model, bad, space=space)
    assert "missing layer 'dw'" in str(info.value) and "[9]" in str(info.value)


def test_apply_policy_reports_every_problem_against_the_model():
    model = _net()
    bad = Policy((("conv", LayerBits(1, 8)), ("dw", LayerBits((4, 4), 8)), ("nope", LayerBits(4, 8))))
    with pytest.raises(PolicyError) as info:
        apply_policy(model, bad)
    message = str(info.value)
    assert "3 problems" in message
    assert "unknown layer 'nope'" in message and "2 per-kernel widths" in message and "outside" in message


def test_layers_left_out_stay_float_and_float_widths_are_identity():
    model = _net()
    qmodel = apply_policy(model, {"fc": (32, None)})
    assert type(qmodel.conv) is nn.Conv2d
    with torch.no_grad():
        assert torch.equal(qmodel(X), model(X))


def test_float_weights_then_quantized_on_the_same_copy():
    # a float-weight layer's cached weight must not become a registered parameter: setting
    # the layer to integer widths afterwards failed with a TypeError
    model = _net()
    qmodel = apply_policy(model, {n: (32, 8) for n in ("conv", "dw", "fc")}, calibration=X)
    names = [n for n, _ in qmodel.named_parameters()]
    with torch.no_grad():
        qmodel(X)
    assert [n for n, _ in qmodel.named_parameters()] == names
    set_policy(qmodel, {n: (4, 8) for n in ("conv", "dw", "fc")})
    calibrate(qmodel, X)
    fresh = apply_policy(model, {n: (4, 8) for n in ("conv", "dw", "fc")}, calibration=X)
    with torch.no_grad():
        assert torch.equal(qmodel(X), fresh(X))


def test_uncalibrated_activations_raise_a_clear_error():
    qmodel = apply_policy(_net(), POLICY)
    with pytest.raises(QuantizationError, match="never calibrated"):
        qmodel(X)
    calibrate(qmodel, X)
    qmodel(X)


def test_calibration_keeps_running_min_max_over_batches():
    model = _net()
    batches = [(X[:8], None), (X[8:] * 3, None)]  # tuples, as a DataLoader yields
    qmodel = apply_policy(model, POLICY)
    calibrate(qmodel, batches)
    assert qmodel.conv.act_min.item() == pytest.approx(min(X[:8].min().item(), (X[8:] * 3).min().item()))
    assert qmodel.conv.act_max.item() == pytest.approx(max(X[:8].max().item(), (X[8:] * 3).max().item()))
    assert qmodel.dw.act_min.item() >= 0  # after a ReLU: unsigned
    assert not qmodel.dw.act_qparams().signed and qmodel.conv.act_qparams().signed
    with pytest.raises(QuantizationError, match="no batch"):
        calibrate(qmodel, [])


def test_calibration_does_not_touch_batch_norm_or_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    model.train()
    qmodel = apply_policy(model, {"0": (4, 8), "4": (4, 8)})
    stats = qmodel[1].running_mean.clone()
    calibrate(qmodel, X)
    assert torch.equal(qmodel[1].running_mean, stats)
    assert qmodel.training and qmodel[0].training


def test_shared_module_is_replaced_everywhere():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.again = self.fc  # the same module under a second name

        def forward(self, x):
            return self.again(torch.relu(self.fc(x)))

    qmodel = apply_policy(Twice(), {"fc": (4, 8)}, calibration=torch.randn(8, 4))
    assert isinstance(qmodel.fc, QuantLinear) and qmodel.again is qmodel.fc
    assert list(quant_modules(qmodel)) == ["fc"]


def test_eval_cache_reuses_and_refreshes_the_weight():
    qmodel = apply_policy(_net(), POLICY, calibration=X)
    layer = qmodel.fc
    with torch.no_grad():
        first = qmodel(X)
        cached = layer._weight_cache
        qmodel.eval()  # as evaluate_model does on every call
        qmodel(X)
        assert layer._weight_cache is cached  # not recomputed
        layer.weight.mul_(0.5)  # an in-place change is seen
        assert not torch.equal(qmodel(X), first)
        assert layer._weight_cache is not cached
    set_policy(qmodel, {"fc": (2, 8)})
    with torch.no_grad():
        two_bits = qmodel(X)
    assert len(torch.unique(layer._weight_cache / layer.act_qparams().scale)) <= 3 * 4
    assert torch.allclose(two_bits, qmodel(X), atol=1e-5)  # same numbers with gradients on


def test_training_mode_trains_through_the_quantizers():
    qmodel = apply_policy(_net(), POLICY, calibration=X)
    qmodel.train()
    optimizer = torch.optim.SGD(qmodel.parameters(), lr=0.1)
    before = qmodel.fc.weight.detach().clone()
    loss = nn.functional.cross_entropy(qmodel(X), torch.zeros(len(X), dtype=torch.long))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in qmodel.parameters())
    assert qmodel.conv.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(qmodel.fc.weight, before)
    qmodel.eval()  # the evaluation path sees the trained weights, not a stale cache
    expected = qmodel(X)  # gradients on: weights quantized afresh
    with torch.no_grad():
        assert torch.allclose(qmodel(X), expected, atol=1e-5)


def test_set_policy_and_model_policy_round_trip():
    qmodel = apply_policy(_net(), POLICY, calibration=X)
    assert model_policy(qmodel) == POLICY
    layerwise = Policy((("conv", LayerBits(4, 8)), ("dw", LayerBits(3, 8)), ("fc", LayerBits(2, None))))
    set_policy(qmodel, layerwise)
    assert model_policy(qmodel) == layerwise
    assert qmodel.fc.act_bits is None
    with pytest.raises(PolicyError, match="unknown layer"):
        set_policy(qmodel, {"missing": (4, 8)})


def test_state_dict_round_trip_keeps_calibration():
    qmodel = apply_policy(_net(), POLICY, calibration=X)
    other = apply_policy(_net(), POLICY)
    other.load_state_dict(qmodel.state_dict())
    with torch.no_grad():
        assert torch.equal(other(X), qmodel(X))


def test_integer_weights_of_a_model():
    qmodel = apply_policy(_net(), POLICY, calibration=X)
    ints = integer_weights(qmodel)
    assert set(ints) == {"conv", "dw", "fc"}
    assert ints["dw"].bits.tolist() == [2, 3, 4, 5, 6, 7, 8, 8]
    assert torch.equal(ints["dw"].dequantize(), qmodel.dw.quantized_weight())
    assert int(ints["fc"].values.abs().max()) == 7


def test_conv1d_layer():
    torch.manual_seed(6)
    conv = nn.Conv1d(2, 3, 5, padding=2)
    x = torch.randn(4, 2, 20)
    q = QuantConv1d.from_float(conv, 8, None)
    with torch.no_grad():
        assert torch.allclose(q(x), nn.functional.conv1d(x, fake_quantize_weight(conv.weight, 8), conv.bias,
                                                         padding=2))
    assert q.weight is conv.weight  # from_float shares the parameters
