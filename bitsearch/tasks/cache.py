"""The on-disk cache of tasks: generated data sets and trained float weights.

Where: ``$BITSEARCH_CACHE`` if set, else ``$XDG_CACHE_HOME/bitsearch``, else
``~/.cache/bitsearch``.  Every file is written atomically (:func:`bitsearch._io.atomic_write`:
a temporary file in the same folder, then a rename), so a killed process never leaves a
half-written file under a final name; a lock file makes concurrent processes that need
the same entry wait for the first one instead of all computing it.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Callable, Iterator

CACHE_ENV = "BITSEARCH_CACHE"


def cache_dir() -> Path:
    """The root of bitsearch's cache (not created here)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bitsearch"


def safe_name(text: str) -> str:
    """A file-name-safe form of a task name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "task"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` + ``.lock`` (POSIX); a no-op where
    ``fcntl`` does not exist.  The lock file is left in place (removing it would race)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


SPLITS = ("x_train", "y_train", "x_test", "y_test")


def cached_arrays(path: Path, make: Callable[[], dict]) -> dict:
    """A task's data arrays (``x_train``, ``y_train``, ``x_test``, ``y_test``) from the
    ``.npz`` file ``path``, or made by ``make()`` and written there (atomically, under
    the lock; a corrupt file is made again; a read-only cache is not an error)."""
    import numpy as np

    from .._io import atomic_write

    def read():
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in SPLITS}
        except Exception:  # corrupt or foreign: make it again
            return None

    arrays = read()
    if arrays is None:
        with file_lock(path):
            arrays = read()
            if arrays is None:
                arrays = make()
                try:
                    atomic_write(path, lambda handle: np.savez(handle, **arrays))
                except OSError:
                    pass
    return arrays
