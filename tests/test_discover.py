"""discover(): layers, parameters and MACs by hand, resnet50 totals, shared modules, ties, pins."""

import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from bitsearch.discover import DiscoveryError, discover  # noqa: E402
from bitsearch.errors import UserInputError  # noqa: E402
from bitsearch.space import SearchSpace, layers_fingerprint  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def _single(module, shape, **kwargs):
    space = discover(nn.Sequential(module), torch.zeros(*shape), **kwargs)
    assert len(space.layers) == 1
    return space.layers[0]


def test_conv2d_by_hand():
    # 16x16 input, 3x3 kernel, stride 2, padding 1 -> 8x8 output; 8 x 8 x 8 outputs x 3 x 9 MACs each
    layer = _single(nn.Conv2d(3, 8, 3, stride=2, padding=1), (1, 3, 16, 16))
    assert (layer.kind, layer.params, layer.bias_params, layer.kernels) == ("conv2d", 8 * 3 * 9, 8, 8)
    assert layer.macs == 8 * 8 * 8 * 3 * 9
    assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.groups) == \
        (3, 8, (3, 3), (2, 2), 1)
    assert layer.out_spatial == (8, 8) and layer.in_features == 0


def test_grouped_conv_by_hand():
    # groups=4: each output sees 8 / 4 = 2 input channels
    layer = _single(nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False), (2, 8, 8, 8))
    assert layer.params == 16 * 2 * 9 and layer.bias_params == 0
    assert layer.macs == 16 * 8 * 8 * 2 * 9  # per sample: the batch of 2 is divided out
    assert layer.groups == 4 and layer.kernels == 16


def test_depthwise_conv_by_hand():
    layer = _single(nn.Conv2d(16, 16, (3, 5), padding=(1, 2), groups=16), (1, 16, 8, 8))
    assert layer.params == 16 * 15
    assert layer.macs == 16 * 8 * 8 * 15
    assert layer.kernel_size == (3, 5)


def test_conv1d_by_hand():
    # length 20, kernel 5, no padding -> 16 outputs per channel
    layer = _single(nn.Conv1d(4, 6, 5), (3, 4, 20))
    assert (layer.kind, layer.params, layer.macs) == ("conv1d", 6 * 4 * 5, 6 * 16 * 4 * 5)
    assert layer.out_spatial == (16,) and layer.stride == (1,)


def test_linear_by_hand():
    layer = _single(nn.Linear(10, 3), (5, 10))
    assert (layer.kind, layer.params, layer.bias_params, layer.macs, layer.kernels) == ("linear", 30, 3, 30, 3)
    assert (layer.in_features, layer.out_channels, layer.in_channels) == (10, 3, 0)
    tokens = _single(nn.Linear(10, 3), (2, 7, 10))  # every token is multiplied
    assert tokens.macs == 7 * 30


def test_module_called_twice_is_one_layer_with_summed_macs():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))

    space = discover(Twice(), torch.zeros(1, 6))
    assert space.names == ("fc", "out")
    assert space.layer("fc").macs == 2 * 36 and space.layer("fc").params == 36


def test_layers_come_in_execution_order_and_unused_ones_are_left_out():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)   # defined first, runs last
            self.unused = nn.Linear(4, 4)
            self.body = nn.Linear(3, 4)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    with pytest.warns(UserWarning, match="unused"):
        space = discover(Odd(), torch.zeros(1, 3))
    assert space.names == ("body", "head")


def test_resnet_block_ties_first_conv_and_downsample():
    from torchvision.models.resnet import BasicBlock

    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    block = BasicBlock(8, 16, stride=2, downsample=downsample)
    space = discover(block, torch.zeros(1, 8, 8, 8))
    assert set(space.names) == {"conv1", "conv2", "downsample.0"}
    assert space.tied == (("conv1", "downsample.0"),)
    assert space.layer("downsample.0").macs == 16 * 4 * 4 * 8


