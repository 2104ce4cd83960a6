"""Worker for test_distributed_optimizer: megatron's distributed optimizer against the plain one, at DP=2 on gloo.

Run under ``torchrun --nproc_per_node 2``::

    _worker_distopt.py --out results.json --ckpt-dir DIR

Every run starts from the same full weights of a tiny :class:`RegressionGPTModel` and sees the same global batches
(those of ``_worker_regression``). It records, for global rank 0 to write:

* ``plain``/``dist`` (and ``*_noclip``, ``*_bf16``): the loss of each step, how far training moved the weights, and
  the distributed run's final weights against the matching plain run's (largest absolute difference);
* ``shards``: per rank, how many Adam ``exp_avg`` elements its torch optimizer holds, and the model's parameter count;
* ``resume``: a distributed-optimizer run saved after ``SPLIT`` steps the way Lightning saves (every rank calls
  ``state_dict()``, data-parallel rank 0 writes the file), rebuilt from scratch, loaded on every rank and trained to
  the end, against the uninterrupted run of ``dist``/``dist_bf16``; and the same resume with a fresh optimizer
  (weights and schedule only), which must differ (the check can fail).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from _worker_regression import (
    GLOBAL_BATCH,
    GPT,
    MICRO_BATCHES,
    NUM_ATTRIBUTES,
    SEED,
    SEQ,
    forward_step,
    full_state_dict,
    make_batch,
    micro_batches,
)

from nemo_steerlm.megatron import builder, parallel
from nemo_steerlm.megatron.checkpoint_layout import full_to_shard
from nemo_steerlm.megatron.config import ParallelConfig
from nemo_steerlm.megatron.step import run_step
from nemo_steerlm.models.heads import RegressionGPTModel
from nemo_steerlm.models.optim import MegatronOptimizerAdapter, sub_optimizers

STEPS = 6
SPLIT = 3
LR = 3e-3


class Run:
    """A DP=2 training run of the tiny regression model with megatron DDP, optimizer and schedule."""

    def __init__(self, full: dict, distributed: bool, clip: float, dtype: str = "float32") -> None:
        layout = ParallelConfig(params_dtype=dtype)
        parallel.initialize_model_parallel(layout, seed=SEED)
        config = builder.build_transformer_config(GPT, layout, calculate_per_token_loss=True)
        self.model = builder.build_gpt_model(GPT, config, model_cls=RegressionGPTModel, num_attributes=NUM_ATTRIBUTES)
        self.model.load_state_dict(full_to_shard(full, GPT, 0, 1, 0, 1), strict=True)
        self.chunks = builder.wrap_ddp([self.model], config, use_distributed_optimizer=distributed)
        optimizer = builder.build_optimizer(
            self.chunks,
            lr=LR,
            weight_decay=0.01,
            clip_grad=clip,
            params_dtype=dtype,
            use_distributed_optimizer=distributed,
        )
        scheduler = builder.build_scheduler(optimizer, lr=LR, total_steps=STEPS, warmup_steps=1)
        self.adapter = MegatronOptimizerAdapter(optimizer, scheduler)
        self.losses: list[float] = []
        self.num_parameters = sum(p.numel() for p in self.model.parameters())

    def train(self, start: int, stop: int) -> Run:
        micro_size = GLOBAL_BATCH // (parallel.dp_size() * MICRO_BATCHES)
        for step in range(start, stop):
            result = run_step(
                forward_step,
                self.chunks,
                micro_batches(make_batch(SEED + step), parallel.dp_rank(), parallel.dp_size()),
                seq_length=SEQ,
                micro_batch_size=micro_size,
                optimizer=self.adapter.megatron_optimizer,
                scheduler=self.adapter.scheduler,
            )
            self.losses.append(result.loss)
        return self

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().clone() for k, v in self.model.state_dict().items() if torch.is_tensor(v)}

    def exp_avg_elements(self) -> int:
        """Adam ``exp_avg`` elements this rank's torch optimizer(s) hold."""
        return sum(
            int(state["exp_avg"].numel())
            for sub in sub_optimizers(self.adapter.megatron_optimizer)
            for state in sub.optimizer.state.values()
        )

    def close(self) -> None:
        parallel.destroy_model_parallel()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two sets of weights."""
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def finished(full: dict, distributed: bool, clip: float, dtype: str = "float32") -> tuple[list[float], dict, int, int]:
    run = Run(full, distributed, clip, dtype).train(0, STEPS)
    out = (run.losses, run.weights(), run.exp_avg_elements(), run.num_parameters)
    run.close()
    return out


def compare(full: dict) -> tuple[dict, dict[str, dict]]:
    """Plain against distributed optimizer, with and without clipping, fp32 and bf16.

    Returns:
        The results, and the distributed runs' final weights by dtype (clipping on) for :func:`resume`.
    """
    results: dict = {}
    initial = {k: v.float() for k, v in full.items() if torch.is_tensor(v)}
    finals = {}
    for name, clip, dtype in (("", 1.0, "float32"), ("_noclip", 0.0, "float32"), ("_bf16", 1.0, "bfloat16")):
        plain_losses, plain_weights, plain_elements, total = finished(full, False, clip, dtype)
        dist_losses, dist_weights, dist_elements, _ = finished(full, True, clip, dtype)
        results["plain" + name] = {"losses": plain_losses, "moved": max_diff(plain_weights, initial)}
        results["dist" + name] = {"losses": dist_losses, "weight_diff": max_diff(plain_weights, dist_weights)}
        if clip:
            finals[dtype] = dist_weights
        if not name:
            per_rank = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, {"plain": plain_elements, "dist": dist_elements})
            results["shards"] = {"parameters": total, "per_rank": per_rank}
    return results, finals


def _as_list(states: dict | list) -> list:
    return states if isinstance(states, list) else [states]


def gathered_elements(param_state: dict) -> int:
    """Elements of ``exp_avg`` in a gathered (``dp_zero_gather_scatter``) parameter state."""
    return sum(
        int(world["exp_avg"].numel())
        for key, per_dtype in param_state.items()
        if key != "buckets_coalesced"
        for world in per_dtype.values()
    )


def resume(full: dict, ckpt_dir: Path, dtype: str, reference: dict) -> dict:
    """Save after SPLIT steps as Lightning does, rebuild, load, finish; against the uninterrupted run."""
    first = Run(full, True, 1.0, dtype).train(0, SPLIT)
    checkpoint = {"model": first.model.state_dict(), "optimizer": first.adapter.state_dict()}  # collective
    path = ckpt_dir / f"split-{dtype}.pt"
    if parallel.dp_rank() == 0:
        torch.save(checkpoint, path)
    first.close()
    dist.barrier()
    loaded = torch.load(path, weights_only=False)
    states = loaded["optimizer"]["optimizer"]
    out = {"gathered_exp_avg_elements": sum(gathered_elements(s["param_state"]) for s in _as_list(states))}
    for name, with_optimizer in (("resumed", True), ("fresh_optimizer", False)):
        second = Run(full, True, 1.0, dtype)
        second.model.load_state_dict(loaded["model"], strict=True)
        if with_optimizer:
            second.adapter.load_state_dict(loaded["optimizer"])
        else:
            second.adapter.scheduler.load_state_dict(loaded["optimizer"]["scheduler"])
        second.train(SPLIT, STEPS)
        out[name] = max_diff(reference, second.weights())
        second.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt-dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    parallel.init_distributed()
    full = full_state_dict()
    results, finals = compare(full)
    results["resume"] = {dtype: resume(full, Path(args.ckpt_dir), dtype, finals[dtype]) for dtype in finals}
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results), encoding="utf-8")
    parallel.destroy_model_parallel(destroy_process_group=True)


if __name__ == "__main__":
    main()
