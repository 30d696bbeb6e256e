"""bitsearch._io: the one output path and the one input path, unit by unit."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from bitsearch._io import (atomic_write_text, check_output, check_output_dir, input_limit, json_nesting,
                           load_json_input, open_input, parse_json, read_input, read_text_input, toml_nesting)
from bitsearch.errors import InputFileError, OutputFileError

import hostile_files as hf


def _true_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_true_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_true_depth(v) for v in value), default=0)
    return 0


# --- nesting, without parsing ------------------------------------------------------------------
@pytest.mark.parametrize("doc", [
    {}, [], 1, "x", {"a": [1, [2, "]]]]"]], "b": {"c": "\\\"[[[", "d": "\\\\"}},
    [[[["[", "{"]]], {"k]": {"[": []}}], {"a\\\\": ["\\\\\"", [[]]]}, "[[[[[[[[",
])
def test_json_nesting_counts_brackets_outside_strings(doc):
    text = json.dumps(doc)
    assert json_nesting(text) == json_nesting(text.encode()) == _true_depth(doc)


def test_json_nesting_of_huge_depth_is_a_scan_not_a_crash():
    assert json_nesting(b"[" * 200_000 + b"]" * 200_000) == 200_000
    with pytest.raises(ValueError, match="200000 levels deep"):
        parse_json(b"[" * 200_000 + b"]" * 200_000, ValueError)
    # at the limit it parses; one more level is refused
    assert parse_json("[" * 64 + "]" * 64, ValueError) is not None
    with pytest.raises(ValueError, match="65 levels"):
        parse_json("[" * 65 + "]" * 65, ValueError)


def test_parse_json_messages():
    with pytest.raises(ValueError, match="not valid JSON: Expecting"):
        parse_json("{", ValueError)
    with pytest.raises(ValueError, match="4300 digits"):
        parse_json("1" * 5000, ValueError)
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_json(b'{"a": "\xff"}', ValueError)
    assert parse_json(b"\xef\xbb\xbf[1]", ValueError) == [1]  # a byte-order mark is dropped


def test_toml_nesting_skips_strings_and_comments():
    text = ('a = [[1, 2], [3]]  # [[[[[[\nb = "[[[\\"[["\nc = \'[[[\'\nd = """\n[[[[\n"""\n'
            "e = '''[[['''\n[t]\nf = {g = {h = [1]}}\n[[arr]]\n")
    assert toml_nesting(text) == 3
    assert toml_nesting("x = " + "[" * 1000 + "]" * 1000) == 1000


# --- reading -----------------------------------------------------------------------------------
def test_read_input_refuses_what_is_not_a_regular_file(tmp_path):
    hf.make_fifo(tmp_path / "fifo")
    hf.make_socket(tmp_path / "sock")
    (tmp_path / "dir").mkdir()
    for name, needle in (("fifo", "FIFO"), ("sock", "socket"), ("dir", "folder"), ("missing", "no such file")):
        with pytest.raises(InputFileError, match=needle):
            read_input(tmp_path / name, "policy")
    with pytest.raises(InputFileError, match="not a folder"):
        read_input(tmp_path / "fifo" / "x", "policy")
    try:
        hf.make_char_device(tmp_path / "dev")
    except PermissionError:
        return
    with pytest.raises(InputFileError, match="character device"):
        read_input(tmp_path / "dev", "policy")


def test_a_fifo_is_refused_at_once_even_with_a_writer(tmp_path):
    """No open() of the FIFO happens: a writer waiting on the other end stays blocked."""
    fifo = tmp_path / "fifo"
    hf.make_fifo(fifo)
    start = time.monotonic()
    with pytest.raises(InputFileError):
        open_input(fifo, "problem")
    assert time.monotonic() - start < 5


def test_size_limits_name_the_variable_and_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    path.write_bytes(b"[" + b"1," * 3000 + b"1]")
    monkeypatch.setenv("BITSEARCH_MAX_POLICY_MB", "0.001")
    with pytest.raises(InputFileError, match=r"over the 1,048 bytes limit for policy files.*BITSEARCH_MAX_POLICY_MB"):
        read_input(path, "policy")
    monkeypatch.setenv("BITSEARCH_MAX_POLICY_MB", "1")
    assert len(load_json_input(path, "policy")) == 3001
    monkeypatch.setenv("BITSEARCH_MAX_POLICY_MB", "-1")
    with pytest.raises(Exception, match="BITSEARCH_MAX_POLICY_MB"):
        input_limit("policy")
    monkeypatch.delenv("BITSEARCH_MAX_POLICY_MB")
    assert input_limit("policy") == 64 << 20


def test_a_file_that_reports_no_size_is_still_bounded(monkeypatch):
    """/proc files are regular with st_size 0: the read stops at the limit."""
    monkeypatch.setenv("BITSEARCH_MAX_IMPORT_MB", "0.0001")  # 104 bytes
    with pytest.raises(InputFileError, match="limit for import files"):
        read_input("/proc/self/maps", "import")


def test_read_text_input_names_the_first_bad_byte(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"abc\xffdef")
    with pytest.raises(InputFileError, match="byte 0xff at offset 3"):
        read_text_input(path, "suite")


# --- writing -----------------------------------------------------------------------------------
def test_check_output_refuses_non_files_and_kernel_interfaces(tmp_path):
    hf.make_fifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [(tmp_path / "fifo", "FIFO"), (tmp_path / "dir", "folder"), ("/proc/x.json", "/proc"),
             ("/sys/x.json", "/sys"), (tmp_path / "nope" / "x.json", "does not exist"),
             (tmp_path / "file" / "x.json", "not a folder"), ("/proc/self/fd/1", "/proc")]
    for path, needle in cases:
        with pytest.raises(OutputFileError, match=needle):
            check_output(path)
    assert check_output(tmp_path / "file") == tmp_path / "file"
    assert check_output(tmp_path / "new" / "deeper" / "x", parents=True) == tmp_path / "new" / "deeper" / "x"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_atomic_write_never_replaces_a_device(tmp_path):
    device = tmp_path / "full"
    try:
        hf.make_char_device(device)
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    for target in (device, tmp_path / "link"):
        if target.name == "link":
            target.symlink_to(device)
        with pytest.raises(OutputFileError, match="character device"):
            atomic_write_text(target, "{}")
    assert device.is_char_device() and (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "link"]  # no temporary file left


def test_atomic_write_through_a_link_keeps_the_link(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_atomic_write_refuses_a_target_swapped_for_a_fifo_while_writing(tmp_path):
    target = tmp_path / "out.json"

    def swap(handle):
        handle.write(b"{}")
        hf.make_fifo(target)

    from bitsearch._io import atomic_write

    with pytest.raises(OutputFileError, match="FIFO"):
        atomic_write(target, swap)
    assert target.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_write_that_fails_is_a_one_line_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "x.json").write_text("old")

    def fail(handle):
        raise OSError(28, "No space left on device")

    from bitsearch._io import atomic_write

    with pytest.raises(OutputFileError, match="No space left on device"):
        atomic_write(folder / "x.json", fail)
    assert (folder / "x.json").read_text() == "old" and len(list(folder.iterdir())) == 1


def test_check_output_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    hf.make_fifo(tmp_path / "fifo")
    for path, needle in ((tmp_path / "file", "not a folder"), (tmp_path / "fifo", "FIFO"),
                         (tmp_path / "file" / "sub", "not a folder"), ("/proc/bench", "/proc"),
                         ("/sys/bench", "/sys")):
        with pytest.raises(OutputFileError, match=needle):
            check_output_dir(path)
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()


def test_no_thread_is_left_blocked(tmp_path):
    """Opening a FIFO for reading would block in open(); none of the readers does."""
    fifo = tmp_path / "fifo"
    hf.make_fifo(fifo)
    from bitsearch.cost.tables import LatencyTableCost
    from bitsearch.errors import UserInputError
    from bitsearch.policy import load_policy
    from bitsearch.tabular import load_problem

    errors = []

    def read_all():
        for reader in (load_policy, load_problem, LatencyTableCost.load):
            try:
                reader(fifo)
            except UserInputError as exc:
                errors.append(str(exc))

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive() and len(errors) == 3 and all("FIFO" in e for e in errors)
    assert os.path.exists(fifo)
