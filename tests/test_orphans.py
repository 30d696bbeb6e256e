"""Worker processes die with their parent: a bench SIGKILLed while its workers run leaves no
process behind (issue #14: with ``bench --jobs 2`` all three worker processes outlived it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

SUITE = """\
name = "orphans"
problem = "bench_problems:synthetic"
seeds = [0, 1, 2]
budgets = ["size=3bit", "size=4bit"]
oracle = false

[space]
weight_bits = [2, 3, 4, 8]
act_bits = 8

[[searchers]]
name = "random"
settings = { samples = 200 }
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", [["--jobs", "2"], ["--scheduler", "local", "--jobs", "2"]],
                         ids=["processes", "dask-local"])
def test_no_worker_survives_a_killed_bench(backend, tmp_path):
    psutil = pytest.importorskip("psutil")
    if "local" in backend:
        pytest.importorskip("distributed")
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    log = tmp_path / "evaluations.log"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "BITSEARCH_TEST_EVAL_DELAY": "0.05",
           "BITSEARCH_TEST_EVAL_LOG": str(log)}
    proc = subprocess.Popen([sys.executable, "-m", "bitsearch.cli", "bench", str(suite), "--out", str(tmp_path / "o"),
                             "--no-plots", *backend], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    descendants = []
    try:
        parent = psutil.Process(proc.pid)
        # wait until two worker processes (not the parent) are evaluating policies
        end = time.monotonic() + 180
        while time.monotonic() < end and proc.poll() is None:
            pids = {line.split()[0] for line in log.read_text().splitlines()} if log.exists() else set()
            if len(pids - {str(proc.pid)}) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the bench ended before it could be killed: " + proc.stderr.read().decode()
        descendants = parent.children(recursive=True)
        assert len(descendants) >= 2
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone: what a SIGKILL or an OOM kill does
        proc.wait()
        _, alive = psutil.wait_procs(descendants, timeout=10)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, "orphaned workers: " + "; ".join(" ".join(p.cmdline())[:120] for p in alive)
    finally:
        for process in descendants:
            try:
                process.kill()
            except psutil.Error:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
