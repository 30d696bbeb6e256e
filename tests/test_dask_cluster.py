"""A real distributed bench: ``dask scheduler`` and two ``dask worker`` processes started here on
127.0.0.1, ``bitsearch bench --scheduler tcp://127.0.0.1:PORT``, one worker SIGKILLed mid-run.

The bench must finish, record every run exactly once, and give the serial run's results.
Every process started here is stopped afterwards, also when the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitsearch.bench import TIMING_FIELDS, load_results, plan_runs, load_suite, run_bench
from bitsearch.journal import Journal

pytest.importorskip("distributed")

TESTS = Path(__file__).parent

SUITE = """\
name = "cluster"
problem = "bench_problems:synthetic"
seeds = [0, 1, 2]
budgets = ["size=3bit", "size=4bit"]
oracle = false

[space]
weight_bits = [2, 3, 4, 8]
act_bits = 8

[[searchers]]
name = "uniform"

[[searchers]]
name = "random"
settings = { samples = 40 }
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A scheduler and named workers, each in its own process group (so a kill takes its nanny
    and the worker process together)."""

    def __init__(self, tmp_path: Path, env: dict):
        self.env = env
        self.logs = tmp_path
        self.processes: dict[str, subprocess.Popen] = {}
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"

    def _start(self, name, *args):
        log = open(self.logs / f"{name}.log", "wb")
        self.processes[name] = subprocess.Popen([sys.executable, "-m", "dask", *args], env=self.env,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start(self, workers=("w1", "w2")):
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
                    "--idle-timeout", "600")
        for name in workers:
            self._start(name, "worker", self.address, "--name", name, "--nworkers", "1", "--nthreads", "1",
                        "--no-dashboard", "--death-timeout", "60")
        from distributed import Client

        deadline = time.monotonic() + 120
        while True:  # the scheduler may take a moment to listen
            try:
                with Client(self.address, timeout="10s") as client:
                    client.wait_for_workers(len(workers), timeout=max(1.0, deadline - time.monotonic()))
                    pids = client.run(os.getpid)  # worker address -> pid of the worker process
                    names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
                    return {names[address]: pid for address, pid in pids.items()}
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def kill(self, name):
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()

    def stop(self):
        for name, proc in self.processes.items():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()

    def output(self, name) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]


@pytest.fixture
def cluster(tmp_path):
    log = tmp_path / "evaluations.log"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "BITSEARCH_TEST_EVAL_DELAY": "0.04",
           "BITSEARCH_TEST_EVAL_LOG": str(log), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cluster = Cluster(tmp_path, env)
    cluster.evaluations = log
    try:
        yield cluster
    finally:
        cluster.stop()


def comparable(results: dict) -> list[dict]:
    return [{k: v for k, v in run.items() if k not in TIMING_FIELDS} for run in results["runs"]]


@pytest.mark.timeout(420)
def test_bench_on_a_real_cluster_survives_a_killed_worker(cluster, tmp_path):
    suite_path = tmp_path / "suite.toml"
    suite_path.write_text(SUITE)
    planned = len(plan_runs(load_suite(suite_path)))
    serial = run_bench(suite_path, tmp_path / "serial", progress=False, plots=False).results

    pids = cluster.start()
    out = tmp_path / "cluster"
    bench = subprocess.Popen([sys.executable, "-m", "bitsearch.cli", "bench", str(suite_path), "--out", str(out),
                              "--scheduler", cluster.address, "--no-plots"], env=cluster.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # wait until w1 is evaluating (a run in flight there), then kill it, nanny and all
        deadline = time.monotonic() + 180
        victim = str(pids["w1"])
        while time.monotonic() < deadline and bench.poll() is None:
            lines = cluster.evaluations.read_text().splitlines() if cluster.evaluations.exists() else []
            if sum(1 for line in lines if line.split()[0] == victim) >= 5 and lines[-1].split()[0] == victim:
                break  # w1 has just evaluated: it is in the middle of a run
            time.sleep(0.05)
        assert bench.poll() is None, "the bench ended before a worker could be killed: " + bench.stderr.read().decode()
        done_before_kill = len(Journal(out / "results.jsonl").latest())
        cluster.kill("w1")
        stdout, stderr = bench.communicate(timeout=300)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    assert bench.returncode == 0, stderr.decode()[-3000:] + "\nworker w2:\n" + cluster.output("w2")
    assert done_before_kill < planned, "every run had finished before the kill"

    # every run exactly once in the journal, and the serial run's results
    records = Journal(out / "results.jsonl").records()
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == planned, "a run was repeated or lost"
    assert all(r["status"] == "ok" for r in records)
    assert comparable(load_results(out)) == comparable(serial)
    # the killed worker had work in flight that the survivor then did
    workers = {r["worker"] for r in records}
    assert len(workers) >= 1 and f"{planned} runs" in stdout.decode()
    survivor = str(pids["w2"])
    evaluated = [line.split()[0] for line in cluster.evaluations.read_text().splitlines()]
    assert victim in evaluated and survivor in evaluated
    # what w1 evaluated in the run it lost was evaluated again: more evaluations than the runs kept
    assert len(evaluated) > sum(r["fresh_evaluations"] for r in records)
