"""Megatron's optimizer and LR schedule presented to Lightning as one ``torch.optim.Optimizer``.

Lightning counts optimizer steps (``trainer.global_step``), saves optimizer state in checkpoints and drives
``LearningRateMonitor`` through the optimizer it is given. Megatron's ``MegatronOptimizer`` (fp32 main weights for
bf16, distributed optimizer, gradient clipping over model-parallel ranks) is not a torch optimizer; this adapter
lets Lightning own the bookkeeping while megatron does the update: ``step(closure)`` runs the closure, which
performs the whole megatron step (forward, backward, gradient finalisation, update, schedule).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from megatron.core.optimizer import MegatronOptimizer
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
        """Optimizer and scheduler state."""
        return {"optimizer": self.megatron_optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores optimizer and scheduler state."""
        self.megatron_optimizer.load_state_dict(state_dict["optimizer"])
        self.scheduler.load_state_dict(state_dict["scheduler"])
