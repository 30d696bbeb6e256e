"""Property-based tests (hypothesis) over every loader and over budget and width parsing: any
input ends in success or the library's typed error (a :class:`~bitsearch.errors.UserInputError`
whose message is one line), never another exception; through the command, in exit code 0 or 2
with one line, and never a written file.

Inputs are drawn four ways: arbitrary text or bytes, arbitrary JSON values, a valid document
with a few parts replaced by awkward values (NaN, 1e309, 2**64, wrong types, deep or empty
containers...) or removed, and a valid document's text with characters spliced in.

2,000 examples per loader in the default suite (derandomized, so a CI run is reproducible);
``-m slow`` runs 20,000 per loader with fresh randomness.  The loaders run in-process; a
smaller sample goes through :func:`bitsearch.cli.main`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitsearch import interop
from bitsearch._io import parse_json, parse_toml
from bitsearch.budget import parse_budget
from bitsearch.cli import main
from bitsearch.cost.tables import LatencyTableCost, table_keys
from bitsearch.errors import UserInputError
from bitsearch.policy import Policy, validate_policy
from bitsearch.problem import Problem
from bitsearch.space import parse_bits
from bitsearch.tabular import _npz_arrays, _problem, problem_from_dict, problem_to_dict, write_problem

import hostile_files as hf
from helpers import small_problem, small_space, synthetic_sensitivity

DEFAULT_EXAMPLES = 2_000
SLOW_EXAMPLES = 20_000
CLI_EXAMPLES = 60


def run_fuzz(check, strategy, examples, *, derandomize=True):
    """``check`` on ``examples`` draws of ``strategy`` (no example database: nothing written)."""
    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(strategy)
    def inner(value):
        check(value)

    inner()


def clean(call, *args, **kwargs):
    """``call(...)``: its result, or None after a typed error with a one-line message."""
    try:
        return call(*args, **kwargs)
    except UserInputError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
        return None


# --- strategies ---------------------------------------------------------------------------------
AWKWARD = st.sampled_from([None, True, False, 0, -1, 1, 2, 4, 8, 16, 17, 32, 33, 99, 2 ** 31, 2 ** 63, 2 ** 64,
                           10 ** 30, -(2 ** 63), 0.0, -0.0, 0.5, -1e-9, 1e308, 1e-320, float("nan"), float("inf"),
                           float("-inf"), "", "4", "4.0", "nan", "inf", "float", "none", "x" * 300, "\x00", "\n",
                           "conv1", "stem", "size", [], {}, [1], [[]], {"a": 1}, [None], [float("nan")],
                           [1.0] * 3, "é", "\u202e"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), AWKWARD)
JSON_VALUES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)), max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node[:6]):  # long lists: their first entries stand for the rest
            yield from _paths(value, prefix + (index,))


def _get(node, path):
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated(draw, document):
    """``document`` with one to four parts replaced, removed, duplicated or renamed."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "awkward", "delete", "duplicate", "rename", "nest"]))
        if not path:
            if op in ("replace", "awkward"):
                doc = copy.deepcopy(draw(JSON_VALUES if op == "replace" else AWKWARD))
            continue
        parent, last = _get(doc, path[:-1]), path[-1]
        try:
            if op == "replace":
                parent[last] = copy.deepcopy(draw(JSON_VALUES))
            elif op == "awkward":
                parent[last] = copy.deepcopy(draw(AWKWARD))  # never share (and mutate) the sampled object
            elif op == "delete":
                del parent[last]
            elif op == "duplicate" and isinstance(parent, list):
                parent.insert(last, copy.deepcopy(parent[last]))
            elif op == "duplicate" and isinstance(parent, dict):
                parent[f"{last}_"] = copy.deepcopy(parent[last])
            elif op == "rename" and isinstance(parent, dict):
                parent[draw(st.text(max_size=6))] = parent.pop(last)
            elif op == "nest":
                parent[last] = [parent[last]] if draw(st.booleans()) else {"x": parent[last]}
        except (KeyError, IndexError, TypeError):
            pass
    return doc


@st.composite
def spliced(draw, text):
    """``text`` with a few characters or tokens inserted, deleted or replaced."""
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 4))
        piece = draw(st.one_of(st.text(max_size=4), st.sampled_from(
            ["[", "]", "{", "}", '"', "'", ",", ":", "=", "\n", "#", "\\", "NaN", "Infinity", "-", "1e999", "\x00",
             "9" * 30, "[[[[", "]]]]", "null", "true", '"""', "'''", "\ufeff"])))
        text = text[:at] + piece + text[at + cut:]
    return text


