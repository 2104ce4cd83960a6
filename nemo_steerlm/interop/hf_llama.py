"""Hugging Face Llama-architecture models ⇄ our megatron GPT: config mapping and full (TP=1) state-dict conversion.

Covers ``LlamaForCausalLM`` / ``LlamaForSequenceClassification`` checkpoints of the Llama family (Llama 2/3,
SmolLM2, Mistral-style grouped-query attention without a sliding window): RMSNorm, SwiGLU, RoPE (default rotary
embeddings, or Llama 3.1/3.2's ``llama3`` frequency scaling with the fixed low/high frequency factors 1 and 4 over
8192 original positions that all Llama 3.x checkpoints and megatron-core use), tied or untied embeddings,
attention/MLP biases when both or neither are on.

Mapping (HF → megatron, full model, TP=1)::

    model.embed_tokens.weight                     embedding.word_embeddings.weight   (vocab zero-padded)
    model.layers.i.input_layernorm.weight         decoder.layers.i.input_layernorm.weight
    model.layers.i.self_attn.{q,k,v}_proj.*       decoder.layers.i.self_attention.linear_qkv.*  (grouped, fuse_qkv)
    model.layers.i.self_attn.o_proj.*             decoder.layers.i.self_attention.linear_proj.*
    model.layers.i.post_attention_layernorm.weight decoder.layers.i.pre_mlp_layernorm.weight
    model.layers.i.mlp.{gate,up}_proj.*           decoder.layers.i.mlp.linear_fc1.*  ([gate; up])
    model.layers.i.mlp.down_proj.*                decoder.layers.i.mlp.linear_fc2.*
    model.norm.weight                             decoder.final_layernorm.weight
    lm_head.weight                                output_layer.weight               (absent when tied)
    score.weight                                  regression_head.weight            (attribute model; no bias)

Nothing here reads Hydra config. Errors a user can fix raise :class:`HFInteropError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from nemo_steerlm.errors import UserError
from nemo_steerlm.megatron.checkpoint_layout import fuse_qkv, split_qkv
from nemo_steerlm.megatron.config import GPTConfig, padded_vocab_size

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "LlamaForSequenceClassification",
    "MistralForCausalLM",
    "MistralForSequenceClassification",
)
HEAD_KEYS = ("regression_head.weight",)
# the llama3 rope scaling settings megatron-core's RotaryEmbedding applies (only the factor is an argument)
LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# HF keys that carry no weights of ours
_IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


class HFInteropError(UserError):
    """A Hugging Face checkpoint or config that cannot be converted; the message names the field."""


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _rope_settings(config: Any) -> dict[str, Any]:
    """The rotary settings of a config: transformers 4's ``rope_theta``/``rope_scaling`` and 5's ``rope_parameters``.

    Where both forms are present, ``rope_parameters`` wins.
    """
    merged = dict(_get(config, "rope_scaling") or {})
    if _get(config, "rope_theta") is not None:
        merged["rope_theta"] = _get(config, "rope_theta")
    merged.update(_get(config, "rope_parameters") or {})
    return merged


def _rope_type(config: Any) -> tuple[str, float | None]:
    """The rotary scaling type and base of a config (transformers 4 ``rope_scaling`` or 5 ``rope_parameters``)."""
    settings = _rope_settings(config)
    rope_type = settings.get("rope_type") or settings.get("type") or "default"
    theta = settings.get("rope_theta")
    return str(rope_type), None if theta is None else float(theta)


def _llama3_problems(config: Any) -> list[str]:
    settings = _rope_settings(config)
    problems = []
    if settings.get("factor") is None:
        problems.append("rope scaling type 'llama3' without a factor")
    for key, value in LLAMA3_FIXED.items():
        if key in settings and float(settings[key]) != value:
            problems.append(f"rope scaling {key}={settings[key]} (megatron-core's llama3 scaling uses {value:g})")
    return problems


def check_supported(config: Any) -> None:
    """Raise :class:`HFInteropError` unless ``config`` is a Llama-architecture model we convert exactly.

    Args:
        config: a ``transformers`` config or its ``config.json`` dict.
    """
    model_type = _get(config, "model_type")
    archs = list(_get(config, "architectures") or [])
    problems: list[str] = []
    if model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(f"model_type={model_type!r} is not a Llama architecture (supported: {SUPPORTED_MODEL_TYPES})")
    if archs and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        problems.append(f"architectures={archs} (supported: {list(SUPPORTED_ARCHITECTURES)})")
    rope_type, _ = _rope_type(config)
    if rope_type == "llama3":
        problems += _llama3_problems(config)
    elif rope_type != "default":
        problems.append(f"rope scaling type {rope_type!r} is not implemented (only 'default' and 'llama3')")
    act = _get(config, "hidden_act", "silu")
    if act != "silu":
        problems.append(f"hidden_act={act!r} (only SwiGLU with 'silu')")
    if bool(_get(config, "attention_bias", False)) != bool(_get(config, "mlp_bias", False)):
        problems.append("attention_bias and mlp_bias differ (megatron's add_bias_linear sets both)")
    heads, hidden = int(_get(config, "num_attention_heads")), int(_get(config, "hidden_size"))
    head_dim = _get(config, "head_dim")
    if head_dim is not None and int(head_dim) * heads != hidden:
        problems.append(f"head_dim={head_dim} × num_attention_heads={heads} != hidden_size={hidden}")
    window = _get(config, "sliding_window")
    if window is not None and _get(config, "use_sliding_window", True) and int(window) < _max_positions(config):
        problems.append(f"sliding_window={window} attention is not implemented")
    if problems:
        raise HFInteropError("unsupported Hugging Face model: " + "; ".join(problems))


def _max_positions(config: Any) -> int:
    return int(_get(config, "max_position_embeddings", 2048))


def gpt_config_from_hf(
    config: Any, seq_length: int | None = None, make_vocab_size_divisible_by: int = 128
) -> GPTConfig:
    """Our :class:`GPTConfig` for a Hugging Face Llama-architecture config.

    Args:
        config: a ``transformers`` config or its ``config.json`` dict.
        seq_length: training/inference length; ``max_position_embeddings`` when ``None``.
        make_vocab_size_divisible_by: vocabulary padding granularity per TP rank.

    Returns:
        The model shape (``vocab_size`` = the HF ``vocab_size``).

    Raises:
        HFInteropError: for unsupported configs (see :func:`check_supported`).
    """
    check_supported(config)
    rope_type, theta = _rope_type(config)
    factor = float(_rope_settings(config)["factor"]) if rope_type == "llama3" else None
    theta = 10000.0 if theta is None else theta
    heads = int(_get(config, "num_attention_heads"))
    return GPTConfig(
        num_layers=int(_get(config, "num_hidden_layers")),
        hidden_size=int(_get(config, "hidden_size")),
        ffn_hidden_size=int(_get(config, "intermediate_size")),
        num_attention_heads=heads,
        num_query_groups=int(_get(config, "num_key_value_heads") or heads),
        vocab_size=int(_get(config, "vocab_size")),
        seq_length=int(seq_length or _max_positions(config)),
        normalization="RMSNorm",
        activation="swiglu",
        position_embedding="rope",
        rotary_base=int(theta) if float(theta).is_integer() else theta,  # type: ignore[arg-type]
        rope_scaling_factor=factor,
        tie_embeddings=bool(_get(config, "tie_word_embeddings", False)),
        layernorm_epsilon=float(_get(config, "rms_norm_eps", 1e-6)),
        add_bias_linear=bool(_get(config, "attention_bias", False)),
        init_method_std=float(_get(config, "initializer_range", 0.02)),
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
    )


def hf_config_dict(gpt: GPTConfig, max_position_embeddings: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``transformers.LlamaConfig`` for our model shape (inverse of :func:`gpt_config_from_hf`).

    Args:
        gpt: model shape (``vocab_size`` set).
        max_position_embeddings: defaults to ``gpt.seq_length``.
    """
    if gpt.normalization != "RMSNorm" or gpt.activation != "swiglu" or gpt.position_embedding != "rope":
        raise HFInteropError(
            f"only Llama-style models export to Hugging Face (RMSNorm, swiglu, rope); this one has "
            f"normalization={gpt.normalization}, activation={gpt.activation}, "
            f"position_embedding={gpt.position_embedding}"
        )
    scaling = None
    if gpt.rope_scaling_factor is not None:
        scaling = {"rope_type": "llama3", "factor": float(gpt.rope_scaling_factor), **LLAMA3_FIXED}
    return {
        "vocab_size": gpt.vocab_size,
        "hidden_size": gpt.hidden_size,
        "intermediate_size": gpt.ffn_hidden_size,
        "num_hidden_layers": gpt.num_layers,
        "num_attention_heads": gpt.num_attention_heads,
        "num_key_value_heads": gpt.num_query_groups,
        "head_dim": gpt.kv_channels,
        "hidden_act": "silu",
        "max_position_embeddings": int(max_position_embeddings or gpt.seq_length),
        "rms_norm_eps": gpt.layernorm_epsilon,
        "rope_theta": float(gpt.rotary_base),
        "rope_scaling": scaling,
        "tie_word_embeddings": gpt.tie_embeddings,
        "attention_bias": gpt.add_bias_linear,
        "mlp_bias": gpt.add_bias_linear,
        "initializer_range": gpt.init_method_std,
    }


