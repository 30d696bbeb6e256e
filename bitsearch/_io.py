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

Only the standard library is imported here (and numpy, inside the JSON nesting scan).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, BinaryIO

__all__ = ["atomic_write", "atomic_write_text", "check_output", "check_output_dir", "open_input", "read_input",
           "read_text_input", "parse_json", "parse_toml", "load_json_input", "json_nesting", "toml_nesting", "input_limit",
           "INPUT_LIMITS_MB", "MAX_NESTING", "dumps", "stable_hash", "stable_key", "file_digest"]


# --- writing --------------------------------------------------------------------------------
_PSEUDO_ROOTS = ("/proc", "/sys")


def check_output(path: str | os.PathLike, *, parents: bool = False, what: str = "") -> Path:
    """The place a file will be written, checked before any work is done; raises
    :class:`~bitsearch.errors.OutputFileError` (one line) for a target the tool refuses:

    * an existing folder, device, FIFO or socket (only a regular file is ever replaced;
      a symbolic link to a regular file is followed, so the link stays and its file is
      replaced);
    * anything under ``/proc`` or ``/sys`` (kernel interfaces, not files);
    * a missing parent folder, unless ``parents`` (the command documents that it creates
      folders), or a parent that is not a folder or cannot be written into.

    Returns the path to write (the link's target for a link).  ``what`` names the option
    in messages (``--out``)."""
    from .errors import OutputFileError

    given = Path(path)
    label = f"{what} {str(given)!r}" if what else repr(str(given))
    if not str(given) or str(given).endswith(os.sep) and not given.is_dir():
        raise OutputFileError(f"{label}: give a file name, not a folder")
    real = Path(os.path.realpath(given))
    if _under_pseudo_fs(real, given):
        root = _pseudo_root(given) or _pseudo_root(real) or "/proc or /sys"
        raise OutputFileError(f"{label} is under {root}, a kernel interface, not a place for files; "
                              "write somewhere else")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise OutputFileError(f"{label}: a part of its folder {str(given.parent)!r} is not a folder") from None
    except OSError as exc:
        raise OutputFileError(f"{label}: cannot check it ({exc.strerror or exc})") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputFileError(f"{label} is a folder; give a file name (e.g. {os.path.join(str(given), 'out.json')})")
        if not stat.S_ISREG(st.st_mode):
            raise OutputFileError(f"{label} is {describe_file_type(st.st_mode)}, not a regular file; "
                                  "refusing to replace it")
    parent = real.parent
    try:
        pst = os.stat(parent)
    except FileNotFoundError:
        pst = None
    except OSError as exc:
        raise OutputFileError(f"{label}: cannot use its folder {str(parent)!r} ({exc.strerror or exc})") from None
    if pst is None:
        if not parents:
            raise OutputFileError(f"{label}: the folder {str(given.parent)!r} does not exist; create it first")
        ancestor = parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OutputFileError(f"{label}: {str(ancestor)!r} is not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise OutputFileError(f"{label}: cannot create folders in {str(ancestor)!r} (permission denied)")
    elif not stat.S_ISDIR(pst.st_mode):
        raise OutputFileError(f"{label}: {str(given.parent)!r} is not a folder")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFileError(f"{label}: cannot write into the folder {str(given.parent)!r} (permission denied)")
    return real


def check_output_dir(path: str | os.PathLike, *, what: str = "") -> Path:
    """An output folder, checked: an existing folder, or a place where one (and its
    missing parents) can be created; never an existing file, device or a path under
    /proc or /sys.  Raises :class:`~bitsearch.errors.OutputFileError`."""
    from .errors import OutputFileError

    given = Path(path)
    label = f"{what} {str(given)!r}" if what else repr(str(given))
    real = Path(os.path.realpath(given))
    if _under_pseudo_fs(real, given):
        root = _pseudo_root(given) or _pseudo_root(real) or "/proc or /sys"
        raise OutputFileError(f"{label} is under {root}, a kernel interface, not a place for files; "
                              "write somewhere else")
    ancestor = real
    while True:
        try:
            st = os.stat(ancestor)
            break
        except NotADirectoryError:
            ancestor = ancestor.parent
        except FileNotFoundError:
            if ancestor == ancestor.parent:
                raise OutputFileError(f"{label}: no existing folder above it") from None
            ancestor = ancestor.parent
        except OSError as exc:
            raise OutputFileError(f"{label}: cannot check it ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(st.st_mode):
        what_is = describe_file_type(st.st_mode)
        if ancestor == real:
            raise OutputFileError(f"{label} is {what_is}, not a folder; give a folder name")
        raise OutputFileError(f"{label}: {str(ancestor)!r} is {what_is}, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputFileError(f"{label}: cannot write into {str(ancestor)!r} (permission denied)")
    return real


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], *, parents: bool = True) -> None:
    """Write ``path`` through ``write(binary_file)``: a temporary file beside it, flushed to
    disk and renamed onto it, so readers see the old file or the whole new one, never a part.

    The target is checked first (:func:`check_output`): only a regular file is ever
    replaced, never a folder, device or FIFO, nothing under /proc or /sys.  The parent
    folder is created when missing if ``parents`` (library callers writing caches and
    bench folders; commands check their ``--out`` with ``parents=False`` first).  A
    failure to write (disk full, no permission) is an
    :class:`~bitsearch.errors.OutputFileError`; on any error the temporary file is
    removed and the old file (if any) is left as it was."""
    from .errors import OutputFileError

    path = check_output(path, parents=parents)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputFileError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:  # the target may have changed since the check: never rename over a non-file
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise OutputFileError(f"{str(path)!r} became {describe_file_type(st.st_mode)} while it was "
                                  "written; refusing to replace it")
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise OutputFileError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, parents: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), parents=parents)


