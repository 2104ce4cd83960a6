"""Renders one sbatch script per job of a chain (a sharded step gives an array job and a merge job).

Every script: SBATCH resources; a per-job folder ``<run_dir>/launch/jobs/<job id>/`` holding a copy of the script,
the step's resolved config and the code version; a task script that exports the torch.distributed variables from
SLURM's (``RANK=$SLURM_PROCID``, ``WORLD_SIZE=$SLURM_NTASKS``, ``LOCAL_RANK=$SLURM_LOCALID``), runs the set-up lines
and ``exec``s the stage; ``srun --export=ALL`` of that task in the background; and a trap that forwards the
pre-walltime SIGUSR1 (``--signal=B:USR1@N`` reaches only the batch shell) to the ``srun`` step, which hands it to
every task.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from nemo_steerlm.launchers.layout import devices_per_node
from nemo_steerlm.launchers.spec import REQUEUE_SIGNAL, ChainSpec, ClusterSpec, StepSpec


@dataclass(frozen=True)
class JobScript:
    """One sbatch script of a chain.

    Attributes:
        step: the step's name.
        job: the job's name within the chain (``<step>`` or ``<step>-merge``).
        script_path: where the script is written (``<run_dir>/launch/NN-<job>.sbatch``).
        text: the script.
        array: number of array tasks (None = a plain job).
    """

    step: str
    job: str
    script_path: str
    text: str
    array: int | None = None


def launch_dir(run_dir: str) -> Path:
    """The folder of a run's scripts, manifest, logs and per-job records."""
    return Path(run_dir) / "launch"


def stage_command(step: StepSpec, chain: ChainSpec, cluster: ClusterSpec, merge: bool = False) -> list[str]:
    """The stage command line of ``step`` (shell words; ``$SLURM_ARRAY_TASK_ID`` is left for the task's shell).

    Args:
        step: the step.
        chain: gives the run folder (inputs and outputs live under it).
        cluster: gives the CLI name and the devices per node.
        merge: the merge job of a sharded step (``merge_shards=true`` instead of a shard index).

    Returns:
        The command as words; a word starting with ``shard_index=$`` must not be quoted.
    """
    run = Path(chain.run_dir)
    words = [*shlex.split(cluster.command), step.stage, f"output_dir={run / step.name}"]
    for key, source in step.inputs.items():
        words.append(f"{key}={run / source}")
    words += [f"{key}={value}" for key, value in step.overrides.items()]
    if step.distributed:
        words += [f"trainer.devices={devices_per_node(step, cluster)}", f"trainer.num_nodes={step.nodes}"]
    if step.shards is not None:
        words.append("merge_shards=true" if merge else "shard_index=$SLURM_ARRAY_TASK_ID")
        words.append(f"num_shards={step.shards}")
    return words


def _sbatch_header(step: StepSpec, chain: ChainSpec, cluster: ClusterSpec, job: str, array: int | None) -> list[str]:
    logs = launch_dir(chain.run_dir) / "logs"
    per_node = devices_per_node(step, cluster)
    nodes = step.nodes if step.distributed else 1
    flags = [
        f"--job-name={chain.name}-{job}",
        f"--output={logs}/%x-{'%A_%a' if array else '%j'}.out",
        f"--nodes={nodes}",
        f"--ntasks-per-node={per_node}",
        f"--cpus-per-task={cluster.cpus_per_task}",
        f"--time={step.time or cluster.time}",
        f"--export={cluster.export}",
        "--open-mode=append",
        "--requeue" if cluster.requeue else "--no-requeue",
    ]
    if step.preemptible:
        flags.append(f"--signal=B:{REQUEUE_SIGNAL}@{cluster.signal_seconds}")
    if cluster.gpus and step.distributed:
        flags.append(f"--gpus-per-node={per_node}")
    elif cluster.gpus and step.gpus_per_node:
        flags.append(f"--gpus-per-node={step.gpus_per_node}")
    for flag, value in (("partition", cluster.partition), ("account", cluster.account), ("qos", cluster.qos)):
        if value:
            flags.append(f"--{flag}={value}")
    if cluster.mem is not None:
        flags.append(f"--mem={cluster.mem}")
    if cluster.exclusive:
        flags.append("--exclusive")
    if array:
        flags.append(f"--array=0-{array - 1}")
    flags += list(cluster.sbatch_extra)
    return [f"#SBATCH {flag}" for flag in flags]


def _task_script(step: StepSpec, chain: ChainSpec, cluster: ClusterSpec, merge: bool) -> list[str]:
    workdir = cluster.container.workdir or cluster.workdir or "."
    command = " ".join(
        w if w.startswith("shard_index=$") else shlex.quote(w) for w in stage_command(step, chain, cluster, merge)
    )
    return [
        "#!/bin/bash",
        "# one task of the srun step: torch.distributed variables from SLURM's, set-up, then the stage",
        "export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID NODE_RANK=$SLURM_NODEID",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
        f"cd {shlex.quote(workdir)}",
        *cluster.setup,
        f"exec {command}",
    ]


