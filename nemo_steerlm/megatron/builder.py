"""Builders from our typed configs to megatron-core objects: TransformerConfig, GPTModel, DDP, optimizer, schedule.

Everything here takes plain dataclasses/arguments; nothing reads Hydra config. Call
:func:`nemo_steerlm.megatron.parallel.initialize_model_parallel` first: the model is built for this process's
tensor-parallel rank and pipeline stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.transformer_config import TransformerConfig

from nemo_steerlm.megatron.attention import local_spec_with_attention
from nemo_steerlm.megatron.config import GPTConfig, ParallelConfig, padded_vocab_size

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"float32"``/``"bfloat16"``/``"float16"`` (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (`model.params_dtype`); choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def build_transformer_config(
    gpt: GPTConfig,
    parallel: ParallelConfig,
    dtype: str | torch.dtype | None = None,
    hidden_dropout: float = 0.0,
    attention_dropout: float = 0.0,
    calculate_per_token_loss: bool = False,
) -> TransformerConfig:
    """Build megatron's ``TransformerConfig`` for a GPT shape and parallel layout.

    The CPU-safe settings are always set: CPU initialisation when CUDA is absent, the local attention backend set
    explicitly (a default ``auto`` after a ``local`` config trips an assertion via ``NVTE_*`` environment
    variables), no gradient-accumulation fusion (needs apex), no persistent layer norm.

    Args:
        gpt: model shape.
        parallel: TP/PP layout (and SP).
        dtype: parameter and pipeline-communication dtype; ``parallel.params_dtype`` when ``None``.
        hidden_dropout: dropout after attention/MLP.
        attention_dropout: dropout on attention probabilities.
        calculate_per_token_loss: loss functions return ``(loss_sum, num_tokens, log)`` and gradients are divided
            by the global token count (layout-independent averaging of masked losses).

    Returns:
        The transformer config.
    """
    params_dtype = resolve_dtype(dtype if dtype is not None else parallel.params_dtype)
    swiglu = gpt.activation == "swiglu"
    return TransformerConfig(
        num_layers=gpt.num_layers,
        hidden_size=gpt.hidden_size,
        ffn_hidden_size=gpt.ffn_hidden_size,
        num_attention_heads=gpt.num_attention_heads,
        num_query_groups=gpt.num_query_groups,
        kv_channels=gpt.kv_channels,
        normalization=gpt.normalization,
        layernorm_epsilon=gpt.layernorm_epsilon,
        gated_linear_unit=swiglu,
        activation_func=F.silu if swiglu else F.gelu,
        add_bias_linear=gpt.add_bias_linear,
        add_qkv_bias=gpt.add_bias_linear,
        init_method_std=gpt.init_method_std,
        hidden_dropout=hidden_dropout,
        attention_dropout=attention_dropout,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        attention_backend=AttnBackend.local,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        calculate_per_token_loss=calculate_per_token_loss,
        recompute_granularity=parallel.recompute_granularity,
        recompute_method=parallel.recompute_method,
        recompute_num_layers=parallel.recompute_num_layers,  # selective: megatron recomputes the core attention
    )


def build_gpt_model(
    gpt: GPTConfig,
    config: TransformerConfig,
    model_cls: type[GPTModel] = GPTModel,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    core_attention: str = "sdpa",
    **model_kwargs: Any,
) -> GPTModel:
    """Build this pipeline stage's ``GPTModel`` (or subclass) with megatron's local layer spec.

    Args:
        gpt: model shape; ``gpt.vocab_size`` must be set (it is padded for TP here).
        config: from :func:`build_transformer_config`.
        model_cls: ``GPTModel`` or a subclass (e.g. the regression model); extra keyword arguments go to it.
        pre_process: build the embedding; defaults to "this is the first pipeline stage".
        post_process: build the final norm and output; defaults to "this is the last pipeline stage".
        core_attention: ``sdpa`` or ``local`` (see :func:`nemo_steerlm.megatron.attention.local_spec_with_attention`).
        **model_kwargs: extra constructor arguments for ``model_cls``; ``pg_collection`` defaults to megatron's
            current process groups, passed in explicitly.

    Returns:
        The model, on the current CUDA device on GPU, on CPU otherwise.
    """
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    vocab = padded_vocab_size(gpt.vocab_size, gpt.make_vocab_size_divisible_by, config.tensor_model_parallel_size)
    model_kwargs.setdefault("pg_collection", ProcessGroupCollection.use_mpu_process_groups())
    model = model_cls(
        config=config,
        transformer_layer_spec=local_spec_with_attention(gpt.normalization, core_attention),
        vocab_size=vocab,
        max_sequence_length=gpt.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=gpt.tie_embeddings,
        position_embedding_type=gpt.position_embedding,
        rotary_base=gpt.rotary_base,
        rope_scaling=gpt.rope_scaling_factor is not None,
        rope_scaling_factor=8.0 if gpt.rope_scaling_factor is None else float(gpt.rope_scaling_factor),
        **model_kwargs,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def wrap_ddp(
    model_chunks: Sequence[torch.nn.Module],
    config: TransformerConfig,
    use_distributed_optimizer: bool = False,
    overlap_grad_reduce: bool = False,
    grad_reduce_in_fp32: bool = True,
    broadcast_params: bool = True,
) -> list[DistributedDataParallel]:
    """Wrap model chunks in megatron's ``DistributedDataParallel`` (contiguous grad buffers, bucketed reduce).

    Args:
        model_chunks: this rank's model chunk(s).
        config: their transformer config.
        use_distributed_optimizer: shard optimizer state over data-parallel ranks.
        overlap_grad_reduce: overlap the gradient reduce with backward.
        grad_reduce_in_fp32: accumulate and reduce gradients in fp32.
        broadcast_params: copy data-parallel rank 0's parameters to the other replicas.

    Returns:
        The wrapped chunks.
    """
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32,
        overlap_grad_reduce=overlap_grad_reduce,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    wrapped = []
    for index, chunk in enumerate(model_chunks):
        ddp = DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=index > 0)
        if broadcast_params:
            ddp.broadcast_params()
        wrapped.append(ddp)
    return wrapped


def build_optimizer(
    model_chunks: Sequence[torch.nn.Module],
    lr: float,
    weight_decay: float = 0.0,
    clip_grad: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
    min_lr: float = 0.0,
    params_dtype: str | torch.dtype = torch.float32,
    use_distributed_optimizer: bool = False,
) -> MegatronOptimizer:
    """Build megatron's Adam(W) optimizer (fused on GPU when apex/TE exist, torch AdamW otherwise).

    Args:
        model_chunks: DDP-wrapped chunks from :func:`wrap_ddp`.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (not applied to biases and norms).
        clip_grad: global gradient-norm clip; ``0`` disables clipping.
        betas: Adam betas.
        eps: Adam epsilon.
        min_lr: floor of the schedule.
        params_dtype: parameter dtype; bf16/fp16 keep fp32 main weights.
        use_distributed_optimizer: shard optimizer state over data-parallel ranks.

    Returns:
        The optimizer.
    """
    dtype = resolve_dtype(params_dtype)
    config = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=min_lr,
        weight_decay=weight_decay,
        adam_beta1=betas[0],
        adam_beta2=betas[1],
        adam_eps=eps,
        clip_grad=clip_grad,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        params_dtype=dtype,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    return get_megatron_optimizer(config, list(model_chunks))


def build_scheduler(
    optimizer: MegatronOptimizer,
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    weight_decay: float = 0.0,
) -> OptimizerParamScheduler:
    """Cosine learning-rate decay with linear warm-up (megatron's ``OptimizerParamScheduler``).

    Call ``scheduler.step(1)`` after each optimizer step.

    Args:
        optimizer: from :func:`build_optimizer`.
        lr: peak learning rate, reached after ``warmup_steps``.
        total_steps: steps until ``min_lr``.
        warmup_steps: linear warm-up steps from 0.
        min_lr: final learning rate.
        weight_decay: constant weight decay.

    Returns:
        The scheduler (it already set the step-0 learning rate on the optimizer).
    """
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=lr,
        min_lr=min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=max(total_steps, warmup_steps + 1),
        lr_decay_style="cosine",
        start_wd=weight_decay,
        end_wd=weight_decay,
        wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
    )