def _remove(tmp) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _pseudo_root(path: Path) -> str | None:
    for text in (os.path.abspath(path), str(path)):
        for root in _PSEUDO_ROOTS:
            if text == root or text.startswith(root + "/"):
                return root
    return None


def _under_pseudo_fs(real: Path, given: Path | None = None) -> bool:
    """Under /proc or /sys, by the name given, by the resolved name, or by device (a bind
    mount of either elsewhere)."""
    if _pseudo_root(real) or (given is not None and _pseudo_root(given)):
        return True
    devices = set()
    for root in _PSEUDO_ROOTS:
        try:
            devices.add(os.stat(root).st_dev)
        except OSError:
            pass
    probe = real
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.stat(probe).st_dev in devices
    except OSError:
        return False


def describe_file_type(mode: int) -> str:
    """'a folder', 'a character device', 'a FIFO (named pipe)', ... for an ``st_mode``."""
    for test, text in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return text
    return "not a regular file"


# --- reading --------------------------------------------------------------------------------
#: The kinds of input file, each with its size limit (MiB) and what messages call it.  A
#: limit is raised with the environment variable BITSEARCH_MAX_<KIND>_MB (e.g.
#: BITSEARCH_MAX_PROBLEM_MB=8192).
INPUT_LIMITS_MB: dict[str, tuple[str, int]] = {
    "policy": ("policy files", 64),
    "problem": ("problem files", 2048),
    "suite": ("suite files", 16),
    "latency": ("latency tables", 256),
    "import": ("import files", 64),
    "results": ("bench results", 1024),
    "model": ("model files", 4096),
}
#: Containers (lists, objects, arrays, tables) nested deeper than this are refused before
#: parsing: every file format of the tool needs fewer than 10 levels.
MAX_NESTING = 64


def limit_variable(kind: str) -> str:
    return f"BITSEARCH_MAX_{kind.upper()}_MB"


def input_limit(kind: str) -> int:
    """The size limit in bytes for an input ``kind`` (see :data:`INPUT_LIMITS_MB`)."""
    from .errors import UserInputError

    _, default = INPUT_LIMITS_MB[kind]
    variable = limit_variable(kind)
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return default << 20
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < 2 ** 40):
        raise UserInputError(f"{variable}={raw!r}: give the limit in MiB, a positive number (default {default})")
    return int(value * (1 << 20))


def _error_factory(error, source):
    if error is not None:
        return error
    from .errors import InputFileError

    return lambda message: InputFileError(f"{source}: {message}")


def _checked_stat(path, kind: str, error) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error("no such file") from None
    except NotADirectoryError:
        raise error("no such file (a part of the path is not a folder)") from None
    except PermissionError:
        raise error("cannot read it (permission denied)") from None
    except (OSError, ValueError) as exc:
        raise error(f"cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error("is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"is {describe_file_type(st.st_mode)}, not a regular file")
    _check_size(st.st_size, kind, error)
    return st


def _check_size(size: int, kind: str, error) -> None:
    limit = input_limit(kind)
    if size > limit:
        what, _ = INPUT_LIMITS_MB[kind]
        raise error(f"is {_size_text(size)}, over the {_size_text(limit)} limit for {what}; raise it with "
                    f"{limit_variable(kind)}=N (MiB) if the file is right")


def _size_text(size: int) -> str:
    if size < 1 << 20:
        return f"{size:,} bytes"
    return f"{size / (1 << 20):,.1f} MiB".replace(".0 MiB", " MiB")


