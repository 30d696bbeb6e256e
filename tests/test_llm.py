"""Transformers: discovery of a Llama, group scales and formats in the space, costs and
policies, the effective-bits budget, the llama.cpp rule and the tensor-type file."""

import re

import pytest
import torch

from bitsearch import formats
from bitsearch.budget import parse_budget
from bitsearch.cost import EffectiveBitsCost, SizeCost
from bitsearch.errors import PolicyError, SpaceError, UserInputError
from bitsearch.policy import LayerBits, Policy, validate_policy
from bitsearch.problem import Problem
from bitsearch.space import Layer, Pin, SearchSpace

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

N_LAYERS = 4


@pytest.fixture(scope="module")
def llama():
    """A small random Llama (no training): what discovery, costs and names need."""
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=N_LAYERS, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=32, tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def llama_space(model, **options):
    from bitsearch.discover import discover

    return discover(model, torch.zeros(1, 8, dtype=torch.long), **options)


# --- discovery ----------------------------------------------------------------------------------------
def test_discovery_lists_every_projection_the_head_and_the_embedding(llama):
    space = llama_space(llama, act_bits=None)
    names = space.names
    assert names[0] == "model.embed_tokens" and space.layer("model.embed_tokens").kind == "embedding"
    assert names[-1] == "lm_head"
    for i in range(N_LAYERS):
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            assert f"model.layers.{i}.{proj}" in names
    assert len(names) == 2 + 7 * N_LAYERS
    embed = space.layer("model.embed_tokens")
    assert (embed.kernels, embed.fan_in, embed.macs) == (64, 32, 0)
    # q/k/v read one tensor, gate/up another: offered as tie candidates, not tied (weight-only)
    assert ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj") in space.shared_inputs
    assert ("model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj") in space.shared_inputs
    assert len(space.shared_inputs) == 2 * N_LAYERS and space.tied == ()
    tied = llama_space(llama, act_bits=None, tie_shared_inputs=True)
    assert tied.tied == tied.shared_inputs
    assert llama_space(llama).tied == tied.shared_inputs  # quantized activations share one quantizer


def test_embedding_is_pinnable(llama):
    space = llama_space(llama, act_bits=None, pins={"*embed_tokens": 32, "lm_head": 8})
    assert space.pins["model.embed_tokens"] == Pin(32, None) and space.pins["lm_head"] == Pin(8, None)
    with pytest.raises(UserInputError, match="no layer matches"):
        llama_space(llama, act_bits=None, pins={"encoder.*": 8})


# --- the space, policies, costs ---------------------------------------------------------------------------
def test_formats_in_the_space_and_policy_json(llama):
    space = llama_space(llama, act_bits=None, weight_bits=("fp8_e4m3", 4, 8, "nvfp4"), scale_group=32)
    assert space.weight_bits == (4, "nvfp4", 8, "fp8_e4m3") and space.scale_group == 32
    assert SearchSpace.from_json(space.to_json()) == space
    policy = Policy.uniform(space, "nvfp4")
    assert policy.scale_group == 32 and policy["lm_head"].weight_bits == "nvfp4"
    again = Policy.from_json(policy.to_json())
    assert again == policy and again.key == policy.key
    assert validate_policy(again, space) == policy
    with pytest.raises(PolicyError, match="--scale-group 64"):
        validate_policy(Policy(policy.bits, scale_group=64), space.with_(scale_group=None))
    with pytest.raises(SpaceError, match="layer granularity"):
        space.with_(granularity="kernel")
    with pytest.raises(PolicyError, match="format name"):
        Policy.from_dict({"schema": "bitsearch-policy", "schema_version": 1,
                          "layers": {"lm_head": {"weight_bits": "fp4"}}})


def test_policy_json_validates_against_the_shipped_schema(llama):
    import json

    import jsonschema

    from bitsearch.policy import schema_path

    space = llama_space(llama, act_bits=None, weight_bits=(4, "mxfp4"), scale_group=128)
    schema = json.loads(schema_path().read_text())
    jsonschema.validate(json.loads(Policy.uniform(space, "mxfp4").to_json()), schema)


