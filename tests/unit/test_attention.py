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


def _packed_batch():
    make = lambda n, seed: SFTSample(  # noqa: E731
        torch.randint(1, TINY.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist(), [1] * n
    )
    return collate_sft([[make(9, 1), make(6, 2)], [make(12, 3)]], pad_id=0, pad_to=16)  # row 2 ends in padding


def _dense_reference_mask(document_ids):
    """Megatron's mask (True = masked) written out independently: same conversation and not in the future."""
    b, s = document_ids.shape
    mask = torch.ones(b, 1, s, s, dtype=torch.bool)
    for r in range(b):
        for i in range(s):
            for j in range(i + 1):
                mask[r, 0, i, j] = bool(document_ids[r, i] != document_ids[r, j])
    return mask


def test_packed_collation_gives_document_ids_and_no_dense_mask():
    batch = _packed_batch()
    assert "attention_mask" not in batch
    assert batch["document_ids"].tolist() == [[0] * 8 + [1] * 5 + [-1] * 3, [0] * 11 + [-1] * 5]
    local, sdpa = _pair()
    from nemo_steerlm.megatron.attention import DocumentMask, attention_inputs

    dense = attention_inputs(local, batch["document_ids"])
    torch.testing.assert_close(dense["attention_mask"], _dense_reference_mask(batch["document_ids"]), rtol=0, atol=0)
    ids = attention_inputs(sdpa, batch["document_ids"])
    assert ids["attention_mask"] is None and isinstance(ids["packed_seq_params"], DocumentMask)
    assert attention_inputs(sdpa, None) == {"attention_mask": None}


def test_packed_mask_matches_megatron_and_keeps_conversations_apart():
    from nemo_steerlm.megatron.attention import attention_inputs

    local, sdpa = _pair()
    batch = _packed_batch()
    with torch.no_grad():
        ours = sdpa(batch["tokens"], batch["position_ids"], **attention_inputs(sdpa, batch["document_ids"]))
        ref = local(batch["tokens"], batch["position_ids"], **attention_inputs(local, batch["document_ids"]))
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


def _forward_backward(model, batch, **mask):
    model.zero_grad()
    logits = model(batch["tokens"], batch["position_ids"], **mask)
    logits.float().pow(2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_document_mask_forward_and_gradients_equal_the_dense_mask(packed):
    """The path packed batches take on CPU (ids -> mask inside the attention) against megatron's dense mask."""
    from nemo_steerlm.megatron.attention import DocumentMask

    local, sdpa = _pair()
    batch = _packed_batch()
    ids = batch["document_ids"] if packed else torch.zeros_like(batch["document_ids"])  # unpacked: one document
    ref_out, ref_grads = _forward_backward(local, batch, attention_mask=_dense_reference_mask(ids))
    out, grads = _forward_backward(sdpa, batch, attention_mask=None, packed_seq_params=DocumentMask(document_ids=ids))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    if not packed:  # one document per row is the plain causal path
        causal_out, causal_grads = _forward_backward(sdpa, batch, attention_mask=None)
        torch.testing.assert_close(out, causal_out, rtol=1e-5, atol=1e-5)
        for name, grad in causal_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_flex_attention_block_mask_equals_the_dense_mask(packed):
    """FlexAttention (the CUDA path; eager and forward-only on CPU in torch 2.13) against megatron's dense mask."""
    from nemo_steerlm.megatron.attention import DocumentMask

    local, sdpa = _pair()
    batch = _packed_batch()
    ids = batch["document_ids"] if packed else torch.zeros_like(batch["document_ids"])
    with torch.no_grad():
        ref = local(batch["tokens"], batch["position_ids"], _dense_reference_mask(ids))
        mask = DocumentMask(document_ids=ids, backend="flex")
        flex = sdpa(batch["tokens"], batch["position_ids"], None, packed_seq_params=mask)
    assert "block" in mask._cache and "allowed" not in mask._cache  # the block mask ran, no dense mask was built
    torch.testing.assert_close(flex, ref, rtol=1e-5, atol=1e-5)
    # a block mask that let conversations see each other would differ (the check can fail)
    if packed:
        with torch.no_grad():
            leaky = sdpa(batch["tokens"], batch["position_ids"], None)
        assert (leaky[0, 8:13] - ref[0, 8:13]).abs().max() > 1e-3


def test_auto_backend_picks_flex_only_on_cuda_without_dropout():
    from nemo_steerlm.megatron.attention import DocumentMask, SDPAttention

    ids = torch.zeros(1, 4, dtype=torch.long)
    cpu = torch.zeros(4, 1, 4, 32)
    assert not SDPAttention._use_flex(DocumentMask(document_ids=ids), cpu, 0.0)
    assert SDPAttention._use_flex(DocumentMask(document_ids=ids, backend="flex"), cpu, 0.0)
    assert not SDPAttention._use_flex(DocumentMask(document_ids=ids, backend="dense"), cpu, 0.0)
    with pytest.raises(ValueError, match="no attention dropout"):
        SDPAttention._use_flex(DocumentMask(document_ids=ids, backend="flex"), cpu, 0.1)
    if torch.cuda.is_available():
        gpu = cpu.cuda()
        assert SDPAttention._use_flex(DocumentMask(document_ids=ids), gpu, 0.0)
        assert not SDPAttention._use_flex(DocumentMask(document_ids=ids), gpu, 0.1)