def documents(valid):
    """Text inputs for a JSON loader built around the valid document ``valid``."""
    text = json.dumps(valid)
    return st.one_of(
        st.text(max_size=40),
        JSON_VALUES.map(json.dumps),
        mutated(valid).map(json.dumps),
        mutated(valid).map(json.dumps),
        spliced(text),
    )


# --- the valid documents ------------------------------------------------------------------------
SPACE = small_space()
def _compact_problem() -> dict:
    """The small problem's document with one number per layer and width, but for the last
    layer's per-kernel lists (both forms present, and each example cheap to check)."""
    doc = problem_to_dict(small_problem())
    for layer in doc["layers"][:-1]:
        layer["sensitivity"] = {w: float(np.mean(v)) for w, v in layer["sensitivity"].items()}
    doc["layers"][0]["costs"] = {"latency": {str(w): 0.1 * w for w in doc["weight_bits"]}}
    for layer in doc["layers"][1:]:
        layer["costs"] = {"latency": {str(w): 0.2 * w for w in doc["weight_bits"]}}
    doc["cost_units"] = {"latency": "ms"}
    return doc


PROBLEM_DOC = _compact_problem()
POLICY_DOC = Policy.uniform(SPACE, 4).to_dict()
LATENCY_ROWS = [{"layer": n, "weight_bits": w, "act_bits": "float" if a is None else a,
                 "latency": 0.001 * (i + 1)} for i, (n, w, a) in enumerate(table_keys(SPACE))]
LATENCY_DOC = hf.latency_json(LATENCY_ROWS)
SENSITIVITY = synthetic_sensitivity(SPACE)


