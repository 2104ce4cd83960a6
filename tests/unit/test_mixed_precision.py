"""bf16 parameters with fp32 main weights (megatron's mixed-precision optimizer) against fp32, on the CPU.

Same initial weights, the same packed batches of the shipped HelpSteer rows, the real SFT loss and megatron's
optimizer: the step losses agree within 2e-3 relative (bf16 keeps 8 mantissa bits; the fp32 main weights keep
updates from being rounded away), and the bf16 model's parameters are exactly the bf16 rounding of fp32 main copies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nemo_steerlm import resources
from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.datasets import PackedSFTDataset, SFTDataset, collate_sft
from nemo_steerlm.data.sources import helpsteer_to_conversation, load_helpsteer
from nemo_steerlm.data.tokenization import load_tokenizer
from nemo_steerlm.megatron.config import PRESETS, ParallelConfig
from nemo_steerlm.resources import helpsteer_sample_path

SEQ, ROWS, STEPS = 128, 2, 3
TOKENIZER = load_tokenizer(Path(resources.__file__).resolve().parent / "tokenizers" / "steerlm_bpe_4k")
GPT = dataclasses.replace(PRESETS["tiny_cpu"].with_vocab_size(len(TOKENIZER)), seq_length=SEQ)


def _batches() -> list[dict[str, torch.Tensor]]:
    schema = AttributeSchema()
    rows = load_helpsteer(str(helpsteer_sample_path()), schema)["train"][:40]
    data = SFTDataset([helpsteer_to_conversation(r, schema) for r in rows], TOKENIZER, SEQ, 16)
    packed = PackedSFTDataset(data, SEQ)
    pad = int(TOKENIZER.pad_token_id)
    return [collate_sft([packed[i] for i in range(s * ROWS, (s + 1) * ROWS)], pad, pad_to=SEQ) for s in range(STEPS)]


def _train(dtype: str, initial: dict[str, torch.Tensor] | None):
    from nemo_steerlm.megatron import builder, parallel
    from nemo_steerlm.megatron.step import run_step
    from nemo_steerlm.models.gpt import PositionAwareGPTModel
    from nemo_steerlm.models.sft import SteerLMSFTModel

    layout = ParallelConfig(params_dtype=dtype)
    parallel.initialize_model_parallel(layout, seed=7)
    config = builder.build_transformer_config(GPT, layout, calculate_per_token_loss=True)
    model = builder.build_gpt_model(GPT, config, model_cls=PositionAwareGPTModel)
    if initial is not None:
        model.load_state_dict(initial)  # the fp32 run's initial weights, rounded to bf16
    start = {k: v.detach().float().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    chunks = builder.wrap_ddp([model], config)
    optimizer = builder.build_optimizer(chunks, lr=3e-3, params_dtype=dtype)
    losses = []
    for batch in _batches():
        step = run_step(
            lambda it, m: SteerLMSFTModel.forward_step(None, it, m), chunks, [batch], SEQ, ROWS, optimizer=optimizer
        )
        losses.append(step.loss)
    return losses, model, optimizer, start


@pytest.mark.slow  # bf16 matmuls are slow on CPUs without bf16 units (about 10 s on 2 cores)
def test_bf16_with_fp32_main_weights_tracks_fp32_losses():
    fp32_losses, _, _, start = _train("float32", None)
    bf16_losses, model, optimizer, _ = _train("bfloat16", start)
    linear = [p for n, p in model.named_parameters() if "linear" in n]
    assert linear and all(p.dtype == torch.bfloat16 for p in linear)
    # megatron keeps an fp32 main copy of every bf16 parameter; the model holds its bf16 rounding
    mains = [p.main_param for p in linear]
    assert all(m.dtype == torch.float32 for m in mains)
    for p, m in zip(linear, mains, strict=True):
        assert torch.equal(p, m.to(torch.bfloat16))
    # the main copies hold digits below bf16's resolution (updates smaller than a bf16 step are kept)
    assert any((m - m.to(torch.bfloat16).float()).abs().max() > 0 for m in mains)
    assert fp32_losses[-1] < fp32_losses[0]
    for a, b in zip(fp32_losses, bf16_losses, strict=True):
        assert abs(a - b) <= 2e-3 * abs(a), (fp32_losses, bf16_losses)
    assert optimizer is not None
