"""`nemo-steerlm evaluate`: steering sweeps on MT-Bench first turns, over the attributes the model trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import ok, steerlm

from nemo_steerlm.evaluation.mt_bench import load_questions

pytestmark = pytest.mark.integration


def test_mt_bench_first_turns_are_swept_and_untrained_attributes_skipped(tiny_sft: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    res = ok(
        steerlm(
            "evaluate",
            f"model={tiny_sft / 'sft.nemo'}",
            f"output_dir={out}",  # no data=: MT-Bench prompts need none
            "steerability.prompts=mt_bench",
            "steerability.num_prompts=3",
            "steerability.levels=[0,3]",
            "steerability.attributes=[verbosity,humor]",
            "generation.max_new_tokens=4",
            "mt_bench.enabled=false",
            "truthfulqa.enabled=false",
            "perplexity.enabled=false",
        )  # fmt: skip
    )
    # tiny_sft trained on HelpSteer's human labels: humor never appeared in a label, so it is not swept
    assert "steerability skips ['humor']" in res.stdout
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["steerability_skipped"] == ["humor"]
    assert list(results["steerability"]) == ["verbosity"]
    records = [json.loads(x) for x in (out / "steer_responses.jsonl").read_text(encoding="utf-8").splitlines()]
    firsts = [q["turns"][0] for q in load_questions()[:3]]
    assert [(r["requested"], r["prompt"]) for r in records] == [(v, p) for v in (0, 3) for p in firsts]
    assert [r["label"] for r in records] == [
        f"helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:{r['requested']}" for r in records
    ]


def test_unknown_prompt_source_is_refused_before_any_work(tiny_sft: Path, tmp_path: Path) -> None:
    res = steerlm(
        "evaluate", f"model={tiny_sft / 'sft.nemo'}", f"output_dir={tmp_path / 'e'}", "steerability.prompts=foo"
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "steerability.prompts=foo: use heldout (data's sft/val.jsonl) or mt_bench" in res.stderr
    assert not (tmp_path / "e").exists()
