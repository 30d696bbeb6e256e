"""A text corpus every machine has: the Python standard library's own source files.

The files are found through ``sysconfig`` (``sysconfig.get_paths()["stdlib"]``) from a
fixed list of module names, split into training modules and held-out modules, and read
as bytes (the tokenizer is byte level: one token per byte, 256 tokens).  A module is
``name.py`` or ``name/__init__.py`` (so the list survives a module turning into a
package between Python versions).  The modules are pure-Python modules that CPython
3.10 to 3.14 all ship; the text differs a little between versions, so the corpus digest
(:func:`corpus_digest`) is recorded beside every number measured on it.
"""

from __future__ import annotations

import hashlib
import sysconfig
from functools import lru_cache
from pathlib import Path

from ..errors import TaskError

# 40 training modules (1.9 MB on CPython 3.11) ...
TRAIN_MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "difflib", "enum", "fnmatch", "functools", "gettext", "glob", "gzip", "inspect",
    "ipaddress", "json.decoder", "json.encoder", "locale", "logging", "optparse", "os", "pickle", "platform",
    "pprint", "random", "selectors", "shutil", "socket", "statistics", "subprocess", "tarfile", "tempfile",
    "threading", "typing",
)
# ... and 8 held-out modules (150 KB), never trained on
HELDOUT_MODULES = (
    "fractions", "getopt", "heapq", "queue", "sched", "shlex", "textwrap", "traceback",
)
SEPARATOR = b"\n\n"


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_path(name: str) -> Path:
    """The source file of a standard-library module (``name.py`` or ``name/__init__.py``)."""
    base = stdlib_dir().joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise TaskError(f"the Python standard library at {stdlib_dir()} has no source for module {name!r}; the "
                    "tiny-llama corpus needs CPython's pure-Python sources (a Python built without them, "
                    "or stripped of .py files, cannot build it)")


@lru_cache(maxsize=4)
def read_modules(names: tuple[str, ...]) -> bytes:
    """The source files of ``names`` as bytes, in order, joined by a blank line."""
    return SEPARATOR.join(module_path(name).read_bytes() for name in names)


def corpus_digest(names: tuple[str, ...] = TRAIN_MODULES + HELDOUT_MODULES) -> str:
    """``sha256:...`` of the corpus text (differs between Python versions)."""
    return "sha256:" + hashlib.sha256(read_modules(tuple(names))).hexdigest()[:16]


def describe() -> str:
    return (f"{len(TRAIN_MODULES)} training and {len(HELDOUT_MODULES)} held-out modules of the Python standard "
            f"library at {stdlib_dir()}")
