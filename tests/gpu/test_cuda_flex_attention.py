"""On a CUDA machine: packed rows through FlexAttention (the automatic CUDA path) equal the dense mask, with gradients.

On CPU torch 2.13 has no FlexAttention backward; tests/unit/test_attention.py checks its forward there.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine: pytest -m gpu)"),
]


def _grads(model, tokens, positions, **mask):
    model.zero_grad()
    out = model(tokens, positions, **mask)
    out.float().pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_flex_document_mask_equals_dense_forward_and_gradients(packed: bool) -> None:
    from nemo_steerlm.megatron import parallel
    from nemo_steerlm.megatron.attention import DocumentMask
    from nemo_steerlm.megatron.builder import build_gpt_model, build_transformer_config
    from nemo_steerlm.megatron.config import ParallelConfig, get_preset

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    parallel.initialize_model_parallel(ParallelConfig(), seed=1)
    gpt = get_preset("tiny_cpu").with_vocab_size(512)
    model = build_gpt_model(gpt, build_transformer_config(gpt, ParallelConfig()))
    b, s = 2, 384
    tokens = torch.randint(0, 512, (b, s), device="cuda")
    ids = torch.zeros(b, s, dtype=torch.long, device="cuda")
    positions = torch.arange(s, device="cuda").expand(b, s).clone()
    if packed:  # row 0: documents of 100, 150, 100 tokens and padding; row 1: 300 tokens and padding
        ids[0, 100:250], ids[0, 250:350], ids[0, 350:] = 1, 2, -1
        ids[1, 300:] = -1
        for r, starts in ((0, (0, 100, 250, 350)), (1, (0, 300))):
            for a, z in zip(starts, (*starts[1:], s), strict=True):
                positions[r, a:z] = torch.arange(z - a, device="cuda")
    ref, ref_grads = _grads(
        model, tokens, positions, attention_mask=None, packed_seq_params=DocumentMask(document_ids=ids, backend="dense")
    )
    mask = DocumentMask(document_ids=ids)  # auto: FlexAttention on CUDA
    out, grads = _grads(model, tokens, positions, attention_mask=None, packed_seq_params=mask)
    assert "block" in mask._cache and "allowed" not in mask._cache
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
