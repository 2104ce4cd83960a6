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


def _sft_line(prompt: str, response: str, label: str) -> str:
    turns = [{"value": prompt, "from": "User", "label": None}, {"value": response, "from": "Assistant", "label": label}]
    return json.dumps({"conversations": turns, "system": "", "mask": "User", "type": "VALUE_TO_TEXT"})


def test_steer_holds_the_fixed_attributes_and_coverage_names_unseen_values(tiny_sft: Path, tmp_path: Path) -> None:
    reference = tmp_path / "train.annotated.jsonl"
    rows = [("A?", "Short.", 1, 0), ("B?", "A bit longer here.", 1, 1), ("C?", "Words.", 2, 0)]
    reference.write_text(
        "".join(
            _sft_line(p, r, f"helpfulness:4,correctness:4,coherence:4,complexity:{c},verbosity:{v}") + "\n"
            for p, r, c, v in rows
        ),
        encoding="utf-8",
    )
    out = tmp_path / "e"
    res = ok(
        steerlm(
            "evaluate",
            f"model={tiny_sft / 'sft.nemo'}",
            f"output_dir={out}",
            "steer.complexity=1",
            f"steerability.reference={reference}",
            "steerability.prompts=mt_bench",
            "steerability.num_prompts=2",
            "steerability.levels=[0,3]",
            "steerability.attributes=[verbosity]",
            "generation.max_new_tokens=4",
            "mt_bench.enabled=false",
            "truthfulqa.enabled=false",
            "perplexity.enabled=false",
        )  # fmt: skip
    )
    records = [json.loads(x) for x in (out / "steer_responses.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["label"] for r in records} == {
        f"helpfulness:4,correctness:4,coherence:4,complexity:1,verbosity:{v}" for v in (0, 3)
    }
    ref = json.loads((out / "results.json").read_text(encoding="utf-8"))["steerability"]["verbosity"]["data_reference"]
    assert ref["file"] == str(reference) and ref["n"] == 2  # verbosity 0 twice; the level-1 row is outside 0/3
    cov = ref["coverage"]
    assert cov["turns"] == 3 and cov["values"]["complexity"] == {"1": 2}
    assert cov["values"]["verbosity"] == {"0": 2, "3": 0}
    assert list(cov["labels"].values()) == [1, 0] and cov["unseen"] == ["verbosity=3"]
    assert "the verbosity sweep asks for verbosity=3, which none of the 3 labelled training turns has" in res.stdout
    assert "**Never in the training data: verbosity=3.**" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steer.verbosity=9", "steer.verbosity=9: attribute 'verbosity': value 9 is out of range [0, 4]"),
        ("steer.humor=1", "steer.humor=1: unknown attribute 'humor'"),
        ("steerability.reference=missing.jsonl", "steerability.reference=missing.jsonl: no such file"),
    ],
)
def test_bad_steer_or_reference_is_refused_before_any_output(
    tiny_sft: Path, tmp_path: Path, override: str, message: str
) -> None:
    out = tmp_path / "e"
    res = steerlm(
        "evaluate", f"model={tiny_sft / 'sft.nemo'}", f"output_dir={out}", "steerability.prompts=mt_bench", override
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr
    assert not (tmp_path / "e").exists()
