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
import yaml

from nemo_steerlm.launchers import ChainSpec, ClusterSpec, StepSpec, render_chain, submit
from nemo_steerlm.launchers.slurm import client_runner, write_scripts

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("nemo-steerlm"))
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
APM_BATCH = ["model.global_batch_size=4", "model.micro_batch_size=2"]
SMALL_APM = [f"+launch.steps.train_apm.overrides.{o}" for o in APM_BATCH]
# the whole tiny chain, small: 4 training steps, a short evaluation (MT-Bench answers included)
CHAIN = ["prepare", "train_apm", "annotate", "train_sft", "evaluate"]
TRAIN = ["trainer.max_steps=4", "trainer.val_check_interval=2"]
EVAL = ["steerability.num_prompts=2", "generation.max_new_tokens=8", "truthfulqa.max_questions=10"]
STAGE_OVERRIDES = {"train_apm": [*TRAIN, *APM_BATCH], "train_sft": TRAIN, "evaluate": [*EVAL, "mt_bench.enabled=true"]}
# `run` names its stage folders after the stage commands, the tiny launch chain after its steps
RUN_DIRS = {
    "prepare": "prepare",
    "train_apm": "train-apm",
    "annotate": "annotate",
    "train_sft": "train-sft",
    "evaluate": "evaluate",
}


