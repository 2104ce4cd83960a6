"""TP/SP/PP/DP layouts train a tiny RegressionGPTModel exactly like the single-process TP=1 reference.

Each layout starts from the same full weights (sharded with checkpoint_layout), sees the same global batches (two
micro-batches per step, masked labels, varying last-token positions) and takes 5 optimizer steps with megatron DDP,
grad clipping and AdamW. The reference runs in a plain ``python`` process (a world of one, no launcher); layouts that
share a world size run one after another inside one ``torchrun`` launch to pay the start-up once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_worker_regression.py")
REPO = Path(__file__).resolve().parents[2]
LOSS_RTOL = 1e-5
PRED_ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(layouts: list[str], nproc: int, out: Path) -> dict:
    worker_args = [str(WORKER), "--layouts", ",".join(layouts), "--out", str(out)]
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
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    if proc.returncode != 0:
        pytest.fail(f"worker failed ({proc.returncode}) for {layouts}:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
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
