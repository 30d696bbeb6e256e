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


RESNET_PRODUCERS = {"conv1": "/nncf_model_input_0", "layer1.0.conv1": "ResNet/ReLU[relu]/relu__0",
                    "layer2.0.downsample.0": "ResNet/Sequential[layer1]/BasicBlock[1]/ReLU[relu]/relu__1",
                    "fc": "ResNet/AdaptiveAvgPool2d[avgpool]/adaptive_avg_pool2d_0"}


@pytest.mark.parametrize("acts", [(8, 8, 8, 8), (8, 4, 6, 8)])
def test_nncf_round_trip(acts):
    policy = small_resnet_policy(acts)
    text = interop.to_nncf(policy, module_classes=RESNET_CLASSES, kinds=RESNET_KINDS, producers=RESNET_PRODUCERS)
    data = json.loads(text)
    pairs = data["compression"]["initializer"]["precision"]["bitwidth_per_scope"]
    assert [3, "ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]/conv2d_0|WEIGHT"] in pairs
    assert data["compression"]["initializer"]["precision"]["type"] == "manual"
    if len(set(acts)) == 1:
        assert data["compression"]["activations"]["bits"] == 8
    else:  # mixed: NNCF's activation quantizers, at the outputs of the ops feeding the layers
        assert [4, "ResNet/ReLU[relu]/relu__0|OUTPUT"] in pairs
    back = interop.from_nncf(data, producers=RESNET_PRODUCERS)
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


# --- HAWQ-V3 ResNet-50/101, checked with HAWQ-V3's own matching rule ----------------------------
HAWQ_CONFIGS = Path(__file__).parent / "data" / "hawq_v3_bit_configs.json"
UNITS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3), "resnet50b": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def hawq_module_names(arch):
    """The quantizer module names of HAWQ-V3's Q_ResNet18 / Q_ResNet50 / Q_ResNet101
    (utils/models/q_resnet.py): what quant_train.py's ``for name, m in model.named_modules():
    if name in bit_config.keys()`` loop can match."""
    bottleneck = arch != "resnet18"
    names = {"quant_input", "quant_act_int32", "quant_act_output", "quant_output",
             "quant_init_convbn" if bottleneck else "quant_init_block_convbn"}
    for stage, units in enumerate(UNITS[arch], start=1):
        for unit in range(1, units + 1):
            prefix = f"stage{stage}.unit{unit}."
            convs = 3 if bottleneck else 2
            names |= {prefix + "quant_act", prefix + "quant_act_int32"}
            names |= {prefix + f"quant_convbn{k}" for k in range(1, convs + 1)}
            names |= {prefix + f"quant_act{k}" for k in range(1, convs)}
            if unit == 1 and (bottleneck or stage > 1):
                names.add(prefix + "quant_identity_convbn")
    return names


def hawq_matched(config, arch):
    """quant_train.py's loop: how many bit_config keys name a module of the model."""
    modules = hawq_module_names(arch)
    return sum(1 for name in modules if name in config)


def published(prefix):
    data = json.loads(HAWQ_CONFIGS.read_text())["configs"]
    return {k: v for k, v in data.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name", sorted(published("bit_config_resnet50_")) + sorted(published("bit_config_resnet50b_"))
                         + sorted(published("bit_config_resnet101_")))
def test_hawq_resnet50_configs_import_and_export_to_the_same_dict(name):
    arch = name[len("bit_config_"):].split("_")[0]
    config = interop.select_hawq_config({name: published("bit_config_")[name]})
    assert hawq_matched(config, arch) == len(config)  # HAWQ-V3 itself matches every key
    policy = interop.from_hawq(config)
    assert policy["conv1"].weight_bits == config["quant_init_convbn"]
    assert policy["layer1.0.conv3"] == LayerBits(config["stage1.unit1.quant_convbn3"], config["stage1.unit1.quant_act2"])
    assert policy["layer1.0.downsample.0"].act_bits == config["stage1.unit1.quant_act"]
    back = interop.hawq_config(policy)
    assert back == config and list(back) == list(config)  # same keys, same widths, HAWQ-V3's order
    hawq_named = interop.from_hawq(config, naming="hawq")
    assert "init_convbn" in hawq_named.names and interop.hawq_config(hawq_named) == config


def test_hawq_resnet50_layers_are_torchvision_resnet50s():
    pytest.importorskip("torchvision")
    from bitsearch.build import SpaceOptions, space_for_task
    from bitsearch.tasks import get_task

    space = space_for_task(get_task("resnet50"), SpaceOptions(act_bits=None))
    policy = interop.from_hawq(interop.select_hawq_config(published("bit_config_resnet50_bops_0.5")))
    assert set(policy.names) == set(space.names)


