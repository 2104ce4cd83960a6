"""Launcher units without SLURM: rendering, layout errors, override text, manifests, no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_steerlm.launchers import ChainSpec, ClusterSpec, LaunchError, StepSpec, check_chain, render_chain
from nemo_steerlm.launchers.slurm import format_status, load_manifest
from nemo_steerlm.launchers.spec import flatten_overrides, hydra_value

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("nemo-steerlm"))
REAL_INPUTS = ["dataset.path=/data/helpsteer", "preset.init_from=/models/base.nemo"]
GPU = ClusterSpec(name="gpu", devices_per_node=8, gpus=True, cpus_per_task=12, time="04:00:00", workdir="/w")


def test_70b_dry_run_prints_paper_layout(tmp_path: Path) -> None:
    done = subprocess.run(
        [CLI, "launch", "preset=llama2_70b", "dry_run=true", f"output_dir={tmp_path}/run", *REAL_INPUTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "#SBATCH --nodes=32" in out and "#SBATCH --ntasks-per-node=8" in out
    assert "model.tensor_model_parallel_size=8" in out and "model.pipeline_model_parallel_size=2" in out
    assert "model.global_batch_size=128" in out and "trainer.max_steps=800" in out and "lr=6e-06" in out
    assert "srun --export=ALL --nodes=32 --ntasks=256 --ntasks-per-node=8" in out
    assert not (tmp_path / "run").exists(), "a dry run writes nothing"


def test_bad_layout_exits_2_naming_keys(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            CLI,
            "launch",
            "preset=llama2_70b",
            "dry_run=true",
            f"output_dir={tmp_path}",
            *REAL_INPUTS,
            "launch.steps.train_sft.overrides.model.pipeline_model_parallel_size=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "`model.pipeline_model_parallel_size` (3)" in done.stderr and "world size 256" in done.stderr
    assert "`model.num_layers` (80) is not divisible by `model.pipeline_model_parallel_size` (3)" in done.stderr


def _step(**kw: object) -> StepSpec:
    return StepSpec(name="sft", stage="train-sft", distributed=True, nodes=32, **kw)  # type: ignore[arg-type]


def test_chain_checks() -> None:
    later = StepSpec(name="b", stage="train-apm", inputs={"data": "c/x"})
    with pytest.raises(LaunchError, match="'c' is not an earlier step"):
        check_chain(ChainSpec("x", (StepSpec(name="a", stage="prepare"), later), "/r"), GPU, for_submit=False)
    small = ClusterSpec(name="local", devices_per_node=2, gpus=False, cpus_per_task=1, time="1:00", max_nodes=2)
    chain = ChainSpec("x", (_step(),), "/r")
    check_chain(chain, small, for_submit=False)  # dry runs may show a layout bigger than this cluster
    with pytest.raises(LaunchError, match="cluster.max_nodes=2"):
        check_chain(chain, small, for_submit=True)


def test_render_array_merge_and_distributed_env() -> None:
    steps = (
        StepSpec(name="annotate", stage="annotate", inputs={}, shards=4),
        _step(preemptible=True, overrides={"model.optim.lr": "6e-06"}),
    )
    jobs = render_chain(ChainSpec("c", steps, "/runs/r"), GPU)
    assert [j.job for j in jobs] == ["annotate", "annotate-merge", "sft"]
    array, merge, sft = (j.text for j in jobs)
    assert "#SBATCH --array=0-3" in array and "shard_index=$SLURM_ARRAY_TASK_ID num_shards=4" in array
    assert "%x-%A_%a.out" in array and "--signal" not in array
    assert "--array" not in merge and "merge_shards=true num_shards=4" in merge
    assert "#SBATCH --signal=B:USR1@120" in sft and "#SBATCH --requeue" in sft and "--gpus-per-node=8" in sft
    assert "export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID" in sft
    assert "trap '" in sft and "kill -s USR1 $SRUN_PID' USR1" in sft
    assert "trainer.devices=8 trainer.num_nodes=32" in sft and "MASTER_PORT=$((20000 + SLURM_JOB_ID % 40000))" in sft


def test_container_flags() -> None:
    from nemo_steerlm.launchers import ContainerSpec

    box = ContainerSpec(image="nvcr.io#nvidia/nemo:24.07", mounts=("/lustre:/lustre",), workdir="/lustre/code")
    cluster = ClusterSpec(name="g", devices_per_node=8, gpus=True, cpus_per_task=1, time="1:00", container=box)
    text = render_chain(ChainSpec("c", (_step(),), "/r"), cluster)[0].text
    assert "--container-image='nvcr.io#nvidia/nemo:24.07' --container-mounts=/lustre:/lustre" in text
    assert "--container-workdir=/lustre/code" in text and "cd /lustre/code" in text


def test_override_text() -> None:
    assert flatten_overrides({"model": {"optim": {"lr": 6e-6}, "tp": 8}, "data": None, "x": "a b"}) == {
        "model.optim.lr": "6e-06",
        "model.tp": "8",
        "data": "null",
        "x": "'a b'",
    }
    assert hydra_value(True) == "true" and hydra_value([1, 2]) == "[1,2]"


def test_manifest_round_trip_and_table(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="no chain.json"):
        load_manifest(tmp_path)
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch/chain.json").write_text(json.dumps({"chain": "c", "jobs": [{"job_id": "7"}]}))
    assert load_manifest(tmp_path)["jobs"][0]["job_id"] == "7"
    rows = [{"job": "prepare", "job_id": "7", "state": "COMPLETED", "exit_code": "0:0", "elapsed": "1", "reason": ""}]
    assert format_status(rows).splitlines()[1].split() == ["prepare", "7", "COMPLETED", "0:0", "1"]


def test_launchers_import_no_torch() -> None:
    code = "import sys, nemo_steerlm.launchers.slurm; "
    code += "print({'torch', 'megatron', 'nemo', 'omegaconf'} & set(sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "set()"
    )
