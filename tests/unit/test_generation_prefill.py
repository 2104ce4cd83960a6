"""Batched-prefill KV-cache decoding against an independent greedy loop and against the stepwise decoding loop.

The tiny GPT with random weights (a large init so that greedy choices are clear), prompts of mixed lengths from the
tiny BPE's ids: every row's greedy tokens must equal a plain loop that runs the whole unpadded sequence through the
model each step without a cache (an argmax over the tokenizer's vocabulary), and the tokens the stepwise loop (the
path used before batched prefill) chooses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nemo_steerlm import resources
from nemo_steerlm.data.tokenization import load_tokenizer
from nemo_steerlm.megatron.config import PRESETS, ParallelConfig

TOKENIZER = load_tokenizer(Path(resources.__file__).resolve().parent / "tokenizers" / "steerlm_bpe_4k")
NEW = 12


@pytest.fixture
def model():
    from nemo_steerlm.megatron import builder, parallel
    from nemo_steerlm.models.gpt import PositionAwareGPTModel

    gpt = dataclasses.replace(PRESETS["tiny_cpu"].with_vocab_size(len(TOKENIZER)), init_method_std=0.2)
    parallel.initialize_model_parallel(ParallelConfig(), seed=3)
    config = builder.build_transformer_config(gpt, ParallelConfig())
    return builder.build_gpt_model(gpt, config, model_cls=PositionAwareGPTModel).eval()


def _reference(model, prompt: list[int]) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(NEW):
            logits = model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), None)
            ids.append(int(logits[0, -1, : len(TOKENIZER)].argmax()))
    return ids[len(prompt) :]


def _prompts(lengths):
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(10, len(TOKENIZER), (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("lengths", [(5, 17, 9, 30), (12, 12, 12)], ids=["mixed", "equal"])
def test_prefilled_batch_equals_unbatched_greedy_and_the_stepwise_loop(model, lengths):
    from nemo_steerlm.models import generation
    from nemo_steerlm.models.generation import SamplingParams, _BatchState, _decode_stepwise, generate_batch

    prompts = _prompts(lengths)
    params = SamplingParams(max_new_tokens=NEW, greedy=True, stop_text="", batch_size=len(prompts))
    calls = []
    original = generation._pipeline_forward

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    generation._pipeline_forward = counting
    try:
        got = generate_batch(model, prompts, params, TOKENIZER, len(TOKENIZER), torch.Generator())
    finally:
        generation._pipeline_forward = original
    # one prefill of every prompt, then one token per row per step
    assert calls[0] == (len(prompts), max(lengths)) and all(c == (len(prompts), 1) for c in calls[1:])
    assert len(calls) == NEW
    state = _BatchState(prompts, params, TOKENIZER, int(TOKENIZER.pad_token_id))
    stepwise = _decode_stepwise(model, state, len(TOKENIZER), torch.Generator())
    for prompt, g, s in zip(prompts, got, stepwise, strict=True):
        assert g.token_ids == _reference(model, prompt)
        assert g.token_ids == s.token_ids
