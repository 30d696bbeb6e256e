"""An append-only JSON-lines journal: the durable record of finished work.

Each record is one JSON object on one line, written with a single ``write`` and made
durable with ``fsync`` before :meth:`Journal.append` returns.  A process killed at any
moment (SIGKILL included) leaves at most one torn line at the end of the file: a line
without its final newline, or one that does not parse.  Readers ignore it, and the
next writer cuts it off before appending, so the journal holds only complete records.

Records are keyed (by default by their ``"key"`` field): :meth:`Journal.latest` gives,
for every key, the last record written under it, which is how a resumed job knows what
is already done.  Nothing is ever rewritten in place.

Used by ``bitsearch bench`` (one record per finished run); any long job that must
resume without repeating or losing work can use it the same way.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping


class Journal:
    """An append-only JSONL file of records (dicts)."""

    def __init__(self, path: str | os.PathLike, *, key_field: str = "key"):
        self.path = Path(path)
        self.key_field = key_field
        self._handle = None

    # --- reading ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        return iter(self.records())

    def records(self) -> list[dict]:
        """Every complete record, in the order written; a torn or garbled line is skipped."""
        data = self._read_bytes()
        if not data:
            return []
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: b"" when the file ends with a newline
        out = []
        for number, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deeply
                warnings.warn(f"{self.path}: line {number} is not a complete JSON record; ignored",
                              RuntimeWarning, stacklevel=2)
                continue
            if isinstance(record, dict):
                out.append(record)
        del tail  # a line without its newline was torn by a kill: never counted
        return out

    def latest(self) -> dict[str, dict]:
        """Key -> the last record written under that key."""
        out: dict[str, dict] = {}
        for record in self.records():
            key = record.get(self.key_field)
            if key is not None:
                out[str(key)] = record
        return out

    def __len__(self) -> int:
        return len(self.records())

    def _read_bytes(self) -> bytes:
        from ._io import read_input
        from .errors import UserInputError

        if not self.path.exists() and not self.path.is_symlink():
            return b""
        return read_input(self.path, "results", error=lambda message: UserInputError(f"{self.path}: {message}"))

    # --- writing ------------------------------------------------------------------------
    def repair(self) -> int:
        """Cut a torn last line off the file; returns how many bytes were removed."""
        data = self._read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1  # 0 when the only line is torn
        with open(self.path, "r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        return len(data) - keep

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one line and fsync it before returning."""
        line = json.dumps(record, sort_keys=False, separators=(",", ":"), allow_nan=False, default=_default)
        if "\n" in line:  # json.dumps escapes newlines inside strings; this cannot happen
            raise ValueError("a journal record must serialise to one line")
        handle = self._open()
        handle.write((line + "\n").encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())

    def _open(self):
        if self._handle is None:
            from ._io import check_output

            check_output(self.path, parents=True)  # a regular file (or none yet), never a FIFO or device
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.repair()
            # unbuffered: one write() per record, so a kill leaves a torn line at worst
            self._handle = open(self.path, "ab", buffering=0)
            if new:
                _fsync_dir(self.path.parent)
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