def launch(env: dict[str, str], *overrides: str) -> dict:
    out = overrides[0].split("=", 1)[1]
    done = subprocess.run([CLI, "launch", *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads((Path(out) / "launch" / "chain.json").read_text())


def sacct_states(env: dict[str, str], job_ids: list[str]) -> dict[str, str]:
    """State of every job (``sacct -X``): one row per plain job, one per task of an array job (``ID_N``)."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("|")[0]: line.split("|")[1].split(" ")[0] for line in out.splitlines() if line}


def wait_done(env: dict[str, str], job_ids: list[str], timeout: float = 150) -> dict[str, str]:
    """Waits until every job (every task of an array job) is in a terminal state; returns :func:`sacct_states`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = sacct_states(env, job_ids)
        seen = {row.split("_", 1)[0] for row in states}
        if set(job_ids) <= seen and all(s in TERMINAL for s in states.values()):
            return states
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} not finished after {timeout}s: {sacct_states(env, job_ids)}")


def local_env(slurm_env: dict[str, str]) -> dict[str, str]:
    """The environment of a local (non-SLURM) run with the settings the local cluster gives every job."""
    env = {k: v for k, v in slurm_env.items() if not k.startswith("SLURM_") and k != "RANK"}
    return {**env, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _hydra_list(items: list[str]) -> str:
    """A Hydra list of quoted strings: ``["a=1","b=2"]``."""
    return "[" + ",".join(f'"{i}"' for i in items) + "]"


def test_whole_tiny_chain_matches_local_run(slurm_env: dict[str, str], tmp_path: Path) -> None:
    """prepare → train-apm → annotate (array of 2 + merge) → train-sft → evaluate on SLURM equals a local ``run``."""
    run, local = tmp_path / "chain", tmp_path / "local"
    steps = [f"+launch.steps.{step}.overrides.{o}" for step, over in STAGE_OVERRIDES.items() for o in over]
    manifest = launch(slurm_env, f"output_dir={run}", f"only=[{','.join(CHAIN)}]", *steps)
    # the same stages locally with the same overrides, in one `run` process, while the cluster works
    local_cmd = [CLI, "run", f"output_dir={local}", f"stages=[{','.join(CHAIN)}]"]
    local_cmd += [f"overrides.{step}={_hydra_list(over)}" for step, over in STAGE_OVERRIDES.items()]
    with open(tmp_path / "local.log", "w") as log:
        local_run = subprocess.Popen(
            local_cmd, cwd=ROOT, env=local_env(slurm_env), stdout=log, stderr=subprocess.STDOUT
        )
        local_rc = local_run.wait(timeout=900)
    assert local_rc == 0, (tmp_path / "local.log").read_text()[-3000:]

    jobs = manifest["jobs"]
    assert [j["job"] for j in jobs] == ["prepare", "train_apm", "annotate", "annotate-merge", "train_sft", "evaluate"]
    ids = [j["job_id"] for j in jobs]
    assert [j["depends_on"] for j in jobs] == [None, *ids[:-1]]
    assert [j["array"] for j in jobs] == [None, None, 2, None, None, None]
    states = wait_done(slurm_env, ids, timeout=900)
    array = ids[2]
    expected = {i: "COMPLETED" for i in ids if i != array} | {f"{array}_0": "COMPLETED", f"{array}_1": "COMPLETED"}
    assert states == expected, _logs_tail(run)

    # inputs wired as `run` wires them
    for step, keys in (("train_sft", ("data", "val_data")), ("evaluate", ("model", "apm", "data"))):
        chain_cfg = _stage_config(run / step)
        local_cfg = _stage_config(local / RUN_DIRS[step])
        for key in keys:
            chain_rel = Path(chain_cfg[key]).relative_to(run).parts
            local_rel = Path(local_cfg[key]).relative_to(local).parts
            assert (RUN_DIRS[chain_rel[0]], *chain_rel[1:]) == local_rel, (step, key)

    assert _sha_entries(json.loads((run / "prepare/manifest.json").read_text())) == _sha_entries(
        json.loads((local / "prepare/manifest.json").read_text())
    )
    for step, artefact in (("train_apm", "apm.nemo"), ("train_sft", "sft.nemo")):
        assert (run / step / artefact).is_file()
        cluster_sum = json.loads((run / step / f"{RUN_DIRS[step]}.summary.json").read_text())
        local_sum = json.loads((local / RUN_DIRS[step] / f"{RUN_DIRS[step]}.summary.json").read_text())
        assert cluster_sum["steps"] == local_sum["steps"] == 4, step
        assert cluster_sum["last_logged"]["train_loss"] == local_sum["last_logged"]["train_loss"], step
    # two array shards merged: the same bytes as one unsharded local annotate
    assert sorted(p.name for p in (run / "annotate/shards").glob("*.jsonl")) == [
        "shard_00000.jsonl",
        "shard_00001.jsonl",
    ]
    annotated = (run / "annotate/train.annotated.jsonl").read_bytes()
    assert annotated and annotated == (local / "annotate/train.annotated.jsonl").read_bytes()

    ev, local_ev = run / "evaluate", local / "evaluate"
    assert (ev / "report.md").is_file() and (local_ev / "report.md").is_file()
    cluster_apm, local_apm = (json.loads((d / "apm_metrics.json").read_text()) for d in (ev, local_ev))
    for key in ("eval_file", "train_file"):  # absolute paths into each run's own prepare output
        assert Path(cluster_apm.pop(key)).relative_to(run) == Path(local_apm.pop(key)).relative_to(local)
    assert cluster_apm == local_apm
    assert (ev / "steer_responses.jsonl").read_bytes() == (local_ev / "steer_responses.jsonl").read_bytes()
    cluster_mt, local_mt = (_jsonl(d / "mt_bench/nemo-steerlm.jsonl") for d in (ev, local_ev))
    assert len(cluster_mt) == len(local_mt) == 80
    assert [_without(a, "tstamp") for a in cluster_mt] == [_without(a, "tstamp") for a in local_mt]

    for job in ids:  # provenance next to each job (an array task's folder is <array id>_<task>)
        for tag in [f"{job}_0", f"{job}_1"] if job == array else [job]:
            assert {"version.json", "task.sh"} <= {p.name for p in (run / "launch/jobs" / tag).iterdir()}


def _stage_config(stage_dir: Path) -> dict:
    """The resolved config a stage wrote next to its outputs."""
    return yaml.safe_load(next(stage_dir.glob("*.config.yaml")).read_text())


def _jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _without(record: dict, key: str) -> dict:
    """``record`` less ``key``."""
    return {k: v for k, v in record.items() if k != key}


def _logs_tail(run: Path) -> str:
    """The end of every job log of a chain, for an assertion message."""
    return "\n".join(
        f"== {p.name}\n{p.read_text('utf-8', 'replace')[-1500:]}" for p in sorted((run / "launch/logs").glob("*.out"))
    )


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
    states = wait_done(slurm_env, ids, timeout=180)
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
    deadline = time.time() + 300  # a bound on waiting, generous: another test file may share the cores
    while not (
        log.exists()
        and max(map(int, re.findall(r"train: step (\d+)/\d+", log.read_text("utf-8", "replace"))), default=0) >= 8
    ):
        assert time.time() < deadline, "training did not reach step 8"
        time.sleep(0.3)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm_env, check=True)
    deadline = time.time() + 180
    while "Restarts=1" not in (show := _show(slurm_env, job)) or "JobState=PENDING" not in show:
        assert time.time() < deadline, f"job not requeued: {show}"
        time.sleep(0.5)
    # SLURM holds a requeued job for ~2 minutes (BeginTime); release it now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_env, check=True)
    assert wait_done(slurm_env, [job], timeout=300) == {job: "COMPLETED"}
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
    assert wait_done(slurm_env, [job], timeout=300) == {job: "COMPLETED"}
    ranks = [json.loads((tmp_path / "allreduce" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert {r["node"] for r in ranks} == {"node1", "node2"}
    assert [r["sum"] for r in ranks] == [1.0, 1.0] and all(r["world"] == 2 for r in ranks)
    assert all(r["local_rank"] == 0 for r in ranks)
    assert os.path.exists(tmp_path / "launch/jobs" / job / "task.sh")
