"""`nemo-steerlm bootstrap`: the tiny SFT model answers its training prompts at varied labels, the tiny APM labels
the answers, and the file is SFT data that train-sft reads."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import ok, steerlm

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.formats import read_sft_jsonl

pytestmark = pytest.mark.integration


def test_bootstrap_round_writes_apm_labelled_answers(tiny_sft: Path, tiny_apm: Path, tmp_path: Path) -> None:
    data, out = tiny_sft / "data" / "sft" / "train.jsonl", tmp_path / "boot"
    args = [f"model={tiny_sft / 'sft.nemo'}", f"apm={tiny_apm / 'apm.nemo'}", f"data={data}", f"output_dir={out}"]
    ok(steerlm("bootstrap", *args, "max_prompts=5", "samples_per_prompt=3", "sampling.max_new_tokens=24"))
    summary = json.loads((out / "bootstrap.summary.json").read_text(encoding="utf-8"))
    original = read_sft_jsonl(data, AttributeSchema())
    first_five = [p for p in dict.fromkeys(c.turns[0].value for c in original)][:5]
    kept = [c for c in original if c.turns[0].value in first_five]
    assert summary["prompts"] == 5 and summary["requested"] == 15
    assert summary["written"] + summary["empty_skipped"] == 15 and summary["written"] > 0
    rows = read_sft_jsonl(out / "train.bootstrap.jsonl", AttributeSchema())
    assert len(rows) == summary["rows"] == len(kept) + summary["written"]
    assert [c.turns[-1].value for c in rows[: len(kept)]] == [c.turns[-1].value for c in kept]  # the original first
    new = rows[len(kept) :]
    assert Counter(c.turns[0].value for c in new).keys() <= set(first_five)
    apm_names = json.loads((tiny_apm / "train-apm.summary.json").read_text())["eval_pearson"].keys()
    for conv in new:  # the APM's label: every attribute it was trained on, values 0..4
        parsed = AttributeSchema().parse_label(conv.turns[-1].label)
        assert list(parsed) == list(apm_names) and all(0 <= v <= 4 for v in parsed.values())
    # the file trains: a second train-sft from the first one's weights
    ok(steerlm(
        "train-sft", f"data={out / 'train.bootstrap.jsonl'}", f"output_dir={tmp_path / 'sft2'}",
        f"preset.init_from={tiny_sft / 'sft.nemo'}", "trainer.max_steps=2", "trainer.val_check_interval=2",
    ))  # fmt: skip
    assert (tmp_path / "sft2" / "sft.nemo").is_file()


def test_bootstrap_needs_both_models(tiny_sft: Path, tmp_path: Path) -> None:
    res = steerlm(
        "bootstrap", f"model={tiny_sft / 'sft.nemo'}", f"apm={tiny_sft / 'sft.nemo'}",
        f"data={tiny_sft / 'data' / 'sft' / 'train.jsonl'}", f"output_dir={tmp_path / 'o'}",
    )  # fmt: skip
    assert res.returncode == 2 and "this stage needs a attribute prediction model" in res.stderr, res.stderr[-1500:]
    assert not (tmp_path / "o").exists()
