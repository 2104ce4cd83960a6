"""Packed SFT training and greedy generation give the same results at every layout as at TP=1.

Training: a tiny PositionAwareGPTModel, packed batches of the shipped sample (block-diagonal attention, restarting
positions), the real SteerLMSFTModel loss, 5 AdamW steps with megatron DDP and clipping; TP=2, TP=2+SP, PP=2, DP=2
and TP=2xPP=2 must reproduce the TP=1 losses. Generation: greedy, 24 new tokens, five prompts of different lengths in
one batch with megatron's static KV cache; TP=2, PP=2 and TP=2xPP=2 must produce TP=1's tokens, and TP=1 with the
cache must equal TP=1 recomputing the whole sequence every step. One plain process and two torchrun launches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from steerlm_test_helpers.launch import run_worker

WORKER = Path(__file__).with_name("_worker_sft.py")
LOSS_RTOL = 1e-5

pytestmark = pytest.mark.distributed


def _run(layouts: list[str], generate: list[str], nproc: int, out: Path) -> dict:
    args = ["--layouts", ",".join(layouts), "--generate", ",".join(generate), "--out", str(out)]
    run_worker(WORKER, args, nproc, f"{layouts}/{generate}")
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    return _run(["tp1"], ["tp1", "tp1-nocache"], 1, tmp_path_factory.mktemp("ref") / "tp1.json")


def _assert_losses(name: str, got: list[float], want: list[float]) -> None:
    assert len(got) == len(want) == 5
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert abs(g - w) <= LOSS_RTOL * abs(w), f"{name}: step {step} loss {g} vs TP=1 {w}"


def test_reference_is_meaningful(reference):
    losses = reference["train"]["tp1"]["losses"]
    assert losses[-1] < losses[0] - 0.2  # the steps move the model
    lengths = reference["prompt_lengths"]
    assert len(set(lengths)) == len(lengths) == 5  # one batch of different prompt lengths
    tokens = reference["generate"]["tp1"]
    assert all(len(t) == 24 for t in tokens)
    assert len({tok for row in tokens for tok in row}) > 20 and len({tuple(t) for t in tokens}) == 5


def test_kv_cache_equals_full_recomputation(reference):
    assert reference["generate"]["tp1"] == reference["generate"]["tp1-nocache"]


def test_two_process_layouts_match_tp1(reference, tmp_path):
    layouts = ["tp2", "tp2sp", "pp2", "dp2"]
    results = _run(layouts, ["tp2", "pp2"], 2, tmp_path / "two.json")
    assert [results["train"][n]["dp"] for n in layouts] == [1, 1, 1, 2]
    want = reference["train"]["tp1"]["losses"]
    for name in layouts:
        _assert_losses(name, results["train"][name]["losses"], want)
    for name in ("tp2", "pp2"):
        assert results["generate"][name] == reference["generate"]["tp1"], f"greedy tokens differ at {name}"


def test_four_process_tp2_pp2_matches_tp1(reference, tmp_path):
    results = _run(["tp2pp2"], ["tp2pp2"], 4, tmp_path / "four.json")
    _assert_losses("tp2pp2", results["train"]["tp2pp2"]["losses"], reference["train"]["tp1"]["losses"])
    assert results["generate"]["tp2pp2"] == reference["generate"]["tp1"]
