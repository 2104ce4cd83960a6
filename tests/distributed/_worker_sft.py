"""Worker for test_sft_equivalence: packed SFT training steps and greedy generation under given layouts.

Run under ``torchrun --nproc_per_node N`` (or plain ``python`` for a world of one)::

    _worker_sft.py --layouts tp2,tp2sp,pp2,dp2 --generate tp2,pp2 --out results.json

Every layout starts from the same full TP=1 weights (built with a fixed seed, then sharded with
``checkpoint_layout.full_to_shard``) of a tiny :class:`PositionAwareGPTModel`, and trains on the same packed
batches of the shipped HelpSteer sample (block-diagonal masks, restarting positions) with the real
``SteerLMSFTModel.forward_step`` loss. Generation layouts run greedy KV-cache generation from the initial weights on
prompts of different lengths in one batch. Global rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from _worker_regression import parse_layout

from nemo_steerlm import resources
from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.datasets import PackedSFTDataset, SFTDataset, collate_sft
from nemo_steerlm.data.sources import helpsteer_to_conversation, load_helpsteer
from nemo_steerlm.data.template import Conversation, Turn, render_prompt
from nemo_steerlm.data.tokenization import load_tokenizer
from nemo_steerlm.megatron import builder, parallel
from nemo_steerlm.megatron.checkpoint_layout import full_to_shard
from nemo_steerlm.megatron.config import PRESETS, ParallelConfig, validate_layout
from nemo_steerlm.megatron.step import run_step
from nemo_steerlm.models.generation import SamplingParams, generate_batch
from nemo_steerlm.models.gpt import PositionAwareGPTModel
from nemo_steerlm.models.sft import SteerLMSFTModel
from nemo_steerlm.resources import helpsteer_sample_path

SEED = 1234
SEQ = 256
GLOBAL_BATCH = 8
MICRO_BATCHES = 2
STEPS = 5
NEW_TOKENS = 24
TOKENIZER = load_tokenizer(Path(resources.__file__).resolve().parent / "tokenizers" / "steerlm_bpe_4k")
GPT = PRESETS["tiny_cpu"].with_vocab_size(len(TOKENIZER))


def sample_conversations() -> list[Conversation]:
    schema = AttributeSchema()
    return [helpsteer_to_conversation(r, schema) for r in load_helpsteer(str(helpsteer_sample_path()), schema)["train"]]


def global_batches() -> list[dict[str, torch.Tensor]]:
    """STEPS packed global batches of GLOBAL_BATCH rows from the shipped sample."""
    convs = sample_conversations()[:200]
    packed = PackedSFTDataset(SFTDataset(convs, TOKENIZER, SEQ, 32), SEQ)
    pad = int(TOKENIZER.pad_token_id)
    return [
        collate_sft([packed[i] for i in range(s * GLOBAL_BATCH, (s + 1) * GLOBAL_BATCH)], pad_id=pad, pad_to=SEQ)
        for s in range(STEPS)
    ]


def micro_batches(batch: dict[str, torch.Tensor], dp_rank: int, dp_size: int) -> list[dict[str, torch.Tensor]]:
    per_rank = GLOBAL_BATCH // dp_size
    mine = {k: v[dp_rank * per_rank : (dp_rank + 1) * per_rank] for k, v in batch.items()}
    mbs = per_rank // MICRO_BATCHES
    return [{k: v[i * mbs : (i + 1) * mbs] for k, v in mine.items()} for i in range(MICRO_BATCHES)]


def forward_step(data_iterator, model):
    # the real SFT loss (the method does not use `self`)
    return SteerLMSFTModel.forward_step(None, data_iterator, model)


def build(layout: ParallelConfig, full: dict | None, per_token_loss: bool = True):
    parallel.initialize_model_parallel(layout, seed=SEED)
    config = builder.build_transformer_config(GPT, layout, calculate_per_token_loss=per_token_loss)
    model = builder.build_gpt_model(GPT, config, model_cls=PositionAwareGPTModel)
    if full is not None:
        shard = full_to_shard(full, GPT, parallel.tp_rank(), parallel.tp_size(), parallel.pp_rank(), parallel.pp_size())
        model.load_state_dict(shard, strict=True)
    return model, config


def full_state_dict() -> dict[str, torch.Tensor]:
    model, _ = build(ParallelConfig(), None)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    parallel.destroy_model_parallel()
    return state


def train_layout(name: str, full: dict, batches: list[dict]) -> dict:
    layout = parse_layout(name)
    world = dist.get_world_size()
    mbs = GLOBAL_BATCH // (world // layout.model_parallel_size * MICRO_BATCHES)
    dp = validate_layout(GPT, layout, world, mbs, GLOBAL_BATCH)
    model, config = build(layout, full)
    chunks = builder.wrap_ddp([model], config)
    optimizer = builder.build_optimizer(chunks, lr=3e-3, weight_decay=0.01, clip_grad=1.0)
    scheduler = builder.build_scheduler(optimizer, lr=3e-3, total_steps=STEPS, warmup_steps=1)
    losses = []
    for batch in batches:
        mb = micro_batches(batch, parallel.dp_rank(), dp)
        result = run_step(forward_step, chunks, mb, SEQ, mbs, optimizer=optimizer, scheduler=scheduler)
        losses.append(result.loss)
    parallel.destroy_model_parallel()
    return {"losses": losses, "dp": dp}


def prompts() -> list[list[int]]:
    """Prompts of different lengths (one batch), from the sample's user turns."""
    convs = sample_conversations()
    out = []
    for conv, cut in zip(convs[::40], (12, 40, 7, 25, 60), strict=False):
        user = Conversation([Turn(" ".join(conv.turns[0].value.split()[:cut]), "User")])
        out.append(TOKENIZER(render_prompt(user, "verbosity:2"), add_special_tokens=False)["input_ids"])
    return out


def generate_layout(name: str, full: dict) -> list[list[int]]:
    base, _, mode = name.partition("-")  # "tp2" (KV cache) or "tp1-nocache" (full recomputation every step)
    model, _ = build(parse_layout(base), full, per_token_loss=False)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, greedy=True, stop_text="", use_cache=mode != "nocache")
    gen = torch.Generator().manual_seed(SEED)
    results = generate_batch(model, prompts(), params, TOKENIZER, len(TOKENIZER), gen)
    parallel.destroy_model_parallel()
    return [r.token_ids for r in results]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layouts", default="")
    parser.add_argument("--generate", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    parallel.init_distributed()
    full = full_state_dict()
    batches = global_batches()
    results: dict = {"train": {}, "generate": {}}
    for name in filter(None, args.layouts.split(",")):
        results["train"][name] = train_layout(name, full, batches)
    for name in filter(None, args.generate.split(",")):
        results["generate"][name] = generate_layout(name, full)
    results["prompt_lengths"] = [len(p) for p in prompts()]
    if dist.get_rank() == 0:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle)
    parallel.destroy_model_parallel(destroy_process_group=True)


if __name__ == "__main__":
    main()
