"""TP/SP/PP/DP layouts train a tiny RegressionGPTModel exactly like the single-process TP=1 reference.

Each layout starts from the same full weights (sharded with checkpoint_layout), sees the same global batches (two
micro-batches per step, masked labels, varying last-token positions) and takes 5 optimizer steps with megatron DDP,
grad clipping and AdamW. The reference runs in a plain ``python`` process (a world of one, no launcher); layouts that
share a world size run one after another inside one ``torchrun`` launch to pay the start-up once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from steerlm_test_helpers.launch import run_worker

WORKER = Path(__file__).with_name("_worker_regression.py")
LOSS_RTOL = 1e-5
PRED_ATOL = 1e-5


def _run(layouts: list[str], nproc: int, out: Path) -> dict:
    run_worker(WORKER, ["--layouts", ",".join(layouts), "--out", str(out)], nproc, str(layouts), timeout=420)
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    return _run(["tp1"], 1, tmp_path_factory.mktemp("ref") / "tp1.json")["tp1"]


def _assert_matches(name: str, result: dict, reference: dict) -> None:
    assert len(result["losses"]) == len(reference["losses"]) == 5
    for step, (got, want) in enumerate(zip(result["losses"], reference["losses"], strict=True)):
        assert abs(got - want) <= LOSS_RTOL * abs(want), f"{name}: step {step} loss {got} vs TP=1 {want}"
    for row, (got_row, want_row) in enumerate(
        zip(result["initial"] + result["final"], reference["initial"] + reference["final"], strict=True)
    ):
        for col, (got, want) in enumerate(zip(got_row, want_row, strict=True)):
            assert abs(got - want) <= PRED_ATOL, f"{name}: prediction [{row}, {col}] {got} vs TP=1 {want}"


@pytest.mark.distributed
def test_reference_trains(reference):
    # The comparison is only meaningful if the updates move the model and the losses are not degenerate.
    assert all(loss > 0 for loss in reference["losses"])
    moved = max(
        abs(a - b)
        for fr, ir in zip(reference["final"], reference["initial"], strict=True)
        for a, b in zip(fr, ir, strict=True)
    )
    assert moved > 1e-2
    assert reference["losses"][-1] < reference["losses"][0]


@pytest.mark.distributed
def test_two_process_layouts_match_tp1(reference, tmp_path):
    layouts = ["tp2", "tp2sp", "pp2", "dp2"]
    results = _run(layouts, 2, tmp_path / "two.json")
    assert [results[name]["dp"] for name in layouts] == [1, 1, 1, 2]
    for name in layouts:
        _assert_matches(name, results[name], reference)


@pytest.mark.distributed
def test_four_process_tp2_pp2_matches_tp1(reference, tmp_path):
    layouts = ["tp2pp2", "tp2pp2sp"]
    results = _run(layouts, 4, tmp_path / "four.json")
    for name in layouts:
        _assert_matches(name, results[name], reference)
