"""Valid input files of every kind, and ways to make hostile ones, for the hostile-input
tests (test_hostile_corpus.py, test_fuzz_loaders.py).

:func:`make_base` writes, into a folder, one valid file of each kind the command reads:
``prob.json`` (a tabular problem), ``p.json`` (a policy for it), ``suite.toml`` (a bench
suite on ``prob.json``), ``hawq.json`` / ``hawq.py`` (HAWQ-V3 bit_configs), ``nncf.json``,
``latency.csv`` / ``latency.json`` (latency tables of a tiny shape-only task, widths 4 and
8).  :func:`snapshot` describes a folder tree so a test can assert
that nothing in it was written, replaced or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
from pathlib import Path

from helpers import small_problem

# a shape-only task that discovers in milliseconds (tests/task_factories.py)
LATENCY_TASK = ["--task", "task_factories:tiny_shape_only", "--weight-bits", "4,8", "--act-bits", "8"]

SUITE = """\
name = "hostile"
problem = "prob.json"
seeds = [0, 1, 2]
budgets = ["size=4bit"]
oracle = false

[[searchers]]
name = "uniform"
"""

HAWQ = {"quant_input": 8, "quant_init_block_convbn": 8, "stage1.unit1.quant_act": 8,
        "stage1.unit1.quant_convbn1": 4, "quant_act_output": 8, "quant_output": 8}

HAWQ_PY = """\
# a bit_config.py as HAWQ-V3 ships it
bit_config_dict = {
    "bit_config_mine": %s,
}
""" % json.dumps(HAWQ)

NNCF = {"compression": {"algorithm": "quantization", "activations": {"bits": 8},
                        "initializer": {"precision": {"type": "manual", "bitwidth_per_scope": [
                            [4, "ResNet/NNCFConv2d[conv1]/conv2d_0|WEIGHT"],
                            [8, "ResNet/NNCFLinear[fc]/linear_0|WEIGHT"]]}}}}


def latency_rows(main, directory: Path) -> list[dict]:
    """The rows of a filled latency table for LATENCY_TASK (from the command's template)."""
    from bitsearch import latency

    template = directory / "template.csv"
    assert main(["latency", "template", *LATENCY_TASK, "--out", str(template)]) == 0
    _, keys = latency.read_template(template)
    template.unlink()
    return [{"layer": n, "weight_bits": w, "act_bits": "float" if a is None else a,
             "latency": round(0.001 * w * (i + 1), 6)} for i, (n, w, a) in enumerate(keys)]


def latency_csv(rows, device="test board", extra_lines=()) -> str:
    lines = [f"# device: {device}", "# unit: ms", "layer,weight_bits,act_bits,latency"]
    lines += [f"{r['layer']},{r['weight_bits']},{r['act_bits']},{r['latency']}" for r in rows]
    return "\n".join(list(lines) + list(extra_lines)) + "\n"


def latency_json(rows, device="test board") -> dict:
    return {"schema": "bitsearch-latency-table", "schema_version": 1, "device": device, "unit": "ms",
            "entries": [dict(r) for r in rows]}


def make_base(directory: Path, main) -> dict:
    """Write the valid files into ``directory``; returns the parsed documents by name."""
    from bitsearch.tabular import problem_to_dict, write_problem

    directory.mkdir(parents=True, exist_ok=True)
    problem = small_problem()
    write_problem(problem, directory / "prob.json")
    write_problem(problem, directory / "prob.npz")
    assert main(["search", "--problem", str(directory / "prob.json"), "--searcher", "uniform",
                 "--budget", "size=4bit", "--out", str(directory / "p.json")]) == 0
    (directory / "suite.toml").write_text(SUITE)
    (directory / "hawq.json").write_text(json.dumps(HAWQ))
    (directory / "hawq.py").write_text(HAWQ_PY)
    (directory / "nncf.json").write_text(json.dumps(NNCF))
    rows = latency_rows(main, directory)
    (directory / "latency.csv").write_text(latency_csv(rows))
    (directory / "latency.json").write_text(json.dumps(latency_json(rows)))
    return {"prob.json": problem_to_dict(problem), "p.json": json.loads((directory / "p.json").read_text()),
            "latency_rows": rows}


# --- special files ---------------------------------------------------------------------------
def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_char_device(path: Path) -> None:
    """A character device with /dev/full's numbers (1, 7), made here, never on /dev; raises
    PermissionError where mknod is not permitted (the caller skips)."""
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 7))


def make_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    finally:
        sock.close()


# --- what a folder holds ---------------------------------------------------------------------
def snapshot(root: Path) -> dict:
    """Every entry under ``root`` (links not followed): its type, and for a regular file its
    size, modification time and content hash."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = os.lstat(path)
            entry = [stat.S_IFMT(st.st_mode)]
            if stat.S_ISREG(st.st_mode):
                entry += [st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()]
            elif stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry.append(st.st_rdev)
            out[str(path.relative_to(root))] = tuple(entry)
    return out
