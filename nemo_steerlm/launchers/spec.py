"""Plain, typed descriptions of a SLURM cluster and of the steps of a chain.

The ``launch`` recipe builds these from Hydra config; nothing in :mod:`nemo_steerlm.launchers` reads Hydra config
itself, and nothing here imports torch, megatron or NeMo (the launcher runs on login nodes without them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# the signal SLURM sends before the walltime (sbatch --signal=B:<SIG>@<seconds>): Lightning's SLURMEnvironment
# checkpoints on SIGUSR1 and requeues the job; SIGTERM is left to mean "stop now" (scancel, preemption kill).
REQUEUE_SIGNAL = "USR1"


class LaunchError(ValueError):
    """A launch configuration that cannot work; the message names the config key to change."""


@dataclass(frozen=True)
class ContainerSpec:
    """An optional container for every task (pyxis/enroot ``srun --container-*`` flags).

    Attributes:
        image: the image (``nvcr.io#nvidia/nemo:24.07``, a squashfs path); None = no container.
        mounts: ``SRC:DST`` mounts; the run folder and the working folder must be visible inside.
        workdir: the working folder inside the container (None = the cluster's ``workdir``).
    """

    image: str | None = None
    mounts: tuple[str, ...] = ()
    workdir: str | None = None


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how jobs run.

    Attributes:
        name: a label recorded in the chain manifest.
        devices_per_node: tasks per node of a distributed (Megatron) step: GPUs per node, or CPU processes.
        gpus: whether the devices are GPUs (then ``--gpus-per-node=devices_per_node`` is requested).
        cpus_per_task: ``--cpus-per-task``; also the default ``OMP_NUM_THREADS`` of each task.
        time: default walltime of a step (``HH:MM:SS`` or ``D-HH:MM:SS``).
        signal_seconds: how long before the walltime SLURM sends SIGUSR1 to checkpoint-capable steps.
        requeue: pass ``--requeue`` (a preempted or signalled job goes back to the queue with the same id).
        export: ``--export`` of sbatch (``NONE``: the job starts from a clean login environment).
        setup: shell lines run in every task before the stage (e.g. ``source .venv/bin/activate``).
        env: variables exported in every job and set for the client commands (sbatch, squeue, ...).
        workdir: the folder the stage commands run in; None = the folder ``launch`` was run from.
        command: the CLI that runs a stage.
        partition: ``--partition`` (None = the cluster's default).
        account: ``--account``.
        qos: ``--qos``.
        mem: ``--mem`` per node (``0`` = all of it on most clusters).
        exclusive: ``--exclusive`` nodes.
        max_nodes: nodes available; a step asking for more is refused before submission (None = unchecked).
        container: the optional container.
        sbatch_extra: more ``#SBATCH`` flags, verbatim (``--constraint=h100``).
        srun_extra: more ``srun`` flags, verbatim (``--mpi=pmix``).
    """

    name: str
    devices_per_node: int
    gpus: bool
    cpus_per_task: int
    time: str
    signal_seconds: int = 120
    requeue: bool = True
    export: str = "NONE"
    setup: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    command: str = "nemo-steerlm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    exclusive: bool = False
    max_nodes: int | None = None
    container: ContainerSpec = field(default_factory=ContainerSpec)
    sbatch_extra: tuple[str, ...] = ()
    srun_extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepSpec:
    """One stage of a chain; it runs after the previous step succeeded (``afterok``).

    Attributes:
        name: the step's name: its output folder ``<run_dir>/<name>`` and its job name ``<chain>-<name>``.
        stage: the ``nemo-steerlm`` stage it runs.
        overrides: Hydra overrides of the stage, ``key -> value`` (dotted keys, values already Hydra text).
        inputs: stage keys fed from earlier steps, ``key -> "<step>[/relative/path]"`` (e.g. ``model: apm/apm.nemo``).
        distributed: a Megatron step: ``nodes × devices_per_node`` tasks through ``srun``, rank variables exported,
            ``trainer.devices``/``trainer.num_nodes`` set to match.
        nodes: nodes of a distributed step (others use one node, one task).
        devices_per_node: tasks per node of a distributed step (None = the cluster's ``devices_per_node``).
        shards: run as a job array of this many shards (``shard_index``/``num_shards``) plus a merge job.
        time: walltime (None = the cluster's).
        preemptible: the stage checkpoints on SIGUSR1 and requeues itself (training stages).
        gpus_per_node: GPUs of a non-distributed step that runs a model, on a GPU cluster (None = none; a
            distributed step gets one per task).
    """

    name: str
    stage: str
    overrides: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    distributed: bool = False
    nodes: int = 1
    devices_per_node: int | None = None
    shards: int | None = None
    time: str | None = None
    preemptible: bool = False
    gpus_per_node: int | None = None


@dataclass(frozen=True)
class ChainSpec:
    """An ordered chain of steps submitted together.

    Attributes:
        name: the chain's name (job-name prefix).
        steps: the steps, in run order.
        run_dir: the folder of this run: stage outputs in ``<run_dir>/<step>``, scripts in ``<run_dir>/launch``.
    """

    name: str
    steps: tuple[StepSpec, ...]
    run_dir: str


def hydra_value(value: Any) -> str:
    """Formats a plain Python value as the right-hand side of a Hydra command-line override.

    Args:
        value: a bool, number, string, None, or a list/dict of those.

    Returns:
        Hydra override text: ``true``, ``8``, ``6e-06``, ``null``, ``[1,2]``, ``'a b'``.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if text and all(c.isalnum() or c in "_-./:+@%$" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def flatten_overrides(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flattens nested ``{"trainer": {"max_steps": 5}}`` into ``{"trainer.max_steps": "5"}`` (Hydra text values).

    Args:
        tree: nested mapping of override values; lists are kept whole.
        prefix: the dotted key of ``tree`` itself.

    Returns:
        Dotted keys in insertion order with :func:`hydra_value` text.
    """
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_overrides(value, dotted + "."))
        else:
            flat[dotted] = hydra_value(value)
    return flat