def _srun_line(step: StepSpec, cluster: ClusterSpec) -> str:
    per_node = devices_per_node(step, cluster)
    nodes = step.nodes if step.distributed else 1
    flags = ["--export=ALL", f"--nodes={nodes}", f"--ntasks={nodes * per_node}", f"--ntasks-per-node={per_node}"]
    box = cluster.container
    if box.image:
        flags.append(f"--container-image={shlex.quote(box.image)}")
        if box.mounts:
            flags.append(f"--container-mounts={shlex.quote(','.join(box.mounts))}")
        flags.append(f"--container-workdir={shlex.quote(box.workdir or cluster.workdir or '.')}")
    flags += list(cluster.srun_extra)
    return "srun " + " ".join(flags) + ' bash "$JOB_DIR/task.sh" &'


def _signal_trap() -> list[str]:
    return [
        f"# SLURM signals only this shell (--signal=B:{REQUEUE_SIGNAL}@N); hand it to the srun step, which passes",
        "# it to every task (Lightning saves hpc_ckpt_N.ckpt and runs `scontrol requeue`)",
        f'trap \'echo "[launch] SIG{REQUEUE_SIGNAL} at $(date -Is): forwarding to the srun step";'
        f" kill -s {REQUEUE_SIGNAL} $SRUN_PID' {REQUEUE_SIGNAL}",
    ]


def render_job(step: StepSpec, chain: ChainSpec, cluster: ClusterSpec, index: int, merge: bool = False) -> JobScript:
    """Renders the sbatch script of one job of ``step``.

    Args:
        step: the step.
        chain: the chain (name and run folder).
        cluster: the target cluster.
        index: the job's position in the chain (names the script ``NN-<job>.sbatch``).
        merge: render the merge job of a sharded step.

    Returns:
        The script and where it goes.
    """
    job = f"{step.name}-merge" if merge else step.name
    if merge:  # the merge of a sharded step is one plain task (it joins files: no GPU)
        step = replace(step, distributed=False, nodes=1, preemptible=False, gpus_per_node=None)
    array = step.shards if step.shards is not None and not merge else None
    ldir = launch_dir(chain.run_dir)
    script_path = ldir / f"{index:02d}-{job}.sbatch"
    workdir = cluster.workdir or "."
    lines = ["#!/bin/bash", f"# nemo-steerlm launch: chain {chain.name!r}, step {step.name!r} (stage {step.stage})"]
    lines += _sbatch_header(step, chain, cluster, job, array)
    lines += [
        "set -uo pipefail",
        f"LAUNCH_DIR={shlex.quote(str(ldir))}",
        'JOB_TAG="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"',
        'JOB_TAG="${JOB_TAG:-$SLURM_JOB_ID}"',
        'JOB_DIR="$LAUNCH_DIR/jobs/$JOB_TAG"',
        'echo "[launch] job $JOB_TAG ($SLURM_JOB_NAME) on $SLURM_JOB_NODELIST, restart ${SLURM_RESTART_COUNT:-0},'
        ' $(date -Is)"',
        f"cd {shlex.quote(workdir)}",
        *[f"export {k}={shlex.quote(str(v))}" for k, v in cluster.env.items()],
        "# provenance next to the job: this script, the step's resolved config, the code version",
        'mkdir -p "$JOB_DIR"',
        f'cp {shlex.quote(str(script_path))} "$LAUNCH_DIR/{step.name}.config.yaml" "$LAUNCH_DIR/version.json"'
        ' "$JOB_DIR/"',
        "cat > \"$JOB_DIR/task.sh\" <<'NEMO_STEERLM_TASK'",
        *_task_script(step, chain, cluster, merge),
        "NEMO_STEERLM_TASK",
        "# rendezvous: the first node's address (all fake nodes of a one-host cluster share a hostname, not an",
        "# address lookup), and a port derived from the job id so concurrent jobs on one node do not collide",
        'MASTER_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'MASTER_ADDR=$(scontrol show node "$MASTER_NODE" | sed -n "s/.*NodeAddr=\\([^ ]*\\).*/\\1/p" | head -n 1)',
        'export MASTER_ADDR="${MASTER_ADDR:-$MASTER_NODE}" MASTER_PORT=$((20000 + SLURM_JOB_ID % 40000))',
        'echo "[launch] MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT tasks=$SLURM_NTASKS"',
        _srun_line(step, cluster),
        "SRUN_PID=$!",
        *(_signal_trap() if step.preemptible else []),
        "while true; do",
        '    wait "$SRUN_PID"',
        "    rc=$?",
        '    kill -0 "$SRUN_PID" 2> /dev/null || break  # wait returned for a trapped signal: keep waiting',
        "done",
        'echo "[launch] step exited with status $rc at $(date -Is)"',
        "exit $rc",
    ]
    return JobScript(step.name, job, str(script_path), "\n".join(lines) + "\n", array)


def render_chain(chain: ChainSpec, cluster: ClusterSpec) -> list[JobScript]:
    """Renders every job of ``chain`` in submission order (a sharded step: its array job, then its merge job)."""
    jobs: list[JobScript] = []
    for step in chain.steps:
        jobs.append(render_job(step, chain, cluster, len(jobs) + 1))
        if step.shards is not None:
            jobs.append(render_job(step, chain, cluster, len(jobs) + 1, merge=True))
    return jobs
