"""Packed SFT training and greedy generation give the same results at every layout as at TP=1.

Training: a tiny PositionAwareGPTModel, packed batches of the shipped sample (block-diagonal attention, restarting
positions), the real SteerLMSFTModel loss, 5 AdamW steps with megatron DDP and clipping; TP=2, TP=2+SP, PP=2, DP=2
and TP=2xPP=2 must reproduce the TP=1 losses. Generation: greedy, 24 new tokens, five prompts of different lengths in
one batch with megatron's static KV cache; TP=2, PP=2 and TP=2xPP=2 must produce TP=1's tokens, and TP=1 with the
cache must equal TP=1 recomputing the whole sequence every step. One plain process and two torchrun launches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_parallel_equivalence import _free_port

WORKER = Path(__file__).with_name("_worker_sft.py")
REPO = Path(__file__).resolve().parents[2]
LOSS_RTOL = 1e-5

pytestmark = pytest.mark.distributed


def _run(layouts: list[str], generate: list[str], nproc: int, out: Path) -> dict:
    worker_args = [str(WORKER), "--layouts", ",".join(layouts), "--generate", ",".join(generate), "--out", str(out)]
    if nproc == 1:
        command = [sys.executable, *worker_args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *worker_args,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(command, cwd=WORKER.parent, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"worker failed ({proc.returncode}) for {layouts}/{generate}:\n{proc.stderr[-8000:]}")
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
