"""The tiny-llama task: corpus, shipped weights, perplexity, and the command line on it."""

import json
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from bitsearch.tasks import pycorpus, tiny_llama  # noqa: E402

from helpers import assert_one_line_error  # noqa: E402


def test_corpus_is_the_standard_library():
    assert not set(pycorpus.TRAIN_MODULES) & set(pycorpus.HELDOUT_MODULES)
    for name in pycorpus.TRAIN_MODULES + pycorpus.HELDOUT_MODULES:
        path = pycorpus.module_path(name)
        assert path.is_file() and pycorpus.stdlib_dir() in path.parents
    train, heldout = tiny_llama.token_ids(pycorpus.TRAIN_MODULES), tiny_llama.token_ids(pycorpus.HELDOUT_MODULES)
    assert len(train) > 1_000_000 and len(heldout) > 100_000
    assert int(train.max()) < tiny_llama.VOCAB
    windows = tiny_llama.heldout_windows()
    assert windows.shape == (tiny_llama.EVAL_WINDOWS, tiny_llama.SEQ_LEN + 1)
    assert torch.equal(windows[0], heldout[:tiny_llama.SEQ_LEN + 1])      # the first window starts the text
    assert torch.equal(windows[-1], heldout[-tiny_llama.SEQ_LEN - 1:])    # the last one ends it


def test_the_package_ships_the_current_weights():
    path = tiny_llama.shipped_path()
    assert path.is_file(), "run: python -m bitsearch.tasks.tiny_llama --ship"
    assert path.stat().st_size < 2_500_000
    record = torch.load(path, map_location="cpu", weights_only=True)
    assert record["meta"]["key"] == tiny_llama.weights_key()
    assert all(t.dtype == torch.float16 for t in record["state_dict"].values())
    assert tiny_llama.main(["--check"]) == 0


@pytest.fixture(scope="module")
def task():
    return tiny_llama.make_task()


def test_perplexity_float_and_quantized(task, one_thread):
    from bitsearch.build import ProblemOptions, SpaceOptions, problem_for
    from bitsearch.policy import Policy

    floats = task.evaluator().float_metrics()
    assert 3.0 < floats["perplexity"] < 12.0
    assert floats["bits_per_byte"] == pytest.approx(math.log2(floats["perplexity"]))
    problem = problem_for(task, SpaceOptions(weight_bits=(2, 8), act_bits=None, scale_group=128),
                          ProblemOptions(budgets=("bits=8.2",)))
    assert not problem.higher_is_better and problem.objective == "perplexity"
    eight = problem.evaluate(Policy.uniform(problem.space, 8))["perplexity"]
    two = problem.evaluate(Policy.uniform(problem.space, 2))["perplexity"]
    assert floats["perplexity"] <= eight * 1.01 and eight < 1.02 * floats["perplexity"]
    assert two > 2 * eight                                    # 2-bit weights wreck the model
    assert problem.score({"perplexity": two}) < problem.score({"perplexity": eight})
    assert problem.cost_of(Policy.uniform(problem.space, 8))["bits"] == pytest.approx(8.125)


