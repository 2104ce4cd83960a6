"""`nemo-steerlm ablate`: the baseline and one ablation through the real CLI (tiny model, few steps), compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import ok, steerlm

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = [
    'overrides.train_apm=["trainer.max_steps=2","trainer.val_check_interval=2"]',
    'overrides.train_sft=["trainer.max_steps=2","trainer.val_check_interval=2"]',
    'overrides.evaluate=["steerability.num_prompts=2","generation.max_new_tokens=4","truthfulqa.max_questions=8",'
    '"mt_bench.enabled=false"]',
]


def test_ablate_without_helpfulness(tmp_path: Path) -> None:
    out = tmp_path / "abl"
    res = ok(steerlm("ablate", "drop=[helpfulness]", f"output_dir={out}", *FAST, timeout=2400))
    assert f"comparison -> {out / 'comparison.md'}" in res.stdout
    comp = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert comp["runs"] == ["baseline", "no_helpfulness"]
    for name in comp["runs"]:
        results = json.loads((out / name / "evaluate" / "results.json").read_text(encoding="utf-8"))
        assert comp["truthfulqa"]["mc2"][name] == results["truthfulqa"]["mc2"]
        assert comp["perplexity"][name] == results["perplexity"]["perplexity"]
    # the ablation really trained without helpfulness: its prepared labels and its APM lack it
    first = json.loads((out / "no_helpfulness" / "prepare" / "sft" / "train.jsonl").open().readline())
    assert "helpfulness" not in first["conversations"][1]["label"]
    assert comp["apm"]["helpfulness"]["pearson"]["no_helpfulness"] is None
    assert comp["apm"]["helpfulness"]["pearson"]["baseline"] is not None
    report = (out / "baseline" / "evaluate" / "report.md").read_text(encoding="utf-8")
    assert "[../analyze/analysis.md](../analyze/analysis.md)" in report  # run analysed its data; the report links it
    assert "| TruthfulQA MC2 |" in (out / "comparison.md").read_text(encoding="utf-8")
    # a rerun resumes: every stage of both runs is skipped
    again = ok(steerlm("ablate", "drop=[helpfulness]", f"output_dir={out}", *FAST, timeout=600))
    assert again.stdout.count("already done") == 2 * 6
