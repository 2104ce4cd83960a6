"""Does the SFT label steer? The seed's conditioning checks, through the real CLI on the shipped HelpSteer rows.

a. Memorisation: 12 prompts × 4 responses with different labels; trained until it knows them, the tiny model asked
   for each row's own label (``generate label=from_data``) must return the response that carries that label.
b. Generalisation: a toy task in which the verbosity label fixes the response's length; asked of prompts it never
   saw, the model's response lengths must follow the requested level.

Both failed before the prompt policy (generation fed 384 prompt tokens to a model trained on 64) and before training
batches reshuffled each epoch (a fixed subset of the rows was never trained).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy.stats import spearmanr
from steerlm_test_helpers.cli import ok, steerlm
from steerlm_test_helpers.conditioning import TOY_WORDS, closest, memorisation_rows, toy_length_rows, write_sft

pytestmark = [pytest.mark.integration, pytest.mark.slow]
QUIET = ["trainer.enable_progress_bar=false"]


def _train_and_answer(tmp_path: Path, train: Path, asked: Path, steps: int, extra: list[str]) -> list[dict]:
    run = tmp_path / "sft"
    ok(steerlm(
        "train-sft", f"data={train}", f"output_dir={run}", f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}", "preset.sft.lr=3e-3", *extra, *QUIET, timeout=1800,
    ))  # fmt: skip
    ok(steerlm(
        "generate", f"model={run / 'sft.nemo'}", f"data={asked}", f"output_dir={tmp_path / 'gen'}",
        "label=from_data", "sampling.greedy=true", "sampling.max_new_tokens=160", "sampling.batch_size=64",
    ))  # fmt: skip
    return [json.loads(x) for x in (tmp_path / "gen" / "generations.jsonl").read_text(encoding="utf-8").splitlines()]


def test_each_label_returns_the_response_it_was_trained_with(tmp_path: Path) -> None:
    rows = memorisation_rows(prompts=12, per_prompt=4)
    data = write_sft(tmp_path / "memorise.jsonl", rows)
    got = _train_and_answer(tmp_path, data, data, steps=200, extra=[])
    assert [g["label"] for g in got] == [c.turns[-1].label for c in rows]
    selected = 0
    for i, g in enumerate(got):
        siblings = [c.turns[-1].value for c in rows[i - i % 4 : i - i % 4 + 4]]
        selected += closest(g["response"], siblings) == i % 4
    print(f"conditioning check (memorisation): {selected} of {len(got)} select their own response (chance 12)")
    assert selected >= 0.8 * len(got)


def test_the_verbosity_label_sets_the_length_on_unseen_prompts(tmp_path: Path) -> None:
    train, unseen = toy_length_rows(train_prompts=64, test_prompts=16)
    assert not {c.turns[0].value for c in train} & {c.turns[0].value for c in unseen}
    got = _train_and_answer(
        tmp_path,
        write_sft(tmp_path / "toy_train.jsonl", train),
        write_sft(tmp_path / "toy_unseen.jsonl", unseen),
        steps=600,
        extra=["preset.sft.global_batch_size=4", "preset.sft.warmup_steps=10"],
    )
    levels = [int(g["label"].removeprefix("verbosity:")) for g in got]
    words = [len(g["response"].split()) for g in got]
    assert sorted(set(levels)) == sorted(TOY_WORDS)
    rho = spearmanr(levels, words).statistic
    means = {v: sum(w for lv, w in zip(levels, words, strict=True) if lv == v) / levels.count(v) for v in TOY_WORDS}
    print(f"conditioning check (toy length): Spearman {rho:.3f}, mean words per level {means}")
    assert rho >= 0.8
