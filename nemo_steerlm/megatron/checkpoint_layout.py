"""Convert a full (TP=1, PP=1) megatron GPT state dict into one TP-rank/PP-stage shard, and shards back.

Megatron-core's local-spec ``GPTModel`` names and lays out its weights as follows (full model, TP=1):

* ``embedding.word_embeddings.weight`` ``[V, H]`` and ``output_layer.weight`` ``[V, H]``: split over the (padded)
  vocabulary, dim 0. ``V`` is padded to a multiple of ``make_vocab_size_divisible_by × TP``, so the padded size
  depends on TP; rows are kept up to the smaller padded size and new rows are zero.
* ``...self_attention.linear_qkv.weight`` ``[(Q + 2·KV)·d, H]``: megatron's fused layout is *grouped*: for each
  query group, its ``heads/groups`` query heads, then its key head, then its value head. Because groups are
  contiguous, TP ranks take contiguous blocks of dim 0. (:func:`fuse_qkv`/:func:`split_qkv` convert from and to
  separate Q/K/V, e.g. for Hugging Face import.)
* ``...mlp.linear_fc1.weight``: ``[2F, H]`` = ``[gate; up]`` for SwiGLU; each TP rank holds ``[gate_r; up_r]``, so
  gate and up are split separately. ``[F, H]`` column split otherwise.
* ``...linear_proj.weight``, ``...linear_fc2.weight``: row-parallel, split dim 1 (their biases are replicated).
* Norms, position embeddings, biases of row-parallel layers and task heads (``regression_head``) are replicated.
* Pipeline stages hold contiguous layer blocks, renumbered from 0 (``decoder.layers.{i}``); the embedding lives on
  the first stage, the final norm, output layer and heads on the last. With tied embeddings and PP > 1 the last
  stage keeps its own ``output_layer.weight`` copy of the word embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from nemo_steerlm.megatron.config import GPTConfig, padded_vocab_size

_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")
_VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight", "output_layer.bias")
_COLUMN_SUFFIXES = ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias")
_GATED_SUFFIXES = ("mlp.linear_fc1.weight", "mlp.linear_fc1.bias")
_ROW_SUFFIXES = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


class LayoutError(ValueError):
    """A state dict that does not match the model shape or the requested layout."""


def layers_per_stage(num_layers: int, pp_size: int) -> int:
    """Number of transformer layers on each pipeline stage (even split)."""
    if num_layers % pp_size != 0:
        raise LayoutError(
            f"`model.num_layers` ({num_layers}) is not divisible by `model.pipeline_model_parallel_size` ({pp_size})"
        )
    return num_layers // pp_size


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, num_attention_heads: int, num_query_groups: int) -> Tensor:
    """Fuse separate Q ``[heads·d, ...]``, K and V ``[groups·d, ...]`` into megatron's grouped ``linear_qkv`` layout.

    Args:
        q: query projection, rows ordered by head.
        k: key projection, rows ordered by group.
        v: value projection, rows ordered by group.
        num_attention_heads: query heads.
        num_query_groups: key/value heads.

    Returns:
        ``[(heads + 2·groups)·d, ...]`` with, per group, its query heads, its key head, its value head.
    """
    d = q.shape[0] // num_attention_heads
    per_group = num_attention_heads // num_query_groups
    rest = q.shape[1:]
    qg = q.reshape(num_query_groups, per_group * d, *rest)
    kg = k.reshape(num_query_groups, d, *rest)
    vg = v.reshape(num_query_groups, d, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, *rest)


def split_qkv(qkv: Tensor, num_attention_heads: int, num_query_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`fuse_qkv`: megatron's grouped ``linear_qkv`` rows into separate Q, K, V."""
    per_group = num_attention_heads // num_query_groups
    d = qkv.shape[0] // (num_attention_heads + 2 * num_query_groups)
    rest = qkv.shape[1:]
    grouped = qkv.reshape(num_query_groups, (per_group + 2) * d, *rest)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def _resize_rows(tensor: Tensor, rows: int) -> Tensor:
    """Keep the first ``rows`` rows and zero-pad to ``rows``."""
    if tensor.shape[0] >= rows:
        return tensor[:rows]
    pad = torch.zeros((rows - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, pad], dim=0)


def _stage_key(key: str, gpt: GPTConfig, pp_rank: int, pp_size: int) -> str | None:
    """Map a full-model key to this stage's key, or ``None`` if the stage does not hold it."""
    match = _LAYER_RE.match(key)
    if match:
        per_stage = layers_per_stage(gpt.num_layers, pp_size)
        layer = int(match.group(1))
        if layer // per_stage != pp_rank:
            return None
        return f"decoder.layers.{layer % per_stage}.{match.group(2)}"
    if key.startswith("embedding."):
        return key if pp_rank == 0 else None
    return key if pp_rank == pp_size - 1 else None


