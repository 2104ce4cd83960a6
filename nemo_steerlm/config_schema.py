"""The types of every stage config: Hydra structured configs (dataclasses) that the YAML files in ``conf/`` fill in.

One source for each fact: a setting's **type** is here, its **value** (and its comment) in the YAML. Each stage's
YAML names its schema first in its defaults list (``- train_apm_schema``), so Hydra checks every value and override
at compose time (``trainer.max_steps=abc`` is refused with its key before anything runs), interpolations are checked
when they resolve, an unknown key is refused, and the recipes read typed fields (``cfg.trainer.devices`` is an
``int``; no casts). Fields have no defaults (``MISSING``): a value the YAML does not give is an error, not a second
default here (but for the few settings a ``.nemo`` from an older version may lack: the value it was built with).
Where a section is a library type, that type is the schema: ``sampling`` is
:class:`~nemo_steerlm.sampling.SamplingParams` (``OmegaConf.to_object`` builds it), ``preset.arch`` holds the fields
of :class:`~nemo_steerlm.megatron.config.GPTConfig` (a unit test keeps the two equal), and Hugging Face import builds
its model section through :class:`ModelConfig`.

Sections that other code validates keep ``Any``: ``exp_manager`` (NeMo's own schema), ``cluster`` and ``launch``
(checked by :mod:`nemo_steerlm.launchers`), ``run``'s per-stage ``overrides``.

A ``.nemo``'s own model config (a file, possibly from an older version) is typed by the same classes on load
(:func:`typed_model_config`), so the model layer reads typed fields too.

Torch-free; Hydra is imported only by :func:`register`, which :mod:`nemo_steerlm.recipes.common` calls on import (every
compose of ``conf/`` goes through it or its ``CONF_DIR``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from nemo_steerlm.sampling import SamplingParams

# OmegaConf reads these annotations at run time and knows `Optional[...]`, not `X | None`, on Python 3.10
# ruff: noqa: UP045


def _required() -> Any:
    return field(default=MISSING)


# --- config groups ---------------------------------------------------------------------------------------------------
@dataclass
class AttributesConfig:
    """``attributes``: the attribute schema (:class:`~nemo_steerlm.attributes.AttributeSchema`)."""

    names: list[str] = _required()
    drop: list[str] = _required()
    min_value: int = _required()
    max_value: int = _required()


@dataclass
class SourceConfig:
    """One dataset source (``dataset`` itself, or an entry of ``dataset.extra_sources``)."""

    name: str = _required()
    path: Optional[str] = _required()
    repeat: int = _required()


@dataclass
class DatasetConfig(SourceConfig):
    """``dataset``: what ``prepare`` reads and how it splits it."""

    val_fraction: float = _required()
    seed: int = _required()
    extra_sources: list[SourceConfig] = _required()


@dataclass
class ArchConfig:
    """``preset.arch``: the model shape (the fields of ``GPTConfig`` but ``vocab_size``, which the tokenizer gives)."""

    num_layers: int = _required()
    hidden_size: int = _required()
    ffn_hidden_size: int = _required()
    num_attention_heads: int = _required()
    num_query_groups: int = _required()
    seq_length: int = _required()
    normalization: str = _required()
    activation: str = _required()
    position_embedding: str = _required()
    rotary_base: int = _required()
    tie_embeddings: bool = _required()
    layernorm_epsilon: float = _required()
    add_bias_linear: bool = _required()
    init_method_std: float = _required()
    make_vocab_size_divisible_by: int = _required()
    # Llama 3.1 rope scaling; a preset without the key has none
    rope_scaling_factor: Optional[float] = None


@dataclass
class RecomputeConfig:
    """``preset.recompute``: activation recomputation (``granularity`` null | selective | full)."""

    granularity: Optional[str] = _required()
    method: Optional[str] = None
    num_layers: Optional[int] = None


@dataclass
class TrainSettings:
    """``preset.apm``: one training stage's schedule and batch sizes for the preset."""

    max_steps: int = _required()
    val_check_interval: Any = _required()
    micro_batch_size: int = _required()
    global_batch_size: int = _required()
    lr: float = _required()
    min_lr: float = _required()
    warmup_steps: int = _required()
    weight_decay: float = _required()
    max_context_tokens: int = _required()