def _pad_rows(tensor: Tensor, rows: int) -> Tensor:
    if tensor.shape[0] > rows:
        raise HFInteropError(f"vocabulary tensor has {tensor.shape[0]} rows, more than the padded size {rows}")
    pad = torch.zeros((rows - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=0)


def _need(hf: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in hf:
        raise HFInteropError(f"Hugging Face state dict has no {key!r}")
    return hf[key]


def _layer_to_megatron(hf: Mapping[str, Tensor], gpt: GPTConfig, i: int) -> dict[str, Tensor]:
    src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
    out = {
        dst + "input_layernorm.weight": _need(hf, src + "input_layernorm.weight"),
        dst + "pre_mlp_layernorm.weight": _need(hf, src + "post_attention_layernorm.weight"),
    }
    suffixes = ("weight", "bias") if gpt.add_bias_linear else ("weight",)
    for p in suffixes:
        q, k, v = (_need(hf, f"{src}self_attn.{n}_proj.{p}") for n in "qkv")
        out[f"{dst}self_attention.linear_qkv.{p}"] = fuse_qkv(q, k, v, gpt.num_attention_heads, gpt.num_query_groups)
        out[f"{dst}self_attention.linear_proj.{p}"] = _need(hf, f"{src}self_attn.o_proj.{p}")
        gate, up = _need(hf, f"{src}mlp.gate_proj.{p}"), _need(hf, f"{src}mlp.up_proj.{p}")
        out[f"{dst}mlp.linear_fc1.{p}"] = torch.cat([gate, up], dim=0)
        out[f"{dst}mlp.linear_fc2.{p}"] = _need(hf, f"{src}mlp.down_proj.{p}")
    return out


def hf_to_megatron(hf: Mapping[str, Tensor], gpt: GPTConfig) -> dict[str, Tensor]:
    """Convert a Hugging Face Llama state dict into our full (TP=1, PP=1) megatron state dict.

    Args:
        hf: ``LlamaForCausalLM`` or ``LlamaForSequenceClassification`` state dict.
        gpt: the model shape (from :func:`gpt_config_from_hf`).

    Returns:
        Megatron keys; the vocabulary is zero-padded for TP=1; ``output_layer.weight`` only when untied and the HF
        model has an ``lm_head``; ``regression_head.*`` when the HF model has a ``score`` head.

    Raises:
        HFInteropError: on missing or unexpected tensors, or a vocabulary of the wrong size.
    """
    rows = padded_vocab_size(gpt.vocab_size, gpt.make_vocab_size_divisible_by, 1)
    embed = _need(hf, "model.embed_tokens.weight")
    if embed.shape[0] != gpt.vocab_size:
        raise HFInteropError(f"model.embed_tokens.weight has {embed.shape[0]} rows, config vocab_size={gpt.vocab_size}")
    out: dict[str, Tensor] = {"embedding.word_embeddings.weight": _pad_rows(embed, rows)}
    for i in range(gpt.num_layers):
        out.update(_layer_to_megatron(hf, gpt, i))
    out["decoder.final_layernorm.weight"] = _need(hf, "model.norm.weight")
    if not gpt.tie_embeddings and "lm_head.weight" in hf:
        out["output_layer.weight"] = _pad_rows(hf["lm_head.weight"], rows)
    if "score.weight" in hf:
        out["regression_head.weight"] = hf["score.weight"]
    used = set(megatron_to_hf_keys(gpt, "score.weight" in hf, "lm_head.weight" in hf))
    unexpected = [k for k in hf if k not in used and not k.endswith(_IGNORED_HF_SUFFIXES)]
    if unexpected:
        raise HFInteropError(f"Hugging Face state dict has tensors this converter does not map: {unexpected[:8]}")
    return out


def megatron_to_hf_keys(gpt: GPTConfig, has_score: bool, has_lm_head: bool) -> list[str]:
    """The Hugging Face keys a converted model has (``lm_head`` is accepted and ignored when tied)."""
    keys = ["model.embed_tokens.weight", "model.norm.weight"]
    names = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    for p in ("weight", "bias") if gpt.add_bias_linear else ("weight",):
        names += [f"self_attn.{n}_proj.{p}" for n in "qkvo"] + [f"mlp.{n}_proj.{p}" for n in ("gate", "up", "down")]
    keys += [f"model.layers.{i}.{n}" for i in range(gpt.num_layers) for n in names]
    if has_lm_head:
        keys.append("lm_head.weight")
    if has_score:
        keys.append("score.weight")
    return keys


def _layer_to_hf(full: Mapping[str, Tensor], gpt: GPTConfig, i: int) -> dict[str, Tensor]:
    src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
    out = {
        dst + "input_layernorm.weight": full[src + "input_layernorm.weight"],
        dst + "post_attention_layernorm.weight": full[src + "pre_mlp_layernorm.weight"],
    }
    for p in ("weight", "bias") if gpt.add_bias_linear else ("weight",):
        q, k, v = split_qkv(full[f"{src}self_attention.linear_qkv.{p}"], gpt.num_attention_heads, gpt.num_query_groups)
        out.update({f"{dst}self_attn.q_proj.{p}": q, f"{dst}self_attn.k_proj.{p}": k, f"{dst}self_attn.v_proj.{p}": v})
        out[f"{dst}self_attn.o_proj.{p}"] = full[f"{src}self_attention.linear_proj.{p}"]
        gate, up = full[f"{src}mlp.linear_fc1.{p}"].chunk(2, dim=0)
        out.update({f"{dst}mlp.gate_proj.{p}": gate, f"{dst}mlp.up_proj.{p}": up})
        out[f"{dst}mlp.down_proj.{p}"] = full[f"{src}mlp.linear_fc2.{p}"]
    return out


def megatron_to_hf(full: Mapping[str, Any], gpt: GPTConfig, head: str = "lm_head") -> dict[str, Tensor]:
    """Convert our full (TP=1, PP=1) megatron state dict into a Hugging Face Llama state dict.

    Args:
        full: megatron state dict (``_extra_state`` entries are ignored; vocabulary padded or not).
        gpt: the model shape (``vocab_size`` = the unpadded vocabulary, the rows kept).
        head: ``"lm_head"`` for ``LlamaForCausalLM`` (``lm_head.weight`` when untied) or ``"score"`` for
            ``LlamaForSequenceClassification`` (``score.weight`` from the regression head; its bias is returned by
            :func:`regression_bias`).

    Returns:
        Contiguous tensors under Hugging Face names.
    """
    if head not in ("lm_head", "score"):
        raise ValueError(f"head must be 'lm_head' or 'score', got {head!r}")
    v = gpt.vocab_size
    out: dict[str, Tensor] = {"model.embed_tokens.weight": full["embedding.word_embeddings.weight"][:v]}
    for i in range(gpt.num_layers):
        out.update(_layer_to_hf(full, gpt, i))
    out["model.norm.weight"] = full["decoder.final_layernorm.weight"]
    if head == "lm_head":
        if not gpt.tie_embeddings:
            out["lm_head.weight"] = full["output_layer.weight"][:v]
    else:
        if "regression_head.weight" not in full:
            raise HFInteropError("this model has no regression head to export as a sequence-classification score")
        out["score.weight"] = full["regression_head.weight"]
    return {k: t.detach().clone().contiguous() for k, t in out.items()}


def shape_mismatches(ours: GPTConfig, theirs: GPTConfig) -> list[str]:
    """Names of the shape fields that differ between two configs (``seq_length``, init and padding excluded).

    Floats (norm epsilon) are compared to a relative 1e-6.
    """
    ignore = {"seq_length", "init_method_std", "make_vocab_size_divisible_by"}
    out = []
    for f in dataclasses.fields(GPTConfig):
        a, b = getattr(ours, f.name), getattr(theirs, f.name)
        if f.name in ignore or a == b:
            continue
        if isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-6):
            continue  # e.g. rms_norm_eps 1e-5 stored as float32 in a GGUF file
        out.append(f.name)
    return out
