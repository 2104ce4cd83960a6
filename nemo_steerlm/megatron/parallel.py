"""Process-group set-up for megatron-core: torch.distributed init, model-parallel groups, seeds, rank helpers.

NCCL on GPU, gloo on CPU (where the CPU adapter is applied first). Under ``torchrun`` the usual environment variables
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) are used; a plain ``python`` process becomes a world of one through
an in-memory store, so single-process runs and tests need no launcher.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from nemo_steerlm.megatron.adapter import apply_cpu_patches, apply_torch_adam_patches
from nemo_steerlm.megatron.config import ParallelConfig
from nemo_steerlm.ranks import is_global_rank_zero  # noqa: F401 - callers use parallel.is_global_rank_zero


def default_backend() -> str:
    """Return ``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def device() -> torch.device:
    """The device this rank computes on: its CUDA device on GPU, the CPU otherwise (also for NCCL tensors)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A micro-batch's tensors on :func:`device` (a no-op where Lightning already moved them)."""
    target = device()
    return {k: v.to(target, non_blocking=True) for k, v in batch.items()}


def init_distributed(backend: str | None = None, timeout_minutes: int = 30) -> None:
    """Initialise ``torch.distributed`` if it is not yet, from the environment or as a world of one.

    Args:
        backend: process-group backend; :func:`default_backend` when ``None``.
        timeout_minutes: collective timeout.
    """
    if dist.is_initialized():
        return
    backend = backend or default_backend()
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # fp32 parameters then multiply in TF32 on the tensor cores (megatron's fp32 runs do the same)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        return
    # A single process without a launcher: an in-process store is enough for a world of one.
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)


def initialize_model_parallel(parallel: ParallelConfig, seed: int, backend: str | None = None) -> None:
    """Initialise torch.distributed (if needed), megatron's model-parallel groups and the seeds.

    On a CPU-only machine the megatron CPU adapter is applied first. The default RNG is seeded with ``seed`` and
    megatron's tracker with per-TP-rank model-parallel seeds (``model_parallel_cuda_manual_seed``).

    Args:
        parallel: TP/PP layout.
        seed: base seed, the same on every rank.
        backend: process-group backend; :func:`default_backend` when ``None``.
    """
    apply_cpu_patches()
    apply_torch_adam_patches()  # GPU machines without apex/TransformerEngine need it too
    init_distributed(backend)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
    )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy_model_parallel(destroy_process_group: bool = False) -> None:
    """Tear down megatron's model-parallel groups, and optionally the default process group.

    Args:
        destroy_process_group: also destroy ``torch.distributed``'s default group.
    """
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if destroy_process_group and dist.is_initialized():
        dist.destroy_process_group()


def process_groups() -> ProcessGroupCollection:
    """Return megatron's current process groups as a collection to pass into library code."""
    return ProcessGroupCollection.use_mpu_process_groups()


def tp_rank() -> int:
    """Tensor-parallel rank of this process."""
    return parallel_state.get_tensor_model_parallel_rank()


def tp_size() -> int:
    """Tensor-parallel size."""
    return parallel_state.get_tensor_model_parallel_world_size()


def pp_rank() -> int:
    """Pipeline stage of this process."""
    return parallel_state.get_pipeline_model_parallel_rank()


def pp_size() -> int:
    """Number of pipeline stages."""
    return parallel_state.get_pipeline_model_parallel_world_size()


def dp_rank() -> int:
    """Data-parallel rank of this process."""
    return parallel_state.get_data_parallel_rank()


def dp_size() -> int:
    """Data-parallel size."""
    return parallel_state.get_data_parallel_world_size()


def is_first_stage() -> bool:
    """Whether this process holds the first pipeline stage (embeddings)."""
    return parallel_state.is_pipeline_first_stage(ignore_virtual=True)


def is_last_stage() -> bool:
    """Whether this process holds the last pipeline stage (final norm and heads)."""
    return parallel_state.is_pipeline_last_stage(ignore_virtual=True)


def last_stage_global_rank() -> int:
    """Global rank of the last pipeline stage in this process's pipeline group."""
    return parallel_state.get_pipeline_model_parallel_last_rank()


def barrier() -> None:
    """A barrier over all ranks (nothing to wait for in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_from_rank_zero(obj: Any) -> Any:
    """Global rank 0's ``obj`` on every rank (the object itself in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_data_parallel(items: list) -> list:
    """Concatenates the lists of every data-parallel rank, in rank order (the list itself at DP = 1)."""
    size = parallel_state.get_data_parallel_world_size()
    if size == 1:
        return list(items)
    out: list = [None] * size
    dist.all_gather_object(out, list(items), group=parallel_state.get_data_parallel_group())
    return [x for part in out for x in part]