def test_lm_loss_has_second_derivatives(task):
    """The Hessian sensitivity needs double back-propagation through attention."""
    model = task.model
    weight = model.model.layers[0].self_attn.v_proj.weight
    batch = task.calibration[0][:2]
    loss = tiny_llama.lm_loss(model, batch)
    (grad,) = torch.autograd.grad(loss, weight, create_graph=True)
    (hv,) = torch.autograd.grad(grad, weight, grad_outputs=torch.ones_like(grad))
    assert torch.isfinite(hv).all() and hv.abs().sum() > 0


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bitsearch.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_command_line_rule_search_and_llamacpp_export(tmp_path):
    policy = tmp_path / "rule.json"
    done = run_cli("search", "--task", "tiny-llama", "--searcher", "llamacpp-rule", "--budget", "bits=4.6",
                   "--scale-group", "128", "--out", str(policy), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(policy.read_text())
    assert data["scale_group"] == 128 and data["costs"]["bits"] <= 4.6
    assert data["layers"]["model.layers.2.self_attn.v_proj"]["weight_bits"] == 6
    assert data["layers"]["model.layers.0.self_attn.v_proj"]["weight_bits"] == 4
    assert data["layers"]["model.layers.0.self_attn.v_proj"]["act_bits"] is None   # weight-only by default
    assert data["metrics"]["perplexity"] > 0
    out = tmp_path / "tiny.tensor-types.txt"
    done = run_cli("export", str(policy), "--to", "llama.cpp", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 44 and "blk\\.5\\.ffn_down\\.weight=q6_K" in lines and "output\\.weight=q6_K" in lines
    assert "q4_K (4.5 bits/weight)" in done.stderr
    done = run_cli("eval", str(policy), "--task", "tiny-llama", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["perplexity"] == pytest.approx(data["metrics"]["perplexity"])


def test_command_line_errors_are_one_line(tmp_path):
    done = run_cli("search", "--task", "tiny-llama", "--searcher", "fracbits", "--budget", "bits=5",
                   "--weight-bits", "4,8,nvfp4", cwd=tmp_path)
    assert_one_line_error(done.returncode, done.stderr, "named formats")
    done = run_cli("search", "--task", "tiny-llama", "--searcher", "uniform", "--budget", "bits=5",
                   "--weight-bits", "4,fp4", cwd=tmp_path)
    assert_one_line_error(done.returncode, done.stderr, "fp4")
    policy = tmp_path / "p.json"
    done = run_cli("search", "--task", "tiny-llama", "--searcher", "uniform", "--budget", "bits=8",
                   "--weight-bits", "4,7", "--out", str(policy), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = run_cli("export", str(policy), "--to", "llama.cpp", cwd=tmp_path)
    assert_one_line_error(done.returncode, done.stderr, "no ggml type")


@pytest.mark.slow
def test_issue_command_end_to_end_from_an_empty_cache(tmp_path):
    """The issue's command with nothing cached: shipped weights, Hessian sensitivities, ILP,
    one evaluation (about 2 minutes on a quiet 2-core machine; time it there)."""
    import os
    import time

    env = dict(os.environ, BITSEARCH_CACHE=str(tmp_path / "cache"))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bitsearch.cli", "search", "--task", "tiny-llama", "--searcher",
                           "ilp", "--budget", "bits=4.25", "--scale-group", "128", "--out", str(tmp_path / "p.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["costs"]["bits"] <= 4.25 and data["scale_group"] == 128
    print(f"ilp on tiny-llama from an empty cache: {seconds:.0f} s")


@pytest.mark.slow
@pytest.mark.parametrize("name, settings, table_settings", [
    ("uniform", {}, None), ("llamacpp-rule", {}, None), ("ilp", {}, None),
    # the pairwise table at its defaults (512 samples, 400 pairs) takes over 20 minutes here
    ("iqp", {}, {"samples": 16, "max_pairs": 12}), ("fracbits", {"epochs": 1}, None),
    ("haq", {"episodes": 6, "warmup": 3}, None), ("autoq", {"episodes": 6, "warmup": 3}, None),
])
def test_every_searcher_keeps_the_effective_bits_budget_on_tiny_llama(name, settings, table_settings):
    """Issue #17: every searcher on the real task (shipped weights, per-group-128 scales,
    widths 2..8, float activations) under bits=4.25, each with its default sensitivity."""
    from bitsearch.build import ProblemOptions, SpaceOptions, default_sensitivity, problem_for
    from bitsearch.search import get

    torch.set_num_threads(1)
    space = SpaceOptions(weight_bits=(2, 3, 4, 5, 6, 7, 8), scale_group=128, act_bits=None)
    problem = problem_for("tiny-llama", space, ProblemOptions(
        budgets=("bits=4.25",), sensitivity=default_sensitivity(get(name)), sensitivity_settings=table_settings or {}))
    result = get(name)(**settings).search(problem, seed=0)
    assert problem.fits(result.policy) and result.costs["bits"] <= 4.25
    assert result.policy.scale_group == 128
    from bitsearch.policy import Policy

    two_bits = problem.evaluate(Policy.uniform(problem.space, 2))["perplexity"]  # within any budget here
    assert math.isfinite(result.metrics["perplexity"]) and result.metrics["perplexity"] < two_bits