def test_hawq_resnet18_export_is_matched_by_hawq_whole():
    policy = interop.from_hawq(bit_config_from_fixture("bops_0.5"))
    config = interop.hawq_config(policy)
    assert "quant_init_block_convbn" in config and "quant_init_convbn" not in config
    assert hawq_matched(config, "resnet18") == len(config) == len(hawq_module_names("resnet18"))


def test_hawq_bit_config_module_reads_back(tmp_path):
    policy = interop.from_hawq(interop.select_hawq_config(published("bit_config_resnet50_latency_0.5")),
                               model={"name": "resnet50"})
    text = interop.to_hawq_module(policy)
    assert text.count("bit_config_dict = {") == 1 and "'bit_config_resnet50_bitsearch'" in text
    path = tmp_path / "bit_config.py"
    path.write_text(text)
    assert interop.read_hawq_file(path) == interop.hawq_config(policy)  # one config: no --config needed
    namespace = {}
    exec(compile(text, str(path), "exec"), namespace)  # what HAWQ-V3's `from bit_config import *` runs
    assert namespace["bit_config_dict"]["bit_config_resnet50_bitsearch"] == interop.hawq_config(policy)


def test_hawq_real_file_lists_every_config_and_takes_quant_scheme_names(tmp_path):
    data = published("bit_config_")
    path = tmp_path / "bit_config.py"
    path.write_text("bit_config_dict = " + repr(data) + "\n")
    with pytest.raises(InteropError) as err:
        interop.read_hawq_file(path)
    assert all(name in str(err.value) for name in data)
    full = interop.read_hawq_file(path, "bit_config_resnet50_bops_0.25")
    assert interop.read_hawq_file(path, "resnet50_bops_0.25") == full
    assert interop.read_hawq_file(path, "bops_0.25", arch="resnet50") == full
    # MobileNetV2's (8, 'hook') entry is read as HAWQ-V3 reads it; its layers have no ResNet mapping
    mobile = interop.read_hawq_file(path, "mobilenetv2_w1_uniform8")
    assert mobile["quant_input"] == 8
    with pytest.raises(InteropError, match="init_block"):
        interop.from_hawq(mobile)


def test_hawq_conv1_and_fc_of_another_model_are_not_a_resnet():
    with pytest.raises(InteropError, match="no residual-unit layer"):
        interop.to_hawq(Policy((("conv1", LayerBits(4, 8)), ("fc", LayerBits(4, 8)))))


# --- NNCF: activation quantizers at their producers' outputs, NNCF's own manual config -----------
NNCF_MANUAL = Path(__file__).parent / "data" / "nncf_v2.19.0_resnet18_cifar10_mixed_int_manual.json"


def test_nncf_producers_are_the_names_of_nncf_quantizers():
    pytest.importorskip("torchvision")
    from bitsearch.tasks import get_task

    classes, kinds, producers = interop.nncf_model_facts(get_task("resnet18"))
    assert producers["conv1"] == "/nncf_model_input_0"
    assert producers["layer1.0.conv1"] == "ResNet/ReLU[relu]/relu__0"  # through the max pool
    assert producers["layer1.0.conv2"] == "ResNet/Sequential[layer1]/BasicBlock[0]/ReLU[relu]/relu__0"
    assert producers["layer2.0.conv1"] == producers["layer2.0.downsample.0"] == \
        "ResNet/Sequential[layer1]/BasicBlock[1]/ReLU[relu]/relu__1"
    assert producers["fc"] == "ResNet/AdaptiveAvgPool2d[avgpool]/adaptive_avg_pool2d_0"
    _, _, mnist = interop.nncf_model_facts(get_task("mnist1d-cnn"))
    assert mnist["fc1"] == "Mnist1dCNN/relu_3" and mnist["fc2"] == "Mnist1dCNN/relu_4"  # dropout in between


def nncf_manual_policy(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["import", str(NNCF_MANUAL), "--from", "nncf", "--task", "resnet18", "--out", str(out)]) == 0
    capsys.readouterr()
    return out, json.loads(out.read_text())


def test_nncf_own_manual_resnet18_config_imports(tmp_path, capsys):
    pytest.importorskip("torchvision")
    _, policy = nncf_manual_policy(tmp_path, capsys)
    layers = policy["layers"]
    assert layers["conv1"] == {"weight_bits": 2, "act_bits": 4}  # /nncf_model_input_0|OUTPUT
    assert layers["layer1.0.conv2"] == {"weight_bits": 4, "act_bits": 4}  # BasicBlock[0] relu__0
    assert layers["layer2.0.downsample.0"]["act_bits"] == layers["layer2.0.conv1"]["act_bits"] == 8
    assert layers["fc"] == {"weight_bits": 2, "act_bits": 4}  # the avgpool output
    unread = policy["source"]["unread_activation_scopes"]  # the residual adds' quantizers: no layer reads them
    assert all("batch_norm" in s or s.endswith("BasicBlock[1]/ReLU[relu]/relu__1|OUTPUT") for s in unread)
    assert len(layers) == 21


