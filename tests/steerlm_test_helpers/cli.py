"""Run the real `nemo-steerlm` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from steerlm_test_helpers.launch import run_worker

HELPERS = Path(__file__).resolve().parent


def steerlm(*args: str, timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`nemo-steerlm ARGS` with the venv's interpreter; output captured as text; ``env`` adds variables."""
    return subprocess.run(
        [sys.executable, "-m", "nemo_steerlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Asserts success, showing the tail of stderr otherwise."""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def restore_predict(nemo: Path, data: Path, out: Path, tp: int = 1, pp: int = 1) -> np.ndarray:
    """Predictions of `nemo` restored at TP/PP in fresh process(es)."""
    run_worker(HELPERS / "restore_predict.py", [str(nemo), str(data), str(out), str(tp), str(pp)], tp * pp, nemo.name)
    return np.load(out)


def training_predictions(run_dir: Path) -> np.ndarray:
    """The predictions train-apm wrote for its validation split (rounded to 6 decimals)."""
    lines = (run_dir / "eval" / "apm_predictions.jsonl").read_text().splitlines()
    return np.array([json.loads(x)["prediction"] for x in lines])
