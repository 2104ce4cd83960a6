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


@pytest.mark.parametrize("use_cache", [True, False], ids=["prefilled", "stepwise"])
def test_stop_agreement_stops_the_same_rows_on_a_rank_without_the_callback(model, use_cache):
    # the leader's on_token stops row 1 after 3 tokens; agree carries its requests once per step to a follower,
    # which has no on_token: both must stop the same row at the same step and run the same number of steps
    from nemo_steerlm.models.generation import SamplingParams, generate_batch

    prompts = _prompts((6, 9))
    params = SamplingParams(max_new_tokens=NEW, greedy=True, stop_text="", batch_size=2, use_cache=use_cache)
    sent: list[list[bool]] = []

    def leader_agree(requested: list[bool]) -> list[bool]:
        sent.append(list(requested))
        return list(requested)

    replies = iter(sent)
    on_token = lambda i, gen: not (i == 1 and len(gen.token_ids) >= 3)  # noqa: E731
    lead = generate_batch(model, prompts, params, TOKENIZER, len(TOKENIZER), torch.Generator(), on_token, leader_agree)
    follow = generate_batch(model, prompts, params, TOKENIZER, len(TOKENIZER), torch.Generator(), None,
                            lambda requested: next(replies))  # fmt: skip
    alone = generate_batch(model, prompts, params, TOKENIZER, len(TOKENIZER), torch.Generator())
    assert [g.stop_reason for g in lead] == [g.stop_reason for g in follow] == ["max_new_tokens", "cancelled"]
    assert [g.token_ids for g in lead] == [g.token_ids for g in follow]
    assert lead[1].token_ids == alone[1].token_ids[:3] and lead[0].token_ids == alone[0].token_ids
    assert len(sent) == NEW and sum(map(any, sent)) == 1  # one agreement per step; the stop asked for once