def test_effective_bits_cost_against_a_hand_count():
    # two linears and an embedding pinned to float (not counted: not quantized)
    layers = (Layer("embed", "embedding", params=64 * 32, macs=0, kernels=64, in_features=32),
              Layer("a", "linear", params=32 * 128, macs=32 * 128, kernels=32, in_features=128, bias_params=32),
              Layer("b", "linear", params=16 * 256, macs=16 * 256, kernels=16, in_features=256))
    space = SearchSpace(layers, weight_bits=(4, 8, "nvfp4"), act_bits=None, scale_group=128,
                        pinned={"embed": Pin(32, None)})
    bits = EffectiveBitsCost(space)
    policy = Policy((("embed", LayerBits(32, None)), ("a", LayerBits(4, None)), ("b", LayerBits("nvfp4", None))))
    # a: 4096 weights * 4 + 32 rows * 1 group * 16 = 16896; b: 4096 * 4 + 16 rows * 16 blocks * 8 + 32 = 18464
    assert bits.cost(space, policy) == pytest.approx((16896 + 18464) / 8192)
    size = SizeCost(scale_group=128)
    # size adds the float embedding (2048 * 32) and a's bias (32 * 32)
    assert size.cost(space, policy) == 16896 + 18464 + 2048 * 32 + 32 * 32
    uniform4 = Policy.uniform(space, 4)
    assert bits.cost(space, uniform4) == pytest.approx(4 + 16 / 128)
    problem = Problem.build(space, ["bits=4.2"])
    assert problem.budgets[0].limit == 4.2 and problem.budgets[0].unit == "bit/weight"
    assert parse_budget("bits=4.25bit").form == "absolute" and parse_budget("bits=4.25").value == 4.25
    assert problem.fits(uniform4) and not problem.fits(Policy.uniform(space, "nvfp4"))
    with pytest.raises(Exception, match="scale"):
        Problem(space.with_(scale_group=None), {"size": size})


def test_size_cost_keeps_per_kernel_numbers():
    layer = Layer("fc", "linear", params=10 * 20, macs=200, kernels=10, in_features=20, bias_params=10)
    assert SizeCost().layer_cost(layer, 4, 8) == 200 * 4 + 10 * 32 + 10 * 32


# --- quantized modules --------------------------------------------------------------------------------------
def test_apply_policy_with_formats_and_groups(llama):
    from bitsearch.quant import apply_policy
    from bitsearch.quant.formats import simulate

    space = llama_space(llama, act_bits=None, weight_bits=(3, 4, "mxfp4"), scale_group=16)
    bits = dict(Policy.uniform(space, 4).bits)
    bits["lm_head"] = LayerBits("mxfp4", None)
    policy = Policy(tuple(bits.items()), scale_group=16)
    qmodel = apply_policy(llama, policy, space=space)
    modules = dict(qmodel.named_modules())
    head = modules["lm_head"]
    assert torch.equal(head.quantized_weight(), simulate(llama.lm_head.weight, "mxfp4"))
    q = modules["model.layers.1.mlp.down_proj"]
    assert torch.equal(q.quantized_weight(), simulate(llama.model.layers[1].mlp.down_proj.weight, 4, scale_group=16))
    embed = modules["model.embed_tokens"]
    ids = torch.tensor([[1, 5, 7]])
    assert torch.equal(embed(ids), simulate(llama.model.embed_tokens.weight, 4, scale_group=16)[ids])
    with torch.no_grad():
        out = qmodel(torch.zeros(1, 8, dtype=torch.long)).logits
    assert torch.isfinite(out).all()
    with pytest.raises(Exception, match="integer form"):
        q.integer_weight()


# --- the llama.cpp rule ---------------------------------------------------------------------------------------
def test_use_more_bits_is_llamacpps():
    from bitsearch.solvers.llamacpp_rule import use_more_bits

    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(8) if use_more_bits(i, 8)] == [0, 3, 6, 7]
    assert [i for i in range(6) if use_more_bits(i, 6)] == [2, 5]


def test_rule_searcher_picks_the_widest_mix_that_fits(llama):
    from bitsearch.solvers.llamacpp_rule import LlamaCppRuleSearcher

    space = llama_space(llama, act_bits=None, scale_group=32, pins={"*embed_tokens": 32})
    problem = Problem.build(space, ["bits=5.2"])
    result = LlamaCppRuleSearcher().search(problem)
    widths = {n: b.weight_bits for n, b in result.policy.bits}
    # 4 blocks: use_more_bits gives blocks 2 and 3 (i >= 7 * 4 // 8 = 3, and (i - 0) % 3 == 2)
    assert widths["model.layers.2.self_attn.v_proj"] == 6 and widths["model.layers.3.mlp.down_proj"] == 6
    assert widths["model.layers.0.self_attn.v_proj"] == 4 and widths["model.layers.1.mlp.down_proj"] == 4
    assert widths["lm_head"] == 6 and widths["model.layers.0.self_attn.q_proj"] == 4
    assert widths["model.embed_tokens"] == 32 and result.info["base"] == 4
    assert 4.5 < result.costs["bits"] <= 5.2  # base 4 with its group scales is 4.5 bits alone
    assert LlamaCppRuleSearcher(base=3).search(problem).policy["model.layers.0.mlp.up_proj"].weight_bits == 3
    from bitsearch.errors import InfeasibleBudgetError

    with pytest.raises(InfeasibleBudgetError, match="llama.cpp-rule"):
        LlamaCppRuleSearcher().search(Problem.build(space.with_(weight_bits=(4, 6)), ["bits=4.55"]))


