"""A run killed mid-epoch and resumed ends with the same weights as one never interrupted, through the real CLI.

The kill is a real SIGKILL of the training process after its mid-epoch checkpoint (step 3 of an epoch of ~40 steps).
Resuming must restore the weights, Adam's moments, the learning-rate schedule *and the data position*: the resumed
run has to train on exactly the batches the uninterrupted one trained on after step 3, no batch twice, none skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from steerlm_test_helpers.cli import ok, steerlm

from nemo_steerlm.models.checkpoint import restore_nemo

pytestmark = pytest.mark.integration

ARGS = ["trainer.max_steps=8", "trainer.val_check_interval=3", "log_lines.when=always", "log_lines.every_n_steps=1"]


def weights(nemo: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of a ``.nemo``, restored at TP=PP=1."""
    model = restore_nemo(nemo, "apm", {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1})
    return {k: v.detach().clone() for k, v in model.model.state_dict().items() if torch.is_tensor(v)}


def kill_after(out: Path, line: str) -> int:
    """Starts train-apm into ``out`` and SIGKILLs it once it prints ``line``; returns its exit status."""
    cmd = [sys.executable, "-m", "nemo_steerlm.cli", "train-apm", f"output_dir={out}", *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    assert proc.stdout is not None
    for text in proc.stdout:
        seen.append(text)
        if line in text:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-40:])
    return proc.returncode


def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    ok(steerlm("train-apm", f"output_dir={straight}", *ARGS))
    resumed = tmp_path / "resumed"
    kill_after(resumed, "nemo-steerlm train: step 5/8")  # the step-3 checkpoint is complete, step 6's not begun
    assert list((resumed / "train-apm" / "run" / "checkpoints").glob("*last.ckpt"))
    res = ok(steerlm("train-apm", f"output_dir={resumed}", *ARGS))
    assert "last.ckpt" in res.stdout + res.stderr
    a, b = weights(straight / "apm.nemo"), weights(resumed / "apm.nemo")
    assert a.keys() == b.keys()
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()}
    assert max(diffs.values()) == 0.0, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
