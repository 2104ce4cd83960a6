""".nemo round trips across layouts: an APM trained at TP=2 restores at TP=1 and PP=2 with the same predictions,
and one trained at TP=1 restores at TP=2 (real CLI, torchrun, gloo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from steerlm_test_helpers.cli import ok, restore_predict, steerlm, training_predictions

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def tp2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tp2") / "run"
    ok(
        steerlm(
            "train-apm",
            f"output_dir={out}",
            "trainer.devices=2",
            "model.tensor_model_parallel_size=2",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
        )
    )
    return out


def test_tp2_trained_restores_at_tp1_and_pp2(tp2_run: Path, tmp_path: Path) -> None:
    val = tp2_run / "data" / "regression" / "val.jsonl"
    reference = training_predictions(tp2_run)  # predicted by the TP=2 model in training
    at_tp1 = restore_predict(tp2_run / "apm.nemo", val, tmp_path / "tp1.npy")
    at_pp2 = restore_predict(tp2_run / "apm.nemo", val, tmp_path / "pp2.npy", tp=1, pp=2)
    assert at_tp1.shape == reference.shape == (43, 9)
    assert np.abs(at_tp1 - reference).max() <= 1e-5
    assert np.abs(at_pp2 - at_tp1).max() <= 1e-5


def test_tp1_trained_restores_at_tp2(tmp_path: Path) -> None:
    out = tmp_path / "tp1"
    ok(steerlm("train-apm", f"output_dir={out}", "trainer.max_steps=2", "trainer.val_check_interval=2"))
    val = out / "data" / "regression" / "val.jsonl"
    at_tp2 = restore_predict(out / "apm.nemo", val, tmp_path / "tp2.npy", tp=2, pp=1)
    assert np.abs(at_tp2 - training_predictions(out)).max() <= 1e-5
