"""Megatron's optimizer and LR schedule presented to Lightning as one ``torch.optim.Optimizer``.

Lightning counts optimizer steps (``trainer.global_step``), saves optimizer state in checkpoints and drives
``LearningRateMonitor`` through the optimizer it is given. Megatron's ``MegatronOptimizer`` (fp32 main weights for
bf16, distributed optimizer, gradient clipping over model-parallel ranks) is not a torch optimizer; this adapter
lets Lightning own the bookkeeping while megatron does the update: ``step(closure)`` runs the closure, which
performs the whole megatron step (forward, backward, gradient finalisation, update, schedule).

With megatron's distributed optimizer each data-parallel rank holds only its shard of the fp32 main weights and of
Adam's moments. Lightning asks every rank for ``state_dict()`` when it saves (the call is collective) and writes data-
parallel rank 0's; so the shards are gathered there first, into megatron's ``dp_zero_gather_scatter`` form (one flat
tensor per grad buffer, padding removed, independent of the number of data-parallel ranks that saved it), and
``load_state_dict`` hands them back to megatron, which scatters each rank its shard. A resumed run so continues with
exactly the state it stopped with.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from megatron.core.optimizer import ChainedOptimizer, MegatronOptimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler


class MegatronOptimizerAdapter(torch.optim.Optimizer):
    """Wraps a megatron optimizer and its scheduler for Lightning (manual optimization).

    Args:
        optimizer: megatron's optimizer.
        scheduler: megatron's ``OptimizerParamScheduler`` for it.
    """

    def __init__(self, optimizer: MegatronOptimizer, scheduler: OptimizerParamScheduler) -> None:
        # torch.optim.Optimizer.__init__ would take ownership of parameter groups; megatron owns them here.
        self.megatron_optimizer = optimizer
        self.scheduler = scheduler
        self.defaults: dict[str, Any] = {}
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """Megatron's parameter groups (their ``lr`` is what the scheduler set)."""
        return self.megatron_optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        """Per-parameter state of the underlying torch optimizer(s)."""
        return self.megatron_optimizer.state

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Runs ``closure``, which performs the megatron step; returns its result."""
        if closure is None:
            raise ValueError("MegatronOptimizerAdapter.step needs the closure that runs the megatron step")
        return closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Megatron zeroes gradients (and DDP grad buffers) inside each step."""

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler state; a distributed optimizer's shards gathered (call it on every rank)."""
        return {"optimizer": full_optimizer_state(self.megatron_optimizer), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores optimizer and scheduler state (a distributed optimizer's shards are scattered: every rank)."""
        if state_dict["optimizer"] is not None:
            # no_grad: with fp32 parameters the distributed optimizer's main weights are views of the (leaf) model
            # parameters, which megatron's scatter writes in place
            with torch.no_grad():
                self.megatron_optimizer.load_state_dict(state_dict["optimizer"])
        self.scheduler.load_state_dict(state_dict["scheduler"])


#: megatron's name for the gathered layout of a distributed optimizer's parameter state
DP_ZERO_SHARDING = "dp_zero_gather_scatter"


def sub_optimizers(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    """The optimizers a (possibly chained) megatron optimizer runs."""
    return list(optimizer.chained_optimizers) if isinstance(optimizer, ChainedOptimizer) else [optimizer]


def uses_distributed_optimizer(optimizer: MegatronOptimizer) -> bool:
    """Whether megatron's distributed optimizer (sharded main weights and moments) is in use."""
    return any(isinstance(sub, DistributedOptimizer) for sub in sub_optimizers(optimizer))


def full_optimizer_state(optimizer: MegatronOptimizer) -> Any:
    """Megatron's optimizer state, with a distributed optimizer's shards gathered on data-parallel rank 0.

    Collective over the data-parallel group when the distributed optimizer is in use: call it on every rank. Other
    data-parallel ranks get the same structure with ``param_state`` ``None`` (they do not write it).

    Returns:
        What ``optimizer.load_state_dict`` takes: megatron's ``state_dict()``, plus, for each distributed optimizer,
        ``param_state`` (main weights, ``exp_avg``, ``exp_avg_sq``) in the ``dp_zero_gather_scatter`` layout.
        ``None`` when a distributed optimizer has not stepped yet (it has no state to save, and megatron's
        ``state_dict`` refuses).
    """
    if not uses_distributed_optimizer(optimizer):
        return optimizer.state_dict()
    subs = sub_optimizers(optimizer)
    if any(isinstance(sub, DistributedOptimizer) and not sub.optimizer.state for sub in subs):
        return None
    states = []
    for sub in subs:
        state = sub.state_dict()
        if isinstance(sub, DistributedOptimizer):
            state["param_state"] = sub.get_parameter_state_dp_zero(use_gloo_comm=True)
            state["param_state_sharding_type"] = DP_ZERO_SHARDING
        states.append(state)
    return states[0] if len(states) == 1 else states  # ChainedOptimizer.state_dict's layout