@dataclass
class SftSettings(TrainSettings):
    """``preset.sft``: as :class:`TrainSettings`, and whether SFT packs sequences."""

    packing: bool = _required()


@dataclass
class EvalSettings:
    """``preset.eval``: the evaluation's sizes for the preset."""

    steer_source: str = _required()
    steer_prompts: int = _required()
    steer_levels: list[int] = _required()
    steer_attributes: list[str] = _required()
    max_new_tokens: int = _required()
    batch_size: int = _required()
    truthfulqa_questions: Optional[int] = _required()


@dataclass
class PresetConfig:
    """``preset``: a named model (shape, tokenizer, initial weights) with its training and evaluation settings."""

    name: str = _required()
    arch: ArchConfig = _required()
    params_dtype: str = _required()
    tokenizer: str = _required()
    init_from: Optional[str] = _required()
    apm: TrainSettings = _required()
    sft: SftSettings = _required()
    eval: EvalSettings = _required()
    use_distributed_optimizer: bool = False
    recompute: Optional[RecomputeConfig] = None


# --- model sections --------------------------------------------------------------------------------------------------
@dataclass
class TokenizerConfig:
    """``model.tokenizer``."""

    path: str = _required()


@dataclass
class OptimConfig:
    """``model.optim``: AdamW with warmup and cosine decay."""

    lr: float = _required()
    min_lr: float = _required()
    warmup_steps: int = _required()
    weight_decay: float = _required()
    betas: list[float] = _required()
    eps: float = _required()
    clip_grad: float = _required()
    use_distributed_optimizer: bool = False


@dataclass
class ModelDataConfig:
    """``model.data``: the files the model trains and validates on (set by the recipe)."""

    train: Optional[str] = _required()
    validation: Optional[str] = _required()


@dataclass
class SftModelDataConfig(ModelDataConfig):
    """``model.data`` of SFT: as :class:`ModelDataConfig`, and packing."""

    packing: bool = _required()


@dataclass
class NetworkConfig(ArchConfig):
    """The megatron GPT of every model: shape (:class:`ArchConfig`), layout and numerics (``conf/network/gpt.yaml``).

    The layout fields are those of :class:`~nemo_steerlm.megatron.config.ParallelConfig` (a unit test keeps them
    equal).
    """

    tensor_model_parallel_size: int = _required()
    pipeline_model_parallel_size: int = _required()
    sequence_parallel: bool = _required()
    params_dtype: str = _required()
    # the defaults below are not defaults of a stage (conf/network/gpt.yaml gives those): they are the values a .nemo
    # written before the setting existed was built with, which it must keep whatever the YAML says later
    core_attention: str = "sdpa"
    recompute_granularity: Optional[str] = None
    recompute_method: Optional[str] = None
    recompute_num_layers: Optional[int] = None
    seed: int = _required()
    tokenizer: TokenizerConfig = _required()
    attributes: AttributesConfig = _required()


@dataclass
class ModelConfig(NetworkConfig):
    """``model`` of a training stage (and of a ``.nemo``): the network, batch sizes, prompt cap, optimizer, data."""

    micro_batch_size: int = _required()
    global_batch_size: int = _required()
    max_context_tokens: int = _required()
    optim: OptimConfig = _required()
    data: ModelDataConfig = _required()


@dataclass
class SftModelConfig(ModelConfig):
    """``model`` of ``train-sft``."""

    data: SftModelDataConfig = _required()


# --- process and layout sections -------------------------------------------------------------------------------------
@dataclass
class ProcessesConfig:
    """``trainer`` of an inference stage: how many processes (``devices`` > 1 restarts under torchrun)."""

    devices: int = _required()
    num_nodes: int = _required()


@dataclass
class TrainerConfig(ProcessesConfig):
    """``trainer`` of a training stage: Lightning ``Trainer`` arguments."""

    accelerator: str = _required()
    # 32, "bf16-mixed", ...: Lightning takes a number or a name
    precision: Any = _required()
    max_steps: int = _required()
    max_epochs: int = _required()
    # an int counts batches, a float is a fraction of an epoch (Lightning tells them apart by type)
    val_check_interval: Any = _required()
    check_val_every_n_epoch: Optional[int] = _required()
    num_sanity_val_steps: int = _required()
    log_every_n_steps: int = _required()
    enable_progress_bar: bool = _required()
    enable_model_summary: bool = _required()


