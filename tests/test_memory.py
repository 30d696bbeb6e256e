"""Data are streamed: searching a model whose loaders yield 50,000 samples (600 MB of inputs)
never holds more than a few batches.  Measured in a fresh process by its peak resident
memory: after a warm-up search on a 1,000-sample loader (the same code paths, the same
batch size), the 50,000-sample search may add a few batches' worth, not the data set."""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

SCRIPT = textwrap.dedent('''
    import json, resource, sys
    import torch
    from torch import nn
    import bitsearch
    from bitsearch.evaluate import classification_metrics

    torch.set_num_threads(1)
    BATCH, SHAPE = 250, (3, 32, 32)
    SEEN = {"samples": 0}

    class Generated:
        """n samples of 3x32x32 noise in batches, made on the fly (a fresh pass each iteration)."""
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return (self.n + BATCH - 1) // BATCH
        def __iter__(self):
            for i in range(len(self)):
                size = min(BATCH, self.n - i * BATCH)
                g = torch.Generator().manual_seed(i)
                x = torch.randn(size, *SHAPE, generator=g)
                SEEN["samples"] += size
                yield x, (x[:, 0].mean(dim=(1, 2)) > 0).long()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=4)
            self.fc = nn.Linear(4 * 8 * 8, 2)
        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    def search(n):
        torch.manual_seed(0)
        loader = Generated(n)
        problem = bitsearch.problem_for_model(
            Net(), torch.zeros(1, *SHAPE), calibration=loader, evaluate=classification_metrics(loader),
            train_loader=loader, budgets=["size=4bit"], space=bitsearch.SpaceOptions(weight_bits=(2, 4, 8)),
            sensitivity="hessian", sensitivity_settings={"probes": 2, "samples": 500})
        for name, settings in (("uniform", {}), ("ilp", {}), ("fracbits", {"epochs": 1})):
            result = bitsearch.searchers.create(name, **settings).search(problem, seed=0)
            assert problem.fits(result.policy)

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux

    search(1_000)
    warm = peak_mb()
    SEEN["samples"] = 0
    search(50_000)
    print(json.dumps({"warm_mb": warm, "peak_mb": peak_mb(), "streamed": SEEN["samples"]}))
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in kilobytes on Linux")
def test_a_50000_sample_loader_is_streamed_batch_by_batch(tmp_path):
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "BITSEARCH_CACHE": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    data_mb = 50_000 * 3 * 32 * 32 * 4 / 2**20  # 586 MB of inputs
    batch_mb = 250 * 3 * 32 * 32 * 4 / 2**20  # 2.9 MB
    # every pass really read all 50,000: calibration, the float model's and each policy's scoring, training
    assert report["streamed"] >= 5 * 50_000
    growth = report["peak_mb"] - report["warm_mb"]
    assert growth < 16 * batch_mb, report  # a few batches (46 MB), not the 586 MB data set
    assert growth < data_mb / 10
