"""Export/import of HAWQ-V3 bit_config dictionaries and NNCF per-scope bitwidths."""

import json
from pathlib import Path

import pytest

from bitsearch import interop
from bitsearch.cli import main
from bitsearch.interop import InteropError
from bitsearch.errors import UserInputError
from bitsearch.policy import LayerBits, Policy, save_policy

FIXTURE = Path("/work/shared/fixtures/hawq_v3_resnet18.json")
RESNET18_TV = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2",
               "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv1", "layer2.1.conv2",
               "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv1", "layer3.1.conv2",
               "layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1", "layer4.1.conv2", "fc"]


def fixture():
    if not FIXTURE.exists():
        pytest.skip("the shared HAWQ-V3 fixture is not on this machine")
    return json.loads(FIXTURE.read_text())


def bit_config_from_fixture(name):
    """A full HAWQ-V3 bit_config as HAWQ-V3 writes it: stem and head at 8, each unit's input at 8,
    the input of convbn2 at convbn2's width, accumulators at 16."""
    data = fixture()
    config = {"quant_input": 8, "quant_init_block_convbn": 8, "quant_act_int32": 16}
    for layer, bits in zip(data["layers"], data["published_weight_bits"][name]):
        stage, unit, conv = layer["name"].split(".")
        config[f"{stage}.{unit}.quant_act"] = 8
        config[f"{stage}.{unit}.quant_{conv}"] = bits
        if conv == "convbn2":
            config[f"{stage}.{unit}.quant_act1"] = bits
        config[f"{stage}.{unit}.quant_act_int32"] = 16
    config["quant_act_output"] = 8
    config["quant_output"] = 8
    return config


def tv_to_fixture_name(name):
    stage, unit, rest = name.split(".", 2)
    conv = "identity_convbn" if rest == "downsample.0" else rest.replace("conv", "convbn")
    return f"stage{stage[len('layer'):]}.unit{int(unit) + 1}.{conv}"


@pytest.mark.parametrize("config_name", ["modelsize_0.25", "modelsize_0.5", "modelsize_0.75", "bops_0.25",
                                         "bops_0.5", "bops_0.75", "latency_0.25", "latency_0.5", "latency_0.75"])
def test_hawq_published_configs_import_layer_by_layer(config_name):
    data = fixture()
    expected = dict(zip((l["name"] for l in data["layers"]), data["published_weight_bits"][config_name]))
    config = bit_config_from_fixture(config_name)
    # HAWQ naming: the fixture's own layer names
    policy = interop.from_hawq(config, naming="hawq")
    widths = {n: b.weight_bits for n, b in policy.bits}
    assert widths.pop("init_block_convbn") == 8 and widths.pop("output") == 8
    assert widths == expected
    # torchvision naming: the same widths at layer1.0.conv1 ...
    policy = interop.from_hawq(config)
    assert list(policy.names) == RESNET18_TV
    for name, bits in policy.bits:
        if name not in ("conv1", "fc"):
            assert bits.weight_bits == expected[tv_to_fixture_name(name)], name
    # and back: the bit_config comes out key for key
    assert json.loads(interop.to_hawq(policy)) == config


def test_hawq_act_widths_follow_the_quantizer_feeding_each_layer():
    config = bit_config_from_fixture("bops_0.25")
    policy = interop.from_hawq(config)
    assert policy["layer1.1.conv2"] == LayerBits(4, config["stage1.unit2.quant_act1"])
    assert policy["layer2.0.downsample.0"].act_bits == config["stage2.unit1.quant_act"]
    assert policy["conv1"].act_bits == config["quant_input"]
    assert policy["fc"].act_bits == config["quant_act_output"]


def test_hawq_policy_round_trip_both_namings():
    bits = [(n, LayerBits(2 + i % 7, 8 if i % 3 else 4)) for i, n in enumerate(RESNET18_TV)]
    # readers of one tensor share its width: conv1 and downsample of a unit read the unit input
    fixed = dict(bits)
    for s in (2, 3, 4):
        fixed[f"layer{s}.0.downsample.0"] = LayerBits(5, fixed[f"layer{s}.0.conv1"].act_bits)
    policy = Policy(tuple((n, fixed[n]) for n in RESNET18_TV))
    back = interop.from_hawq(json.loads(interop.to_hawq(policy)))
    assert back == policy
    hawq_named = interop.rename_policy(policy, "hawq")
    assert "stage2.unit1.identity_convbn" in hawq_named.names
    assert interop.from_hawq(json.loads(interop.to_hawq(hawq_named)), naming="hawq") == hawq_named
    assert interop.rename_policy(hawq_named, "torchvision") == policy


