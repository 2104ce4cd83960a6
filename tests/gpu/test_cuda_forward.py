"""On a CUDA machine: the tiny GPT runs on the GPU without the CPU adapter, in bf16, close to fp32 on the CPU."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine: pytest -m gpu)"),
]


def test_tiny_gpt_bf16_on_gpu_matches_fp32() -> None:
    from nemo_steerlm.megatron import adapter, parallel
    from nemo_steerlm.megatron.builder import build_gpt_model, build_transformer_config
    from nemo_steerlm.megatron.config import ParallelConfig, get_preset

    parallel.initialize_model_parallel(ParallelConfig(), seed=1)
    assert not adapter.cpu_patches_applied()
    gpt = get_preset("tiny_cpu").with_vocab_size(512)
    model = build_gpt_model(gpt, build_transformer_config(gpt, ParallelConfig()))
    tokens = torch.randint(0, 512, (2, 64), device="cuda")
    positions = torch.arange(64, device="cuda").expand(2, 64)
    with torch.no_grad():
        fp32 = model(tokens, positions, None)
        bf16 = model.to(torch.bfloat16)(tokens, positions, None)
    assert fp32.is_cuda and torch.isfinite(fp32).all()
    assert (bf16.float() - fp32).abs().max().item() < 0.1
