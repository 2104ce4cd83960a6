"""Unit tests of the megatron layer at world size 1: CPU adapter, configs, checkpoint layout, regression head."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nemo_steerlm.attributes import MASK_VALUE
from nemo_steerlm.megatron import adapter
from nemo_steerlm.megatron.checkpoint_layout import (
    LayoutError,
    full_to_shard,
    fuse_qkv,
    shards_to_full,
    split_qkv,
)
from nemo_steerlm.megatron.config import (
    PRESETS,
    ConfigError,
    GPTConfig,
    ParallelConfig,
    padded_vocab_size,
    validate_layout,
)
from nemo_steerlm.models.heads import masked_mse_loss, masked_squared_error

TINY = PRESETS["tiny_cpu"].with_vocab_size(100)


def _init_world_of_one(seed: int = 0):
    from nemo_steerlm.megatron import parallel

    parallel.initialize_model_parallel(ParallelConfig(), seed=seed)
    return parallel


# ------------------------------------------------------------------------------------------------------- adapter


def test_apply_cpu_patches_is_idempotent():
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import mappings
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.utils import GlobalMemoryBuffer

    assert adapter.apply_cpu_patches() is True
    snapshot = (
        mappings.torch,
        schedules.torch,
        mrandom.CudaRNGStatesTracker,
        GlobalMemoryBuffer.get_tensor,
        WrappedTorchNorm.__new__,
    )
    assert adapter.apply_cpu_patches() is True
    assert adapter.cpu_patches_applied()
    assert snapshot == (
        mappings.torch,
        schedules.torch,
        mrandom.CudaRNGStatesTracker,
        GlobalMemoryBuffer.get_tensor,
        WrappedTorchNorm.__new__,
    )
    # The view is module-scoped: the real torch is untouched.
    assert mappings.torch is not torch
    assert mappings.torch.cuda.current_device() == torch.device("cpu")
    assert schedules.torch.zeros([], dtype=torch.int, device="cuda").device.type == "cpu"
    buffer = GlobalMemoryBuffer().get_tensor((2, 3), torch.float32, "t")
    assert buffer.shape == (2, 3) and buffer.device.type == "cpu"


def test_distributed_optimizer_patches_are_in_place_once():
    import megatron.core.optimizer as optimizer_package
    from megatron.core.optimizer import distrib_optimizer

    adapter.apply_cpu_patches()
    cpu_class = optimizer_package.DistributedOptimizer
    restore = distrib_optimizer.DistributedOptimizer.load_state_dict
    assert cpu_class is not distrib_optimizer.DistributedOptimizer  # the class get_megatron_optimizer builds
    assert issubclass(cpu_class, distrib_optimizer.DistributedOptimizer)
    assert adapter.apply_cpu_patches() and adapter.apply_torch_adam_patches()
    assert optimizer_package.DistributedOptimizer is cpu_class
    assert distrib_optimizer.DistributedOptimizer.load_state_dict is restore  # not wrapped twice
    assert distrib_optimizer.torch.cuda.current_device() == torch.device("cpu")


def test_cpu_rng_tracker_forks_its_own_stream():
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    _init_world_of_one()
    model_parallel_cuda_manual_seed(123, force_reset_rng=True)
    tracker = get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before), "fork must restore the default generator"
    with tracker.fork():
        second = torch.rand(4)
    assert not torch.equal(first, second), "the forked stream must advance"
    # The model-parallel stream is seeded with seed + 2718 + tp_rank (megatron's rule).
    expected = torch.rand(4, generator=torch.Generator().manual_seed(123 + 2718))
    assert torch.equal(first, expected)


def test_unknown_megatron_version_is_refused(monkeypatch):
    monkeypatch.delenv(adapter.ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(adapter.MegatronVersionError) as info:
        adapter.check_megatron_version("0.17.2")
    message = str(info.value)
    assert "0.17.2" in message and "0.16.x" in message and adapter.ALLOW_UNTESTED_ENV in message
    monkeypatch.setenv(adapter.ALLOW_UNTESTED_ENV, "1")
    assert adapter.check_megatron_version("0.17.2") == "0.17.2"


def test_installed_megatron_version_is_supported():
    assert adapter.check_megatron_version().startswith("0.16.")


def test_tiny_gpt_forward_backward_on_cpu_is_causal():
    from nemo_steerlm.megatron import builder

    _init_world_of_one()
    config = builder.build_transformer_config(TINY, ParallelConfig())
    model = builder.build_gpt_model(TINY, config)
    tokens = torch.randint(0, 100, (2, 12))
    positions = torch.arange(12).unsqueeze(0).expand(2, 12)
    logits = model(tokens, positions, None)
    assert logits.shape == (2, 12, padded_vocab_size(100, TINY.make_vocab_size_divisible_by, 1))
    assert torch.isfinite(logits).all()
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 100
    with torch.no_grad():
        logits_changed = model(changed, positions, None)
    torch.testing.assert_close(logits_changed[:, :8], logits[:, :8].detach(), rtol=0, atol=1e-6)
    assert not torch.allclose(logits_changed[:, 8:], logits[:, 8:].detach())
    logits.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def _hf_llama_state(model_sd: dict, gpt: GPTConfig) -> dict:
    """Map megatron GPTModel weights to Hugging Face Llama names (independent of checkpoint_layout's sharding)."""
    hf = {"model.embed_tokens.weight": model_sd["embedding.word_embeddings.weight"][: gpt.vocab_size]}
    for i in range(gpt.num_layers):
        pre = f"decoder.layers.{i}."
        q, k, v = split_qkv(
            model_sd[pre + "self_attention.linear_qkv.weight"], gpt.num_attention_heads, gpt.num_query_groups
        )
        gate, up = model_sd[pre + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        hf.update(
            {
                f"model.layers.{i}.input_layernorm.weight": model_sd[pre + "input_layernorm.weight"],
                f"model.layers.{i}.self_attn.q_proj.weight": q,
                f"model.layers.{i}.self_attn.k_proj.weight": k,
                f"model.layers.{i}.self_attn.v_proj.weight": v,
                f"model.layers.{i}.self_attn.o_proj.weight": model_sd[pre + "self_attention.linear_proj.weight"],
                f"model.layers.{i}.post_attention_layernorm.weight": model_sd[pre + "pre_mlp_layernorm.weight"],
                f"model.layers.{i}.mlp.gate_proj.weight": gate,
                f"model.layers.{i}.mlp.up_proj.weight": up,
                f"model.layers.{i}.mlp.down_proj.weight": model_sd[pre + "mlp.linear_fc2.weight"],
            }
        )
    hf["model.norm.weight"] = model_sd["decoder.final_layernorm.weight"]
    hf["lm_head.weight"] = model_sd["output_layer.weight"][: gpt.vocab_size]
    return hf


def test_tiny_gpt_matches_hugging_face_llama():
    transformers = pytest.importorskip("transformers")
    from nemo_steerlm.megatron import builder

    _init_world_of_one()
    config = builder.build_transformer_config(TINY, ParallelConfig())
    model = builder.build_gpt_model(TINY, config).eval()
    hf_config = transformers.LlamaConfig(
        vocab_size=TINY.vocab_size,
        hidden_size=TINY.hidden_size,
        intermediate_size=TINY.ffn_hidden_size,
        num_hidden_layers=TINY.num_layers,
        num_attention_heads=TINY.num_attention_heads,
        num_key_value_heads=TINY.num_query_groups,
        max_position_embeddings=TINY.seq_length,
        rms_norm_eps=TINY.layernorm_epsilon,
        rope_theta=float(TINY.rotary_base),
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    hf_model.load_state_dict(_hf_llama_state(model.state_dict(), TINY), strict=True)
    tokens = torch.randint(0, TINY.vocab_size, (2, 16))
    positions = torch.arange(16).unsqueeze(0).expand(2, 16)
    with torch.no_grad():
        ours = model(tokens, positions, None)[..., : TINY.vocab_size]
        theirs = hf_model(input_ids=tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------- regression head


def test_regression_model_reads_the_last_real_token():
    from nemo_steerlm.megatron import builder
    from nemo_steerlm.models.heads import RegressionGPTModel

    _init_world_of_one()
    config = builder.build_transformer_config(TINY, ParallelConfig())
    model = builder.build_gpt_model(TINY, config, model_cls=RegressionGPTModel, num_attributes=9).eval()
    tokens = torch.randint(0, 100, (3, 10))
    positions = torch.arange(10).unsqueeze(0).expand(3, 10)
    last = torch.tensor([3, 9, 6])
    with torch.no_grad():
        scores = model(tokens, positions, None, last_token_index=last)
        # Independent reference: each sequence cut at its last token, read at its final position.
        for b in range(3):
            n = int(last[b]) + 1
            alone = model(tokens[b : b + 1, :n], positions[b : b + 1, :n], None, last_token_index=torch.tensor([n - 1]))
            torch.testing.assert_close(scores[b : b + 1], alone, rtol=1e-5, atol=1e-5)
    assert scores.shape == (3, 9) and scores.dtype == torch.float32


def test_masked_mse_matches_hand_computed_value():
    pred = torch.tensor([[1.0, 2.0, 0.5], [3.0, 4.0, -1.0]], requires_grad=True)
    target = torch.tensor([[1.5, MASK_VALUE, 0.5], [MASK_VALUE, 2.0, 1.0]])
    # unmasked errors: -0.5, 0.0, 2.0, -2.0 -> (0.25 + 0 + 4 + 4) / 4
    loss = masked_mse_loss(pred, target)
    assert loss.item() == pytest.approx(8.25 / 4)
    loss.backward()
    expected_grad = torch.tensor([[-0.5, 0.0, 0.0], [0.0, 2.0, -2.0]]) * 2 / 4
    torch.testing.assert_close(pred.grad, expected_grad)
    total, count = masked_squared_error(pred.detach(), target)
    assert total.item() == pytest.approx(8.25) and int(count) == 4


def test_masked_mse_all_masked_is_zero_with_finite_grads():
    pred = torch.randn(2, 9, requires_grad=True)
    target = torch.full((2, 9), MASK_VALUE)
    loss = masked_mse_loss(pred, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()


def test_masked_mse_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        masked_mse_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# ------------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("gpt_changes", "parallel", "world", "micro", "global_", "keys"),
    [
        ({}, ParallelConfig(tensor_model_parallel_size=3), 3, 1, 4, ["model.num_attention_heads"]),
        ({}, ParallelConfig(tensor_model_parallel_size=4), 4, 1, 4, ["model.num_query_groups"]),
        ({"num_layers": 3}, ParallelConfig(pipeline_model_parallel_size=2), 2, 1, 4, ["model.num_layers"]),
        ({}, ParallelConfig(tensor_model_parallel_size=2), 3, 1, 4, ["trainer.devices"]),
        ({}, ParallelConfig(), 2, 3, 8, ["model.global_batch_size", "model.micro_batch_size"]),
    ],
)
def test_validate_layout_names_the_keys(gpt_changes, parallel, world, micro, global_, keys):
    gpt = dataclasses.replace(TINY, **gpt_changes)
    with pytest.raises(ConfigError) as info:
        validate_layout(gpt, parallel, world, micro, global_)
    for key in keys:
        assert key in str(info.value)
    assert (
        "model.tensor_model_parallel_size" in str(info.value)
        or "model.pipeline_model_parallel_size" in str(info.value)
        or "model.micro_batch_size" in str(info.value)
    )


def test_validate_layout_returns_data_parallel_size():
    assert validate_layout(TINY, ParallelConfig(tensor_model_parallel_size=2), 8, 2, 32) == 4
    llama70 = PRESETS["llama2_70b"]
    assert (
        validate_layout(
            llama70, ParallelConfig(tensor_model_parallel_size=8, pipeline_model_parallel_size=4), 64, 1, 128
        )
        == 2
    )


def test_presets_have_the_published_shapes():
    smol = PRESETS["smollm2_135m"]
    assert (smol.num_layers, smol.hidden_size, smol.ffn_hidden_size) == (30, 576, 1536)
    assert (smol.num_attention_heads, smol.num_query_groups, smol.vocab_size, smol.rotary_base) == (9, 3, 49152, 100000)
    assert smol.tie_embeddings and smol.layernorm_epsilon == 1e-5
    assert PRESETS["llama2_70b"].num_query_groups == 8 and PRESETS["llama2_70b"].num_layers == 80
    assert PRESETS["llama2_7b"].num_query_groups == PRESETS["llama2_7b"].num_attention_heads == 32
    assert PRESETS["tiny_cpu"].vocab_size == 0  # set from the tokenizer at run time


def test_padded_vocab_size():
    assert padded_vocab_size(100, 8, 1) == 104
    assert padded_vocab_size(100, 8, 2) == 112
    assert padded_vocab_size(49152, 128, 4) == 49152
    with pytest.raises(ConfigError, match="model.vocab_size"):
        padded_vocab_size(0, 8, 1)


# ------------------------------------------------------------------------------------------- checkpoint layout


def test_fuse_qkv_groups_queries_with_their_key_and_value():
    heads, groups, d = 4, 2, 1
    q = torch.arange(heads * d, dtype=torch.float32).reshape(-1, 1)  # q0..q3
    k = 10 + torch.arange(groups * d, dtype=torch.float32).reshape(-1, 1)  # k0, k1
    v = 20 + torch.arange(groups * d, dtype=torch.float32).reshape(-1, 1)  # v0, v1
    fused = fuse_qkv(q, k, v, heads, groups)
    assert fused.flatten().tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    for a, b in zip(split_qkv(fused, heads, groups), (q, k, v), strict=True):
        assert torch.equal(a, b)


def _random_full_state(gpt: GPTConfig, model_cls=None, **kwargs) -> dict:
    from nemo_steerlm.megatron import builder

    config = builder.build_transformer_config(gpt, ParallelConfig())
    cls_kwargs = {"model_cls": model_cls} if model_cls else {}
    model = builder.build_gpt_model(gpt, config, **cls_kwargs, **kwargs)
    generator = torch.Generator().manual_seed(7)
    return {
        k: torch.randn(v.shape, generator=generator) if isinstance(v, torch.Tensor) else v
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize(
    ("gpt_changes", "tp", "pp"),
    [
        ({}, 2, 2),
        ({"num_layers": 4, "num_query_groups": 4}, 4, 2),
        ({"activation": "gelu", "add_bias_linear": True, "normalization": "LayerNorm"}, 2, 1),
        ({"tie_embeddings": True, "position_embedding": "learned_absolute", "num_layers": 4}, 2, 4),
    ],
)
def test_full_to_shards_to_full_round_trip_is_exact(gpt_changes, tp, pp):
    from nemo_steerlm.models.heads import RegressionGPTModel

    _init_world_of_one()
    gpt = dataclasses.replace(TINY, **gpt_changes)
    full = _random_full_state(gpt, model_cls=RegressionGPTModel, num_attributes=9)
    shards = [[full_to_shard(full, gpt, t, tp, p, pp) for t in range(tp)] for p in range(pp)]
    padded = padded_vocab_size(gpt.vocab_size, gpt.make_vocab_size_divisible_by, tp)
    assert shards[0][0]["embedding.word_embeddings.weight"].shape == (padded // tp, gpt.hidden_size)
    assert "regression_head.weight" in shards[-1][0] and "regression_head.weight" not in shards[0][0] or pp == 1
    assert sum(key.endswith("input_layernorm.weight") for key in shards[0][0]) == gpt.num_layers // pp
    qkv = shards[0][0]["decoder.layers.0.self_attention.linear_qkv.weight"]
    assert qkv.shape[0] == (gpt.num_attention_heads + 2 * gpt.num_query_groups) * gpt.kv_channels // tp
    back = shards_to_full(shards, gpt)
    assert back.keys() == full.keys()
    for key, value in full.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(back[key], value), key


def test_shards_to_full_rejects_diverged_replicas():
    _init_world_of_one()
    full = _random_full_state(TINY)
    shards = [[full_to_shard(full, TINY, t, 2) for t in range(2)]]
    shards[0][1]["decoder.final_layernorm.weight"] = shards[0][1]["decoder.final_layernorm.weight"] + 1
    with pytest.raises(LayoutError, match="decoder.final_layernorm.weight"):
        shards_to_full(shards, TINY)


def test_swiglu_fc1_shard_holds_gate_and_up_halves():
    _init_world_of_one()
    full = _random_full_state(TINY)
    fc1 = full["decoder.layers.0.mlp.linear_fc1.weight"]
    gate, up = fc1.chunk(2)
    shard = full_to_shard(full, TINY, 1, 2)["decoder.layers.0.mlp.linear_fc1.weight"]
    f = TINY.ffn_hidden_size // 2
    assert torch.equal(shard, torch.cat([gate[f:], up[f:]]))
