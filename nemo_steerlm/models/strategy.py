"""A Lightning strategy for megatron-core models: megatron owns data-parallel gradient reduction and sharding.

* No ``torch.nn.parallel.DistributedDataParallel`` wrapper: the module holds megatron DDP chunks and
  ``finalize_model_grads`` reduces gradients (data-parallel, sequence-parallel norms, tied embeddings over stages).
* The process group may already exist (the model initialises megatron's groups when it is built); it is reused.
* Checkpoints of a model-parallel run are one file per model-parallel rank (written by data-parallel rank 0 of
  each), next to the file Lightning asks for; resuming needs the same TP/PP layout (change layout through ``.nemo``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy

from nemo_steerlm.megatron import parallel


def rank_checkpoint_path(path: str | os.PathLike[str], tp: int, pp: int) -> Path:
    """The file of model-parallel rank (``tp``, ``pp``) for a Lightning checkpoint ``path`` (rank 0,0 keeps it)."""
    path = Path(path)
    if tp == 0 and pp == 0:
        return path
    return path.with_name(f"{path.stem}-mp_rank_{tp:02d}_{pp:03d}{path.suffix}")


class MegatronStrategy(DDPStrategy):
    """DDPStrategy without the DDP wrapper, with per-model-parallel-rank checkpoint files."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("find_unused_parameters", False)
        super().__init__(**kwargs)

    def setup_distributed(self) -> None:
        """Reuses a process group created by the model; creates one otherwise."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.set_world_ranks()
            return
        super().setup_distributed()

    def configure_ddp(self) -> None:
        """Leaves the module unwrapped: megatron DDP inside the model reduces the gradients."""

    def _model_parallel(self) -> bool:
        return torch.distributed.is_initialized() and parallel.tp_size() * parallel.pp_size() > 1

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Rank 0 writes ``filepath``; in a model-parallel run every data-parallel-rank-0 writes its own shard file."""
        if not self._model_parallel():
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        if parallel.dp_rank() == 0:
            target = rank_checkpoint_path(filepath, parallel.tp_rank(), parallel.pp_rank())
            self.checkpoint_io.save_checkpoint(checkpoint, target, storage_options=storage_options)
        self.barrier("save_checkpoint")

    def load_checkpoint(self, checkpoint_path: Any) -> dict[str, Any]:
        """Loads this model-parallel rank's file."""
        if not self._model_parallel():
            return super().load_checkpoint(checkpoint_path)
        target = rank_checkpoint_path(checkpoint_path, parallel.tp_rank(), parallel.pp_rank())
        if not target.exists():
            raise FileNotFoundError(
                f"{target} is missing: resuming a model-parallel run needs the same TP/PP layout it was saved with"
            )
        return self.checkpoint_io.load_checkpoint(target)

    def remove_checkpoint(self, filepath: Any) -> None:
        """Removes every rank's file of a checkpoint."""
        if not self._model_parallel():
            super().remove_checkpoint(filepath)
            return
        if parallel.dp_rank() == 0:
            self.checkpoint_io.remove_checkpoint(rank_checkpoint_path(filepath, parallel.tp_rank(), parallel.pp_rank()))