def _npz_document() -> dict:
    """The small problem (with a latency cost and a tie) in the columnar form, as arrays."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.npz"
        write_problem(problem_from_dict(PROBLEM_DOC), path)
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}


NPZ_DOC = _npz_document()


# --- the checks, one per loader -----------------------------------------------------------------
def check_policy(text):
    policy = clean(Policy.from_json, text, source="p.json")
    if policy is not None:
        clean(validate_policy, policy, SPACE, source="p.json")
        assert isinstance(policy.to_json(), str)


def check_problem(text):
    data = clean(parse_json, text, lambda m: UserInputError(f"prob.json: {m}"))
    if data is None:
        return
    problem = clean(problem_from_dict, data, ["size=4bit"], source="prob.json")
    if problem is not None:
        for budget in problem.budgets:
            assert math.isfinite(budget.limit) and budget.limit > 0
        table = problem.sensitivity
        for name, values in table.weight.items():
            given = values[~np.isnan(values)]
            assert (given >= 0).all() and np.isfinite(given).all(), name


def check_problem_npz(data):
    problem = clean(lambda: _problem(_npz_arrays(io.BytesIO(data), "p.npz"), ["size=4bit"], "layer", "p.npz"))
    if problem is not None:
        for budget in problem.budgets:
            assert math.isfinite(budget.limit) and budget.limit > 0
        for name, values in problem.sensitivity.weight.items():
            given = values[~np.isnan(values)]
            assert (given >= 0).all() and np.isfinite(given).all(), name


def check_latency_csv(text):
    table = clean(LatencyTableCost._from_csv, text, "t.csv")
    if table is not None:
        assert all(math.isfinite(v) and v >= 0 for v in table.entries.values())
        clean(table.validate, SPACE)


def check_latency_json(text):
    table = clean(LatencyTableCost._from_json, text, "t.json")
    if table is not None:
        assert all(math.isfinite(v) and v >= 0 for v in table.entries.values())
        clean(table.validate, SPACE)


def check_hawq(text):
    config = clean(interop.parse_hawq_text, text, source="bit_config.py")
    if config is not None:
        clean(interop.from_hawq, config)


def check_nncf(text):
    data = clean(parse_json, text, lambda m: UserInputError(f"nncf.json: {m}"))
    if data is not None:
        clean(interop.from_nncf, data)


def check_budget(text):
    spec = clean(parse_budget, text)
    if spec is None:
        return
    assert math.isfinite(spec.value)
    problem = clean(Problem.build, SPACE, [text], sensitivity=SENSITIVITY)
    if problem is not None:
        assert all(math.isfinite(b.limit) and b.limit >= 0 for b in problem.budgets)


def check_widths(text):
    for allow_none in (False, True):
        widths = clean(parse_bits, text, allow_none=allow_none)
        if widths is not None:
            assert list(widths) == sorted(set(widths)) and all(1 <= w <= 16 for w in widths)


def _latency_csv_text(rows):
    return hf.latency_csv(rows)


CSV_ROWS = st.lists(st.fixed_dictionaries({
    "layer": st.one_of(st.sampled_from(SPACE.names), st.text(max_size=6)),
    "weight_bits": st.one_of(st.sampled_from(SPACE.weight_bits), AWKWARD),
    "act_bits": st.one_of(st.just(8), st.just("float"), AWKWARD),
    "latency": st.one_of(st.floats(allow_nan=True, allow_infinity=True), AWKWARD)}), max_size=6)
BUDGET_TEXT = st.one_of(
    st.text(max_size=16),
    st.builds(lambda cost, sep, value, unit: f"{cost}{sep}{value}{unit}",
              st.sampled_from(["size", "bops", "energy", "bitfusion", "latency", "SIZE", "x", "", " size"]),
              st.sampled_from(["=", "==", " = ", ":", ""]),
              st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str),
                        st.sampled_from(["1e309", "1e308", "0", "-1", "frac:0.5", "frac:", "frac:2", "4", "2.5",
                                         "nan", "inf", ".5", "5.", "1e-400", "9" * 400, "0x10", "1_000", "٣"])),
              st.sampled_from(["", "bit", "bits", "%", "MB", "KiB", "GBOPs", "ms", "us", "µs", "uJ", "pj", "parsec",
                               "e5", " MB"])))
WIDTH_TEXT = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-40, 40).map(str), st.builds(lambda a, b: f"{a}-{b}", st.integers(-5, 10 ** 15),
                                                                    st.integers(-5, 10 ** 15)),
                       st.sampled_from(["none", "float", "", " ", "x", "2-", "-", "1_6", "٣"])),
             min_size=1, max_size=5).map(",".join))

NPZ_VALUES = st.one_of(
    st.sampled_from([np.array(v) for v in (0, -1, 2 ** 62, 1.5, np.nan, np.inf, -np.inf, "", "x", b"\xff", True)]),
    st.sampled_from([np.zeros((0,)), np.zeros((0, 4)), np.zeros((3, 0)), np.full((3, 4), np.nan), -np.ones((3, 4)),
                     np.ones((2, 2, 2)), np.array(["a", "a", "a"]), np.array([b"\xff\xfe"] * 3),
                     np.array([2, 3, 3, 8]), np.array([1, 99, 4, 8]), np.array([4.5, 8.0]), np.array([[1, 2]]),
                     np.array(["{", "}"]), np.array('{"tied": [["nope"]]}'), np.array('{"schema": 3}'),
                     np.array('[1, 2]'), np.array("{}"), np.array([0, 0, 5]), np.array([2, 1, 0]),
                     np.ones(3, dtype=np.complex64), np.ones(3, dtype="datetime64[s]"), np.ones(3, dtype=np.float16)]),
    st.builds(lambda shape, value: np.full(shape, value), st.lists(st.integers(0, 4), max_size=3).map(tuple),
              st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=4))))


@st.composite
def npz_archives(draw):
    """The valid problem's arrays with one to three replaced, removed, added, reshaped or
    retyped, written as an ``.npz`` archive (plain or compressed); or bytes spliced into one."""
    arrays = dict(NPZ_DOC)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(arrays) + ["cost.size", "cost.", "extra", "layer", "kernels"]))
        op = draw(st.sampled_from(["replace", "delete", "reshape", "retype", "poke"]))
        if op == "delete":
            arrays.pop(name, None)
        elif op == "replace" or name not in arrays:
            arrays[name] = draw(NPZ_VALUES)
        elif op == "reshape":
            arrays[name] = arrays[name].reshape(-1) if draw(st.booleans()) else arrays[name][..., None]
        elif op == "retype":
            try:
                arrays[name] = arrays[name].astype(draw(st.sampled_from(["f8", "i1", "u8", "U3", "S2", "?", "f2"])))
            except (ValueError, TypeError, OverflowError, UnicodeEncodeError):
                pass
        elif arrays[name].size:
            value = arrays[name].copy()
            flat = value.reshape(-1)
            try:
                flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(
                    [np.nan, np.inf, -1, 0, 2 ** 31, 1e308, "x", ""]))
            except (ValueError, TypeError, OverflowError):
                pass
            arrays[name] = value
    buffer = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buffer, **arrays)
    data = buffer.getvalue()
    if draw(st.integers(0, 9)) == 0:  # a damaged archive
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=8)) + data[at + draw(st.integers(0, 64)):]
    return data


LOADERS = {
    "policy": (check_policy, documents(POLICY_DOC)),
    "problem-json": (check_problem, documents(PROBLEM_DOC)),
    "problem-npz": (check_problem_npz, st.one_of(st.binary(max_size=64), npz_archives(), npz_archives())),
    "latency-csv": (check_latency_csv, st.one_of(st.text(max_size=60), CSV_ROWS.map(_latency_csv_text),
                                                 spliced(hf.latency_csv(LATENCY_ROWS)))),
    "latency-json": (check_latency_json, documents(LATENCY_DOC)),
    "hawq": (check_hawq, st.one_of(documents(hf.HAWQ), spliced(hf.HAWQ_PY))),
    "nncf": (check_nncf, documents(hf.NNCF)),
    "budget": (check_budget, BUDGET_TEXT),
    "widths": (check_widths, WIDTH_TEXT),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_loader_never_fails_untyped(loader):
    check, strategy = LOADERS[loader]
    run_fuzz(check, strategy, DEFAULT_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("loader", list(LOADERS))
def test_loader_never_fails_untyped_long(loader):
    check, strategy = LOADERS[loader]
    run_fuzz(check, strategy, SLOW_EXAMPLES, derandomize=False)


# --- the suite loader needs a folder (its problem file is read) ---------------------------------
def _suite_check(folder):
    from bitsearch.bench.suite import parse_suite

    def check(text):
        data = clean(parse_toml, text, lambda m: UserInputError(f"suite.toml: {m}"))
        if data is not None:
            clean(parse_suite, data, str(folder / "suite.toml"))
    return check


def _suite_strategy():
    import tomllib

    valid = tomllib.loads(hf.SUITE)
    return st.one_of(st.text(max_size=40), spliced(hf.SUITE), spliced(hf.SUITE),
                     mutated(valid).map(_to_toml))


def _to_toml(doc) -> str:
    """A small TOML writer for the mutated suites (values TOML cannot hold become strings)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int) and abs(v) < 2 ** 63:
            return str(v)
        if isinstance(v, float):
            return "nan" if v != v else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(str(v), ensure_ascii=True)

    if not isinstance(doc, dict):
        return f"x = {value(doc)}\n"
    return "".join(f"{json.dumps(str(k))} = {value(v)}\n" for k, v in doc.items())


