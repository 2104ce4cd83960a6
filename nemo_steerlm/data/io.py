r"""JSONL reading that never silently drops anything, atomic file writing and checksums.

Reading rules (see ``docs/data.md``):

* Every line must be one JSON object. A line that is not valid UTF-8, not valid JSON, not an object, holds a
  duplicate key or a non-standard constant (``NaN``, ``Infinity``) raises :class:`DataError` naming the file and the
  1-based line.
* Blank (empty or whitespace-only) lines are errors, not skips: a JSONL file with holes is usually a bad
  concatenation, and a skip would shift every later line number a user compares against. Only the final newline of
  the file is allowed.
* An empty file is an error.
* Lines are split on ``\n`` only (never on Unicode line separators such as U+2028 that may appear raw inside
  JSON strings written with ``ensure_ascii=False``); a trailing ``\r`` is accepted.
* ``.gz`` files are read through gzip.

Writing is atomic: each file is written to a temporary file in its target directory, flushed and fsynced, then moved
into place with :func:`os.replace`. :func:`atomic_files` groups several files: either all of them are moved into
place or, on any error inside the block, none is and the temporary files are removed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from nemo_steerlm.errors import UserError


class DataError(UserError):
    """An input record that breaks a data rule; the message names the file, the 1-based line and the field.

    Args:
        path: the file (or hub id) the record came from.
        message: what is wrong.
        line: 1-based line number (or row number for hub / parquet data), if known.
        field: dotted name of the offending field, if any.
        unit: what ``line`` counts (``"line"``, ``"row"`` or ``"item"``); lines are written ``file:17``, the others
            ``file: row 17``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        message: str,
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path
        if line is not None:
            where += f":{line}" if unit == "line" else f": {unit} {line}"
        text = f"{where}: field '{field}': {message}" if field else f"{where}: {message}"
        super().__init__(text)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name} is not allowed")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} (a JSON object may hold each key once)")
        out[key] = value
    return out


