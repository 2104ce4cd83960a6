"""Activation recomputation changes no number: loss and every gradient equal the run without it (dropout on, same
seeds), for selective and full (uniform, block) recomputation and both core attentions; bad settings name the key."""

from __future__ import annotations

import pytest
import torch

from nemo_steerlm.megatron.config import PRESETS, ConfigError, ParallelConfig, validate_layout

TINY = PRESETS["tiny_cpu"].with_vocab_size(100)
SETTINGS = [
    {"recompute_granularity": "selective"},
    {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
    {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 2},
]


def _loss_and_grads(parallel: ParallelConfig, core_attention: str, state=None, seed: int = 7):
    from megatron.core import tensor_parallel

    from nemo_steerlm.megatron import builder

    config = builder.build_transformer_config(TINY, parallel, hidden_dropout=0.1, attention_dropout=0.1)
    model = builder.build_gpt_model(TINY, config, core_attention=core_attention)
    if state is not None:
        model.load_state_dict(state, strict=True)
    tokens = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)  # dropout masks drawn from the same states each run
    logits = model(tokens, torch.arange(24).expand(2, 24), None)
    loss = logits.float().pow(2).mean()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, model.state_dict()


@pytest.mark.parametrize("core_attention", ["sdpa", "local"])
def test_recomputation_gives_the_same_loss_and_gradients(core_attention):
    from nemo_steerlm.megatron import parallel

    parallel.initialize_model_parallel(ParallelConfig(), seed=0)
    loss, grads, state = _loss_and_grads(ParallelConfig(), core_attention)
    for setting in SETTINGS:
        again, grads_again, _ = _loss_and_grads(ParallelConfig(**setting), core_attention, state)
        assert again == loss, setting
        for name, grad in grads.items():
            assert torch.equal(grads_again[name], grad), (setting, name)
    # the comparison is sharp: dropout is on, so other dropout masks (a replay from the wrong RNG state) differ
    assert _loss_and_grads(ParallelConfig(), core_attention, state, seed=8)[0] != loss


@pytest.mark.parametrize(
    "setting, key",
    [
        ({"recompute_granularity": "full"}, "model.recompute_method"),
        ({"recompute_granularity": "full", "recompute_method": "uniform"}, "model.recompute_num_layers"),
        ({"recompute_granularity": "selective", "recompute_num_layers": 2}, "full recomputation only"),
        ({"recompute_granularity": "some"}, "model.recompute_granularity"),
    ],
)
def test_bad_recompute_settings_name_the_key(setting, key):
    with pytest.raises(ConfigError, match=key):
        validate_layout(TINY, ParallelConfig(**setting), 1, 1, 1)