@dataclass
class LayoutConfig:
    """``layout`` of an inference stage: the TP × PP layout to restore a ``.nemo`` at."""

    tensor_model_parallel_size: int = _required()
    pipeline_model_parallel_size: int = _required()


@dataclass
class AnnotateLayoutConfig(LayoutConfig):
    """``layout`` of ``annotate``: also the micro batch of the restored model."""

    micro_batch_size: int = _required()


@dataclass
class LogLinesConfig:
    """``log_lines``: plain progress lines of training (``when``: auto | always | never)."""

    when: str = _required()
    every_n_steps: int = _required()


# --- stages ----------------------------------------------------------------------------------------------------------
@dataclass
class StageConfig:
    """What every stage has: its output folder and whether a rerun may replace what is there."""

    output_dir: str = _required()
    overwrite: bool = _required()


@dataclass
class PrepareConfig(StageConfig):
    """``prepare``."""

    attributes: AttributesConfig = _required()
    dataset: DatasetConfig = _required()


@dataclass
class AnalyzeConfig(PrepareConfig):
    """``analyze``."""

    data: Optional[str] = _required()


@dataclass
class TrainConfig(PrepareConfig):
    """``train-apm``."""

    preset: PresetConfig = _required()
    data: Optional[str] = _required()
    trainer: TrainerConfig = _required()
    log_lines: LogLinesConfig = _required()
    exp_manager: Any = _required()
    model: ModelConfig = _required()


@dataclass
class TrainSftConfig(TrainConfig):
    """``train-sft``."""

    val_data: Optional[str] = _required()
    model: SftModelConfig = _required()


@dataclass
class InferenceStageConfig(StageConfig):
    """What the stages that restore a ``.nemo`` share: the model, the processes, the layout."""

    model: str = _required()
    trainer: ProcessesConfig = _required()
    layout: LayoutConfig = _required()


@dataclass
class AnnotateConfig(InferenceStageConfig):
    """``annotate``."""

    scorer_url: Optional[str] = _required()
    data: str = _required()
    chunk_size: int = _required()
    batch_size: Optional[int] = _required()
    shard_index: int = _required()
    num_shards: int = _required()
    merge_shards: bool = _required()
    progress: bool = _required()
    layout: AnnotateLayoutConfig = _required()


@dataclass
class GenerateConfig(InferenceStageConfig):
    """``generate``."""

    data: str = _required()
    limit: Optional[int] = _required()
    steer: dict[str, int] = _required()
    label: Optional[str] = _required()
    sampling: SamplingParams = _required()


@dataclass
class ServeConfig(InferenceStageConfig):
    """``serve``."""

    model_name: Optional[str] = _required()
    host: str = _required()
    port: int = _required()
    steer: dict[str, int] = _required()
    default_max_tokens: int = _required()
    max_batch: int = _required()
    batch_wait_ms: float = _required()
    max_pending: int = _required()
    seed: int = _required()
    log_level: str = _required()


@dataclass
class BootstrapConfig(StageConfig):
    """``bootstrap``."""

    preset: PresetConfig = _required()
    model: str = _required()
    apm: str = _required()
    data: str = _required()
    samples_per_prompt: int = _required()
    max_prompts: Optional[int] = _required()
    include_original: bool = _required()
    seed: int = _required()
    sampling: SamplingParams = _required()


@dataclass
class SteerabilityConfig:
    """``evaluate.steerability``."""

    enabled: bool = _required()
    attributes: list[str] = _required()
    levels: list[int] = _required()
    prompts: str = _required()
    num_prompts: int = _required()
    reference: Optional[str] = _required()


@dataclass
class ConditioningConfig:
    """``evaluate.conditioning``."""

    enabled: bool = _required()
    max_groups: int = _required()


@dataclass
class JudgeConfig:
    """``evaluate.mt_bench.judge``: an OpenAI-compatible judge endpoint."""

    enabled: bool = _required()
    base_url: Optional[str] = _required()
    model: str = _required()
    api_key_env: str = _required()


@dataclass
class MTBenchConfig:
    """``evaluate.mt_bench``."""

    enabled: bool = _required()
    model_id: str = _required()
    judge: JudgeConfig = _required()


@dataclass
class TruthfulQAConfig:
    """``evaluate.truthfulqa``."""

    enabled: bool = _required()
    max_questions: Optional[int] = _required()


