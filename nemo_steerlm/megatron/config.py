"""Typed model-shape and parallel-layout configs, the named presets (read from conf/preset/*.yaml), the layout checks.

Library code takes these plain dataclasses; recipes build them from Hydra config. :func:`validate_layout` checks a
layout against the model shape before anything is allocated and names the config key to change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from nemo_steerlm.config_files import preset_arch, preset_names
from nemo_steerlm.errors import UserError

Normalization = Literal["RMSNorm", "LayerNorm"]
Activation = Literal["swiglu", "gelu"]
PositionEmbedding = Literal["rope", "learned_absolute"]


class ConfigError(UserError):
    """A model or parallel-layout setting that cannot work; the message names the config key to change."""


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a decoder-only GPT (megatron-core ``GPTModel`` with the local layer spec).

    Args:
        num_layers: transformer layers.
        hidden_size: model width.
        ffn_hidden_size: MLP inner width (per branch for SwiGLU).
        num_attention_heads: query heads.
        num_query_groups: key/value heads (grouped-query attention); equal to heads for multi-head attention.
        vocab_size: tokenizer vocabulary size before padding; ``0`` means "set from the tokenizer at run time".
        seq_length: maximum sequence length (also the number of learned positions for ``learned_absolute``).
        normalization: ``RMSNorm`` or ``LayerNorm``.
        activation: ``swiglu`` (gated SiLU, fused fc1) or ``gelu``.
        position_embedding: ``rope`` or ``learned_absolute``.
        rotary_base: RoPE base.
        rope_scaling_factor: Llama 3.1 rotary frequency scaling (Hugging Face ``rope_type: llama3``) with this factor
            and megatron's fixed low/high frequency factors 1 and 4 over 8192 original positions; ``None``: none.
        tie_embeddings: share input embedding and output projection weights.
        layernorm_epsilon: norm epsilon.
        add_bias_linear: biases in the linear layers.
        init_method_std: standard deviation of the normal weight initialisation.
        make_vocab_size_divisible_by: the vocabulary is padded to a multiple of this times the TP size.
    """

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int = 0
    seq_length: int = 2048
    normalization: Normalization = "RMSNorm"
    activation: Activation = "swiglu"
    position_embedding: PositionEmbedding = "rope"
    rotary_base: int = 10000
    rope_scaling_factor: float | None = None
    tie_embeddings: bool = False
    layernorm_epsilon: float = 1e-5
    add_bias_linear: bool = False
    init_method_std: float = 0.02
    make_vocab_size_divisible_by: int = 128

    @property
    def max_position_embeddings(self) -> int:
        """Alias of ``seq_length`` (megatron's name)."""
        return self.seq_length

    @property
    def kv_channels(self) -> int:
        """Per-head width."""
        return self.hidden_size // self.num_attention_heads

    def with_vocab_size(self, vocab_size: int) -> GPTConfig:
        """Return a copy with the tokenizer's vocabulary size filled in."""
        return dataclasses.replace(self, vocab_size=vocab_size)


