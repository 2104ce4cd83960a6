"""Which checkpoint a training stage resumes from: the newest intact one; a file cut short is passed over, by name."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nemo_steerlm.errors import DamagedCheckpointError
from nemo_steerlm.recipes.training import checkpoint_is_intact, resume_checkpoint


def save(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.arange(1000.0)}}, path)
    os.utime(path, (mtime, mtime))
    return path


def cut(path: Path) -> None:
    data = path.read_bytes()
    stat = path.stat()
    path.write_bytes(data[: len(data) // 2])  # what a full disk leaves
    os.utime(path, (stat.st_atime, stat.st_mtime))


def trainer(root: Path, ckpt_path: Path | None) -> SimpleNamespace:
    return SimpleNamespace(default_root_dir=str(root), ckpt_path=str(ckpt_path) if ckpt_path else None)


def test_newest_intact_checkpoint_is_chosen(tmp_path: Path) -> None:
    best = save(tmp_path / "checkpoints" / "m--val_loss=1.0-step=3.ckpt", 3, 1000)
    last = save(tmp_path / "checkpoints" / "m--last.ckpt", 6, 2000)
    hpc = save(tmp_path / "hpc_ckpt_1.ckpt", 7, 3000)
    assert resume_checkpoint(trainer(tmp_path, last)) == str(hpc)
    hpc.unlink()
    assert resume_checkpoint(trainer(tmp_path, last)) == str(last)
    cut(last)
    assert not checkpoint_is_intact(last) and checkpoint_is_intact(best)
    assert resume_checkpoint(trainer(tmp_path, last)) == str(best)
    assert torch.load(best, weights_only=True)["global_step"] == 3


def test_damaged_checkpoint_warns_with_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(tmp_path / "checkpoints" / "a.ckpt", 3, 1000)
    last = save(tmp_path / "checkpoints" / "a-last.ckpt", 6, 2000)
    cut(last)
    resume_checkpoint(trainer(tmp_path, last))
    assert f"{last} is damaged" in capsys.readouterr().out


def test_only_damaged_checkpoints_are_refused_not_restarted(tmp_path: Path) -> None:
    last = save(tmp_path / "checkpoints" / "a-last.ckpt", 6, 2000)
    cut(last)
    with pytest.raises(DamagedCheckpointError, match=rf"{last}: damaged checkpoint.*overwrite=true"):
        resume_checkpoint(trainer(tmp_path, last))


def test_no_checkpoint_starts_fresh(tmp_path: Path) -> None:
    assert resume_checkpoint(trainer(tmp_path, None)) is None
