"""Where runs execute: in this process, on local worker processes, or on a Dask cluster.

A backend is a small object with ``run(units) -> iterator of records`` (one record per run,
in the order they finish) and ``local_workers`` (whether it starts worker processes on this
machine, which then read the task cache the parent filled).  Every backend calls the same
:func:`~bitsearch.bench.execute.execute_unit` / :func:`~bitsearch.bench.execute.execute_run`,
so results do not depend on where a run ran; a run in flight when the bench is stopped is
simply run again by ``--resume``.  :func:`choose_backend` maps the command's ``--jobs`` and
``--scheduler`` to one.

Worker processes start in :func:`worker_init` (thread limits); that is the one place a
worker sets itself up.  Runs in this process share one
:class:`~bitsearch.bench.execute.ProblemCache` for the whole bench; a worker builds one per
unit (a Dask worker may outlive the bench, so it keeps nothing between units).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

from ..errors import UserInputError
from ..progress import THREAD_VARIABLES, limit_threads
from .execute import ProblemCache, execute_run, execute_unit
from .plan import Unit


class Backend(Protocol):
    in_process: bool  # runs execute in this process (so they can draw progress bars here)
    local_workers: bool  # worker processes start on this machine

    def run(self, units: Sequence[Unit], callback_factory: Callable | None = None) -> Iterator[dict]:
        """Execute every run of ``units``; yield each run's record as it finishes.
        ``callback_factory(run)``: a search callback per run (a progress bar), where the
        backend can show one (in this process)."""


def threads_per_job(jobs: int) -> int:
    """CPU threads for each of ``jobs`` workers sharing this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def worker_init(threads: int, parent: int | None = None) -> None:
    """Set up a fresh worker process: at most ``threads`` CPU threads for its libraries, and
    (with ``parent``, the pid of the bench) an end when the bench ends (:func:`watch_parent`)."""
    limit_threads(threads, import_torch=False, environment=True)
    if parent is not None:
        watch_parent(parent)


def watch_parent(parent: int, interval: float = 0.25) -> None:
    """End this process as soon as ``parent`` is no longer its parent process: a bench
    killed with SIGKILL (which runs no clean-up) leaves no worker behind.  A daemon thread
    polls ``os.getppid()`` (a dead parent's children are re-parented), which works
    whichever thread of the parent started this process (``PR_SET_PDEATHSIG`` would fire
    when that thread ends)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)  # the results can no longer be delivered; a resumed bench runs them again

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="bitsearch-parent-watch", daemon=True).start()


@dataclass(frozen=True)
class Serial:
    """In this process, one run after another."""

    in_process = True
    local_workers = False

    def run(self, units: Sequence[Unit], callback_factory: Callable | None = None) -> Iterator[dict]:
        cache = ProblemCache()  # every run of this bench shares problems and scored policies
        for unit in units:
            for run in unit.runs:
                yield execute_run(unit.problem, run, cache, callback_factory)


@dataclass(frozen=True)
class LocalProcesses:
    """On ``jobs`` local processes (spawned, so nothing of the parent's state leaks in)."""

    jobs: int
    in_process = False
    local_workers = True

    def run(self, units: Sequence[Unit], callback_factory: Callable | None = None) -> Iterator[dict]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=context, initializer=worker_init,
                                   initargs=(threads_per_job(self.jobs), os.getpid()))
        try:
            futures = [pool.submit(execute_unit, unit) for unit in units]
            for future in as_completed(futures):
                yield from future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()  # a run in flight is simply run again on --resume
            raise
        else:
            pool.shutdown(wait=True)


@dataclass(frozen=True)
class Dask:
    """On a Dask cluster: the scheduler at ``scheduler`` (``tcp://host:port``), or ``local``
    for a LocalCluster of ``jobs`` worker processes (default: up to 4)."""

    scheduler: str
    jobs: int | None = None
    in_process = False

    @property
    def local_workers(self) -> bool:
        return self.scheduler == "local"

    def client(self):
        """A ``distributed.Client`` and the LocalCluster it owns (None for a remote scheduler)."""
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UserInputError("the Dask backend needs dask.distributed: pip install 'bitsearch[dist]'") from None
        if self.scheduler == "local":
            workers = self.jobs or max(1, min(4, os.cpu_count() or 1))
            threads = threads_per_job(workers)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, env={v: str(threads) for v in THREAD_VARIABLES})
            return Client(cluster), cluster
        if not re.match(r"^(tcp|tls|ucx|inproc)://", self.scheduler):
            raise UserInputError(f"--scheduler {self.scheduler!r}: give an address like tcp://host:8786, or 'local'")
        try:
            return Client(self.scheduler, timeout="15s"), None
        except (OSError, TimeoutError) as exc:
            raise UserInputError(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from None

    def run(self, units: Sequence[Unit], callback_factory: Callable | None = None) -> Iterator[dict]:
        from distributed import as_completed

        client, cluster = self.client()
        try:
            futures = [client.submit(execute_unit, unit, pure=False,
                                     key=f"bitsearch-bench-{unit.runs[0].key}-{i}")
                       for i, unit in enumerate(units)]
            try:
                for future in as_completed(futures):
                    yield from future.result()
            except BaseException:
                client.cancel(futures)
                raise
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def choose_backend(jobs: int = 1, scheduler: str | None = None) -> Backend:
    """``--scheduler`` picks Dask (with ``--jobs`` local workers), ``--jobs N > 1`` local
    processes, else this process."""
    if jobs < 1:
        raise UserInputError(f"--jobs must be 1 or more, not {jobs}")
    if scheduler:
        return Dask(scheduler, jobs if jobs > 1 else None)
    if jobs > 1:
        return LocalProcesses(jobs)
    return Serial()