@dataclass
class EnabledConfig:
    """A part of the evaluation that is on or off (``perplexity``)."""

    enabled: bool = _required()


@dataclass
class EvaluateConfig(StageConfig):
    """``evaluate``."""

    attributes: AttributesConfig = _required()
    preset: PresetConfig = _required()
    model: Optional[str] = _required()
    apm: Optional[str] = _required()
    scorer_url: Optional[str] = _required()
    data: Optional[str] = _required()
    run_dir: Optional[str] = _required()
    steer: dict[str, int] = _required()
    generation: SamplingParams = _required()
    steerability: SteerabilityConfig = _required()
    conditioning: ConditioningConfig = _required()
    mt_bench: MTBenchConfig = _required()
    truthfulqa: TruthfulQAConfig = _required()
    perplexity: EnabledConfig = _required()


@dataclass
class ExportConfig(StageConfig):
    """``export``."""

    model: Optional[str] = _required()
    format: str = _required()


@dataclass
class ImportLayoutConfig:
    """``import-hf``'s ``model``: the layout and numerics of the ``.nemo`` it writes."""

    tensor_model_parallel_size: int = _required()
    pipeline_model_parallel_size: int = _required()
    params_dtype: str = _required()
    seq_length: Optional[int] = _required()
    make_vocab_size_divisible_by: int = _required()


@dataclass
class ImportHFConfig(StageConfig):
    """``import-hf``."""

    attributes: AttributesConfig = _required()
    model_path: Optional[str] = _required()
    model_type: str = _required()
    seed: int = _required()
    model: ImportLayoutConfig = _required()
    trainer: ProcessesConfig = _required()


@dataclass
class RunConfig(PrepareConfig):
    """``run``: the chain's stages and each one's extra overrides."""

    preset: PresetConfig = _required()
    sft_labels: str = _required()
    stages: list[str] = _required()
    bootstrap: bool = _required()
    overrides: dict[str, list[str]] = _required()


@dataclass
class AblateConfig(RunConfig):
    """``ablate``: ``run`` once, and once per entry of ``drop``."""

    drop: list[Any] = _required()


@dataclass
class LaunchConfig(PrepareConfig):
    """``launch``."""

    preset: PresetConfig = _required()
    cluster: Any = _required()
    launch: Any = _required()
    allow_random_init: bool = _required()
    action: str = _required()
    dry_run: bool = _required()
    chain: Optional[str] = _required()
    only: Optional[list[str]] = _required()


def typed_model_config(raw: Any, kind: str) -> Any:
    """A ``.nemo``'s model config typed by the training stage's model schema (``kind``: ``apm`` or ``sft``).

    Keys the schema does not name (``target``, ``nemo_version``, ``labelled_attributes``, ...) are kept.

    Raises:
        omegaconf.errors.ValidationError: a value of the wrong type (with its ``full_key``).
        KeyError: the settings the file lacks (names them).
    """
    from omegaconf import OmegaConf

    typed = OmegaConf.structured(SftModelConfig if kind == "sft" else ModelConfig)
    OmegaConf.set_struct(typed, False)
    typed = OmegaConf.merge(typed, raw)
    missing = sorted(OmegaConf.missing_keys(typed))
    if missing:
        raise KeyError(f"no value for {', '.join(missing)}")
    return typed


#: the schema of each stage's YAML (``conf/<config>.yaml`` names ``<config>_schema`` first in its defaults list)
STAGE_SCHEMAS: dict[str, type] = {
    "prepare": PrepareConfig,
    "analyze": AnalyzeConfig,
    "train_apm": TrainConfig,
    "annotate": AnnotateConfig,
    "train_sft": TrainSftConfig,
    "bootstrap": BootstrapConfig,
    "generate": GenerateConfig,
    "evaluate": EvaluateConfig,
    "export": ExportConfig,
    "import_hf": ImportHFConfig,
    "launch": LaunchConfig,
    "run": RunConfig,
    "ablate": AblateConfig,
    "serve": ServeConfig,
}


def register() -> None:
    """Stores every stage schema in Hydra's ``ConfigStore`` as ``<config>_schema`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for config, schema in STAGE_SCHEMAS.items():
        store.store(name=f"{config}_schema", node=schema)
