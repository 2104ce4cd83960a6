"""No silent reuse and no two writers: reruns into a finished `output_dir` with other settings or inputs, and a
second run while one holds the folder, through the real CLI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import ok, steerlm

from nemo_steerlm.resources import helpsteer_sample_path

pytestmark = pytest.mark.integration
TINY_APM_ARGS = ("trainer.max_steps=4", "trainer.val_check_interval=4")  # as the session's tiny_apm run


def _refused(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _sample_copy(path: Path, drop_last: int = 0) -> Path:
    lines = Path(helpsteer_sample_path()).read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) - drop_last]), encoding="utf-8")
    return path


def test_prepare_rerun_with_another_setting_is_refused_and_overwrite_starts_fresh(tmp_path: Path) -> None:
    out = tmp_path / "p"
    ok(steerlm("prepare", f"output_dir={out}", "dataset.val_fraction=0.1"))
    ok(steerlm("prepare", f"output_dir={out}", "dataset.val_fraction=0.1"))  # same settings: fine
    before = (out / "sft" / "val.jsonl").read_bytes()
    _refused(
        steerlm("prepare", f"output_dir={out}", "dataset.val_fraction=0.2"), "dataset.val_fraction", "overwrite=true"
    )
    assert (out / "sft" / "val.jsonl").read_bytes() == before  # nothing touched
    ok(steerlm("prepare", f"output_dir={out}", "dataset.val_fraction=0.2", "overwrite=true"))
    rows = len((out / "sft" / "val.jsonl").read_text().splitlines())
    total = len(Path(helpsteer_sample_path()).read_text().splitlines())
    assert rows > len(before.splitlines()) and rows < total


def test_prepare_rerun_after_the_input_file_changed_is_refused(tmp_path: Path) -> None:
    src, out = _sample_copy(tmp_path / "rows.jsonl"), tmp_path / "p"
    ok(steerlm("prepare", f"output_dir={out}", f"dataset.path={src}"))
    _sample_copy(src, drop_last=3)  # same path, other content
    _refused(steerlm("prepare", f"output_dir={out}", f"dataset.path={src}"), f"dataset.path={src}", "changed")


def test_finished_train_apm_with_new_data_is_refused(tiny_apm: Path) -> None:
    """Case (a): a finished run folder and `data=NEW` used to resume, train 0 steps on NEW and report NEW's rows."""
    before = (tiny_apm / "train-apm.summary.json").read_bytes()
    res = steerlm("train-apm", f"output_dir={tiny_apm}", f"data={tiny_apm / 'data'}", *TINY_APM_ARGS)
    _refused(res, "data was None", "overwrite=true")
    assert (tiny_apm / "train-apm.summary.json").read_bytes() == before


def test_data_null_with_an_existing_manifest_and_a_new_dataset_path_is_refused(tiny_apm: Path, tmp_path: Path) -> None:
    """Case (b): with data=null, an existing data/manifest.json used to hide a new dataset.path."""
    new = _sample_copy(tmp_path / "new.jsonl", drop_last=5)
    res = steerlm("train-apm", f"output_dir={tiny_apm}", f"dataset.path={new}", *TINY_APM_ARGS)
    _refused(res, "dataset.path was", str(new))


def test_output_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "afile"
    out.write_text("x")
    _refused(steerlm("prepare", f"output_dir={out}"), f"output_dir={out}", "is a file")


HOLDER = """
import fcntl, os, socket, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.seek(0); f.truncate(); f.write(f"pid {os.getpid()} on {socket.gethostname()}\\n"); f.flush()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_run_into_a_held_output_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """The lock protocol: the first run holds `.prepare.lock` (here a process holding it the same way)."""
    out = tmp_path / "p"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / ".prepare.lock")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        _refused(steerlm("prepare", f"output_dir={out}"), "in use", f"pid {holder.pid}")
        assert not (out / "sft").exists()
    finally:
        holder.kill()
        holder.wait()
    ok(steerlm("prepare", f"output_dir={out}"))  # released with its holder's death


def test_two_concurrent_prepares_one_folder_one_refused(tmp_path: Path) -> None:
    """Two real runs into one folder at once: the one that finds the folder held stops with exit 2."""
    out, big = tmp_path / "p", tmp_path / "big.jsonl"
    lines = Path(helpsteer_sample_path()).read_text(encoding="utf-8").splitlines(keepends=True)
    big.write_text("".join(lines * 30), encoding="utf-8")  # long enough to still run when the second starts
    args = [sys.executable, "-m", "nemo_steerlm.cli", "prepare", f"output_dir={out}", f"dataset.path={big}"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "prepare.fingerprint.json").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.01)
    second = steerlm("prepare", f"output_dir={out}", f"dataset.path={big}")
    first_out, first_err = first.communicate(timeout=300)
    if first.returncode == 0 and second.returncode == 0:
        pytest.skip("the first run finished before the second started (machine too fast for this race)")
    assert first.returncode == 0, first_err[-2000:]
    _refused(second, "in use by a running prepare")
    json.loads((out / "prepare.summary.json").read_text())
    shutil.rmtree(out)
