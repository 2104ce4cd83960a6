"""Several ranks of one stage that start with no ``data=`` prepare the data once, without racing (issue: CI flake)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from steerlm_test_helpers.launch import LAUNCHER_VARS, REPO

from nemo_steerlm.recipes.common import rank_zero_makes

pytestmark = pytest.mark.integration

WORKER = Path(__file__).resolve().parents[1] / "steerlm_test_helpers" / "prepare_race_worker.py"


def test_ranks_prepare_once_and_all_succeed(tmp_path: Path) -> None:
    world, rounds = 4, 4
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path), str(rank), str(world), str(rounds)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for rank, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{out[-2000:]}\n{err[-4000:]}"
    calls = (tmp_path / "prepare_calls.txt").read_text(encoding="utf-8").split()
    assert calls == ["0"] * rounds  # once per round, always by rank 0
    for i in range(rounds):
        data = tmp_path / f"round_{i}" / "run" / "data"
        manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
        rows = sum(1 for _ in open(data / "regression" / "train.jsonl", encoding="utf-8"))
        assert rows == manifest["files"]["regression/train.jsonl"]["rows"] > 300
        assert not [p.name for p in data.rglob(".*.tmp")]  # no temporary file left behind
    # every rank read the whole file (a rank that saw a half-written set would count fewer rows)
    for out, _ in outputs:
        counts = {line.rsplit(": ", 1)[1] for line in out.splitlines() if "training rows" in line}
        assert len(counts) == 1


def test_a_waiting_rank_gives_up_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nemo_steerlm.errors import UserError

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("NEMO_STEERLM_RANK_WAIT_S", "0.3")
    made: list[int] = []
    with pytest.raises(UserError, match=r"rank 1: waited 0.3 s for .*manifest.json \(the prepared data\)"):
        rank_zero_makes(tmp_path / "manifest.json", lambda: made.append(1), "the prepared data")
    assert made == []  # a rank other than 0 never makes the files itself
    monkeypatch.setenv("RANK", "0")
    rank_zero_makes(tmp_path / "manifest.json", lambda: made.append(1), "the prepared data")
    assert made == [1]
