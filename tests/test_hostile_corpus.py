"""A corpus of hostile inputs: every one ends in exit code 2, one line on stderr, no
traceback, and nothing written, replaced or removed.

Classes covered (issue #14): output targets that are not regular files (a character device
made here with mknod, a folder, a FIFO, a socket, links to them, paths under /proc and
/sys, missing or non-folder parents) for every command that writes; input files that are
not regular files (FIFOs -- which must not block --, devices, folders, sockets), too large
for their kind, nested too deeply, not UTF-8, empty or binary, for every loader; and
contents: problem files and latency tables with duplicates, unknown layers, non-finite
or negative values, widths outside the space, mixed per-kernel lists; budgets and widths
that do not parse or are not finite; malformed policies, suites and HAWQ / NNCF files.

Cases run in-process through :func:`bitsearch.cli.main` (fast); a few run through a real
``bitsearch`` subprocess at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from bitsearch.cli import main

import hostile_files as hf
from helpers import assert_one_line_error

pytestmark = pytest.mark.timeout(120)  # a FIFO read that blocks fails the test instead of hanging it

SEARCH = ["search", "--searcher", "uniform", "--budget", "size=4bit"]
SEARCH_PROBLEM = SEARCH + ["--problem", "{d}/prob.json"]
LATENCY_SEARCH = ["search", *hf.LATENCY_TASK, "--searcher", "uniform", "--budget", "latency=frac:0.5"]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple
    setup: Callable | None = None  # setup(folder, base documents)
    env: dict = field(default_factory=dict)
    needle: str = ""  # a piece of the expected message


CASES: list[Case] = []


def case(id, argv, setup=None, env=None, needle=""):
    CASES.append(Case(id, tuple(argv), setup, dict(env or {}), needle))


# --- files that are not regular files, or not sane ---------------------------------------------
def _special(kind):
    def setup(d, base, name):
        path = d / name
        if kind == "fifo":
            hf.make_fifo(path)
        elif kind == "device":
            hf.make_char_device(path)
        elif kind == "socket":
            hf.make_socket(path)
        elif kind == "folder":
            path.mkdir()
        elif kind == "link-to-fifo":
            hf.make_fifo(d / "real-fifo")
            path.symlink_to(d / "real-fifo")
        elif kind == "link-to-device":
            hf.make_char_device(d / "real-device")
            path.symlink_to(d / "real-device")
    return setup


def _content(data: bytes):
    def setup(d, base, name):
        (d / name).write_bytes(data)
    return setup


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
INPUT_KINDS = {
    "missing": (None, "no such"),
    "fifo": (_special("fifo"), "FIFO"),
    "device": (_special("device"), "character device"),
    "socket": (_special("socket"), "socket"),
    "folder": (_special("folder"), "folder"),
    "link-to-fifo": (_special("link-to-fifo"), "FIFO"),
    "deep-array": (_content(DEEP_JSON), "levels deep"),
    "deep-object": (_content(DEEP_OBJECT), "levels deep"),
    "not-utf8": (_content(b'{"schema": "\xff\xfe\xfa"}'), "UTF-8"),
    "binary": (_content(bytes(range(256)) * 4), ""),
    "empty": (_content(b""), ""),
}
# loader -> (argv with {x} for the file, size-limit variable, a valid file to make too large)
LOADERS = {
    "policy-export": (["export", "{x}", "--to", "csv"], "BITSEARCH_MAX_POLICY_MB", "p.json"),
    "policy-eval": (["eval", "{x}", "--task", "semicircles-mlp"], "BITSEARCH_MAX_POLICY_MB", "p.json"),
    "policy-finetune": (["finetune", "{x}", "--task", "semicircles-mlp", "--out", "{d}/m.pt"],
                        "BITSEARCH_MAX_POLICY_MB", "p.json"),
    "problem": (SEARCH + ["--problem", "{x}"], "BITSEARCH_MAX_PROBLEM_MB", "prob.json"),
    "problem-npz": (SEARCH + ["--problem", "{x}"], "BITSEARCH_MAX_PROBLEM_MB", "prob.npz"),
    "suite": (["bench", "{x}", "--out", "{d}/bench-out"], "BITSEARCH_MAX_SUITE_MB", "suite.toml"),
    "latency-csv": (LATENCY_SEARCH + ["--latency-table", "{x}"], "BITSEARCH_MAX_LATENCY_MB", "latency.csv"),
    "hawq": (["import", "{x}", "--from", "hawq"], "BITSEARCH_MAX_IMPORT_MB", "hawq.json"),
    "nncf": (["import", "{x}", "--from", "nncf"], "BITSEARCH_MAX_IMPORT_MB", "nncf.json"),
    "model": (["eval", "{d}/p.json", "--task", "semicircles-mlp", "--model", "{x}"], "BITSEARCH_MAX_MODEL_MB",
              None),
}
_TEXT_ONLY = {"not-utf8", "deep-array", "deep-object"}  # a model file is binary: these say nothing there
_NAMES = {"suite": "input.toml", "latency-csv": "input.csv", "problem-npz": "input.npz"}
for loader, (argv, variable, valid) in LOADERS.items():
    for kind, (setup, needle) in INPUT_KINDS.items():
        if loader in ("model", "problem-npz") and kind in _TEXT_ONLY:
            continue
        if loader == "suite" and kind in ("deep-object", "binary"):
            continue  # the suite parser reads TOML: the TOML cases below cover it
        name = _NAMES.get(loader, "input")
        argv_here = [a.replace("{x}", "{d}/" + name) for a in argv]

        def wrapped(d, base, setup=setup, name=name):
            if setup is not None:
                setup(d, base, name)

        text_format = loader in ("latency-csv", "suite") or loader == "hawq" and kind.startswith("deep")
        case(f"{loader}-{kind}", argv_here, wrapped, needle="" if text_format and kind.startswith("deep") else needle)
    if valid:
        case(f"{loader}-too-large", [a.replace("{x}", "{d}/" + valid) for a in argv],
             env={variable: "0.0001"}, needle=variable)
case("size-limit-variable-not-a-number", ["export", "{d}/p.json", "--to", "csv"],
     env={"BITSEARCH_MAX_POLICY_MB": "lots"}, needle="BITSEARCH_MAX_POLICY_MB")
case("size-limit-variable-negative", SEARCH_PROBLEM, env={"BITSEARCH_MAX_PROBLEM_MB": "-5"},
     needle="BITSEARCH_MAX_PROBLEM_MB")
case("suite-deep-toml", ["bench", "{d}/deep.toml"],
     lambda d, b: (d / "deep.toml").write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n"), needle="levels deep")
case("suite-deep-inline-table", ["bench", "{d}/deep.toml"],
     lambda d, b: (d / "deep.toml").write_text("x = " + "{a = " * 10_000 + "1" + "}" * 10_000 + "\n"),
     needle="levels deep")
case("suite-problem-file-is-a-fifo", ["bench", "{d}/s.toml"],
     lambda d, b: (hf.make_fifo(d / "fifo.json"),
                   (d / "s.toml").write_text(hf.SUITE.replace('"prob.json"', '"fifo.json"'))), needle="FIFO")
case("hawq-python-nested-parentheses", ["import", "{d}/b.py", "--from", "hawq"],
     lambda d, b: (d / "b.py").write_text("x = " + "(" * 1000 + "1" + ")" * 1000 + "\n"))
case("hawq-python-deep-expression", ["import", "{d}/b.py", "--from", "hawq"],
     lambda d, b: (d / "b.py").write_text("x = 1" + " + 1" * 100_000 + "\n"))
case("hawq-python-null-byte", ["import", "{d}/b.py", "--from", "hawq"],
     lambda d, b: (d / "b.py").write_bytes(b"x = {'a': 1}\x00\n"))
case("hawq-python-unhashable-key", ["import", "{d}/b.py", "--from", "hawq"],
     lambda d, b: (d / "b.py").write_text("x = {[1]: 2}\n"))
case("hawq-python-call", ["import", "{d}/b.py", "--from", "hawq"],
     lambda d, b: (d / "b.py").write_text("x = {'quant_input': __import__('os').getpid()}\n"), needle="literals")
case("hawq-huge-integer", ["import", "{d}/b.json", "--from", "hawq"],
     lambda d, b: (d / "b.json").write_text('{"quant_input": ' + "9" * 5000 + "}"))
case("policy-huge-integer", ["export", "{d}/b.json", "--to", "csv"],
     lambda d, b: (d / "b.json").write_text('{"schema": "bitsearch-policy", "schema_version": ' + "1" * 5000 + "}"))


# --- output targets ----------------------------------------------------------------------------
def _target(kind):
    def setup(d, base):
        path = d / "target"
        if kind == "device":
            hf.make_char_device(path)
        elif kind == "folder":
            path.mkdir()
            (path / "keep.txt").write_text("keep")
        elif kind == "fifo":
            hf.make_fifo(path)
        elif kind == "socket":
            hf.make_socket(path)
        elif kind == "link-to-device":
            hf.make_char_device(d / "real-device")
            path.symlink_to(d / "real-device")
        elif kind == "link-to-folder":
            (d / "real-folder").mkdir()
            path.symlink_to(d / "real-folder")
        elif kind == "parent-is-a-file":
            path.write_text("a file")
    return setup


OUTPUT_TARGETS = {
    "device": ("{d}/target", "character device"),
    "folder": ("{d}/target", "folder"),
    "fifo": ("{d}/target", "FIFO"),
    "socket": ("{d}/target", "socket"),
    "link-to-device": ("{d}/target", "character device"),
    "link-to-folder": ("{d}/target", "folder"),
    "proc": ("/proc/bitsearch-test.json", "/proc"),
    "sys": ("/sys/bitsearch-test.json", "/sys"),
    "missing-folder": ("{d}/no/such/folder/out.json", "does not exist"),
    "parent-is-a-file": ("{d}/target/out.json", "not a folder"),
}
WRITERS = {
    "search-out": SEARCH_PROBLEM + ["--out", "{o}"],
    "search-write-problem": SEARCH_PROBLEM + ["--write-problem", "{o}"],
    "export-out": ["export", "{d}/p.json", "--to", "csv", "--out", "{o}"],
    "import-out": ["import", "{d}/hawq.json", "--from", "hawq", "--out", "{o}"],
}
for writer, argv in WRITERS.items():
    for kind, (target, needle) in OUTPUT_TARGETS.items():
        case(f"{writer}-to-{kind}", [a.replace("{o}", target) for a in argv],
             _target(kind) if target.startswith("{d}/target") else None, needle=needle)
for kind in ("device", "folder", "proc", "missing-folder"):
    target, needle = OUTPUT_TARGETS[kind]
    setup = _target(kind) if target.startswith("{d}/target") else None
    case(f"latency-template-to-{kind}", ["latency", "template", *hf.LATENCY_TASK, "--out", target], setup,
         needle=needle)
    case(f"finetune-out-to-{kind}", ["finetune", "{d}/p.json", "--task", "semicircles-mlp", "--out", target],
         setup, needle=needle)
    case(f"inspect-write-problem-to-{kind}", ["inspect", "--task", "semicircles-mlp", "--sensitivity", "hessian",
                                               "--write-problem", target], setup, needle=needle)
case("finetune-checkpoint-to-device", ["finetune", "{d}/p.json", "--task", "semicircles-mlp", "--out", "{d}/m.pt",
                                       "--checkpoint", "{d}/target"], _target("device"), needle="character device")
for kind, needle in (("device", "character device"), ("fifo", "FIFO"), ("parent-is-a-file", "not a folder")):
    target = "{d}/target" if kind != "parent-is-a-file" else "{d}/target/sub"
    case(f"bench-out-{kind}", ["bench", "{d}/suite.toml", "--out", target], _target(kind), needle=needle)
case("bench-out-is-a-file", ["bench", "{d}/suite.toml", "--out", "{d}/p.json"], needle="not a folder")
case("bench-out-proc", ["bench", "{d}/suite.toml", "--out", "/proc/bitsearch-bench"], needle="/proc")
case("bench-out-report-is-a-folder", ["bench", "{d}/suite.toml", "--out", "{d}/out"],
     lambda d, b: (d / "out" / "report.md").mkdir(parents=True), needle="report.md")
case("bench-out-journal-is-a-fifo", ["bench", "{d}/suite.toml", "--out", "{d}/out"],
     lambda d, b: ((d / "out").mkdir(), hf.make_fifo(d / "out" / "results.jsonl")), needle="FIFO")


# --- problem file contents ---------------------------------------------------------------------
def _problem(mutate, name="bad.json", raw=None):
    def setup(d, base):
        doc = json.loads(json.dumps(base["prob.json"]))
        mutate(doc)
        (d / name).write_text(raw(doc) if raw else json.dumps(doc))
    return setup


def _layer(doc, index=1):
    return doc["layers"][index]


def _set_sens(index, width, value):
    return lambda doc: _layer(doc, index)["sensitivity"].__setitem__(width, value)


def _set_costs(value, index=None):
    def mutate(doc):
        for i, layer in enumerate(doc["layers"]):
            layer["costs"] = {"latency": {str(w): (value if index in (None, i) else 1.0) for w in doc["weight_bits"]}}
        doc["cost_units"] = {"latency": "ms"}
    return mutate


def _first_kernel(index, value):
    def mutate(doc):
        sens = _layer(doc, index)["sensitivity"]
        sens["2"] = list(sens["2"])
        sens["2"][0] = value
    return mutate


BAD = "{d}/bad.json"
PROBLEM_SEARCH = SEARCH + ["--problem", BAD]
PROBLEM_CASES = {
    "per-kernel-list-mixed-with-a-number": (_set_sens(1, "2", 1.0), "mixes"),
    "negative-sensitivity": (_first_kernel(1, -0.5), "negative"),
    "negative-per-layer-sensitivity": (lambda doc: _layer(doc, 4).__setitem__(
        "sensitivity", {str(w): -1.0 for w in doc["weight_bits"]}), "negative"),
    "sensitivity-for-a-width-not-in-weight-bits": (_set_sens(1, "5", [0.1] * 12), "not among weight_bits"),
    "sensitivity-width-with-leading-zero": (_set_sens(1, "04", [0.1] * 12), "plain integers"),
    "sensitivity-nan-token": (None, "finite"),
    "sensitivity-infinity-token": (None, "finite"),
    "sensitivity-1e999": (None, "finite"),
    "sensitivity-huge-integer": (_first_kernel(1, 10 ** 400), "finite"),
    "sensitivity-not-a-number": (_first_kernel(1, "abc"), ""),
    "per-kernel-lists-of-two-lengths": (_set_sens(1, "2", [0.1] * 11), "different lengths"),
    "per-kernel-list-for-other-kernel-count": (lambda doc: [_layer(doc)["sensitivity"].__setitem__(k, [0.1] * 3)
                                                            for k in list(_layer(doc)["sensitivity"])], "kernels"),
    "duplicate-layer": (lambda doc: doc["layers"].append(json.loads(json.dumps(doc["layers"][0]))), "more than once"),
    "tied-unknown-layer": (lambda doc: doc.__setitem__("tied", [["stem", "nowhere"]]), "unknown layers"),
    "pinned-unknown-layer": (lambda doc: doc.__setitem__("pinned", {"nowhere": {"weight_bits": 8}}), "nowhere"),
    "cost-negative": (_set_costs(-1.0, index=2), "negative"),
    "cost-nan": (_set_costs(float("nan")), "finite"),
    "cost-infinite": (_set_costs(float("inf"), index=0), "finite"),
    "cost-for-a-width-not-in-weight-bits": (lambda doc: (_set_costs(1.0)(doc),
                                                         _layer(doc)["costs"]["latency"].__setitem__("7", 1.0)),
                                            "not among weight_bits"),
    "cost-missing-at-a-width": (lambda doc: (_set_costs(1.0)(doc), _layer(doc)["costs"]["latency"].pop("2")),
                                "no value"),
    "act-sensitivity-for-fixed-activations": (lambda doc: _layer(doc).__setitem__("act_sensitivity", {"4": 0.1}),
                                              "not among act_bits"),
    "missing-sensitivity": (lambda doc: _layer(doc).pop("sensitivity"), "sensitivity"),
    "no-layers": (lambda doc: doc.__setitem__("layers", []), ""),
    "negative-params": (lambda doc: _layer(doc).__setitem__("params", -5), ""),
    "params-not-an-integer": (lambda doc: _layer(doc).__setitem__("params", 1.5), ""),
    "weight-bits-zero": (lambda doc: doc.__setitem__("weight_bits", [0, 2]), ""),
    "weight-bits-huge": (lambda doc: doc.__setitem__("weight_bits", [2, 99]), ""),
    "unknown-field": (lambda doc: doc.__setitem__("surprise", 1), "unknown"),
    "wrong-schema": (lambda doc: doc.__setitem__("schema", "bitsearch-policy"), "schema"),
    "schema-version-2": (lambda doc: doc.__setitem__("schema_version", 2), "schema_version"),
    "top-level-list": (None, "JSON object"),
}
_RAW = {
    "sensitivity-nan-token": lambda doc: json.dumps(doc).replace('"2": [', '"2": [NaN, ', 1),
    "sensitivity-infinity-token": lambda doc: json.dumps(doc).replace('"2": [', '"2": [Infinity, ', 1),
    "sensitivity-1e999": lambda doc: json.dumps(doc).replace('"2": [', '"2": [1e999, ', 1),
    "top-level-list": lambda doc: json.dumps([doc]),
}
for name, (mutate, needle) in PROBLEM_CASES.items():
    raw = _RAW.get(name)
    if raw is not None and name.startswith("sensitivity-"):
        # one more entry in the first per-kernel list: drop one to keep the kernel count
        def mutate(doc):
            sens = doc["layers"][0]["sensitivity"]
            sens["2"] = sens["2"][1:]
    case(f"problem-{name}", PROBLEM_SEARCH, _problem(mutate or (lambda doc: None), raw=raw), needle=needle)


# --- columnar (.npz) problem contents ------------------------------------------------------------
def _npz(edit, name="bad.npz", compressed=False):
    """The valid prob.npz with its arrays changed by ``edit(arrays)`` (or replaced by what it returns)."""
    def setup(d, base):
        with np.load(d / "prob.npz", allow_pickle=False) as archive:
            arrays = {n: archive[n] for n in archive.files}
        arrays = edit(arrays) or arrays
        with open(d / name, "wb") as handle:
            (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    return setup


def _npz_set(name, value):
    return lambda arrays: arrays.__setitem__(name, value)


def _npz_poke(name, value, index=0):
    def edit(arrays):
        changed = np.array(arrays[name], dtype=float, order="C")  # a C-ordered copy: reshape is a view
        changed.reshape(-1)[index] = value
        arrays[name] = changed
    return edit


NPZ_CASES = {
    "pickled-object-array": (lambda a: a.__setitem__("name", a["name"].astype(object)), "not a readable .npz"),
    "sensitivity-nan": (_npz_poke("sensitivity", np.nan), "finite"),
    "sensitivity-inf": (_npz_poke("sensitivity", np.inf), "finite"),
    "sensitivity-negative": (_npz_poke("sensitivity", -1.0), "negative"),
    "sensitivity-1-d": (lambda a: a.__setitem__("sensitivity", a["sensitivity"].reshape(-1)), "2-D"),
    "sensitivity-wrong-columns": (lambda a: a.__setitem__("sensitivity", a["sensitivity"][:, :-1]), "columns"),
    "sensitivity-strings": (lambda a: a.__setitem__("sensitivity", a["sensitivity"].astype(str)), "numbers"),
    "params-float": (lambda a: a.__setitem__("params", a["params"].astype(float) + 0.5), "integers"),
    "params-short": (lambda a: a.__setitem__("params", a["params"][:-1]), "entries"),
    "names-repeat": (lambda a: a.__setitem__("name", np.array([a["name"][0]] * len(a["name"]))), "appears more than once"),
    "missing-sensitivity": (lambda a: a.__delitem__("sensitivity"), "missing arrays"),
    "unknown-array": (_npz_set("extra", np.zeros(3)), "unknown arrays"),
    "weight-bits-float": (lambda a: a.__setitem__("weight_bits", a["weight_bits"].astype(float)), "weight_bits"),
    "weight-bits-99": (lambda a: a.__setitem__("weight_bits", np.array([2, 4, 8, 99])[:len(a["weight_bits"])]),
                       "weight_bits"),
    "header-not-json": (_npz_set("header", np.array("{not json")), "array 'header': not valid JSON"),
    "header-not-utf8": (_npz_set("header", np.array(b'{"note": "\xff\xfe"}')), "array 'header'"),
    "header-unknown-field": (_npz_set("header", np.array('{"surprise": 1}')), "unknown fields"),
    "header-deep": (_npz_set("header", np.array("[" * 100_000 + "]" * 100_000)), "levels"),
    "header-wrong-schema": (_npz_set("header", np.array('{"schema": "bitsearch-policy"}')), "schema"),
    "layer-out-of-range": (lambda a: a.__setitem__("layer", np.arange(len(a["sensitivity"])) + 50), "layer"),
    "a-single-array": (None, "not a readable .npz archive"),
}


def _single_array(d, base):
    with np.load(d / "prob.npz", allow_pickle=False) as archive:
        sens = archive["sensitivity"]
    np.save(d / "bad.npy", sens)
    os.replace(d / "bad.npy", d / "bad.npz")  # one array where the archive belongs


for name, (edit, needle) in NPZ_CASES.items():
    setup = _single_array if edit is None else _npz(edit)
    case(f"problem-npz-{name}", SEARCH + ["--problem", "{d}/bad.npz"], setup, needle=needle)


def _damaged_member(d, base):
    """A compressed archive whose sensitivity member's deflate stream is broken (zlib's own
    error, which the fuzz found escaping as a traceback)."""
    with np.load(d / "prob.npz", allow_pickle=False) as archive:
        arrays = {n: archive[n] for n in archive.files}
    np.savez_compressed(d / "bad.npz", **arrays)
    data = bytearray((d / "bad.npz").read_bytes())
    start = data.index(b"sensitivity.npy") + len("sensitivity.npy") + 20  # past the name and its zip64 field
    data[start:start + 8] = b"\xff" * 8
    (d / "bad.npz").write_bytes(bytes(data))


case("problem-npz-damaged-member", SEARCH + ["--problem", "{d}/bad.npz"], _damaged_member,
     needle="not a readable .npz archive")
case("problem-npz-zip-bomb", SEARCH + ["--problem", "{d}/bad.npz"],
     _npz(lambda a: a.__setitem__("extra_zeros", np.zeros(2 ** 24)), compressed=True),
     env={"BITSEARCH_MAX_PROBLEM_MB": "8"}, needle="unpacks to")


# --- latency table contents --------------------------------------------------------------------
def _latency(edit, name="bad.csv", json_form=False):
    def setup(d, base):
        rows = [dict(r) for r in base["latency_rows"]]
        text = edit(rows)
        if text is None:
            text = json.dumps(hf.latency_json(rows)) if json_form else hf.latency_csv(rows)
        (d / name).write_text(text)
    return setup


def _row(index, **values):
    def edit(rows):
        rows[index].update(values)
    return edit


def _append(row_index, **values):
    def edit(rows):
        rows.append({**rows[row_index], **values})
    return edit


LATENCY_CASES = {
    "conflicting-duplicate-rows": (_append(3, latency=9.0), "repeats"),
    "identical-duplicate-rows": (_append(3), "repeats"),
    "unknown-layer": (_append(0, layer="not.a.layer"), "not a layer"),
    "inf-latency": (_row(2, latency="inf"), "finite"),
    "nan-latency": (_row(2, latency="nan"), "finite"),
    "negative-latency": (_row(2, latency=-0.5), "negative"),
    "empty-latency": (_row(2, latency=""), "no latency"),
    "text-latency": (_row(2, latency="fast"), "not a number"),
    "width-99": (_row(1, weight_bits=99), "outside"),
    "width-0": (_row(1, weight_bits=0), "outside"),
    "width-not-an-integer": (_row(1, weight_bits="4.5"), "integer"),
    "act-width-text": (_row(1, act_bits="eight"), "integer"),
    "missing-entry": (lambda rows: rows.pop(0) and None, "missing"),
    "no-device": (lambda rows: hf.latency_csv(rows, device=""), "device"),
    "missing-column": (lambda rows: hf.latency_csv(rows).replace(",latency\n", "\n", 1), "missing columns"),
    "null-byte": (_row(0, latency="0.0\x0004"), "not a number"),
    "field-too-large": (lambda rows: hf.latency_csv(rows, extra_lines=['"' + "x" * 200_000 + '",4,8,1']), "CSV"),
}
for name, (edit, needle) in LATENCY_CASES.items():
    case(f"latency-{name}", LATENCY_SEARCH + ["--latency-table", "{d}/bad.csv"], _latency(edit), needle=needle)
def _first_latency(rows, token):
    text = json.dumps(hf.latency_json(rows))
    changed = re.sub(r'"latency": [-0-9.e]+', f'"latency": {token}', text, count=1)
    assert changed != text
    return changed


LATENCY_JSON_CASES = {
    "json-conflicting-duplicate": (_append(3, latency=9.0), "repeats"),
    "json-unknown-layer": (_append(0, layer="not.a.layer"), "not a layer"),
    "json-nan-token": (lambda rows: _first_latency(rows, "NaN"), "finite"),
    "json-infinity-token": (lambda rows: _first_latency(rows, "-Infinity"), "finite"),
    "json-latency-true": (_row(0, latency=True), "not a number"),
    "json-width-float": (_row(0, weight_bits=4.0), "integer"),
    "json-entries-not-a-list": (lambda rows: json.dumps({**hf.latency_json(rows), "entries": {"a": 1}}), "list"),
    "json-device-not-a-string": (lambda rows: json.dumps({**hf.latency_json(rows), "device": 5}), "device"),
    "json-not-a-table": (lambda rows: json.dumps([1, 2, 3]), "schema"),
}
for name, (edit, needle) in LATENCY_JSON_CASES.items():
    case(f"latency-{name}", LATENCY_SEARCH + ["--latency-table", "{d}/bad.json"],
         _latency(edit, name="bad.json", json_form=True), needle=needle)


# --- budgets and widths ------------------------------------------------------------------------
for budget, needle in (("size=1e309", "too large"), ("size=1e309MB", "too large"), ("size=1e308GB", "too large"),
                       ("size=inf", ""), ("size=nan", ""), ("size=-1", ""), ("size=0", "positive"),
                       ("size=12.5e400%", "too large"), ("latency=frac:1.5", "between"), ("size=99bit", "between"),
                       ("size=4parsecs", "unit"), ("=4bit", ""), ("size", ""), ("size==4bit", ""),
                       ("size=4bit\x00", ""), ("sïze=4bit", "")):
    case(f"budget-{budget.encode('unicode_escape').decode()}",
         ["search", "--problem", "{d}/prob.json", "--searcher", "uniform", "--budget", budget], needle=needle)
for widths, needle in (("0-99999999999999", "outside"), ("2-8-3", ""), ("abc", "parse"), ("", ""), ("8-2", "parse"),
                       ("-3", ""), ("2,,x", "parse"), ("99", "outside")):
    case(f"weight-bits-{widths or 'empty'}", ["search", "--task", "task_factories:tiny_shape_only", "--searcher",
                                              "uniform", "--budget", "size=4bit", "--weight-bits", widths],
         needle=needle)


# --- policies, suites, HAWQ and NNCF contents --------------------------------------------------
def _text(name, text):
    def setup(d, base):
        (d / name).write_text(text)
    return setup


def _policy(mutate):
    def setup(d, base):
        doc = json.loads(json.dumps(base["p.json"]))
        mutate(doc)
        (d / "bad.json").write_text(json.dumps(doc))
    return setup


POLICY_CASES = {
    "layers-a-list": lambda doc: doc.__setitem__("layers", [1, 2]),
    "weight-bits-a-string": lambda doc: doc["layers"]["stem"].__setitem__("weight_bits", "4"),
    "weight-bits-true": lambda doc: doc["layers"]["stem"].__setitem__("weight_bits", True),
    "weight-bits-float": lambda doc: doc["layers"]["stem"].__setitem__("weight_bits", 4.0),
    "act-bits-a-list": lambda doc: doc["layers"]["stem"].__setitem__("act_bits", [8]),
    "wrong-schema": lambda doc: doc.__setitem__("schema", "bitsearch-problem"),
    "no-layers": lambda doc: doc.pop("layers"),
    "empty-per-kernel-list": lambda doc: doc["layers"]["stem"].__setitem__("weight_bits", []),
}
for name, mutate in POLICY_CASES.items():
    case(f"policy-{name}", ["export", "{d}/bad.json", "--to", "csv"], _policy(mutate))

SUITE_CASES = {
    "not-toml": "name = \n",
    "unknown-key": hf.SUITE + "surprise = 1\n",
    "budgets-not-a-list": hf.SUITE.replace('budgets = ["size=4bit"]', 'budgets = "size=4bit"'),
    "bad-budget": hf.SUITE.replace("size=4bit", "size=1e309"),
    "unknown-searcher": hf.SUITE.replace('name = "uniform"', 'name = "nosuch"'),
    "seeds-text": hf.SUITE.replace("seeds = [0, 1, 2]", 'seeds = "many"'),
    "huge-integer": hf.SUITE.replace("seeds = [0, 1, 2]", "seeds = [" + "9" * 5000 + ", 1, 2]"),
    "problem-file-missing": hf.SUITE.replace('"prob.json"', '"nowhere.json"'),
}
for name, text in SUITE_CASES.items():
    case(f"suite-{name}", ["bench", "{d}/bad.toml", "--out", "{d}/bench-out"], _text("bad.toml", text))

IMPORT_CASES = {
    "hawq-width-text": ("hawq", '{"quant_input": "eight"}'),
    "hawq-width-float": ("hawq", '{"quant_input": 8.5}'),
    "hawq-a-list": ("hawq", "[1, 2, 3]"),
    "hawq-empty-dict": ("hawq", "{}"),
    "hawq-unknown-quantizer": ("hawq", '{"quant_input": 8, "mystery.quant": 4}'),
    "hawq-python-no-dict": ("hawq", "x = 5\n"),
    "nncf-not-an-object": ("nncf", "[]"),
    "nncf-scopes-not-a-list": ("nncf", '{"bitwidth_per_scope": {"a": 1}}'),
    "nncf-bad-pair": ("nncf", '{"bitwidth_per_scope": [["x"]]}'),
    "nncf-width-text": ("nncf", '{"bitwidth_per_scope": [["eight", "ResNet/NNCFConv2d[conv1]/conv2d_0|WEIGHT"]]}'),
    "nncf-unmapped-scope": ("nncf", '{"bitwidth_per_scope": [[4, "ResNet/ReLU[relu]/relu__0|OUTPUT"]]}'),
}
for name, (fmt, text) in IMPORT_CASES.items():
    suffix = ".py" if "python" in name else ".json"
    case(f"import-{name}", ["import", "{d}/bad" + suffix, "--from", fmt], _text("bad" + suffix, text))


# --- the test ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-base")
    documents = hf.make_base(folder, main)
    return folder, documents


def _prepare(base, tmp_path, item: Case):
    folder, documents = base
    work = tmp_path / "w"
    shutil.copytree(folder, work, symlinks=True)
    if item.setup is not None:
        try:
            item.setup(work, documents)
        except PermissionError as exc:
            pytest.skip(f"cannot make the special file here ({exc})")
    argv = [a.replace("{d}", str(work)) for a in item.argv]
    return work, argv


def test_the_corpus_is_large_and_covers_every_class():
    assert len(CASES) >= 120, len(CASES)
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids repeat"
    for prefix in ("policy-", "problem-", "problem-npz-", "suite-", "latency-", "hawq-", "nncf-", "model-", "budget-",
                   "weight-bits-", "search-out-", "export-out-", "import-out-", "bench-out-", "finetune-",
                   "inspect-write-problem-", "latency-template-"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(item, base, tmp_path, capsys, monkeypatch):
    work, argv = _prepare(base, tmp_path, item)
    for name, value in item.env.items():
        monkeypatch.setenv(name, value)
    before = hf.snapshot(work)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert_one_line_error(code, err, item.needle)
    assert hf.snapshot(work) == before, "a file was written, replaced or removed"
    assert not Path("/proc/bitsearch-test.json").exists()


def test_the_base_files_are_valid(base, tmp_path, capsys):
    """Each case differs from a valid input by the hostile part only: the valid files pass."""
    folder, _ = base
    work = tmp_path / "w"
    shutil.copytree(folder, work)
    for argv in (SEARCH_PROBLEM, ["export", "{d}/p.json", "--to", "csv"], ["import", "{d}/hawq.json", "--from", "hawq"],
                 ["import", "{d}/hawq.py", "--from", "hawq"], ["import", "{d}/nncf.json", "--from", "nncf"],
                 LATENCY_SEARCH + ["--latency-table", "{d}/latency.csv"],
                 LATENCY_SEARCH + ["--latency-table", "{d}/latency.json"],
                 ["bench", "{d}/suite.toml", "--out", "{d}/bench-out", "--no-plots"]):
        assert main([a.replace("{d}", str(work)) for a in argv]) == 0, capsys.readouterr().err


SUBPROCESS_CASES = ["problem-fifo", "policy-export-device", "search-out-to-device", "bench-out-fifo",
                    "problem-deep-array", "latency-nan-latency", "budget-size=1e309"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_hostile_input_through_the_real_command(case_id, base, tmp_path):
    item = next(c for c in CASES if c.id == case_id)
    work, argv = _prepare(base, tmp_path, item)
    before = hf.snapshot(work)
    env = {**os.environ, **item.env, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, "-m", "bitsearch.cli", *argv], capture_output=True, text=True,
                          timeout=90, env=env)
    assert_one_line_error(proc.returncode, proc.stderr, item.needle)
    assert hf.snapshot(work) == before
