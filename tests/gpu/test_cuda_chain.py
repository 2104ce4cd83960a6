"""On a CUDA machine: the whole tiny chain through the real CLI, every stage on the GPU.

Each stage moves its own batches to the device (annotation, evaluation and generation run outside Lightning) and
the model is put back on the GPU after Lightning's teardown; these are the paths a CPU run cannot exercise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from steerlm_test_helpers.cli import ok, steerlm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine: pytest -m gpu)"),
]
SHORT = [
    'overrides.train_apm=["trainer.max_steps=20","trainer.val_check_interval=10"]',
    'overrides.train_sft=["trainer.max_steps=20","trainer.val_check_interval=10"]',
    'overrides.evaluate=["steerability.num_prompts=4","generation.max_new_tokens=16","truthfulqa.max_questions=32"]',
]


def test_tiny_chain_runs_on_the_gpu(tmp_path: Path) -> None:
    out = tmp_path / "run"
    ok(steerlm("run", f"output_dir={out}", *SHORT, timeout=900))
    apm = json.loads((out / "train-apm" / "train-apm.summary.json").read_text())
    assert apm["steps"] == 20 and all(v == v for v in apm["eval_pearson"].values() if v is not None)
    annotated = (out / "annotate" / "train.annotated.jsonl").read_text().splitlines()
    assert len(annotated) == 356
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert len(results["steerability"]["verbosity"]["responses"]) == 4 * 5  # 4 prompts x 5 levels
    assert 0.0 <= results["truthfulqa"]["mc1"] <= 1.0 and results["truthfulqa"]["n"] == 32
    assert len((out / "evaluate" / "mt_bench" / "nemo-steerlm.jsonl").read_text().splitlines()) == 80
