"""What produced a stage's output folder, and who is writing it now: fingerprints and a lock per ``output_dir``.

Every stage writes ``output_dir/<job>.fingerprint.json`` before it starts: the resolved config (less the keys that
only say where to write or when to stop, :data:`RESUMABLE_KEYS`), a digest of every input file or folder the config
names (outside ``output_dir``) and the package version. A rerun into the same folder resumes only when all of them
match; otherwise it refuses, naming the first setting that changed, unless ``overwrite=true`` is given: then the
folder's earlier results are deleted and the stage starts fresh.

While a stage runs, its launcher rank 0 (``RANK`` / ``SLURM_PROCID``, 0 when unset) holds an exclusive
``fcntl.flock`` on ``output_dir/.<job>.lock``; a second run into the same folder stops at once (exit 2) naming the
holder. The other ranks of the same job take no lock (they would lock their own rank 0 out).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemo_steerlm import __version__
from nemo_steerlm.data.io import write_json_atomic
from nemo_steerlm.errors import OutputInUseError, UserError
from nemo_steerlm.recipes.common import launcher_rank

# keys that never change what a stage writes: where it writes, how it reports, when training stops
RESUMABLE_KEYS = frozenset({"output_dir", "overwrite", "progress", "trainer.max_steps", "trainer.max_epochs"})
# path-valued keys compared by name only: evaluate's run_dir is the whole chain folder (it reads stage timings)
NAME_ONLY_KEYS = frozenset({"run_dir"})
# bookkeeping and log files: never part of an input folder's digest (they change after every run; in `run` one
# process runs every stage, so a stage's log file keeps growing while later stages run)
BOOKKEEPING_SUFFIXES = (".summary.json", ".config.yaml", ".fingerprint.json", ".lock", ".log", ".txt")
FULL_HASH_LIMIT = 64 << 20
# names of the atomic writers' temporary files: mkstemp's ``.NAME.XXXXXXXX.tmp`` and the ``.NAME.nemo.tmp`` archive
TEMPORARY = re.compile(r"^\..+\.([a-z0-9_]{8}|nemo)\.tmp$")


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for key, value in cfg.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: cfg}


def _file_digest(path: Path) -> str:
    """sha256 of the bytes; above 64 MiB, of the size and the first and last MiB (weights: large, rarely edited)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(f"size={size}".encode())
            digest.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            digest.update(f.read(1 << 20))
    return digest.hexdigest()


def input_digest(path: Path, output_dir: Path) -> str:
    """Digest of an input file, or of a folder's files (names and contents) outside ``output_dir``."""
    if path.is_file():
        return _file_digest(path)
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        if not item.is_file() or item.name.endswith(BOOKKEEPING_SUFFIXES) or item.name.startswith("events.out"):
            continue
        if item.resolve().is_relative_to(output_dir):
            continue
        digest.update(f"{item.relative_to(path).as_posix()}\0{_file_digest(item)}\n".encode())
    return digest.hexdigest()