@dataclass(frozen=True)
class ParallelConfig:
    """Model-parallel layout and numerics of one run.

    Args:
        tensor_model_parallel_size: TP size (splits heads, MLP and vocabulary).
        pipeline_model_parallel_size: PP size (splits layers; non-interleaved 1F1B schedule).
        sequence_parallel: shard layernorm/dropout activations over the sequence (needs TP > 1).
        params_dtype: ``float32``, ``bfloat16`` or ``float16`` for parameters and pipeline activations.
        overlap_grad_reduce: overlap DDP gradient reduction with backward (GPU only).
        core_attention: ``sdpa`` (PyTorch's fused attention kernels, no ``s × s`` matrix kept) or ``local``
            (megatron's ``DotProductAttention``); see :mod:`nemo_steerlm.megatron.attention`.
        recompute_granularity: activation recomputation: ``None`` (off), ``selective`` (the core attention is
            recomputed in backward instead of stored) or ``full`` (whole transformer layers).
        recompute_method: for ``full``: ``uniform`` (checkpoint every ``recompute_num_layers`` layers as a unit)
            or ``block`` (recompute the first ``recompute_num_layers`` layers of each pipeline stage).
        recompute_num_layers: for ``full``: the layers per unit (``uniform``) or recomputed (``block``).
    """

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    sequence_parallel: bool = False
    params_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    overlap_grad_reduce: bool = False
    core_attention: Literal["sdpa", "local"] = "sdpa"
    recompute_granularity: Literal["selective", "full"] | None = None
    recompute_method: Literal["uniform", "block"] | None = None
    recompute_num_layers: int | None = None

    @property
    def model_parallel_size(self) -> int:
        """TP × PP."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size


#: the published tokenizers' vocabulary sizes (reference only: the stages take the size of the tokenizer they load,
#: so the preset YAML does not hold them)
PUBLISHED_VOCAB_SIZES: dict[str, int] = {
    "smollm2_135m": 49152,
    "llama2_7b": 32000,
    "llama2_13b": 32000,
    "llama2_70b": 32000,
}


class _YamlPresets(Mapping[str, GPTConfig]):
    """The named model shapes, read from ``conf/preset/<name>.yaml`` (``arch``): the YAML is their one source.

    ``vocab_size`` is the published tokenizer's (:data:`PUBLISHED_VOCAB_SIZES`), else 0 (set from the tokenizer at
    run time, as the stages do).
    """

    def __getitem__(self, name: str) -> GPTConfig:
        if name not in preset_names():
            raise KeyError(name)
        return GPTConfig(vocab_size=PUBLISHED_VOCAB_SIZES.get(name, 0), **preset_arch(name))

    def __iter__(self) -> Iterator[str]:
        return iter(preset_names())

    def __len__(self) -> int:
        return len(preset_names())


PRESETS: Mapping[str, GPTConfig] = _YamlPresets()


def get_preset(name: str) -> GPTConfig:
    """Return the named preset.

    Raises:
        ConfigError: if the name is unknown (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r} (`model.preset`); choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int, tensor_model_parallel_size: int) -> int:
    """Pad a vocabulary size to a multiple of ``make_vocab_size_divisible_by × TP`` (megatron's rule).

    Args:
        vocab_size: tokenizer vocabulary size.
        make_vocab_size_divisible_by: padding granularity per TP rank.
        tensor_model_parallel_size: TP size.

    Returns:
        The padded size, ``>= vocab_size``.
    """
    if vocab_size <= 0:
        raise ConfigError(f"vocab size is {vocab_size}: set `model.vocab_size` or load a tokenizer first")
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return ((vocab_size + multiple - 1) // multiple) * multiple


#: the shape fields a model config holds (all of ``GPTConfig`` but the tokenizer's vocabulary size)
GPT_FIELDS: tuple[str, ...] = tuple(f for f in GPTConfig.__dataclass_fields__ if f != "vocab_size")


def gpt_config_from(cfg: Any, vocab_size: int) -> GPTConfig:
    """The model shape from a model config typed by ``config_schema.NetworkConfig`` (``model.num_layers``, ...).

    The one reader of the shape keys: models, the training recipes and ``launch``'s layout check call it. A stage's
    ``model`` section and a ``.nemo``'s config are both typed by that schema (which also gives the values a file
    from before a setting was built with), so the fields are read as they are.
    """
    return GPTConfig(**{f: cfg[f] for f in GPT_FIELDS}, vocab_size=vocab_size)


def parallel_config_from(cfg: Any) -> ParallelConfig:
    """The parallel layout from a model config typed by ``config_schema.NetworkConfig``."""
    return ParallelConfig(
        **{f: cfg[f] for f in ParallelConfig.__dataclass_fields__ if f != "overlap_grad_reduce"},
    )


def recompute_problems(parallel: ParallelConfig) -> list[str]:
    """What is wrong with the activation-recomputation settings (megatron's rules, named by config key)."""
    granularity, method, layers = (
        parallel.recompute_granularity,
        parallel.recompute_method,
        parallel.recompute_num_layers,
    )
    if granularity is None:
        return []
    if granularity == "selective":
        if method is not None or layers is not None:
            return ["`model.recompute_method` and `model.recompute_num_layers` apply to full recomputation only"]
        return []
    if granularity != "full":
        return [f"`model.recompute_granularity`={granularity!r}: choose null, selective or full"]
    if method not in ("uniform", "block"):
        return [f"`model.recompute_method`={method!r}: full recomputation needs uniform or block"]
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        return [f"`model.recompute_num_layers`={layers!r}: full recomputation needs a number of layers >= 1"]
    return []


def validate_layout(
    gpt: GPTConfig | None,
    parallel: ParallelConfig,
    world_size: int,
    micro_batch_size: int | None,
    global_batch_size: int | None,
) -> int:
    """Check that a parallel layout fits the world size, the model shape and the batch sizes.

    The one layout check: training stages call it before any work, the model before it allocates, and ``launch``
    for each distributed step of a chain before anything is submitted (there the shape or the batch sizes may be
    unknown: ``None`` skips those checks).

    Args:
        gpt: model shape (None: not known, the shape checks are skipped).
        parallel: TP/PP layout.
        world_size: number of processes (``trainer.devices × trainer.num_nodes``).
        micro_batch_size: sequences per micro-batch per data-parallel rank (None: not known).
        global_batch_size: sequences per optimizer step over all data-parallel ranks (None: not known).

    Returns:
        The data-parallel size.

    Raises:
        ConfigError: naming every key that must change.
    """
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    problems: list[str] = recompute_problems(parallel)
    if tp < 1 or pp < 1:
        problems.append(
            f"`model.tensor_model_parallel_size` ({tp}) and `model.pipeline_model_parallel_size` ({pp}) must be >= 1"
        )
        raise ConfigError("; ".join(problems))
    if world_size % (tp * pp) != 0:
        problems.append(
            f"world size {world_size} (`trainer.devices` × `trainer.num_nodes`) is not divisible by "
            f"`model.tensor_model_parallel_size` ({tp}) × `model.pipeline_model_parallel_size` ({pp}) = {tp * pp}"
        )
    if gpt is not None:
        problems += _shape_problems(gpt, tp, pp)
    if parallel.sequence_parallel and tp == 1:
        problems.append("`model.sequence_parallel` needs `model.tensor_model_parallel_size` > 1")
    dp = max(world_size // (tp * pp), 1)
    if micro_batch_size is not None and global_batch_size is not None:
        if micro_batch_size < 1 or global_batch_size % (micro_batch_size * dp) != 0:
            problems.append(
                f"`model.global_batch_size` ({global_batch_size}) is not divisible by `model.micro_batch_size` "
                f"({micro_batch_size}) × data-parallel size ({dp} = world size {world_size} / (TP {tp} × PP {pp}))"
            )
    if problems:
        raise ConfigError("invalid parallel layout: " + "; ".join(problems))
    return dp


def _shape_problems(gpt: GPTConfig, tp: int, pp: int) -> list[str]:
    """What in the model shape the TP/PP sizes cannot split (named by config key)."""
    problems = []
    for key, value, by, size in (
        ("num_attention_heads", gpt.num_attention_heads, "tensor_model_parallel_size", tp),
        ("num_query_groups", gpt.num_query_groups, "tensor_model_parallel_size", tp),
        ("ffn_hidden_size", gpt.ffn_hidden_size, "tensor_model_parallel_size", tp),
        ("num_layers", gpt.num_layers, "pipeline_model_parallel_size", pp),
    ):
        if value % size != 0:
            problems.append(f"`model.{key}` ({value}) is not divisible by `model.{by}` ({size})")
    if gpt.num_attention_heads % gpt.num_query_groups != 0:
        problems.append(
            f"`model.num_attention_heads` ({gpt.num_attention_heads}) is not a multiple of "
            f"`model.num_query_groups` ({gpt.num_query_groups})"
        )
    return problems
