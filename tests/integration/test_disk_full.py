"""A write that fails for lack of room, through the real CLI: one line, exit 2, nothing partial left behind.

The full disk is a file-size limit (``RLIMIT_FSIZE``, what ``ulimit -f`` sets) on the stage's process: a write past
it fails with ``EFBIG`` exactly where a full disk fails with ``ENOSPC``, without needing a small file system.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import steerlm

from nemo_steerlm.recipes.training import checkpoint_is_intact

pytestmark = pytest.mark.integration


def limited(limit_bytes: int, *args: str) -> subprocess.CompletedProcess:
    """``nemo-steerlm ARGS`` in a process that may write no file larger than ``limit_bytes``."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    cmd = [sys.executable, "-m", "nemo_steerlm.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, preexec_fn=cap)


def test_prepare_without_room_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = limited(64 * 1024, "prepare", f"output_dir={out}")
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("nemo-steerlm prepare: error: cannot write") and "File too large" in last
    assert "Traceback" not in res.stderr
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_training_without_room_for_its_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train-apm", f"output_dir={out}", "trainer.max_steps=3", "trainer.val_check_interval=3"]
    res = limited(8 * 1024 * 1024, *args)  # the prepared data fits, the 17 MB Lightning checkpoint does not
    assert res.returncode == 2, res.stderr[-3000:]
    assert "cannot write" in res.stderr.strip().splitlines()[-1]
    assert not (out / "apm.nemo").exists() and not (out / "train-apm.summary.json").exists()
    # Lightning writes a checkpoint whole or not at all; a checkpoint cut short any other way is passed over or
    # refused by name (tests/unit/test_resume_checkpoint.py)
    assert all(checkpoint_is_intact(p) for p in (out / "train-apm").rglob("*.ckpt"))
    again = steerlm(*args)  # a rerun with room finishes the job
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "apm.nemo").stat().st_size > 0
