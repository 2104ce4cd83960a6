"""Activation recomputation through the real CLI: train-sft with full recomputation logs the losses of the run
without it (same seed, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import ok, steerlm

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_sft_loss_is_unchanged_by_recomputation(tmp_path: Path) -> None:
    common = ["trainer.max_steps=3", "trainer.val_check_interval=3", "log_lines.every_n_steps=1"]
    plain = ok(steerlm("train-sft", f"output_dir={tmp_path / 'a'}", *common))
    full = ok(steerlm("train-sft", f"output_dir={tmp_path / 'b'}", *common, "model.recompute_granularity=full",
                      "model.recompute_method=uniform", "model.recompute_num_layers=1"))  # fmt: skip

    def losses(res):
        return [
            x.split(" loss ")[1].split()[0] for x in res.stdout.splitlines() if x.startswith("nemo-steerlm train: step")
        ]

    assert len(losses(plain)) == 3 and losses(full) == losses(plain)
    a = json.loads((tmp_path / "a" / "train-sft.summary.json").read_text())["last_logged"]
    b = json.loads((tmp_path / "b" / "train-sft.summary.json").read_text())["last_logged"]
    assert a["val_loss"] == b["val_loss"]
    config = (tmp_path / "b" / "train-sft.config.yaml").read_text()
    assert "recompute_granularity: full" in config
