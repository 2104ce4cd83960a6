"""This process's global rank and the job's world size, read in one place (imports no torch).

``torch.distributed`` is asked when a process group exists; before that (or in a process that never imports torch)
the launcher's environment variables are: torchrun's ``RANK``/``WORLD_SIZE``, SLURM's ``SLURM_PROCID``, Open MPI's
``OMPI_COMM_WORLD_RANK``. A process no launcher started is rank 0 of a world of one.
"""

from __future__ import annotations

import os
import sys

#: the launchers' variables that give a process its global rank (torchrun, SLURM's srun, Open MPI), in that order
LAUNCHER_RANK_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")


def _process_group() -> object | None:
    """``torch.distributed`` when it is imported and initialised, else ``None`` (never imports torch itself)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def launcher_rank() -> int:
    """This process's global rank as its launcher set it (0 for a process that no launcher started)."""
    for var in LAUNCHER_RANK_VARS:
        if var in os.environ:
            return int(os.environ[var])
    return 0


def started_by_launcher() -> bool:
    """Whether a launcher (torchrun, srun, mpirun) started this process."""
    return any(var in os.environ for var in LAUNCHER_RANK_VARS)


def world_size() -> int:
    """Processes in this job (from torch.distributed, or the launcher's ``WORLD_SIZE`` before it is initialised)."""
    dist = _process_group()
    if dist is not None:
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_global_rank_zero() -> bool:
    """Whether this process is global rank 0 (from torch.distributed if started, else the launcher's variables)."""
    dist = _process_group()
    if dist is not None:
        return dist.get_rank() == 0
    return launcher_rank() == 0
