"""`launch` for a real run: top-level overrides reach the stages, a real preset needs data and weights, model jobs
ask for GPUs, and the job environment is checked at submit time (dry runs and a refused submission; no SLURM)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_steerlm.errors import UserError
from nemo_steerlm.launchers import ClusterSpec

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("nemo-steerlm"))


def launch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "launch", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def scripts(out: str) -> dict[str, str]:
    """Dry-run output split into {job name: script text}."""
    parts = re.split(r"^# ===== .*/\d\d-(\S+)\.sbatch =====$", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def exec_line(text: str) -> str:
    return next(x for x in text.splitlines() if x.startswith("exec "))


def test_real_preset_refuses_sample_data_and_random_weights(tmp_path):
    done = launch("preset=llama2_7b", "cluster=generic_gpu", "dry_run=true", f"output_dir={tmp_path}/r")
    assert done.returncode == 2
    assert "dataset.path" in done.stderr and "preset.init_from" in done.stderr and "allow_random_init" in done.stderr
    done = launch("preset=llama2_7b", "dry_run=true", f"output_dir={tmp_path}/r", "allow_random_init=true")
    assert done.returncode == 2 and "dataset.path" in done.stderr and "preset.init_from" not in done.stderr
    done = launch("preset=llama2_7b", "dry_run=true", f"output_dir={tmp_path}/r", "dataset.path=/d/hs.jsonl")
    assert done.returncode == 2 and "preset.init_from" in done.stderr and "dataset.path" not in done.stderr


def test_top_level_overrides_reach_their_stages_and_model_jobs_ask_for_gpus(tmp_path):
    done = launch("preset=llama2_7b", "cluster=generic_gpu", "dry_run=true", f"output_dir={tmp_path}/r",
                  "dataset=helpsteer_oasst", "dataset.path=/d/helpsteer", "dataset.extra_sources.0.path=/d/oasst.gz",
                  "preset.init_from=/m/llama2.nemo", "attributes.drop=[humor]")  # fmt: skip
    assert done.returncode == 0, done.stderr
    jobs = scripts(done.stdout)
    assert list(jobs) == ["prepare", "train_apm", "annotate", "annotate-merge", "train_sft", "generate", "evaluate"]
    prepare = exec_line(jobs["prepare"])
    assert "dataset=helpsteer_oasst" in prepare and "dataset.path=/d/helpsteer" in prepare
    assert "dataset.extra_sources.0.path=/d/oasst.gz" in prepare and "'attributes.drop=[humor]'" in prepare
    for name in ("train_apm", "train_sft", "evaluate"):
        assert "preset=llama2_7b" in exec_line(jobs[name]) and "preset.init_from=/m/llama2.nemo" in exec_line(
            jobs[name]
        )
    assert "preset.init_from" not in exec_line(jobs["annotate"])  # annotate reads the APM it is given, no preset
    gpus = {name: re.search(r"#SBATCH --gpus-per-node=(\d+)", text) for name, text in jobs.items()}
    assert {n for n, m in gpus.items() if m} == {"train_apm", "annotate", "train_sft", "generate", "evaluate"}
    assert all(m.group(1) == "8" for m in gpus.values() if m)


def test_submit_checks_the_job_environment(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = launch(f"output_dir={tmp_path}/r", f"cluster.workdir={elsewhere}", cwd=elsewhere)
    assert done.returncode == 2
    assert "cluster.setup" in done.stderr and str(elsewhere / ".venv/bin/activate") in done.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was written or submitted


def test_check_environment_units(tmp_path):
    from nemo_steerlm.recipes.launch import check_environment

    venv = tmp_path / "env" / "bin"
    cluster = ClusterSpec(name="c", devices_per_node=1, gpus=False, cpus_per_task=1, time="1:00:00",
                          workdir=str(tmp_path), setup=("source env/bin/activate",))  # fmt: skip
    with pytest.raises(UserError, match="cluster.setup"):
        check_environment(cluster)
    venv.mkdir(parents=True)
    (venv / "activate").write_text("")
    with pytest.raises(UserError, match="cluster.command='nemo-steerlm': nemo-steerlm not found in"):
        check_environment(cluster)
    (venv / "nemo-steerlm").write_text("")
    os.chmod(venv / "nemo-steerlm", 0o755)
    check_environment(cluster)


REAL = ("preset=llama2_13b", "cluster=generic_gpu", "dry_run=true", "dataset.path=/d/hs", "preset.init_from=/m/x")


def test_layout_of_each_distributed_step_is_checked_with_the_stages_own_check(tmp_path):
    """The 13B APM step (32 nodes × 8 GPUs, TP 4, global batch 512): what the training stage would refuse, `launch`
    refuses before anything is written, naming the keys; the shape is checked too (40 heads, 13B)."""
    base = (*REAL, f"output_dir={tmp_path}/r")
    assert launch(*base).returncode == 0
    done = launch(*base, "launch.steps.train_apm.overrides.model.tensor_model_parallel_size=3")
    assert done.returncode == 2 and not (tmp_path / "r").exists()
    assert "step 'train_apm' (launch.steps.train_apm)" in done.stderr
    assert "world size 256 (`trainer.devices` × `trainer.num_nodes`) is not divisible by" in done.stderr
    assert "`model.num_attention_heads` (40) is not divisible by `model.tensor_model_parallel_size` (3)" in done.stderr
    assert "launch.steps.train_apm.nodes=32 × launch.steps.train_apm.devices_per_node=8" in done.stderr
    done = launch(*base, "launch.steps.train_apm.nodes=3")  # DP = 3·8/4 = 6 does not divide 512
    assert done.returncode == 2
    assert "`model.global_batch_size` (512) is not divisible by `model.micro_batch_size` (1)" in done.stderr
    assert "data-parallel size (6 = world size 24 / (TP 4 × PP 1))" in done.stderr


def test_a_step_override_its_stages_schema_refuses_stops_launch_before_anything_is_written(tmp_path):
    """A typo or a value of the wrong type in a step's overrides would fail the job on the cluster: launch says so."""
    base = (*REAL, f"output_dir={tmp_path}/r")
    done = launch(*base, "launch.steps.train_apm.overrides.trainer.max_steps=abc")
    assert done.returncode == 2 and not (tmp_path / "r").exists(), done.stderr
    assert "step 'train_apm' (launch.steps.train_apm.overrides): trainer.max_steps=abc: expected an integer" in (
        done.stderr
    )
    done = launch(*base, "+launch.steps.train_apm.overrides.model.optim.learning_rate=1e-5")
    assert done.returncode == 2 and "model.optim.learning_rate" in done.stderr, done.stderr


def test_layout_of_a_distributed_inference_step_is_checked(tmp_path):
    """An inference stage's layout (``layout.*``; the shape lives in the .nemo) gets the TP·PP check."""
    base = ("preset=llama2_7b", "cluster=generic_gpu", "dry_run=true", "dataset.path=/d/hs", "preset.init_from=/m/x")
    base = (*base, f"output_dir={tmp_path}/r", "+launch.steps.generate.distributed=true")
    assert launch(*base).returncode == 0, launch(*base).stderr
    done = launch(*base, "+launch.steps.generate.overrides.layout.tensor_model_parallel_size=3")
    assert done.returncode == 2
    assert "step 'generate' (launch.steps.generate)" in done.stderr
    assert "is not divisible by `model.tensor_model_parallel_size` (3) × `model.pipeline_model_parallel_size` (1)" in (
        done.stderr
    )
