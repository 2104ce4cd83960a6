"""JSONL reader errors and atomic writing."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
from pathlib import Path

import pytest

from nemo_steerlm.data.io import (
    DataError,
    atomic_files,
    atomic_write,
    read_jsonl,
    sha256_file,
    write_jsonl_atomic,
    write_text_atomic,
)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_reads_line_numbers_crlf_and_unicode_separators(tmp_path: Path) -> None:
    # U+2028 raw inside a string must not split the line (str.splitlines would)
    p = _write(tmp_path / "a.jsonl", '{"a": 1}\r\n{"b": "x\u2028y\u0085z"}\n{"c": 3}'.encode())
    assert list(read_jsonl(p)) == [(1, {"a": 1}), (2, {"b": "x\u2028y\u0085z"}), (3, {"c": 3})]


def test_reads_gzip(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(b'{"a": 1}\n{"a": 2}\n')
    assert [obj["a"] for _, obj in read_jsonl(p)] == [1, 2]


@pytest.mark.parametrize(
    ("data", "line", "needle"),
    [
        (b'{"a": 1}\n{"a": \n', 2, "malformed JSON"),
        (b'{"a": 1}\n{"a": 2}\n{"a": "\xff\xfe"}\n', 3, "not valid UTF-8"),
        (b'{"a": 1}\n\n{"a": 2}\n', 2, "blank line"),
        (b'{"a": 1}\n   \n', 2, "blank line"),
        (b'{"a": 1}\n[1, 2]\n', 2, "expected a JSON object"),
        (b'{"a": 1, "a": 2}\n', 1, "duplicate key"),
        (b'{"a": NaN}\n', 1, "NaN"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, data: bytes, line: int, needle: str) -> None:
    p = _write(tmp_path / "data.jsonl", data)
    with pytest.raises(DataError, match=needle) as info:
        list(read_jsonl(p))
    assert str(info.value).startswith(f"{p}:{line}: ")
    assert info.value.line == line
    assert isinstance(info.value, ValueError)


def test_empty_file(tmp_path: Path) -> None:
    p = _write(tmp_path / "empty.jsonl", b"")
    with pytest.raises(DataError, match="empty") as info:
        list(read_jsonl(p))
    assert str(p) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def test_message_format() -> None:
    err = DataError("data.jsonl", "value 5 is out of range [0, 4]", 17, "helpfulness")
    assert str(err) == "data.jsonl:17: field 'helpfulness': value 5 is out of range [0, 4]"


def test_atomic_files_commit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_files(out) as files:
        files.open("sft/train.jsonl").write_lines(["{}", "{}"])
        files.open("manifest.json").write_text("{}\n")
        assert not (out / "sft" / "train.jsonl").exists()  # nothing in place before the block ends
    assert files.counts == {"sft/train.jsonl": 2, "manifest.json": 0}
    assert (out / "sft" / "train.jsonl").read_text() == "{}\n{}\n"
    assert sorted(p.name for p in out.rglob("*")) == ["manifest.json", "sft", "train.jsonl"]
    mode = stat.S_IMODE(os.stat(out / "manifest.json").st_mode)
    assert mode & 0o044, "committed files get the umask mode, not mkstemp's 0600"


def test_atomic_files_error_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_files(out) as files:
        files.open("sft/train.jsonl").write_line("{}")
        files.open("regression/train.jsonl").write_line("{}")
        raise RuntimeError("boom")
    assert not out.exists()


def test_atomic_files_error_keeps_previous_files(tmp_path: Path) -> None:
    target = tmp_path / "a.jsonl"
    target.write_text("old\n")
    with pytest.raises(ValueError), atomic_files(tmp_path) as files:
        files.open("a.jsonl").write_line("new")
        files.open("b.jsonl").write_line("line\nwith newline")  # rejected: a raw newline would split the row
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_write_jsonl_atomic_and_sha(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    assert write_jsonl_atomic(p, ['{"a": 1}', '{"a": "é"}']) == 2
    assert sha256_file(p) == hashlib.sha256('{"a": 1}\n{"a": "é"}\n'.encode()).hexdigest()


def test_atomic_write_gives_plain_open_mode_and_keeps_the_old_file_on_error(tmp_path):
    """The one callback writer (plots, reports, .nemo archives): the mode a plain open() gives, and all-or-nothing."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    dest = write_text_atomic(tmp_path / "sub" / "report.md", "new\n")
    assert dest.read_text() == "new\n"
    assert stat.S_IMODE(os.stat(dest).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(dest, half_then_fail)
    assert dest.read_text() == "new\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["report.md"]  # no temporary file left behind
