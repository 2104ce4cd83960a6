"""The launcher against a real local SLURM cluster: chains, failure propagation, preemption, 2-node gloo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launchers import ChainSpec, ClusterSpec, StepSpec, render_chain, submit
from launchers.slurm import client_runner, write_scripts

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("nemo-steerlm"))
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
SMALL_APM = [
    "+launch.steps.train_apm.overrides.model.global_batch_size=4",
    "+launch.steps.train_apm.overrides.model.micro_batch_size=2",
]


def launch(env: dict[str, str], *overrides: str) -> dict:
    out = overrides[0].split("=", 1)[1]
    done = subprocess.run([CLI, "launch", *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads((Path(out) / "launch" / "chain.json").read_text())


def sacct_states(env: dict[str, str], job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("|")[0]: line.split("|")[1].split(" ")[0] for line in out.splitlines() if line}


def wait_done(env: dict[str, str], job_ids: list[str], timeout: float = 150) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = sacct_states(env, job_ids)
        if len(states) == len(job_ids) and all(s in TERMINAL for s in states.values()):
            return states
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} not finished after {timeout}s: {sacct_states(env, job_ids)}")


def test_two_stage_chain_matches_local_run(slurm_env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "chain"
    steps = ["+launch.steps.train_apm.overrides.trainer.max_steps=4"]
    steps += ["+launch.steps.train_apm.overrides.trainer.val_check_interval=4", *SMALL_APM]
    manifest = launch(slurm_env, f"output_dir={run}", "only=[prepare,train_apm]", *steps)
    local_env = {**slurm_env, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "SLURM_PROCID", "SLURM_JOB_ID"):
        local_env.pop(var, None)
    local = tmp_path / "local"
    subprocess.run([CLI, "prepare", f"output_dir={local}/prepare"], env=local_env, check=True, capture_output=True)
    apm = [f"output_dir={local}/train_apm", f"data={local}/prepare", "trainer.max_steps=4"]
    apm += ["trainer.val_check_interval=4", "model.global_batch_size=4", "model.micro_batch_size=2"]
    subprocess.run([CLI, "train-apm", *apm], env=local_env, check=True, capture_output=True)
    ids = [j["job_id"] for j in manifest["jobs"]]
    assert manifest["jobs"][1]["depends_on"] == ids[0]
    assert wait_done(slurm_env, ids) == {i: "COMPLETED" for i in ids}

    assert _sha_entries(json.loads((run / "prepare/manifest.json").read_text())) == _sha_entries(
        json.loads((local / "prepare/manifest.json").read_text())
    )
    assert (run / "train_apm/apm.nemo").is_file()
    cluster_sum = json.loads((run / "train_apm/train-apm.summary.json").read_text())
    local_sum = json.loads((local / "train_apm/train-apm.summary.json").read_text())
    assert cluster_sum["steps"] == local_sum["steps"] == 4
    assert cluster_sum["last_logged"]["train_loss"] == local_sum["last_logged"]["train_loss"]
    for job in ids:  # provenance next to each job
        assert {"version.json", "task.sh"} <= {p.name for p in (run / "launch/jobs" / job).iterdir()}


def _sha_entries(obj: object, path: str = "") -> dict[str, str]:
    """Every ``sha256`` value of a manifest, keyed by where it is."""
    found: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "sha256" or k.endswith("sha256"):
                found[f"{path}/{k}"] = v
            else:
                found.update(_sha_entries(v, f"{path}/{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found.update(_sha_entries(v, f"{path}/{i}"))
    return found


def test_failing_stage_cancels_dependents(slurm_env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "failing"
    manifest = launch(
        slurm_env,
        f"output_dir={run}",
        "only=[prepare,train_apm]",
        "+launch.steps.prepare.overrides.dataset.path=/nonexistent",
    )
    ids = [j["job_id"] for j in manifest["jobs"]]
    states = wait_done(slurm_env, ids, timeout=60)
    assert states[ids[0]] == "FAILED"
    assert states[ids[1]] == "CANCELLED"
    log = next((run / "launch/logs").glob("*prepare*.out")).read_text()
    assert "nonexistent" in log and "step exited with status 2" in log


def test_presignal_checkpoint_requeue_resume(slurm_env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "preempt"
    data = tmp_path / "data"
    subprocess.run([CLI, "prepare", f"output_dir={data}"], env=slurm_env, check=True, capture_output=True)
    over = [f"+launch.steps.train_apm.overrides.data={data}", "~launch.steps.train_apm.inputs", *SMALL_APM]
    over += ["+launch.steps.train_apm.overrides.trainer.max_steps=60"]
    over += ["+launch.steps.train_apm.overrides.trainer.val_check_interval=60"]
    manifest = launch(slurm_env, f"output_dir={run}", "only=[train_apm]", *over)
    job = manifest["jobs"][0]["job_id"]
    log = run / "launch/logs" / f"steerlm-tiny-train_apm-{job}.out"
    deadline = time.time() + 90
    while not (
        log.exists()
        and max(map(int, re.findall(r"\| *(\d+)/\d+ \[", log.read_text("utf-8", "replace"))), default=0) >= 8
    ):
        assert time.time() < deadline, "training did not reach step 8"
        time.sleep(0.3)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm_env, check=True)
    deadline = time.time() + 60
    while "Restarts=1" not in (show := _show(slurm_env, job)) or "JobState=PENDING" not in show:
        assert time.time() < deadline, f"job not requeued: {show}"
        time.sleep(0.5)
    # SLURM holds a requeued job for ~2 minutes (BeginTime); release it now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_env, check=True)
    assert wait_done(slurm_env, [job], timeout=120) == {job: "COMPLETED"}
    text = log.read_text("utf-8", "replace")
    first, second = text.split("restart 1", 1)
    assert "Handling auto-requeue signal" in first and "forwarding to the srun step" in first
    assert "Restored all states from the checkpoint" in second or "Restoring states from the checkpoint" in second
    assert json.loads((run / "train_apm/train-apm.summary.json").read_text())["steps"] == 60


def _show(env: dict[str, str], job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout


def test_two_node_gloo_job(slurm_env: dict[str, str], tmp_path: Path) -> None:
    cluster = ClusterSpec(
        name="local",
        devices_per_node=1,
        gpus=False,
        cpus_per_task=1,
        time="00:05:00",
        workdir=str(ROOT),
        command=f"{sys.executable} {ROOT / 'tests/slurm/allreduce_worker.py'}",
        env={"SLURM_CONF": slurm_env["SLURM_CONF"]},
    )
    chain = ChainSpec(
        "gloo", (StepSpec(name="allreduce", stage="allreduce", distributed=True, nodes=2),), str(tmp_path)
    )
    jobs = render_chain(chain, cluster)
    write_scripts(jobs, chain, {"allreduce": "step: allreduce\n"}, {"git_commit": None})
    job = submit(jobs, chain, cluster, client_runner(cluster))[0].job_id
    assert wait_done(slurm_env, [job], timeout=90) == {job: "COMPLETED"}
    ranks = [json.loads((tmp_path / "allreduce" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert {r["node"] for r in ranks} == {"node1", "node2"}
    assert [r["sum"] for r in ranks] == [1.0, 1.0] and all(r["world"] == 2 for r in ranks)
    assert all(r["local_rank"] == 0 for r in ranks)
    assert os.path.exists(tmp_path / "launch/jobs" / job / "task.sh")
