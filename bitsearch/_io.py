"""Files in and out, and stable hashes: the generic helpers every module shares.

* Writing: :func:`atomic_write` (and :func:`atomic_write_text`) is the one way the tool
  writes a file: a temporary file beside the target, flushed to disk, then renamed
  onto it, so a reader sees the old file or the whole new one, never a part, and a
  killed process leaves no half-written file under a final name.
* Serialising: :func:`dumps` is the house JSON layout (two-space indentation, lists of
  numbers on one line), used for policies, results and problem files alike.
* Hashing: :func:`stable_hash` (one JSON payload, keys sorted, strict about types) names
  cache entries; :func:`stable_key` (several parts, anything ``str()``-able) names runs
  and policies; :func:`file_digest` names a file's content.  Their outputs are stored in
  caches and journals, so they never change for the same input.

Only the standard library is imported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, BinaryIO

__all__ = ["atomic_write", "atomic_write_text", "dumps", "stable_hash", "stable_key", "file_digest"]


# --- writing --------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through ``write(binary_file)``: a temporary file beside it, flushed to
    disk and renamed onto it, so readers see the old file or the whole new one, never a part.
    The parent folder is created when missing; on any error the temporary file is removed
    and the old file (if any) is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


# --- serialising ----------------------------------------------------------------------------
def dumps(data: Any) -> str:
    """JSON with two-space indentation, but lists of numbers on one line."""
    return _dump(data, 0) + "\n"


def _dump(value: Any, depth: int) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        if depth >= 2 and all(not isinstance(v, Mapping) and not (
                isinstance(v, (list, tuple)) and any(isinstance(x, (Mapping, list, tuple)) for x in v))
                for v in value.values()):
            return "{" + ", ".join(f"{json.dumps(str(k))}: {_dump(v, depth + 1)}" for k, v in value.items()) + "}"
        items = [f"{inner}{json.dumps(str(k))}: {_dump(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple)) for v in value):
            return json.dumps(list(value))
        items = [f"{inner}{_dump(v, depth + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


# --- hashing --------------------------------------------------------------------------------
def stable_hash(payload: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-serialisable payload (keys sorted, so order-free); a value
    JSON cannot hold (other than tuples, sets and paths) is an error, never a silent ``str``."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_strict_default)
    return _digest(text, length)


def stable_key(*parts: Any, length: int = 16) -> str:
    """A short stable hash of JSON-serialisable ``parts`` (dict key order does not matter;
    other values are hashed by their ``str``)."""
    return _digest(json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str), length)


def file_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's bytes (raises ``OSError`` when it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _strict_default(value):
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot hash a value of type {type(value).__name__} into a cache key")
