"""The real `nemo-steerlm train-apm` CLI: a tiny run on the shipped sample, its outputs, restore, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from steerlm_test_helpers.cli import ok, restore_predict, steerlm, training_predictions

pytestmark = pytest.mark.integration
HELPSTEER = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


@pytest.fixture(scope="module")
def apm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("apm") / "run"
    ok(steerlm("train-apm", f"output_dir={out}", "trainer.max_steps=6", "trainer.val_check_interval=3"))
    return out


def test_outputs_metrics_and_plots(apm_run: Path) -> None:
    summary = json.loads((apm_run / "train-apm.summary.json").read_text())
    assert summary["steps"] == 6 and (apm_run / "apm.nemo").stat().st_size > 0
    metrics = json.loads((apm_run / "eval" / "apm_metrics.json").read_text())
    for name in HELPSTEER:
        entry = metrics["attributes"][name]
        assert entry["n"] == 43
        for which in ("model", "mean", "length"):
            assert {"mae", "rmse", "pearson", "spearman", "accuracy"} <= set(entry[which])
    assert set(metrics["absent"]) == {"quality", "toxicity", "humor", "creativity"}
    png = (apm_run / "eval" / "apm_scatter.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((apm_run / "train-apm" / "run").rglob("events.out.tfevents*")), "no TensorBoard log"
    assert list((apm_run / "train-apm" / "run" / "checkpoints").glob("*last.ckpt"))


def test_fresh_process_restores_identical_predictions(apm_run: Path, tmp_path: Path) -> None:
    val = apm_run / "data" / "regression" / "val.jsonl"
    restored = restore_predict(apm_run / "apm.nemo", val, tmp_path / "p.npy")
    in_training = training_predictions(apm_run)
    assert restored.shape == in_training.shape == (43, 9)
    assert np.abs(restored - in_training).max() <= 1e-6  # the file rounds to 6 decimals


def test_resume_continues_from_last_checkpoint(apm_run: Path) -> None:
    res = ok(steerlm("train-apm", f"output_dir={apm_run}", "trainer.max_steps=8", "trainer.val_check_interval=3"))
    summary = json.loads((apm_run / "train-apm.summary.json").read_text())
    assert summary["steps"] == 8
    assert "last.ckpt" in res.stdout + res.stderr  # exp_manager resumed from it


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.tensor_model_parallel_size=3", "model.tensor_model_parallel_size"),
        ("model.pipeline_model_parallel_size=3", "model.num_layers"),
        ("model.global_batch_size=10", "model.global_batch_size"),
    ],
)
def test_layout_errors_before_any_work(tmp_path: Path, override: str, key: str) -> None:
    out = tmp_path / "bad"
    res = steerlm("train-apm", f"output_dir={out}", override)
    assert res.returncode == 2
    assert key in res.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_ablation_drops_the_attribute_from_the_model(tmp_path: Path) -> None:
    """`attributes.drop=[helpfulness]`: prepare writes 8-entry vectors and the model's schema has the same 8."""
    from nemo_steerlm.models.checkpoint import read_nemo_meta

    out = tmp_path / "apm"
    ok(steerlm("train-apm", f"output_dir={out}", "attributes.drop=[helpfulness]", "trainer.max_steps=1"))
    meta = read_nemo_meta(out / "apm.nemo")
    assert "helpfulness" not in meta["attributes"] and len(meta["attributes"]) == 8