def test_untraceable_model_ties_what_the_example_pass_shows():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:  # control flow on data: torch.fx cannot trace it
                return self.a(x) + self.b(x)
            return self.a(x) - self.b(x)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fx fails quietly: the example pass shows a and b read one tensor
        space = discover(DataDependent(), torch.ones(1, 4))
    assert space.tied == (("a", "b"),) and space.names == ("a", "b")
    assert space.shared_inputs == (("a", "b"),)
    weight_only = discover(DataDependent(), torch.ones(1, 4), act_bits=None)
    assert weight_only.tied == () and weight_only.shared_inputs == (("a", "b"),)


def _small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_pin_first_last():
    space = discover(_small_cnn(), torch.zeros(1, 1, 6, 6), pin_first_last=8, weight_bits=(2, 4))
    assert {n: (p.weight_bits, p.act_bits) for n, p in space.pins.items()} == {"0": (8, 8), "6": (8, 8)}
    assert space.free_layers() == (1,)
    floats = discover(_small_cnn(), torch.zeros(1, 1, 6, 6), pin_first_last=8, act_bits=None)
    assert {p.act_bits for p in floats.pins.values()} == {None}


def test_options_fingerprint_and_json_round_trip():
    space = discover(_small_cnn(), torch.zeros(2, 1, 6, 6), granularity="kernel", weight_bits=(2, 3, 4, 8),
                     act_bits=(4, 8), model_name="tiny")
    assert space.granularity == "kernel" and space.weight_bits == (2, 3, 4, 8) and space.act_bits == (4, 8)
    assert space.model_name == "tiny"
    assert space.fingerprint == layers_fingerprint(space.layers)
    assert SearchSpace.from_json(space.to_json()) == space


def test_the_model_is_not_modified():
    model = _small_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    discover(model, torch.randn(4, 1, 6, 6))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # batch-norm stats too
    assert not model._forward_hooks and not model[0]._forward_hooks


def test_quantized_model_has_the_same_space():
    from bitsearch.policy import Policy
    from bitsearch.quant import apply_policy

    model = _small_cnn().eval()
    space = discover(model, torch.zeros(1, 1, 6, 6))
    qmodel = apply_policy(model, Policy.uniform(space, 4), calibration=torch.randn(8, 1, 6, 6))
    assert discover(qmodel, torch.zeros(1, 1, 6, 6)).fingerprint == space.fingerprint


def test_custom_subclass_with_its_own_forward_is_left_out():
    class Standardized(nn.Conv2d):
        def forward(self, x):
            w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
            return self._conv_forward(x, w, self.bias)

    model = nn.Sequential(Standardized(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with pytest.warns(UserWarning, match="own forward"):
        space = discover(model, torch.zeros(1, 1, 6, 6))
    assert space.names == ("2",)


def test_errors_are_typed():
    with pytest.raises(DiscoveryError, match="no Conv1d, Conv2d, Linear or Embedding"):
        discover(nn.Sequential(nn.ReLU()), torch.zeros(1, 3))
    with pytest.raises(UserInputError, match="nn.Module"):
        discover("not a model", torch.zeros(1, 3))


def test_resnet50_totals():
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    space = discover(model, torch.zeros(1, 3, 224, 224), model_name="resnet50")
    assert len(space.layers) == 54
    assert sum(layer.kind == "conv2d" for layer in space.layers) == 53 and space.layers[-1].name == "fc"
    batch_norm = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    total = sum(layer.params + layer.bias_params for layer in space.layers) + batch_norm
    assert total == sum(p.numel() for p in model.parameters()) == 25_557_032
    assert sum(layer.macs for layer in space.layers) == 4_089_184_256  # the known 4.09 GMACs
    assert sum(layer.kernels for layer in space.layers) == 27_560
    assert len(space.tied) == 4 and ("layer1.0.conv1", "layer1.0.downsample.0") in space.tied