def parse_json_line(raw: bytes | str, path: str | os.PathLike[str], line: int) -> dict[str, Any]:
    """Decodes one JSONL line into a dict, raising :class:`DataError` that names ``path:line``."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                path, f"bytes are not valid UTF-8 (byte {err.start}: {raw[err.start : err.start + 1]!r})", line
            ) from None
    else:
        text = raw
    if text.startswith("\ufeff") and line == 1:
        text = text[1:]
    if not text.strip():
        raise DataError(path, "blank line; every line of a JSONL file must hold one JSON object (remove it)", line)
    try:
        obj = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except ValueError as err:
        raise DataError(path, f"malformed JSON: {err}", line) from None
    except RecursionError:
        raise DataError(path, "JSON nested too deeply", line) from None
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", line)
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            bad = f"\\u{ord(err.object[err.start]):04x}"
            message = f"a string holds the unpaired surrogate escape {bad}, which is not text"
            raise DataError(path, message, line) from None
    return obj


def open_binary(path: str | os.PathLike[str]) -> IO[bytes]:
    """Opens ``path`` for binary reading, through gzip when it ends in ``.gz``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(path, "file not found" if not p.exists() else "not a regular file")
    if p.suffix == ".gz":
        return gzip.open(p, "rb")
    return open(p, "rb")


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, object)`` for every line of a JSONL (or ``.jsonl.gz``) file.

    Raises:
        DataError: on an empty file, a blank line, bytes that are not UTF-8, malformed JSON, a line that is not an
            object, duplicate keys or NaN/Infinity; the message names the file and the 1-based line.
    """
    seen = 0
    with open_binary(path) as fh:
        try:
            for seen, raw in enumerate(fh, start=1):  # noqa: B007 - `seen` is read after the loop
                yield seen, parse_json_line(raw, path, seen)
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise DataError(path, f"cannot read the file after line {seen}: {err}") from None
    if seen == 0:
        raise DataError(path, "the file is empty; expected one JSON object per line")


def dump_json_line(obj: Any) -> str:
    """The reference serialisation: ``json.dumps(obj, ensure_ascii=False)`` (no trailing newline)."""
    return json.dumps(obj, ensure_ascii=False)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class LineWriter:
    """Writes text lines to one temporary file, counting rows and hashing the bytes as they go."""

    def __init__(self, target: Path, handle: IO[bytes], tmp_path: Path) -> None:
        self.target = target
        self.tmp_path = tmp_path
        self._fh = handle
        self._hash = hashlib.sha256()
        self.rows = 0

    def write_line(self, line: str) -> None:
        """Writes ``line`` plus a newline; ``line`` must not contain a newline itself."""
        if "\n" in line:
            raise ValueError(f"{self.target}: a JSONL line may not contain a raw newline")
        data = (line + "\n").encode("utf-8")
        self._fh.write(data)
        self._hash.update(data)
        self.rows += 1

    def write_lines(self, lines: Iterable[str]) -> None:
        """Writes each of ``lines``."""
        for line in lines:
            self.write_line(line)

    def write_text(self, text: str) -> None:
        """Writes raw text (not counted as rows), e.g. a JSON document."""
        data = text.encode("utf-8")
        self._fh.write(data)
        self._hash.update(data)

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far."""
        return self._hash.hexdigest()

    def close(self) -> None:
        """Flushes, fsyncs and closes the temporary file."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


class AtomicFileSet:
    """A group of files written together; see :func:`atomic_files`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.writers: dict[str, LineWriter] = {}
        self.created_dirs: list[Path] = []
        self.counts: dict[str, int] = {}

    def open(self, relpath: str) -> LineWriter:
        """A writer for ``root/relpath`` (created on commit); each path may be opened once."""
        if relpath in self.writers:
            raise ValueError(f"{relpath} is already open in this atomic file set")
        target = self.root / relpath
        missing = [d for d in [target.parent, *target.parent.parents] if not d.exists()]
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:  # another process made it meanwhile: it is not ours to remove on abort
                continue
            self.created_dirs.append(directory)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        writer = LineWriter(target, os.fdopen(fd, "wb"), Path(tmp))
        self.writers[relpath] = writer
        return writer

    def _commit(self) -> None:
        mode = 0o666 & ~_current_umask()  # mkstemp creates 0600 files; give them the mode a plain open() would
        for writer in self.writers.values():
            writer.close()
            os.chmod(writer.tmp_path, mode)
        for relpath, writer in self.writers.items():
            os.replace(writer.tmp_path, writer.target)
            self.counts[relpath] = writer.rows
        for directory in {w.target.parent for w in self.writers.values()}:
            _fsync_dir(directory)

    def _abort(self) -> None:
        for writer in self.writers.values():
            with contextlib.suppress(OSError):
                writer._fh.close()
            with contextlib.suppress(FileNotFoundError):
                writer.tmp_path.unlink()
        for directory in reversed(self.created_dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only removes the directories this set created, and only when left empty


@contextlib.contextmanager
def atomic_files(root: str | os.PathLike[str]) -> Iterator[AtomicFileSet]:
    """Writes several files under ``root`` all-or-none.

    Usage::

        with atomic_files(out_dir) as files:
            files.open("sft/train.jsonl").write_lines(lines)
        files.counts  # {"sft/train.jsonl": 123}

    Everything is written to temporary files next to the targets and fsynced; only when the block exits without an
    error are the files moved into place (``os.replace``), after which ``files.counts`` holds the rows per file. On
    an error the temporary files (and the directories the set created) are removed and the error propagates.
    """
    fileset = AtomicFileSet(Path(root))
    try:
        yield fileset
        fileset._commit()
    except BaseException:
        fileset._abort()
        raise


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], None], suffix: str = "") -> Path:
    """Calls ``writer(tmp_path)`` to fill a temporary file next to ``path``, then moves it onto ``path``.

    For files written by another library (a plot, a tar archive); the file gets the mode a plain ``open()`` would
    give it and is fsynced before the rename. On an error the temporary file is removed and the error propagates.

    Args:
        path: destination file; its parent folder is created if missing.
        writer: writes the complete content to the path it is given.
        suffix: suffix of the temporary file (matplotlib picks the format from it, e.g. ``".png"``).

    Returns:
        The destination path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return dest


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically and returns the path."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_jsonl_atomic(path: str | os.PathLike[str], lines: Iterable[str]) -> int:
    """Writes ``lines`` to ``path`` atomically, one per line; returns the row count."""
    p = Path(path)
    with atomic_files(p.parent) as files:
        files.open(p.name).write_lines(lines)
    return files.counts[p.name]


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes ``obj`` as indented JSON through a temporary file in the same folder and a rename."""
    p = Path(path)
    with atomic_files(p.parent) as files:
        files.open(p.name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