def test_nncf_mixed_activations_export_as_output_scopes_and_round_trip(tmp_path, capsys):
    pytest.importorskip("torchvision")
    src, policy = nncf_manual_policy(tmp_path, capsys)
    nncf = tmp_path / "nncf.json"
    assert main(["export", str(src), "--to", "nncf", "--task", "resnet18", "--out", str(nncf)]) == 0
    data = json.loads(nncf.read_text())
    assert data["target_device"] == "TRIAL"
    scopes = [s for _, s in data["compression"]["initializer"]["precision"]["bitwidth_per_scope"]]
    assert "ResNet/Sequential[layer1]/BasicBlock[0]/ReLU[relu]/relu__0|OUTPUT" in scopes
    assert not any("|INPUT" in s for s in scopes)
    back = tmp_path / "back.json"
    assert main(["import", str(nncf), "--from", "nncf", "--task", "resnet18", "--out", str(back)]) == 0
    assert json.loads(back.read_text())["layers"] == policy["layers"]


def test_nncf_export_errors_name_what_nncf_cannot_express(tmp_path, capsys):
    from bitsearch.tasks import get_task

    classes, kinds, producers = interop.nncf_model_facts(get_task("mnist1d-cnn"))
    bits = tuple((n, LayerBits(4, 8 if n != "conv2" else 4)) for n in kinds)
    with pytest.raises(InteropError, match="does not quantize the inputs of conv1"):
        interop.to_nncf(Policy(bits), module_classes=classes, kinds=kinds, producers=producers)
    with pytest.raises(InteropError, match="unknown NNCF target device"):
        interop.to_nncf(Policy(bits), module_classes=classes, kinds=kinds, producers=producers, target_device="TPU")
    uniform = json.loads(interop.to_nncf(Policy(tuple((n, LayerBits(4, 6)) for n in kinds)),
                                         module_classes=classes, kinds=kinds, producers=producers))
    assert uniform["compression"]["activations"]["bits"] == 6


def _nncf_219():
    import os

    os.environ.setdefault("NNCF_TORCH_LEGACY_TRACING", "1")
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    nncf = pytest.importorskip("nncf")
    if not nncf.__version__.startswith(f"{interop.NNCF_VERSION}."):
        pytest.skip(f"NNCF {nncf.__version__} is installed; this test is for NNCF {interop.NNCF_VERSION}")
    from nncf import NNCFConfig
    from nncf.torch import create_compressed_model

    return NNCFConfig, create_compressed_model


@pytest.mark.nncf
@pytest.mark.parametrize("task_name", ["mnist1d-cnn", "resnet18"])
def test_nncf_219_create_compressed_model_gives_every_width(task_name, tmp_path, capsys, monkeypatch):
    """With NNCF 2.19 installed (pip install nncf==2.19.0; it pins numpy < 2.3, so beside this
    project's numpy install it with --no-deps): NNCF's own NNCFConfig and
    create_compressed_model accept the export and give every quantizer it names the asked width."""
    NNCFConfig, create_compressed_model = _nncf_219()
    monkeypatch.chdir(tmp_path)  # NNCF writes its graph dumps (original_graph.dot ...) to the working directory
    from bitsearch.tasks import get_task

    task = get_task(task_name)
    if task_name == "resnet18":
        src, _ = nncf_manual_policy(tmp_path, capsys)
    else:
        names = list(interop.nncf_model_facts(task)[1])
        src = tmp_path / "p.json"
        save_policy(Policy(tuple((n, LayerBits(w, 8)) for n, w in zip(names, (8, 3, 2, 5, 4, 6))),
                           meta={"model": {"name": task_name}}), src)
    out = tmp_path / "nncf.json"
    assert main(["export", str(src), "--to", "nncf", "--task", task_name, "--out", str(out)]) == 0
    config = json.loads(out.read_text())
    config["input_info"] = {"sample_size": list(task.example_input(1).shape)}
    config["compression"]["initializer"].update({"range": {"num_init_samples": 0},
                                                 "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}})
    controller, _ = create_compressed_model(task.build_model(1.0).eval(), NNCFConfig.from_dict(config))
    widths = {str(q): c.quantizer_module_ref.num_bits for q, c in controller.weight_quantizers.items()}
    widths.update({str(q): c.quantizer_module_ref.num_bits for q, c in controller.non_weight_quantizers.items()})
    pairs = config["compression"]["initializer"]["precision"]["bitwidth_per_scope"]
    for bits, scope in pairs:
        matched = [w for q, w in widths.items() if scope in q]
        assert matched and set(matched) == {bits}, (scope, bits, matched)
    weights = [s for _, s in pairs if s.endswith("|WEIGHT")]
    assert len(weights) == len(controller.weight_quantizers)
