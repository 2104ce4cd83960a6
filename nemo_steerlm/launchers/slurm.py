"""Submits a rendered chain to SLURM as an ``afterok`` dependency chain, and reports or cancels it later.

``submit`` writes the scripts, the chain's resolved config and code version into ``<run_dir>/launch/`` and records
every job id in ``<run_dir>/launch/chain.json`` (the chain manifest) as it goes, so ``status`` and ``cancel`` work
from that folder alone, and a failed submission leaves a manifest of what did get queued.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nemo_steerlm.launchers.render import JobScript, launch_dir
from nemo_steerlm.launchers.spec import ChainSpec, ClusterSpec, LaunchError

MANIFEST = "chain.json"

Runner = Callable[[Sequence[str]], str]


def client_runner(cluster: ClusterSpec) -> Runner:
    """A runner of SLURM client commands with the cluster's ``env`` added; it returns stdout, raises on failure."""
    env = {**os.environ, **cluster.env}

    def run(args: Sequence[str]) -> str:
        try:
            done = subprocess.run(list(args), env=env, capture_output=True, text=True, check=False)
        except FileNotFoundError as err:
            raise LaunchError(
                f"{args[0]} not found: run `launch` where the SLURM client commands are installed"
            ) from err
        if done.returncode != 0:
            raise LaunchError(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    return run


def code_version(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The code version to record next to each job: git describe/commit/dirty state and the package version.

    Args:
        root: a folder inside the git checkout (the job's working folder).
    """
    from importlib import metadata

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    try:
        package = metadata.version("nemo-steerlm")
    except metadata.PackageNotFoundError:
        package = None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_describe": git("describe", "--always", "--dirty", "--tags"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "package_version": package,
    }


@dataclass
class SubmittedJob:
    """A job of a submitted chain as recorded in the manifest."""

    step: str
    job: str
    job_id: str
    script: str
    array: int | None
    depends_on: str | None


def write_scripts(jobs: Sequence[JobScript], chain: ChainSpec, step_configs: dict[str, str], version: dict) -> Path:
    """Writes scripts, per-step resolved configs and ``version.json`` into ``<run_dir>/launch``; returns that folder."""
    ldir = launch_dir(chain.run_dir)
    (ldir / "logs").mkdir(parents=True, exist_ok=True)
    (ldir / "jobs").mkdir(exist_ok=True)
    for job in jobs:
        Path(job.script_path).write_text(job.text, encoding="utf-8")
        Path(job.script_path).chmod(0o755)
    for step, text in step_configs.items():
        (ldir / f"{step}.config.yaml").write_text(text, encoding="utf-8")
    (ldir / "version.json").write_text(json.dumps(version, indent=2) + "\n", encoding="utf-8")
    return ldir


def _write_manifest(ldir: Path, chain: ChainSpec, cluster: ClusterSpec, jobs: list[SubmittedJob]) -> None:
    manifest = {
        "chain": chain.name,
        "run_dir": chain.run_dir,
        "cluster": cluster.name,
        "env": cluster.env,
        "submitted_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "jobs": [asdict(j) for j in jobs],
    }
    tmp = ldir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, ldir / MANIFEST)


def submit(jobs: Sequence[JobScript], chain: ChainSpec, cluster: ClusterSpec, run: Runner) -> list[SubmittedJob]:
    """Submits ``jobs`` in order, each ``--dependency=afterok`` on the one before, recording ids as it goes.

    A job that depends on an array job waits for every task of the array. ``--kill-on-invalid-dep=yes`` cancels
    the rest of the chain when a job fails, whatever the cluster's ``DependencyParameters``.

    Args:
        jobs: the rendered jobs, already written to their script paths.
        chain: the chain (for the manifest).
        cluster: the cluster (for the manifest).
        run: runs a client command and returns its stdout.

    Returns:
        The submitted jobs with their ids.
    """
    ldir = launch_dir(chain.run_dir)
    submitted: list[SubmittedJob] = []
    previous: str | None = None
    for job in jobs:
        args = ["sbatch", "--parsable"]
        if previous is not None:
            args += [f"--dependency=afterok:{previous}", "--kill-on-invalid-dep=yes"]
        job_id = run([*args, job.script_path]).strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise LaunchError(f"sbatch returned {job_id!r} for {job.script_path}, not a job id")
        submitted.append(SubmittedJob(job.step, job.job, job_id, job.script_path, job.array, previous))
        _write_manifest(ldir, chain, cluster, submitted)
        previous = job_id
    return submitted


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a chain manifest: ``chain.json`` itself, its ``launch`` folder, or the run folder above it."""
    p = Path(path)
    for candidate in (p, p / MANIFEST, p / "launch" / MANIFEST):
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    raise LaunchError(f"chain={p}: no {MANIFEST} there (pass the run folder of a submitted chain)")


def status(manifest: dict[str, Any], run: Runner) -> list[dict[str, str]]:
    """The state of every job of a chain: accounting (``sacct``) first, live queue (``squeue``) for the reason.

    Returns:
        One row per job (array tasks each get a row from ``sacct``): step, job id, state, exit code, elapsed, reason.
    """
    ids = [j["job_id"] for j in manifest["jobs"]]
    if not ids:
        return []
    steps = {j["job_id"]: j["job"] for j in manifest["jobs"]}
    fields = "JobID,State,ExitCode,Elapsed"
    acct = run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", fields])
    queue = run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"])
    live = {}
    for line in queue.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        live[job_id] = (state, reason)
    rows = []
    seen = set()
    for line in acct.splitlines():
        job_id, state, exit_code, elapsed = (line.split("|") + ["", "", ""])[:4]
        base = job_id.split("_", 1)[0].split(".", 1)[0]
        live_state, reason = live.get(job_id, live.get(base, ("", "")))
        seen.add(base)
        rows.append(
            {
                "job": steps.get(base, "?"),
                "job_id": job_id,
                "state": live_state or state.split(" ", 1)[0],
                "exit_code": exit_code,
                "elapsed": elapsed,
                "reason": reason if reason not in ("None", "") else "",
            }
        )
    for job_id in ids:  # not in accounting yet: the queue alone
        if job_id not in seen:
            state, reason = live.get(job_id, ("UNKNOWN", ""))
            rows.append({"job": steps[job_id], "job_id": job_id, "state": state, "exit_code": "", "elapsed": ""})
            rows[-1]["reason"] = reason if reason != "None" else ""
    return rows


def format_status(rows: list[dict[str, str]]) -> str:
    """An aligned text table of :func:`status` rows."""
    header = {
        "job": "JOB",
        "job_id": "JOBID",
        "state": "STATE",
        "exit_code": "EXIT",
        "elapsed": "ELAPSED",
        "reason": "REASON",
    }
    table = [header, *rows]
    widths = {k: max(len(str(r[k])) for r in table) for k in header}
    return "\n".join("  ".join(str(r[k]).ljust(widths[k]) for k in header).rstrip() for r in table)


def cancel(manifest: dict[str, Any], run: Runner) -> list[str]:
    """Cancels every job of a chain (``scancel``); returns the ids it asked to cancel."""
    ids = [j["job_id"] for j in manifest["jobs"]]
    if ids:
        run(["scancel", *ids])
    return ids