# --- the tensor-type file ---------------------------------------------------------------------------------------
def test_tensor_type_file_names_only_tensors_of_the_gguf_map(llama):
    from bitsearch.llamacpp import to_tensor_type_file
    from bitsearch.solvers.llamacpp_rule import LlamaCppRuleSearcher

    space = llama_space(llama, act_bits=None, weight_bits=(2, 3, 4, 5, 6, 8), scale_group=128)
    policy = LlamaCppRuleSearcher().search(Problem.build(space, ["bits=4.8"])).policy
    text = to_tensor_type_file(policy)
    lines = text.splitlines()
    assert len(lines) == len(space.layers)
    # every name the gguf package maps this architecture's tensors to
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, N_LAYERS)
    known = {table.get_name(name, try_suffixes=(".weight", ".bias")) for name, _ in llama.named_parameters()}
    known.discard(None)
    kinds = {t.name.lower() for t in gguf.GGMLQuantizationType}
    for line in lines:
        pattern, kind = line.split("=")
        matched = [name for name in known if re.fullmatch(pattern, name)]
        assert len(matched) == 1, line          # the regex names one tensor, and only one
        assert kind.lower() in kinds             # a ggml type llama-quantize knows
    assert "blk\\.2\\.attn_v\\.weight=q6_K" in lines and "output\\.weight=q6_K" in lines
    assert "blk\\.0\\.attn_q\\.weight=q4_K" in lines and "token_embd\\.weight=q4_K" in lines


def test_tensor_type_file_refuses_widths_without_a_ggml_type(llama):
    from bitsearch.llamacpp import to_tensor_type_file

    space = llama_space(llama, act_bits=None, weight_bits=(4, 7, "fp8_e4m3"))
    for width in (7, "fp8_e4m3"):
        with pytest.raises(UserInputError, match="no ggml type"):
            to_tensor_type_file(Policy.uniform(space, width))
    assert "=mxfp4" in to_tensor_type_file(Policy.uniform(llama_space(llama, weight_bits=("mxfp4",)), "mxfp4"))
    kernel = llama_space(llama, act_bits=None, granularity="kernel", weight_bits=(4, 6))
    bits = dict(Policy.uniform(kernel, 4).bits)
    bits["lm_head"] = LayerBits((4, 6) * 32, None)
    with pytest.raises(UserInputError, match="one type per tensor"):
        to_tensor_type_file(Policy(tuple(bits.items()), "kernel"))


def test_non_llm_tasks_do_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys; from bitsearch.build import problem_for_task; "
            "problem_for_task('semicircles-mlp', options=__import__('bitsearch.build', fromlist=['x'])."
            "ProblemOptions(budgets=('size=4bit',))); "
            "import bitsearch.solvers.llamacpp_rule, bitsearch.llamacpp; "
            "assert 'transformers' not in sys.modules and 'gguf' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name, settings", [
    ("uniform", {}), ("random", {"samples": 6}), ("ilp", {}), ("ilp", {"method": "mip"}),
    ("haq", {"episodes": 4, "warmup": 2, "net_arch": [16, 16], "batch_size": 8}),
    ("autoq", {"episodes": 4, "warmup": 2, "net_arch": [16, 16], "batch_size": 8, "low_net_arch": [8, 8]}),
])
def test_searchers_mix_named_formats_within_the_bits_budget(name, settings):
    from bitsearch.searchers import create

    from helpers import llama_problem

    problem = llama_problem(("bits=5",), weight_bits=(4, "mxfp4", "nvfp4", 8, "fp8_e4m3"), scale_group=64,
                            pinned={"model.embed_tokens": Pin(32, None)})
    result = create(name, **settings).search(problem, seed=0)
    assert result.costs["bits"] <= 5 and problem.fits(result.policy)
    assert result.policy.scale_group == 64
    assert {b.weight_bits for _, b in result.policy.bits} <= {4, "mxfp4", "nvfp4", 8, "fp8_e4m3", 32}
    if name == "ilp":  # the exact optimum spends the budget on formats where the table says so
        assert len({b.weight_bits for _, b in result.policy.bits}) > 2
