"""``bitsearch.progress`` (bars, thread limits), ``bitsearch._io`` and the import rule between the
library and the command line."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bitsearch
from bitsearch import _io
from bitsearch.errors import UserInputError
from bitsearch.progress import Bar, SearchProgress, limit_threads, progress_enabled
from bitsearch.search import SearchEvent

PACKAGE = Path(bitsearch.__file__).parent
ROOT = PACKAGE.parent


def test_bars_stay_quiet_off_a_terminal(capsys):
    assert progress_enabled() is False  # pytest captures stderr: not a terminal
    bar = Bar("quiet", 3)
    bar.update(1)
    bar.set(2, postfix="x")
    bar.close()
    assert capsys.readouterr().err == ""


def test_a_bar_draws_only_once_used(capsys):
    with Bar("work", 4, unit="step", enabled=True) as bar:
        assert not bar.shown
        bar.update(2, postfix="half")
        assert bar.shown
        bar.set(4)
    err = capsys.readouterr().err
    assert "work" in err and "4/4" in err and "half" in err
    assert not bar.shown


def test_search_progress_follows_events(capsys):
    progress = SearchProgress("ilp", enabled=True)
    assert progress(SearchEvent("start", total=10)) is True
    assert capsys.readouterr().err == ""  # nothing drawn before the first step
    assert progress(SearchEvent("evaluation", step=3, total=10, best_score=0.875)) is True
    assert progress(SearchEvent("end", step=10, total=10)) is True
    err = capsys.readouterr().err
    assert "ilp" in err and "best 0.875" in err and "10/10" in err


@pytest.mark.parametrize("threads", [0, -2, True, 1.5])
def test_limit_threads_rejects_non_counts(threads):
    with pytest.raises(UserInputError, match="--threads must be at least 1"):
        limit_threads(threads, import_torch=False)


def test_limit_threads_sets_a_fresh_workers_environment():
    code = ("import os, sys\n"
            "from bitsearch.progress import limit_threads, THREAD_VARIABLES\n"
            "limit_threads(3, import_torch=False, environment=True)\n"
            "assert 'torch' not in sys.modules\n"
            "print(','.join(os.environ[v] for v in THREAD_VARIABLES))\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["MKL_NUM_THREADS"] = "2"  # an explicit setting is kept
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "3,2,3"


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "f.json"
    _io.atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        _io.atomic_write(path, lambda handle: (handle.write(b"half"), (_ for _ in ()).throw(RuntimeError("x"))))
    assert path.read_text() == "old\n"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temporary file left behind


def test_stable_hashes_do_not_change():
    # stored in caches, journals and run keys: the same input must give the same digest forever
    assert _io.stable_hash({"b": 1, "a": (1, 2)}) == _io.stable_hash({"a": [1, 2], "b": 1}) == "94a786c3662bc7be"
    assert _io.stable_key("x", {"b": 1, "a": 2}, length=12) == "8c849652027d"
    with pytest.raises(TypeError, match="cannot hash"):
        _io.stable_hash({"a": object()})
    assert _io.dumps({"a": [1, 2], "b": {"c": [[1], [2]]}}) == '{\n  "a": [1, 2],\n  "b": {\n    "c": [\n      [1],\n' \
                                                               '      [2]\n    ]\n  }\n}\n'


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-local imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_no_library_module_imports_the_command_line():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "commands" or relative.name == "cli.py":
            continue  # the front end itself
        if any(name == "bitsearch.cli" or name.startswith(("bitsearch.cli.", "bitsearch.commands"))
               for name in _imports(path)):
            offenders.append(str(relative))
    assert offenders == []


def test_search_progress_shows_the_searchers_message(capsys):
    progress = SearchProgress("iqp", enabled=True)
    progress(SearchEvent("progress", step=1, total=2, message="trust region step 1: re-measuring pairs 3/15"))
    progress(SearchEvent("end", step=2, total=2))
    assert "re-measuring pairs 3/15" in capsys.readouterr().err
