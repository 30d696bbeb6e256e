"""Policy JSON: round trip, schema, and loading errors that name every problem."""

import json
import subprocess
import sys

import jsonschema
import pytest

from bitsearch.errors import PolicyError
from bitsearch.policy import LayerBits, Policy, load_policy, save_policy, schema_path, validate_policy

from helpers import small_space


def test_frozen_hashable_and_metadata_free_equality():
    space = small_space()
    a = Policy.uniform(space, 4)
    b = Policy.uniform(space, 4).with_meta(metrics={"top1": 0.9})
    assert a == b and hash(a) == hash(b) and a.key == b.key
    assert Policy.uniform(space, 3) != a
    with pytest.raises(Exception):
        a.granularity = "kernel"


def test_round_trip_and_schema(tmp_path):
    space = small_space("kernel")
    policy = Policy.uniform(space, 3).with_meta(costs={"size": 1.0}, search={"searcher": "x", "seconds": 1.5})
    path = tmp_path / "p.json"
    save_policy(policy, path)
    data = json.loads(path.read_text())
    jsonschema.validate(data, json.loads(schema_path().read_text()))
    back = load_policy(path, space)
    assert back == policy and back.to_json() == policy.to_json()
    assert "seconds" not in back.canonical_json()
    # per-kernel lists stay on one line
    assert '"weight_bits": [3, 3, 3' in path.read_text()


def test_loader_names_every_problem():
    space = small_space("kernel")
    good = json.loads(Policy.uniform(space, 4).to_json())
    layers = good["layers"]
    layers["nonexistent"] = {"weight_bits": 4, "act_bits": 8}
    del layers["fc"]
    layers["stem"]["weight_bits"] = [4, 4, 5, 4, 4, 4, 4, 4]   # 5 not a choice
    layers["block.conv2"]["weight_bits"] = [4, 4]                # wrong kernel count
    with pytest.raises(PolicyError) as info:
        validate_policy(Policy.from_dict(good), space)
    text = str(info.value)
    assert "unknown layer 'nonexistent'" in text
    assert "missing layer 'fc'" in text
    assert "[5] are not among the choices" in text
    assert "2 per-kernel widths" in text
    assert len(info.value.problems) == 4


@pytest.mark.parametrize("payload,expected", [
    ("{not json", "not valid JSON"),
    ('[1, 2]', "JSON object"),
    ('{"schema": "bitsearch-policy", "schema_version": 2, "layers": {}}', "schema_version"),
    ('{"schema": "bitsearch-policy", "schema_version": 1, "layers": {"a": {"weight_bits": "4"}}}',
     "must be an integer"),
    ('{"schema": "bitsearch-policy", "schema_version": 1, "layers": {"a": {"weight_bits": 4, "act_bits": 2.5}}}',
     "act_bits"),
])
def test_malformed_files(tmp_path, payload, expected):
    path = tmp_path / "bad.json"
    path.write_text(payload)
    with pytest.raises(PolicyError, match=expected):
        load_policy(path)


def test_tied_layers_must_share():
    space = small_space()
    policy = Policy.uniform(space, 4)
    bits = dict(policy.bits)
    bits["block.downsample"] = LayerBits(8, 8)
    with pytest.raises(PolicyError, match="share the weight width"):
        validate_policy(Policy(bits), space)


def test_pinned_layers(tmp_path):
    space = small_space(pinned={"stem": (8, 8), "fc": (8, 8)})
    policy = Policy.uniform(space, 2)
    assert policy["stem"].weight_bits == 8 and policy["block.conv2"].weight_bits == 2
    validate_policy(policy, space)
    bits = dict(policy.bits)
    bits["fc"] = LayerBits(2, 8)
    with pytest.raises(PolicyError, match="pinned"):
        validate_policy(Policy(bits), space)


def test_import_bitsearch_is_light():
    code = ("import sys, bitsearch, bitsearch.searchers; "
            "heavy = [m for m in ('torch', 'pulp', 'highspy', 'stable_baselines3', 'gymnasium', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