def open_input(path: str | os.PathLike, kind: str, *, error: Callable[[str], Exception] | None = None) -> BinaryIO:
    """A binary handle on an input file, checked first: a regular file (never a folder,
    FIFO or device: opening one is refused at once, it never blocks) within the size limit
    of ``kind``.  ``error(message)`` makes the exception (default
    :class:`~bitsearch.errors.InputFileError` with the path in front)."""
    error = _error_factory(error, str(path))
    _checked_stat(path, kind, error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"cannot read it ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)  # the path may have been swapped between the check and the open
        if not stat.S_ISREG(st.st_mode):
            raise error(f"is {describe_file_type(st.st_mode)}, not a regular file")
        _check_size(st.st_size, kind, error)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | os.PathLike, kind: str, *, error: Callable[[str], Exception] | None = None) -> bytes:
    """The bytes of an input file (see :func:`open_input`), never more than the limit of
    ``kind`` even when the file grows or reports no size (as files under /proc do)."""
    error = _error_factory(error, str(path))
    limit = input_limit(kind)
    with open_input(path, kind, error=error) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            chunks, total = [], 0
            while True:
                chunk = handle.read(max(1 << 16, min(size + 1, limit + 1) - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    _check_size(total, kind, error)
        except OSError as exc:
            raise error(f"cannot read it ({exc.strerror or exc})") from None
    return b"".join(chunks)


def decode_text(data: bytes, error: Callable[[str], Exception]) -> str:
    """UTF-8 text (a leading byte-order mark dropped), or ``error`` naming the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                    "is it the right file?") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text_input(path: str | os.PathLike, kind: str, *, error: Callable[[str], Exception] | None = None) -> str:
    """An input file's UTF-8 text, read as :func:`read_input` reads it."""
    error = _error_factory(error, str(path))
    return decode_text(read_input(path, kind, error=error), error)


_JSON_KEEP = b'[]{}"'
_JSON_DROP = bytes(b for b in range(256) if b not in _JSON_KEEP)


def json_nesting(data: bytes | str) -> int:
    """How deep a JSON document's arrays and objects nest, found without parsing it (so a
    document nested 100,000 deep costs a scan, not a crash): brackets inside strings do not
    count.  Cheap on large documents (a few byte-level passes)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return _nesting_of(data)


def _nesting_of(data: bytes) -> int:
    import numpy as np

    if b"\\" in data:
        data = data.replace(b"\\\\", b"")
    if b'\\"' in data:
        data = data.replace(b'\\"', b"")
    marks = np.frombuffer(data.translate(None, _JSON_DROP), dtype=np.uint8)
    deepest, depth, inside = 0, 0, 0
    step = 1 << 24
    for begin in range(0, len(marks), step):
        part = marks[begin:begin + step]
        quotes = part == ord('"')
        # inside a string after an odd number of quotes (counting the carried state)
        in_string = ((np.cumsum(quotes, dtype=np.int64) + inside) & 1).astype(bool) | quotes
        inside = (inside + int(quotes.sum())) & 1
        delta = np.zeros(len(part), dtype=np.int64)
        delta[(part == ord("[")) | (part == ord("{"))] = 1
        delta[(part == ord("]")) | (part == ord("}"))] = -1
        delta[in_string] = 0
        if not delta.any():
            continue
        levels = np.cumsum(delta) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest


def parse_json(data: bytes | str, error: Callable[[str], Exception], *, max_nesting: int = MAX_NESTING) -> Any:
    """A JSON document, its nesting checked before it is parsed; every failure (bad JSON,
    too deep, a number too long to convert, bad UTF-8) is ``error(message)``, one line."""
    if isinstance(data, bytes):
        depth = json_nesting(data)
        text = decode_text(data, error)
    else:
        text = data[1:] if data.startswith("\ufeff") else data
        depth = json_nesting(text)
    _check_nesting(depth, max_nesting, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # pragma: no cover - the nesting check comes first
        raise error(f"nests too deeply (at most {max_nesting} levels are allowed)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise error(f"not valid JSON: {exc}") from None


def parse_toml(text: str, error: Callable[[str], Exception], *, max_nesting: int = MAX_NESTING) -> dict:
    """A TOML document, its nesting checked first (:func:`toml_nesting`); every failure is
    ``error(message)``, one line."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    _check_nesting(toml_nesting(text), max_nesting, error)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"not valid TOML: {exc}") from None
    except (RecursionError, ValueError) as exc:  # e.g. an integer of more than 4300 digits
        raise error(f"not valid TOML: {exc}") from None


def _check_nesting(depth: int, max_nesting: int, error) -> None:
    if depth > max_nesting:
        raise error(f"nests {depth} levels deep (at most {max_nesting} are allowed); is it the right file?")


def load_json_input(path: str | os.PathLike, kind: str, *, error: Callable[[str], Exception] | None = None,
                    max_nesting: int = MAX_NESTING) -> Any:
    """Read (:func:`read_input`) and parse (:func:`parse_json`) a JSON input file."""
    error = _error_factory(error, str(path))
    return parse_json(read_input(path, kind, error=error), error, max_nesting=max_nesting)


_TOML_TOKEN = re.compile(r'"""|\'\'\'|"|\'|#|[\[\]{}]')


def toml_nesting(text: str) -> int:
    """How deep a TOML document's inline arrays and tables nest (table headers count one or
    two), without parsing it: strings and comments are skipped."""
    deepest = depth = 0
    pos, end = 0, len(text)
    search = _TOML_TOKEN.search
    while True:
        m = search(text, pos)
        if m is None:
            return deepest
        token = m.group()
        pos = m.end()
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth = max(0, depth - 1)
        elif token == "#":
            newline = text.find("\n", pos)
            pos = end if newline < 0 else newline
        elif token in ('"""', "'''"):
            close = text.find(token, pos)
            pos = end if close < 0 else close + 3
        elif token == '"':
            pos = _basic_string_end(text, pos)
        elif token == "'":
            close = text.find("'", pos)
            pos = end if close < 0 else close + 1


def _basic_string_end(text: str, pos: int) -> int:
    while True:
        quote = text.find('"', pos)
        newline = text.find("\n", pos)
        if quote < 0 or 0 <= newline < quote:
            return len(text) if newline < 0 else newline  # unterminated: the parser will say so
        backslashes = 0
        while text[quote - 1 - backslashes] == "\\" and quote - 1 - backslashes >= pos:
            backslashes += 1
        if backslashes % 2 == 0:
            return quote + 1
        pos = quote + 1


# --- serialising ----------------------------------------------------------------------------
def dumps(data: Any) -> str:
    """JSON with two-space indentation, but lists of numbers on one line."""
    return _dump(data, 0) + "\n"


_SCALARS = frozenset((str, int, float, bool, type(None)))
_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str (C)


def _scalars(values) -> bool:
    """Whether every item is a plain JSON scalar (exact types: a C-speed pass)."""
    return set(map(type, values)) <= _SCALARS


_STR_ONLY = {str}


def _flat(mapping: dict) -> bool:
    """A dict with str keys whose values are scalars or lists of scalars: ``json.dumps``
    writes it exactly as :func:`_dump` would (one line, the same separators)."""
    if set(map(type, mapping)) != _STR_ONLY:
        return not mapping
    kinds = set(map(type, mapping.values()))
    if kinds <= _SCALARS:
        return True
    for v in mapping.values():
        kind = v.__class__
        if kind in _SCALARS or ((kind is list or kind is tuple) and _scalars(v)):
            continue
        return False
    return True


def _scalar(value) -> str:
    """``json.dumps(value)`` for a str, an int or a float (the same text, without its overhead)."""
    kind = value.__class__
    if kind is str:
        return _encode_str(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and value == value and value not in (_INF, -_INF):
        return float.__repr__(value)
    return json.dumps(value)


_INF = float("inf")


def _is_mapping(value) -> bool:
    kind = value.__class__
    if kind is dict:
        return True
    if kind in _SCALARS or kind is list or kind is tuple:
        return False
    return isinstance(value, Mapping)


def _inline(value) -> bool:
    """A value written on its parent's line: not a mapping, nor a list holding containers."""
    kind = value.__class__
    if kind in _SCALARS:
        return True
    if kind is list or kind is tuple:
        return _scalars(value) or not any(_is_mapping(x) or isinstance(x, (list, tuple)) for x in value)
    return not _is_mapping(value)


def _dump(value: Any, depth: int) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if _is_mapping(value):
        if not value:
            return "{}"
        if depth >= 2:
            if value.__class__ is dict and _flat(value):  # the common case, in C
                return json.dumps(value)
            if all(_inline(v) for v in value.values()):
                return "{" + ", ".join(f"{_scalar(str(k))}: {_dump(v, depth + 1)}" for k, v in value.items()) + "}"
        items = [f"{inner}{_scalar(str(k))}: {_dump(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    kind = value.__class__
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        if _scalars(value) or not any(_is_mapping(v) or isinstance(v, (list, tuple)) for v in value):
            return json.dumps(list(value))
        items = [f"{inner}{_dump(v, depth + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if kind in _SCALARS:
        return _scalar(value)
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


def file_digest(path: str | os.PathLike, kind: str | None = None, *,
                error: Callable[[str], Exception] | None = None) -> str:
    """``sha256:<hex>`` of a file's bytes (raises ``OSError`` when it cannot be read).  With
    ``kind`` the file is an input checked as :func:`open_input` checks it (a regular file
    within the size limit of ``kind``; ``error`` makes the exception)."""
    digest = hashlib.sha256()
    with (open(path, "rb") if kind is None else open_input(path, kind, error=error)) as handle:
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
