"""``model.optim.use_distributed_optimizer=true`` through the real CLI at ``trainer.devices=2`` (gloo): the Lightning
checkpoint holds the whole Adam state gathered from both ranks, and a run resumed from its step-3 checkpoint ends with
the same weights as the run that went on from it.

Run A trains 6 steps and keeps every checkpoint (``save_top_k=-1``); run B starts in a fresh folder holding only A's
step-3 checkpoint, resumes from it (Lightning loads the file on both ranks, megatron scatters each rank its shard)
and trains steps 4-6 on the same batches. Library-level checks of the same (bf16, sharding, against the plain
optimizer): tests/distributed/test_distributed_optimizer.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from steerlm_test_helpers.cli import ok, steerlm

from nemo_steerlm.models.checkpoint import restore_nemo

pytestmark = [pytest.mark.integration, pytest.mark.distributed, pytest.mark.slow]

ARGS = [
    "trainer.devices=2",
    "model.optim.use_distributed_optimizer=true",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "exp_manager.checkpoint_callback_params.save_top_k=-1",
    "log_lines.when=always",
    "log_lines.every_n_steps=1",
]


def weights(nemo: Path) -> dict[str, torch.Tensor]:
    model = restore_nemo(nemo, "apm", {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1})
    return {k: v.detach().clone() for k, v in model.model.state_dict().items() if torch.is_tensor(v)}


def exp_avg_elements(param_state: dict) -> int:
    return sum(
        int(world["exp_avg"].numel())
        for key, per_dtype in param_state.items()
        if key != "buckets_coalesced"
        for world in per_dtype.values()
    )


def test_checkpoint_holds_the_gathered_state_and_resumes_exactly(tmp_path: Path) -> None:
    first = tmp_path / "a"
    ok(steerlm("train-apm", f"output_dir={first}", *ARGS))
    checkpoints = first / "train-apm" / "run" / "checkpoints"
    step3 = [p for p in checkpoints.glob("*.ckpt") if torch.load(p, weights_only=False)["global_step"] == 3]
    assert len(step3) == 1, sorted(p.name for p in checkpoints.iterdir())
    saved = torch.load(step3[0], weights_only=False)
    optimizer = saved["optimizer_states"][0]["optimizer"]
    assert optimizer["param_state_sharding_type"] == "dp_zero_gather_scatter"
    parameters = sum(v.numel() for k, v in saved["state_dict"].items() if torch.is_tensor(v) and "_extra" not in k)
    assert exp_avg_elements(optimizer["param_state"]) == parameters  # both ranks' shards, not rank 0's half
    assert float(optimizer["param_state"][0][next(iter(optimizer["param_state"][0]))]["exp_avg_sq"].abs().sum()) > 0

    second = tmp_path / "b"
    (second / "train-apm" / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(step3[0], second / "train-apm" / "run" / "checkpoints" / step3[0].name)
    res = ok(steerlm("train-apm", f"output_dir={second}", *ARGS))
    log = res.stdout + res.stderr
    assert "step 4/6" in log and "step 1/6" not in log  # resumed, not restarted
    a, b = weights(first / "apm.nemo"), weights(second / "apm.nemo")
    assert a.keys() == b.keys()
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()}
    assert max(diffs.values()) == 0.0, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