def test_hawq_bottleneck_names():
    policy = Policy((("conv1", LayerBits(8, 8)), ("layer1.0.conv1", LayerBits(4, 8)),
                     ("layer1.0.conv2", LayerBits(4, 6)), ("layer1.0.conv3", LayerBits(2, 5)),
                     ("layer1.0.downsample.0", LayerBits(8, 8)), ("fc", LayerBits(8, 8))))
    config = json.loads(interop.to_hawq(policy))
    assert config["stage1.unit1.quant_convbn3"] == 2 and config["stage1.unit1.quant_act2"] == 5
    assert config["stage1.unit1.quant_act1"] == 6
    assert interop.from_hawq(config) == policy


def test_hawq_unmapped_layers_named_in_one_error():
    policy = Policy((("conv1", LayerBits(8, 8)), ("features.3", LayerBits(4, 8)), ("head.proj", LayerBits(4, 8))))
    with pytest.raises(UserInputError) as err:
        interop.to_hawq(policy)
    assert "features.3" in str(err.value) and "head.proj" in str(err.value)
    config = bit_config_from_fixture("bops_0.5")
    config["stage1.unit1.quant_weird"] = 4
    config["classifier.quant_linear"] = 4
    with pytest.raises(InteropError) as err:
        interop.from_hawq(config)
    assert "stage1.unit1.quant_weird" in str(err.value) and "classifier.quant_linear" in str(err.value)


def test_hawq_inconsistent_shared_input_is_an_error():
    policy = interop.from_hawq(bit_config_from_fixture("bops_0.5"))
    bits = dict(policy.bits)
    bits["layer2.0.downsample.0"] = LayerBits(8, 4)  # conv1 of the unit reads the same tensor at 8
    with pytest.raises(InteropError, match="stage2.unit1.quant_act"):
        interop.to_hawq(Policy(tuple(bits.items())))


def test_hawq_python_file_with_several_configs(tmp_path):
    a, b = bit_config_from_fixture("bops_0.5"), bit_config_from_fixture("latency_0.25")
    text = "# HAWQ-V3 style\nbit_config_dict = {\n" + \
        f"'bit_config_resnet18_bops_0.5': {a!r},\n'bit_config_resnet18_latency_0.25': {b!r},\n}}\n"
    path = tmp_path / "bit_config.py"
    path.write_text(text)
    with pytest.raises(InteropError, match="--config"):
        interop.read_hawq_file(path)
    assert interop.read_hawq_file(path, "bit_config_resnet18_latency_0.25") == b
    evil = tmp_path / "evil.py"
    evil.write_text("bit_config = {'quant_output': __import__('os').getpid()}\n")
    with pytest.raises(InteropError, match="literals"):
        interop.read_hawq_file(evil)


# --- NNCF ---------------------------------------------------------------------------------
RESNET_CLASSES = {"": "ResNet", "conv1": "Conv2d", "layer1": "Sequential", "layer1.0": "BasicBlock",
                  "layer1.0.conv1": "Conv2d", "layer2": "Sequential", "layer2.0": "BasicBlock",
                  "layer2.0.downsample": "Sequential", "layer2.0.downsample.0": "Conv2d", "fc": "Linear"}
RESNET_KINDS = {"conv1": "conv2d", "layer1.0.conv1": "conv2d", "layer2.0.downsample.0": "conv2d", "fc": "linear"}


def small_resnet_policy(acts=(8, 8, 8, 8)):
    return Policy(tuple((n, LayerBits(w, a)) for n, w, a in
                        zip(RESNET_KINDS, (8, 3, 5, 4), acts)), meta={"model": {"name": "toy"}})


def test_nncf_scope_form():
    assert interop.nncf_scope("layer2.0.downsample.0", RESNET_CLASSES, "conv2d") == \
        "ResNet/Sequential[layer2]/BasicBlock[0]/Sequential[downsample]/NNCFConv2d[0]/conv2d_0"
    assert interop.nncf_scope("fc", RESNET_CLASSES, "linear") == "ResNet/NNCFLinear[fc]/linear_0"


@pytest.mark.parametrize("acts", [(8, 8, 8, 8), (8, 4, 6, 8)])
def test_nncf_round_trip(acts):
    policy = small_resnet_policy(acts)
    text = interop.to_nncf(policy, module_classes=RESNET_CLASSES, kinds=RESNET_KINDS)
    data = json.loads(text)
    pairs = data["compression"]["initializer"]["precision"]["bitwidth_per_scope"]
    assert [3, "ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]/conv2d_0|WEIGHT"] in pairs
    assert data["compression"]["initializer"]["precision"]["type"] == "manual"
    if len(set(acts)) == 1:
        assert data["compression"]["activations"]["bits"] == 8
    back = interop.from_nncf(data)
    assert back == policy


