"""Progress bars and thread limits, shared by the library and the ``bitsearch`` command.

* :func:`progress_enabled`: whether to draw bars at all -- on a terminal, yes; in a pipe,
  a log file or CI (``CI`` set), no, so logs stay clean.
* :class:`Bar`: one tqdm bar on standard error, or nothing when disabled; tqdm is
  imported only when a bar is really drawn.  :class:`SearchProgress` is a bar that works
  as a search callback (it follows the :class:`~bitsearch.search.SearchEvent` stream).
* :func:`limit_threads`: the one way to cap the CPU threads of the numerical libraries:
  ``--threads N`` of the commands, and the worker processes of ``bitsearch bench``;
  :func:`cap_threads` keeps a requested count within :func:`available_cores`.

Only the standard library is imported here (torch only when a thread count is applied
and ``import_torch`` asks for it).
"""

from __future__ import annotations

import os
import sys

__all__ = ["progress_enabled", "Bar", "SearchProgress", "StepBars", "limit_threads", "cap_threads",
           "available_cores",
           "THREAD_VARIABLES"]

# what the BLAS / OpenMP runtimes read at start-up (set before torch or numpy start their pools)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def progress_enabled() -> bool:
    """Bars on a terminal; none when standard error is a pipe or a file, or under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class Bar:
    """A progress bar on standard error, drawn when ``enabled`` (default:
    :func:`progress_enabled`), a no-op otherwise.

    The bar appears at the first :meth:`update` or :meth:`set`, so a step that finishes
    at once draws nothing.  ``leave``: keep the finished bar on screen.  Use it as a
    context manager, or call :meth:`close`.
    """

    def __init__(self, description: str, total: int | None = None, *, unit: str = "it", initial: int = 0,
                 enabled: bool | None = None, leave: bool = False, position: int | None = None):
        self.enabled = progress_enabled() if enabled is None else bool(enabled)
        self.description = description
        self._options = {"total": total, "initial": initial, "unit": unit, "leave": leave, "position": position}
        self._bar = None

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def _tqdm(self):
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(desc=self.description, file=sys.stderr, dynamic_ncols=True, **self._options)
        return self._bar

    def update(self, n: int = 1, *, postfix: str | None = None) -> None:
        """Advance by ``n`` steps."""
        if not self.enabled:
            return
        bar = self._tqdm()
        if postfix is not None:
            bar.set_postfix_str(postfix, refresh=False)
        bar.update(n)

    def set(self, n: int | None = None, *, total: int | None = None, postfix: str | None = None) -> None:
        """Show ``n`` steps done (of ``total``, when it changes)."""
        if not self.enabled:
            return
        bar = self._tqdm()
        if total is not None and bar.total != total:
            bar.total = total
        if n:
            bar.n = n
        if postfix is not None:
            bar.set_postfix_str(postfix, refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SearchProgress:
    """A bar that follows a search: pass it as ``search(..., callback=SearchProgress("ilp"))``.

    It shows the step of every event after ``start``, the total the searcher announces,
    the best score so far and the searcher's latest message; it never stops the search."""

    def __init__(self, description: str, enabled: bool | None = None):
        self.bar = Bar(description, enabled=enabled)

    @property
    def enabled(self) -> bool:
        return self.bar.enabled

    def __call__(self, event) -> bool:
        if not self.bar.enabled or (not self.bar.shown and event.kind in ("start", "end")):
            return True
        best = f"best {event.best_score:.4g}" if event.best_score is not None else ""
        postfix = ", ".join(part for part in (best, event.message) if part) or None
        self.bar.set(event.step, total=event.total, postfix=postfix)
        if event.kind == "end":
            self.close()
        return True

    def close(self) -> None:
        self.bar.close()


class StepBars:
    """One bar per named step of a longer job: call it as ``progress(step, done, total,
    detail)`` (what :func:`bitsearch.validation.validate` takes); a new step closes the
    bar of the one before.  ``prefix`` starts every bar's description."""

    def __init__(self, prefix: str, enabled: bool | None = None):
        self.prefix = prefix
        self.enabled = enabled
        self._bars: dict[str, Bar] = {}

    def __call__(self, step: str, done: int, total: int, detail: str = "") -> None:
        bar = self._bars.get(step)
        if bar is None:
            self.close()
            bar = self._bars[step] = Bar(f"{self.prefix}{step}", total, enabled=self.enabled)
        bar.set(done, total=total, postfix=detail or None)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()

    def __enter__(self) -> "StepBars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def cap_threads(threads: int | None, *, flag: str = "--threads") -> int | None:
    """``threads`` at most :func:`available_cores`; more (10,000 threads on 2 cores only
    thrash) is capped with a one-line warning on standard error.  None stays None."""
    if threads is None:
        return None
    cores = available_cores()
    if threads > cores:
        print(f"bitsearch: warning: {flag} {threads} is more than the {cores} CPU cores this process may use; "
              f"using {cores}", file=sys.stderr)
        return cores
    return threads


def limit_threads(threads: int | None, *, import_torch: bool = True, environment: bool = False) -> None:
    """Cap the CPU threads of the numerical libraries at ``threads`` (None: leave them).

    ``threads`` below 1 is a :class:`~bitsearch.errors.UserInputError`.  torch's thread
    pool is set when torch is already imported, or imported for it when ``import_torch``
    (``False`` where a path must stay torch-free, such as a tabular problem: then only the
    value is checked).  ``environment``: also set :data:`THREAD_VARIABLES` where they are
    not set yet, for a fresh worker process whose libraries start their pools later.
    Small models train and score faster on one thread than on several that share a busy
    machine.
    """
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        from .errors import UserInputError

        raise UserInputError(f"--threads must be at least 1 (got {threads})")
    if environment:
        for variable in THREAD_VARIABLES:
            os.environ.setdefault(variable, str(threads))
    if import_torch:
        import torch

        torch.set_num_threads(threads)
    elif "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