@pytest.fixture(scope="module")
def suite_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-suite")
    hf.make_base(folder, main)
    return folder


def test_suite_loader_never_fails_untyped(suite_folder):
    run_fuzz(_suite_check(suite_folder), _suite_strategy(), DEFAULT_EXAMPLES)


@pytest.mark.slow
def test_suite_loader_never_fails_untyped_long(suite_folder):
    run_fuzz(_suite_check(suite_folder), _suite_strategy(), SLOW_EXAMPLES, derandomize=False)


# --- a smaller sample through the command: exit 0 or 2, one line, nothing written ---------------
CLI = {
    "policy": (["export", "{x}", "--to", "csv"], "in.json", documents(POLICY_DOC)),
    "problem": (["search", "--problem", "{x}", "--searcher", "uniform", "--budget", "size=4bit"], "in.json",
                documents(PROBLEM_DOC)),
    "problem-npz": (["search", "--problem", "{x}", "--searcher", "uniform", "--budget", "size=4bit"], "in.npz",
                    st.one_of(st.binary(max_size=64), npz_archives())),
    "suite": (["bench", "{x}", "--out", "{o}/bench", "--no-plots"], "in.toml", _suite_strategy()),
    "hawq": (["import", "{x}", "--from", "hawq"], "in.py", st.one_of(documents(hf.HAWQ), spliced(hf.HAWQ_PY))),
    "nncf": (["import", "{x}", "--from", "nncf"], "in.json", documents(hf.NNCF)),
    "budget": (["search", "--problem", "{d}/prob.json", "--searcher", "uniform", "--budget", "{t}"], None,
               BUDGET_TEXT),
}


@pytest.mark.parametrize("command", list(CLI))
def test_command_ends_in_0_or_one_line_2_and_writes_nothing(command, suite_folder, tmp_path):
    argv, name, strategy = CLI[command]

    def check(text):
        folder = tmp_path / "w"
        if not folder.exists():
            shutil.copytree(suite_folder, folder)
        if isinstance(text, bytes):
            (folder / name).write_bytes(text)
        elif name is not None:
            (folder / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        before = hf.snapshot(folder)
        elsewhere = tmp_path / "out"  # a bench that runs writes here, outside the folder watched
        args = [a.replace("{x}", str(folder / (name or ""))).replace("{d}", str(folder)).replace("{o}", str(elsewhere))
                .replace("{t}", text if isinstance(text, str) else "") for a in argv]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:  # argparse: a usage error
                code = exc.code
        text_err = err.getvalue()
        assert code in (0, 2), (code, text_err)
        if code == 2:
            lines = [line for line in text_err.splitlines() if line.strip()]
            assert len(lines) == 1 and "Traceback" not in text_err, text_err
        assert hf.snapshot(folder) == before, "a file was written or replaced"
        if code == 2:
            assert not elsewhere.exists(), "a failed command wrote its output"
        shutil.rmtree(elsewhere, ignore_errors=True)

    run_fuzz(check, strategy, CLI_EXAMPLES)