def test_nncf_reads_older_scope_forms_and_model_input():
    pairs = [[4, "InsertionType.NNCF_MODULE_PRE_OP ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]"],
             [2, "ResNet/NNCFConv2d[conv1]/ModuleDict[pre_ops]/UpdateWeight[0]/SymmetricQuantizer[op]"],
             [6, "/nncf_model_input_0|OUTPUT"], [8, "ResNet/NNCFLinear[fc]/linear_0|WEIGHT"]]
    policy = interop.from_nncf({"compression": {"algorithm": "quantization", "activations": {"bits": 5},
                                                "initializer": {"precision": {"bitwidth_per_scope": pairs}}}},
                               layer_order=["conv1", "layer1.0.conv1", "fc"])
    assert policy.names == ("conv1", "layer1.0.conv1", "fc")
    assert policy["conv1"] == LayerBits(2, 6)  # the model input feeds the first layer
    assert policy["layer1.0.conv1"] == LayerBits(4, 5)
    assert policy["fc"] == LayerBits(8, 5)


def test_nncf_unmapped_scopes_named_in_one_error():
    pairs = [[4, "ResNet/NNCFConv2d[conv1]/conv2d_0|WEIGHT"], [4, "ResNet/ReLU[relu]/relu__0|OUTPUT"],
             [8, "ResNet/Sequential[layer1]/BasicBlock[0]/ReLU[relu]/relu__1|OUTPUT"]]
    with pytest.raises(InteropError) as err:
        interop.from_nncf({"bitwidth_per_scope": pairs})
    assert "relu__0|OUTPUT" in str(err.value) and "relu__1|OUTPUT" in str(err.value)
    with pytest.raises(InteropError, match="features.3"):
        interop.to_nncf(Policy((("features.3", LayerBits(4, 8)),)), module_classes=RESNET_CLASSES,
                        kinds=RESNET_KINDS)


def test_per_kernel_policies_are_refused():
    policy = Policy((("fc", LayerBits((2, 4), 8)),), granularity="kernel")
    with pytest.raises(InteropError, match="per-kernel"):
        interop.to_hawq(policy)
    with pytest.raises(InteropError, match="per-kernel"):
        interop.to_nncf(policy, module_classes=RESNET_CLASSES, kinds=RESNET_KINDS)


# --- the command ------------------------------------------------------------------------------
def test_cli_import_export_hawq_round_trip(tmp_path, capsys):
    config = bit_config_from_fixture("latency_0.5")
    src = tmp_path / "bit_config.json"
    src.write_text(json.dumps(config))
    out = tmp_path / "policy.json"
    assert main(["import", str(src), "--from", "hawq", "--out", str(out)]) == 0
    assert main(["export", str(out), "--to", "hawq"]) == 0
    assert json.loads(capsys.readouterr().out) == config


def test_cli_import_unmapped_is_one_line_exit_2(tmp_path, capsys):
    src = tmp_path / "bad.json"
    src.write_text(json.dumps({"quant_input": 8, "quant_init_block_convbn": 8, "mystery.quant_thing": 4}))
    code = main(["import", str(src), "--from", "hawq", "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "mystery.quant_thing" in err
    policy = tmp_path / "mnist.json"
    save_policy(Policy((("conv1", LayerBits(4, 8)), ("conv2", LayerBits(4, 8)))), policy)
    code = main(["export", str(policy), "--to", "hawq"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "conv2" in err


def test_cli_nncf_with_task_resnet18(tmp_path, capsys):
    pytest.importorskip("torchvision")
    pytest.importorskip("bitsearch.discover")
    pytest.importorskip("bitsearch.tasks")
    config = bit_config_from_fixture("bops_0.5")
    src = tmp_path / "bit_config.json"
    src.write_text(json.dumps(config))
    out = tmp_path / "policy.json"
    assert main(["import", str(src), "--from", "hawq", "--task", "resnet18", "--out", str(out)]) == 0
    policy = json.loads(out.read_text())
    assert policy["model"]["name"] == "resnet18" and policy["model"]["fingerprint"].startswith("sha256:")
    capsys.readouterr()
    nncf = tmp_path / "nncf.json"
    assert main(["export", str(out), "--to", "nncf", "--out", str(nncf)]) == 0
    data = json.loads(nncf.read_text())
    scopes = [s for _, s in data["compression"]["initializer"]["precision"]["bitwidth_per_scope"]]
    assert "ResNet/Sequential[layer2]/BasicBlock[0]/Sequential[downsample]/NNCFConv2d[0]/conv2d_0|WEIGHT" in scopes
    back = tmp_path / "back.json"
    assert main(["import", str(nncf), "--from", "nncf", "--task", "resnet18", "--out", str(back)]) == 0
    a, b = json.loads(out.read_text())["layers"], json.loads(back.read_text())["layers"]
    assert a == b
    # a bit_config that lacks a layer of the task's model: every missing layer named
    del config["stage4.unit2.quant_convbn2"]
    src.write_text(json.dumps(config))
    capsys.readouterr()
    code = main(["import", str(src), "--from", "hawq", "--task", "resnet18"])
    err = capsys.readouterr().err
    assert code == 2 and "layer4.1.conv2" in err and len(err.strip().splitlines()) == 1
