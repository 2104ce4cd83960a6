"""One training or evaluation step over a list of micro-batches, through megatron's pipeline schedules.

The same function serves every model: the caller supplies megatron's ``forward_step(data_iterator, model) ->
(output, loss_func)``. ``loss_func(output)`` returns either

* ``(loss, {"loss": loss})`` -- a per-micro-batch mean; the step loss is the mean over micro-batches and
  data-parallel ranks (megatron divides the gradient by the number of micro-batches), or
* ``(loss_sum, count, {"loss": torch.stack([loss_sum, count])})`` -- with
  ``TransformerConfig.calculate_per_token_loss=True`` the gradient and the step loss are divided by the global
  count over all micro-batches and data-parallel ranks: a masked loss averages the same way whatever the layout.

The reported loss lives on the last pipeline stage; it is reduced over data-parallel ranks and broadcast down the
pipeline so every rank returns it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from nemo_steerlm.megatron import parallel

ForwardStep = Callable[[Any, torch.nn.Module], tuple[Any, Callable[..., Any]]]


@dataclass(frozen=True)
class StepResult:
    """What one step produced (identical on every rank).

    Args:
        loss: mean loss of the step.
        grad_norm: global gradient norm before clipping (training only).
        update_successful: whether the optimizer applied the update (fp16 loss scaling can skip one).
        lr: learning rate used by the update (training only).
    """

    loss: float
    grad_norm: float | None = None
    update_successful: bool = True
    lr: float | None = None

    def __float__(self) -> float:
        return self.loss


def _configure(config: Any, model_chunks: Sequence[torch.nn.Module], optimizer: MegatronOptimizer | None) -> None:
    """Install the hooks megatron's schedules call: grad finalisation, DDP no-sync and loss scaling."""
    config.finalize_model_grads_func = finalize_model_grads
    no_sync = getattr(model_chunks[0], "no_sync", None)
    config.no_sync_func = no_sync if len(model_chunks) == 1 else [c.no_sync for c in model_chunks]
    config.grad_scale_func = optimizer.scale_loss if optimizer is not None else None


def _reduce_loss(forward_data_store: list[Any], loss_key: str) -> float:
    """Average the last stage's per-micro-batch loss logs over data-parallel ranks; broadcast along the pipeline."""
    totals = torch.zeros(2, dtype=torch.float64)  # (sum of losses or of loss sums, number of terms or of counts)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        for log in forward_data_store:
            value = log[loss_key].detach().to(device="cpu", dtype=torch.float64).reshape(-1)
            if value.numel() == 2:
                totals += value
            else:
                totals += torch.stack([value[0], torch.ones((), dtype=torch.float64)])
    totals = totals.to(parallel.device())
    if dist.is_initialized():
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            dist.broadcast(
                totals,
                src=parallel_state.get_pipeline_model_parallel_last_rank(),
                group=parallel_state.get_pipeline_model_parallel_group(),
            )
    total, count = totals.tolist()
    return total / count if count > 0 else 0.0


def _schedule(
    forward_step: ForwardStep,
    model_chunks: Sequence[torch.nn.Module],
    micro_batches: Sequence[Any],
    seq_length: int,
    micro_batch_size: int,
    optimizer: MegatronOptimizer | None,
    forward_only: bool,
    collect_non_loss_data: bool = False,
) -> list[Any]:
    """Megatron's forward(-backward) schedule over the micro-batches, in train or eval mode; its data store."""
    _configure(get_model_config(model_chunks[0]), model_chunks, optimizer)
    for chunk in model_chunks:
        chunk.train(not forward_only)
    model = list(model_chunks) if len(model_chunks) > 1 else model_chunks[0]
    with torch.no_grad() if forward_only else torch.enable_grad():
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(micro_batches),
            model=model,
            num_microbatches=len(micro_batches),
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            forward_only=forward_only,
            collect_non_loss_data=collect_non_loss_data,
        )


def run_step(
    forward_step: ForwardStep,
    model_chunks: Sequence[torch.nn.Module],
    micro_batches: Sequence[Any],
    seq_length: int,
    micro_batch_size: int,
    optimizer: MegatronOptimizer | None = None,
    scheduler: OptimizerParamScheduler | None = None,
    forward_only: bool = False,
    loss_key: str = "loss",
) -> StepResult:
    """Run forward(+backward, grad finalisation, optimizer and scheduler step) over this rank's micro-batches.

    Works for PP = 1 and non-interleaved PP > 1: every stage is given the same micro-batches and its forward step
    picks what it needs (tokens on the first stage, targets on the last).

    Args:
        forward_step: megatron's ``forward_step(data_iterator, model) -> (output, loss_func)``.
        model_chunks: this rank's model chunk(s), DDP-wrapped for training.
        micro_batches: this data-parallel rank's micro-batches for the step (all of ``seq_length``).
        seq_length: sequence length of every micro-batch (pipeline buffers are sized from it).
        micro_batch_size: sequences per micro-batch.
        optimizer: required for training.
        scheduler: stepped once after a successful update.
        forward_only: evaluation: no backward, no update, under ``torch.no_grad``.
        loss_key: key of the loss in the loss function's log dict.

    Returns:
        The step's loss (and grad norm and lr when training), the same on every rank.
    """
    if not forward_only and optimizer is None:
        raise ValueError("run_step(forward_only=False) needs an optimizer")
    if not micro_batches:
        raise ValueError("run_step got no micro-batches")
    if not forward_only:
        for chunk in model_chunks:
            if hasattr(chunk, "zero_grad_buffer"):
                chunk.zero_grad_buffer()
        optimizer.zero_grad()
    store = _schedule(forward_step, model_chunks, micro_batches, seq_length, micro_batch_size, optimizer, forward_only)
    loss = _reduce_loss(store, loss_key)
    if forward_only:
        return StepResult(loss=loss)
    update_successful, grad_norm, _ = optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    if scheduler is not None and update_successful:
        scheduler.step(increment=1)
    return StepResult(
        loss=loss,
        grad_norm=None if grad_norm is None else float(grad_norm),
        update_successful=bool(update_successful),
        lr=float(lr),
    )


def run_forward_collect(
    forward_step: ForwardStep,
    model_chunks: Sequence[torch.nn.Module],
    micro_batches: Sequence[Any],
    seq_length: int,
    micro_batch_size: int,
) -> list[Any]:
    """Run a forward-only pass and collect each micro-batch's ``loss_func(output, non_loss_data=True)``.

    Used for predictions (annotation, evaluation). Results exist on the last pipeline stage only; other stages get
    an empty list.

    Args:
        forward_step: megatron's ``forward_step``; its ``loss_func`` must accept ``non_loss_data=True``.
        model_chunks: this rank's model chunk(s).
        micro_batches: the micro-batches to run.
        seq_length: sequence length of every micro-batch.
        micro_batch_size: sequences per micro-batch.

    Returns:
        One entry per micro-batch on the last stage, ``[]`` elsewhere.
    """
    store = _schedule(forward_step, model_chunks, micro_batches, seq_length, micro_batch_size, None, True, True)
    return list(store) if parallel_state.is_pipeline_last_stage(ignore_virtual=True) else []
