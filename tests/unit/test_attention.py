"""SDPA core attention against megatron's own DotProductAttention (same weights, same inputs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nemo_steerlm.data.datasets import SFTSample, collate_sft
from nemo_steerlm.megatron.config import PRESETS, ConfigError, ParallelConfig

TINY = PRESETS["tiny_cpu"].with_vocab_size(100)


def _pair(gpt=TINY):
    """Two models with identical weights: megatron's local attention and SDPA."""
    from nemo_steerlm.megatron import builder, parallel

    parallel.initialize_model_parallel(ParallelConfig(), seed=0)
    config = builder.build_transformer_config(gpt, ParallelConfig())
    local = builder.build_gpt_model(gpt, config, core_attention="local")
    sdpa = builder.build_gpt_model(gpt, config, core_attention="sdpa")
    sdpa.load_state_dict(local.state_dict(), strict=True)
    return local, sdpa


def _core_attention_types(model) -> set[str]:
    return {type(layer.self_attention.core_attention).__name__ for layer in model.decoder.layers}


def test_the_spec_swaps_only_the_core_attention():
    local, sdpa = _pair()
    assert _core_attention_types(local) == {"DotProductAttention"}
    assert _core_attention_types(sdpa) == {"SDPAttention"}
    assert list(local.state_dict()) == list(sdpa.state_dict())  # checkpoints are interchangeable


def test_causal_forward_and_gradients_match_megatron():
    local, sdpa = _pair()
    tokens = torch.randint(0, TINY.vocab_size, (2, 24))
    positions = torch.arange(24).expand(2, 24)
    outs, grads = [], []
    for model in (local, sdpa):
        model.zero_grad()
        logits = model(tokens, positions, None)
        logits.float().pow(2).mean().backward()
        outs.append(logits.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_mask_matches_megatron_and_keeps_conversations_apart():
    local, sdpa = _pair()
    make = lambda n, seed: SFTSample(  # noqa: E731
        torch.randint(1, TINY.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist(), [1] * n
    )
    batch = collate_sft([[make(9, 1), make(6, 2)], [make(12, 3)]], pad_id=0, pad_to=16)  # row 2 ends in padding
    with torch.no_grad():
        ours = sdpa(batch["tokens"], batch["position_ids"], batch["attention_mask"])
        ref = local(batch["tokens"], batch["position_ids"], batch["attention_mask"])
        alone = sdpa(batch["tokens"][:1, 8:13], torch.arange(5).unsqueeze(0), None)
    real = torch.zeros(2, 16, dtype=torch.bool)
    real[0, :13], real[1, :11] = True, True  # row 0: 8 + 5 tokens, row 1: 11 tokens, then padding
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(ours).all()  # padding rows too
    # the second packed conversation sees nothing of the first: same logits as run on its own
    torch.testing.assert_close(ours[0, 8:13], alone[0], rtol=1e-5, atol=1e-5)


def test_a_single_query_attends_to_every_cached_key():
    from megatron.core.transformer.enums import AttnMaskType

    from nemo_steerlm.megatron.attention import SDPAttention

    _, sdpa = _pair()
    core = sdpa.decoder.layers[0].self_attention.core_attention
    q, k, v = torch.randn(7, 2, 4, 32), torch.randn(7, 2, 2, 32), torch.randn(7, 2, 2, 32)
    full = core(q, k, v, None, AttnMaskType.causal)
    last = core(q[-1:], k, v, None, AttnMaskType.causal)  # a KV-cache decode step
    torch.testing.assert_close(last[0], full[-1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="as many queries as keys"):
        core(q[-3:], k, v, None, AttnMaskType.causal)
    assert isinstance(core, SDPAttention)


def _saved_bytes(model, tokens, positions) -> int:
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens, positions, None).sum()
    return sum(saved)


def test_sdpa_keeps_no_sequence_by_sequence_matrix_for_backward():
    gpt = dataclasses.replace(TINY, seq_length=512)
    local, sdpa = _pair(gpt)
    s = 256
    tokens, positions = torch.randint(0, 100, (2, s)), torch.arange(s).expand(2, s)
    kept_local, kept_sdpa = _saved_bytes(local, tokens, positions), _saved_bytes(sdpa, tokens, positions)
    # local keeps scores-sized tensors [2, 4 heads, 256, 256] fp32 (2 MiB each) per layer; SDPA keeps only O(s)
    per_layer_scores = 2 * gpt.num_attention_heads * s * s * 4
    assert kept_local - kept_sdpa >= gpt.num_layers * per_layer_scores


def test_unknown_choice_and_unsupported_configs_name_the_key():
    from nemo_steerlm.megatron import builder

    _pair()
    config = builder.build_transformer_config(TINY, ParallelConfig())
    with pytest.raises(ConfigError, match="model.core_attention=flash: use one of sdpa, local"):
        builder.build_gpt_model(TINY, config, core_attention="flash")
    windowed = dataclasses.replace(config, window_size=(8, 0))
    with pytest.raises(ConfigError, match="window_size; set model.core_attention=local"):
        builder.build_gpt_model(TINY, windowed, core_attention="sdpa")
