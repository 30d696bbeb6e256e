"""benchmarks/proxy_ceiling.py: its summary, its held-out column and its committed report."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def proxy_ceiling():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import proxy_ceiling
    finally:
        sys.path.pop(0)
    return proxy_ceiling


def test_top1_on_the_unseen_samples_skips_the_seen_ones(proxy_ceiling):
    import torch

    class Fixed(torch.nn.Module):  # predicts class 0 for every sample
        def forward(self, x):
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], dim=1)

    x = torch.zeros(6, 3)
    y = torch.tensor([0, 0, 1, 1, 1, 0])  # right on 0, 1 and 5
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    loss, top1 = proxy_ceiling.loss_and_unseen_top1(Fixed(), batches, seen=2)
    assert top1 == pytest.approx(1 / 4)  # of samples 2..5 only sample 5 is right
    expected = float(torch.nn.functional.cross_entropy(Fixed()(x), y))
    assert loss == pytest.approx(expected)


def test_summary_and_report_name_each_argmin_and_the_held_out_comparison(proxy_ceiling):
    rows = [  # the oracle (best test top-1) is not the best on the unseen samples
        {"policy": "8/2", "sensitivity": 0.30, "train": 0.30, "test": 0.20, "top1": 0.95, "unseen_top1": 0.90},
        {"policy": "2/8", "sensitivity": 0.10, "train": 0.20, "test": 0.25, "top1": 0.93, "unseen_top1": 0.97},
        {"policy": "4/4", "sensitivity": 0.20, "train": 0.10, "test": 0.30, "top1": 0.94, "unseen_top1": 0.92},
    ]
    cell = proxy_ceiling.summarise(rows)
    assert cell["oracle"]["policy"] == "8/2" and cell["unseen_best"]["policy"] == "2/8"
    assert [cell[name]["policy"] for name in proxy_ceiling.PROXIES] == ["2/8", "4/4", "8/2"]
    assert cell["sensitivity"]["regret_pp"] == pytest.approx(2.0)
    cell.update(task="t", act="8", budget="size=3bit", policies=3, meta={"unseen_samples": 100},
                iqp={"policy": "2/8", "top1": 0.93, "regret_pp": 2.0, "unseen_top1": 0.97})
    text = proxy_ceiling.render([cell], "python benchmarks/proxy_ceiling.py")
    assert "| t | 8 | size=3bit | 8/2 90.00% | 2/8 97.00% | +7.00 pp | 2/8 97.00% |" in text
    assert "| t | 8 | size=3bit | 3 | 8/2 95.00% | +2.00 pp (2/8) | +1.00 pp (4/4) | +0.00 pp (8/2) | 2/8 | +2.00 pp |" in text
    assert "t 100 samples" in text


def test_committed_report_is_what_its_results_render(proxy_ceiling):
    folder = ROOT / "benchmarks" / "results" / "proxy_ceiling"
    data = json.loads((folder / "results.json").read_text())
    assert proxy_ceiling.render(data["cells"], data["command"]) == (folder / "README.md").read_text()