def fingerprint(job: str, cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """The record of what produces ``output_dir``: config (less :data:`RESUMABLE_KEYS`), input digests, version."""
    output_dir = output_dir.resolve()
    flat = _flat(OmegaConf.to_container(cfg, resolve=True))
    config = {k: v for k, v in sorted(flat.items()) if k not in RESUMABLE_KEYS}
    inputs = {}
    for key, value in config.items():
        if key in NAME_ONLY_KEYS or not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
            continue
        path = Path(value).expanduser()
        if not path.exists() or path.resolve() == output_dir or path.resolve().is_relative_to(output_dir):
            continue
        inputs[key] = input_digest(path, output_dir)
    return {"job": job, "nemo_steerlm_version": __version__, "config": config, "inputs": inputs}


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first difference between two fingerprints, in words; None when they match."""
    if old.get("nemo_steerlm_version") != new["nemo_steerlm_version"]:
        return f"nemo-steerlm version was {old.get('nemo_steerlm_version')}, now {new['nemo_steerlm_version']}"
    before, now = old.get("config", {}), new["config"]
    for key in sorted(set(before) | set(now)):
        if before.get(key, "<unset>") != now.get(key, "<unset>"):
            return f"{key} was {before.get(key, '<unset>')!r}, now {now.get(key, '<unset>')!r}"
    for key in sorted(set(old.get("inputs", {})) | set(new["inputs"])):
        if old.get("inputs", {}).get(key) != new["inputs"].get(key):
            return f"the content of {key}={now.get(key)} changed since the earlier run"
    return None


def _stage_outputs(output_dir: Path, job: str) -> list[Path]:
    """Results an earlier run (of any version) left in ``output_dir``."""
    return [p for p in output_dir.iterdir() if p.name != f".{job}.lock"] if output_dir.is_dir() else []


def check_fingerprint(job: str, cfg: DictConfig, output_dir: Path, overwrite: bool) -> dict[str, Any]:
    """Refuses an ``output_dir`` holding results of other settings (clears it with ``overwrite``); returns the record.

    Raises:
        OutputInUseError: the earlier run's settings or inputs differ, or the folder holds results with no record.
    """
    new = fingerprint(job, cfg, output_dir)
    record = output_dir / f"{job}.fingerprint.json"
    how = "pass overwrite=true to delete them and start fresh, or choose another output_dir"
    if record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = {}
        change = _difference(old, new)
    elif any(p.name in (f"{job}.summary.json", f"{job}.config.yaml") for p in _stage_outputs(output_dir, job)):
        change = "they were written without a record of their settings"
    else:
        change = None
    if change is None:
        return new
    if not overwrite:
        raise OutputInUseError(f"output_dir={output_dir} holds results of other settings ({change}): {how}")
    print(f"nemo-steerlm: overwrite=true: deleting the earlier results in {output_dir} ({change})", flush=True)
    for item in _stage_outputs(output_dir, job):
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    return new


@contextlib.contextmanager
def output_lock(job: str, output_dir: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``output_dir/.<job>.lock`` (launcher rank 0 only) while the block runs.

    Raises:
        OutputInUseError: another process holds the lock (the message names its host and pid).
    """
    if launcher_rank() != 0:
        yield
        return
    path = output_dir / f".{job}.lock"
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputInUseError(
                f"output_dir={output_dir} is in use by a running {job} ({holder}); wait for it or choose another"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Deletes the atomic writers' temporary files (``.NAME.XXXX.tmp``) a killed earlier run left in ``output_dir``.

    Called under the folder's lock, so no running writer owns them; ``shards/`` is left alone (its shard jobs hold
    locks of their own).
    """
    stale = [
        p
        for p in output_dir.rglob(".*.tmp")
        if p.is_file() and TEMPORARY.match(p.name) and "shards" not in p.relative_to(output_dir).parts[:-1]
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        print(f"nemo-steerlm: removed {len(stale)} temporary file(s) a killed earlier run left in {output_dir}")
    return stale


@contextlib.contextmanager
def guard_output_dir(job: str, cfg: DictConfig, output_dir: Path) -> Iterator[None]:
    """Creates ``output_dir``, locks it and checks/records the fingerprint of ``job`` (launcher rank 0 only).

    A run that fails in a folder it found empty (or absent) before writing anything leaves nothing behind: its
    fingerprint, its lock file and the then empty folder are removed.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output_dir={output_dir} is a file, not a folder: choose a folder")
    if launcher_rank() != 0:
        yield
        return
    fresh = not output_dir.exists() or not any(output_dir.iterdir())
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = output_lock(job, output_dir)
        lock.__enter__()
    except OSError as err:
        raise UserError(f"output_dir={output_dir}: cannot write there ({err.strerror or err})") from None
    failed = True
    try:
        overwrite = bool(OmegaConf.select(cfg, "overwrite", default=False))
        record = check_fingerprint(job, cfg, output_dir, overwrite)
        if "." not in job:  # not a shard or a merge: no other job writes this folder
            remove_stale_temporaries(output_dir)
        try:
            write_json_atomic(output_dir / f"{job}.fingerprint.json", record)
        except OSError as err:
            raise UserError(f"output_dir={output_dir}: cannot write there ({err.strerror or err})") from None
        yield
        failed = False
    finally:
        lock.__exit__(None, None, None)
        if failed and fresh:
            _remove_traces(job, output_dir)


def _remove_traces(job: str, output_dir: Path) -> None:
    """Removes a failed fresh run's fingerprint, lock file and folder when the run wrote nothing else there.

    A run that did write (data, checkpoints) keeps its fingerprint, so a rerun is checked against it.
    """
    traces = {f"{job}.fingerprint.json", f".{job}.lock"}
    if any(p.name not in traces for p in output_dir.iterdir()):
        return
    for name in traces:
        (output_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        output_dir.rmdir()