def _shard_tensor(key: str, tensor: Tensor, gpt: GPTConfig, tp_rank: int, tp_size: int) -> Tensor:
    """Cut this TP rank's piece of one full tensor."""
    if key in _VOCAB_KEYS:
        rows = padded_vocab_size(gpt.vocab_size, gpt.make_vocab_size_divisible_by, tp_size)
        return _resize_rows(tensor, rows).chunk(tp_size, dim=0)[tp_rank].clone()
    if key.endswith(_GATED_SUFFIXES) and gpt.activation == "swiglu":
        gate, up = tensor.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, dim=0)[tp_rank], up.chunk(tp_size, dim=0)[tp_rank]], dim=0).clone()
    if key.endswith(_COLUMN_SUFFIXES + _GATED_SUFFIXES):
        return tensor.chunk(tp_size, dim=0)[tp_rank].clone()
    if key.endswith(_ROW_SUFFIXES):
        return tensor.chunk(tp_size, dim=1)[tp_rank].clone()
    return tensor.clone()


def _merge_tensors(key: str, pieces: Sequence[Tensor], gpt: GPTConfig) -> Tensor:
    """Inverse of :func:`_shard_tensor` over all TP ranks of one stage."""
    if key in _VOCAB_KEYS:
        rows = padded_vocab_size(gpt.vocab_size, gpt.make_vocab_size_divisible_by, 1)
        return _resize_rows(torch.cat(list(pieces), dim=0), rows)
    if key.endswith(_GATED_SUFFIXES) and gpt.activation == "swiglu":
        halves = [piece.chunk(2, dim=0) for piece in pieces]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    if key.endswith(_COLUMN_SUFFIXES + _GATED_SUFFIXES):
        return torch.cat(list(pieces), dim=0)
    if key.endswith(_ROW_SUFFIXES):
        return torch.cat(list(pieces), dim=1)
    for rank, piece in enumerate(pieces[1:], start=1):
        if not torch.equal(piece, pieces[0]):
            raise LayoutError(f"replicated tensor {key!r} differs between TP rank 0 and TP rank {rank}")
    return pieces[0]


def full_to_shard(
    full: Mapping[str, Any], gpt: GPTConfig, tp_rank: int, tp_size: int, pp_rank: int = 0, pp_size: int = 1
) -> dict[str, Any]:
    """Cut one TP-rank/PP-stage shard out of a full TP=1/PP=1 state dict.

    Args:
        full: full model state dict (megatron key names; vocabulary padded for TP=1 or unpadded).
        gpt: model shape (``vocab_size`` set).
        tp_rank: tensor-parallel rank of the shard.
        tp_size: tensor-parallel size.
        pp_rank: pipeline stage of the shard.
        pp_size: pipeline size.

    Returns:
        The shard's state dict, loadable with ``model.load_state_dict`` on that rank. Non-tensor entries (megatron
        ``_extra_state``) are passed through.
    """
    shard: dict[str, Any] = {}
    for key, value in full.items():
        stage_key = _stage_key(key, gpt, pp_rank, pp_size)
        if stage_key is None:
            continue
        shard[stage_key] = _shard_tensor(key, value, gpt, tp_rank, tp_size) if isinstance(value, Tensor) else value
    last = pp_rank == pp_size - 1
    if gpt.tie_embeddings and pp_size > 1 and last and "output_layer.weight" not in shard:
        shard["output_layer.weight"] = _shard_tensor(
            "output_layer.weight", full["embedding.word_embeddings.weight"], gpt, tp_rank, tp_size
        )
    return shard


def shards_to_full(shards: Sequence[Sequence[Mapping[str, Any]]], gpt: GPTConfig) -> dict[str, Any]:
    """Reassemble a full TP=1/PP=1 state dict from every shard.

    Args:
        shards: ``shards[pp_rank][tp_rank]`` state dicts.
        gpt: model shape (``vocab_size`` set).

    Returns:
        The full state dict (vocabulary padded for TP=1).

    Raises:
        LayoutError: if a replicated tensor differs between TP ranks or the stages are uneven.
    """
    pp_size = len(shards)
    per_stage = layers_per_stage(gpt.num_layers, pp_size)
    full: dict[str, Any] = {}
    for pp_rank, stage in enumerate(shards):
        for key, value in stage[0].items():
            if gpt.tie_embeddings and pp_size > 1 and key == "output_layer.weight":
                continue  # the last stage's copy of the tied word embeddings
            match = _LAYER_RE.match(key)
            full_key = key
            if match:
                full_key = f"decoder.layers.{int(match.group(1)) + pp_rank * per_stage}.{match.group(2)}"
            if not isinstance(value, Tensor):
                full[full_key] = value
                continue
            full[full_key] = _merge_tensors(key, [tp_shard[key] for tp_shard in stage], gpt)
    return full
