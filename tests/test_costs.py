"""Cost models against numbers worked out by hand."""


import pytest

from bitsearch.cost import BitfusionCost, BopsCost, EnergyCost, LatencyTableCost, SizeCost
from bitsearch.errors import LatencyTableError
from bitsearch.policy import LayerBits, Policy
from bitsearch.space import Layer, SearchSpace

# a 3x3 conv, 4 -> 8 channels, on an 8x8 output: 288 weights, 18,432 MACs; 8 bias values
CONV = Layer("conv", "conv2d", params=288, macs=18432, kernels=8, in_channels=4, out_channels=8,
             kernel_size=(3, 3), stride=(1, 1), out_spatial=(8, 8), bias_params=8)
FC = Layer("fc", "linear", params=80, macs=80, kernels=10, in_features=8, out_channels=10, bias_params=10)
SPACE = SearchSpace((CONV, FC), weight_bits=(2, 4, 8), act_bits=(4, 8))
KSPACE = SPACE.with_(granularity="kernel")


def test_size_by_hand():
    size = SizeCost()
    # 288 weights x 4 bit + 8 scales x 32 bit + 8 biases x 32 bit = 1152 + 256 + 256
    assert size.layer_cost(CONV, 4, 8) == 1664
    # float: no scales
    assert size.layer_cost(CONV, 32, None) == 288 * 32 + 8 * 32
    policy = Policy({"conv": LayerBits(4, 8), "fc": LayerBits(2, 8)})
    # fc: 80 x 2 + 10 x 32 + 10 x 32 = 800
    assert size.cost(SPACE, policy) == 1664 + 800


def test_size_kernel_wise_is_per_kernel_share():
    size = SizeCost()
    bits = (2, 2, 2, 2, 8, 8, 8, 8)
    policy = Policy({"conv": LayerBits(bits, 8), "fc": LayerBits((4,) * 10, 8)})
    # conv: each kernel has 36 weights: 4 x 36 x 2 + 4 x 36 x 8 = 1440, + 256 scales + 256 bias
    expected_conv = 1440 + 256 + 256
    expected_fc = size.layer_cost(FC, 4, 8)
    assert size.cost(KSPACE, policy) == pytest.approx(expected_conv + expected_fc, rel=1e-15)
    # uniform kernel-wise costs exactly the layer-wise policy
    assert size.cost(KSPACE, Policy.uniform(KSPACE, 4, 8)) == size.cost(SPACE, Policy.uniform(SPACE, 4, 8))


def test_bops_by_hand():
    bops = BopsCost()
    assert bops.layer_cost(CONV, 4, 8) == 18432 * 32
    assert bops.layer_cost(CONV, 4, None) == 18432 * 4 * 32  # float activations count as 32 bit
    policy = Policy({"conv": LayerBits(2, 4), "fc": LayerBits(8, 8)})
    assert bops.cost(SPACE, policy) == 18432 * 8 + 80 * 64


def test_energy_by_hand():
    energy = EnergyCost()
    # 8-bit x 8-bit: mult 0.2 pJ; accumulator min(32, 8 + 8 + ceil(log2 36) = 22) bits:
    # add 0.05 + (22 - 16) / 16 x 0.05 = 0.06875 pJ; SRAM 16/32 x 5 = 2.5 pJ per MAC;
    # DRAM 288 x 8 / 32 x 640 = 46,080 pJ
    expected = 18432 * (0.2 + 0.06875 + 2.5) + 46080
    assert energy.layer_cost(CONV, 8, 8) == pytest.approx(expected, rel=1e-12)
    # the 32x32-bit multiplier hits the table's 3.1 pJ
    from bitsearch.cost.models import int_mult_energy
    assert int_mult_energy(32, 32) == pytest.approx(3.1)
    # float activations: fp32 multiply-add 4.6 pJ, operands 8 + 32 bits from SRAM
    expected_float = 18432 * (4.6 + 40 / 32 * 5) + 46080
    assert energy.layer_cost(CONV, 8, None) == pytest.approx(expected_float)
    assert energy.layer_cost(CONV, 4, 4) < energy.layer_cost(CONV, 8, 8)


def test_bitfusion_by_hand():
    fusion = BitfusionCost()
    # 8x8 bits: ceil(8/2) x ceil(8/2) = 16 -> 1 MAC per cycle per unit; 512 units at 500 MHz
    assert fusion.layer_cost(CONV, 8, 8) == pytest.approx(18432 / 512 / 500e6 * 1e3)
    # 2x2 bits: 16 MACs per cycle per unit
    assert fusion.layer_cost(CONV, 2, 2) == pytest.approx(18432 / 16 / 512 / 500e6 * 1e3)
    # 3 bits pays like 4
    assert fusion.layer_cost(CONV, 3, 8) == fusion.layer_cost(CONV, 4, 8)


def _table_csv(tmp_path, rows, device="test device"):
    lines = [f"# device: {device}", "# unit: ms", "layer,weight_bits,act_bits,latency"] + rows
    path = tmp_path / "lat.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _full_rows():
    rows = []
    for name, base in (("conv", 1.0), ("fc", 0.1)):
        for w in (2, 4, 8):
            for a in (4, 8):
                rows.append(f"{name},{w},{a},{base * (w + a) / 16}")
    return rows


def test_latency_table_kernel_wise_pays_widest(tmp_path):
    table = LatencyTableCost.load(_table_csv(tmp_path, _full_rows()))
    assert table.device == "test device" and table.unit == "ms"
    table.validate(SPACE)
    policy = Policy({"conv": LayerBits((2, 2, 2, 2, 2, 2, 2, 8), 8), "fc": LayerBits((2,) * 10, 4)})
    assert table.cost(KSPACE, policy) == pytest.approx(1.0 * 16 / 16 + 0.1 * 6 / 16)


def test_latency_table_missing_entries_are_errors(tmp_path):
    rows = [r for r in _full_rows() if not r.startswith("fc,8,")]
    table = LatencyTableCost.load(_table_csv(tmp_path, rows))
    with pytest.raises(LatencyTableError, match="2 entries missing"):
        table.validate(SPACE)
    with pytest.raises(LatencyTableError, match="no entry for layer 'fc'"):
        table.cost(SPACE, Policy.uniform(SPACE, 8, 8))


def test_latency_table_needs_device(tmp_path):
    path = tmp_path / "lat.csv"
    path.write_text("layer,weight_bits,act_bits,latency\nconv,8,8,1.0\n")
    with pytest.raises(LatencyTableError, match="device"):
        LatencyTableCost.load(path)


def test_latency_table_json(tmp_path):
    import json
    path = tmp_path / "lat.json"
    path.write_text(json.dumps({"schema": "bitsearch-latency-table", "schema_version": 1, "device": "d",
                                "unit": "ms", "entries": [{"layer": "conv", "weight_bits": 8,
                                                           "act_bits": "float", "latency": 2.5}]}))
    table = LatencyTableCost.load(path)
    assert table.layer_cost(CONV, 8, None) == 2.5
