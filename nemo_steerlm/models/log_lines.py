"""Plain training log lines for files and clusters: one line every N steps instead of a redrawn progress bar.

Lightning's progress bar redraws itself with carriage returns, which a log file (``> log 2>&1``, a SLURM job's
output) keeps as one enormous line. :class:`LogLinesCallback` prints, on global rank 0, one flushed line every
``every_n_steps`` optimizer steps and one per validation::

    nemo-steerlm train: step 20/800 loss 1.2345 lr 3.000e-06 grad_norm 0.8123 tokens/s 4,321 elapsed 12.3s
    nemo-steerlm train: validation at step 20: val_loss 1.1111
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch import Callback


def format_step_line(step: int, max_steps: int, result: Any, tokens_per_s: float, elapsed: float) -> str:
    """The line of one step (``result`` is the model's last :class:`~nemo_steerlm.megatron.step.StepResult`)."""
    total = f"/{max_steps}" if max_steps > 0 else ""
    parts = [f"nemo-steerlm train: step {step}{total}", f"loss {result.loss:.4f}"]
    if result.lr is not None:
        parts.append(f"lr {result.lr:.3e}")
    if result.grad_norm is not None:
        parts.append(f"grad_norm {result.grad_norm:.4f}")
    parts += [f"tokens/s {tokens_per_s:,.0f}", f"elapsed {elapsed:.1f}s"]
    return " ".join(parts)


class LogLinesCallback(Callback):
    """Prints a plain line every ``every_n_steps`` training steps (and after each validation) on global rank 0.

    Args:
        every_n_steps: steps between lines (the first and the last step always print).
        data_parallel_size: a function returning the data-parallel world size (tokens are counted on one rank's
            batch and multiplied by it); called once training starts, when the process groups exist.
        stream: where to print (``sys.stdout`` when ``None``).
    """

    def __init__(self, every_n_steps: int, data_parallel_size: Any, stream: Any = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._dp_size = data_parallel_size
        self.stream = stream
        self._dp = 1
        self._tokens = 0
        self._start = self._window_start = 0.0

    def _print(self, trainer: Any, line: str) -> None:
        if trainer.is_global_zero:
            print(line, file=self.stream or sys.stdout, flush=True)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Starts the clocks."""
        self._dp = int(self._dp_size())
        self._start = self._window_start = time.perf_counter()
        self._tokens = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Counts the step's tokens and prints a line on every N-th step and the last one."""
        tokens = batch.get("tokens") if isinstance(batch, dict) else None
        self._tokens += int(tokens.numel()) * self._dp if tokens is not None else 0
        step, result = int(trainer.global_step), getattr(pl_module, "last_step", None)
        last = 0 < trainer.max_steps <= step
        if result is None or not (step % self.every_n_steps == 0 or step == 1 or last):
            return
        now = time.perf_counter()
        rate = self._tokens / max(now - self._window_start, 1e-9)
        self._print(trainer, format_step_line(step, int(trainer.max_steps), result, rate, now - self._start))
        self._tokens, self._window_start = 0, now

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """One line with the validation metrics Lightning collected."""
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if metrics:
            shown = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
            self._print(trainer, f"nemo-steerlm train: validation at step {trainer.global_step}: {shown}")
