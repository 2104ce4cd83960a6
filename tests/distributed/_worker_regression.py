"""Worker for test_parallel_equivalence: train a tiny RegressionGPTModel for a few steps under given layouts.

Run under ``torchrun --nproc_per_node N`` (or plain ``python`` for a world of one)::

    _worker_regression.py --layouts tp2,tp2sp,pp2,dp2 --out results.json

Every layout starts from the same full TP=1 weights (built once per rank with a fixed seed, then sharded with
``checkpoint_layout.full_to_shard``) and sees the same global batches. Global rank 0 writes, per layout, the loss of
each step and the predictions on a fixed batch before and after training.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch
import torch.distributed as dist

from nemo_steerlm.megatron import builder, parallel
from nemo_steerlm.megatron.checkpoint_layout import full_to_shard
from nemo_steerlm.megatron.config import PRESETS, ParallelConfig, validate_layout
from nemo_steerlm.megatron.step import run_forward_collect, run_step
from nemo_steerlm.models.heads import RegressionGPTModel, masked_squared_error

SEED = 1234
VOCAB = 100
SEQ = 32
GLOBAL_BATCH = 8
MICRO_BATCHES = 2
NUM_ATTRIBUTES = 9
STEPS = 5
GPT = PRESETS["tiny_cpu"].with_vocab_size(VOCAB)


def parse_layout(name: str) -> ParallelConfig:
    match = re.fullmatch(r"(?:tp(\d+))?(?:pp(\d+))?(sp)?(?:dp\d+)?", name)
    if not match:
        raise ValueError(f"bad layout {name!r}")
    tp = int(match.group(1) or 1)
    pp = int(match.group(2) or 1)
    return ParallelConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=bool(match.group(3))
    )


def make_batch(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=gen)
    last = torch.randint(SEQ // 4, SEQ, (GLOBAL_BATCH,), generator=gen)
    labels = torch.randint(0, 5, (GLOBAL_BATCH, NUM_ATTRIBUTES), generator=gen).float()
    labels[torch.rand(labels.shape, generator=gen) < 0.3] = -100.0
    labels[0] = -100.0  # one sample with every attribute missing
    return {"tokens": tokens, "last": last, "labels": labels}


def micro_batches(batch: dict[str, torch.Tensor], dp_rank: int, dp_size: int) -> list[dict[str, torch.Tensor]]:
    per_rank = GLOBAL_BATCH // dp_size
    mine = {k: v[dp_rank * per_rank : (dp_rank + 1) * per_rank] for k, v in batch.items()}
    mbs = per_rank // MICRO_BATCHES
    return [{k: v[i * mbs : (i + 1) * mbs] for k, v in mine.items()} for i in range(MICRO_BATCHES)]


def forward_step(data_iterator, model):
    batch = next(data_iterator)
    tokens = batch["tokens"]
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    output = model(tokens, positions, None, last_token_index=batch["last"])

    def loss_func(pred, non_loss_data=False):
        if non_loss_data:
            return pred.detach()
        total, count = masked_squared_error(pred, batch["labels"])
        return total, count, {"loss": torch.stack([total.detach(), count.detach().float()])}

    return output, loss_func


def full_state_dict() -> dict[str, torch.Tensor]:
    """Build the full TP=1 model with a fixed seed (same on every rank) and return its weights."""
    parallel.initialize_model_parallel(ParallelConfig(), seed=SEED)
    config = builder.build_transformer_config(GPT, ParallelConfig())
    model = builder.build_gpt_model(
        GPT, config, model_cls=RegressionGPTModel, num_attributes=NUM_ATTRIBUTES, pre_process=True, post_process=True
    )
    state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    parallel.destroy_model_parallel()
    return state


def predict(model_chunks, batch) -> list[list[float]] | None:
    mbs = [{k: v[i * 4 : (i + 1) * 4] for k, v in batch.items()} for i in range(2)]
    outs = run_forward_collect(forward_step, model_chunks, mbs, seq_length=SEQ, micro_batch_size=4)
    return torch.cat(outs).tolist() if outs else None


def run_layout(name: str, full: dict[str, torch.Tensor]) -> dict:
    layout = parse_layout(name)
    world = dist.get_world_size()
    micro_batch_size = GLOBAL_BATCH // (world // layout.model_parallel_size * MICRO_BATCHES)
    dp = validate_layout(GPT, layout, world, micro_batch_size, GLOBAL_BATCH)
    parallel.initialize_model_parallel(layout, seed=SEED)
    config = builder.build_transformer_config(GPT, layout, calculate_per_token_loss=True)
    model = builder.build_gpt_model(GPT, config, model_cls=RegressionGPTModel, num_attributes=NUM_ATTRIBUTES)
    shard = full_to_shard(full, GPT, parallel.tp_rank(), parallel.tp_size(), parallel.pp_rank(), parallel.pp_size())
    model.load_state_dict(shard, strict=True)
    chunks = builder.wrap_ddp([model], config)
    optimizer = builder.build_optimizer(chunks, lr=3e-3, weight_decay=0.01, clip_grad=1.0)
    scheduler = builder.build_scheduler(optimizer, lr=3e-3, total_steps=STEPS, warmup_steps=1)
    eval_batch = make_batch(SEED + 999)
    initial = predict(chunks, eval_batch)
    losses, norms, started = [], [], time.perf_counter()
    for step in range(STEPS):
        mbs = micro_batches(make_batch(SEED + step), parallel.dp_rank(), dp)
        result = run_step(
            forward_step,
            chunks,
            mbs,
            seq_length=SEQ,
            micro_batch_size=micro_batch_size,
            optimizer=optimizer,
            scheduler=scheduler,
        )
        losses.append(result.loss)
        norms.append(result.grad_norm)
    seconds = time.perf_counter() - started
    final = predict(chunks, eval_batch)
    # Predictions exist on the last stage; send them to global rank 0 for the report.
    payload = (
        [final, initial] if parallel.is_last_stage() and parallel.tp_rank() == 0 and parallel.dp_rank() == 0 else None
    )
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, payload)
    final, initial = next(p for p in gathered if p is not None)
    parallel.destroy_model_parallel()
    return {
        "losses": losses,
        "grad_norms": norms,
        "initial": initial,
        "final": final,
        "dp": dp,
        "train_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layouts", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    parallel.init_distributed()
    full = full_state_dict()
    results = {name: run_layout(name, full) for name in args.layouts.split(",")}
    if dist.get_rank() == 0:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle)
    parallel.destroy_model_parallel(destroy_process_group=True)


if __name__ == "__main__":
    main()
