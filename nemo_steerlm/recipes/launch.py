"""Stage ``launch``: submit a chain of stages to SLURM, or report on / cancel a submitted chain.

Run ``nemo-steerlm launch [overrides]``; ``action=submit`` (default) renders one sbatch script per step of the
``launch`` config group and submits them as an ``afterok`` chain (``dry_run=true`` only prints them);
``action=status chain=RUN_DIR`` prints ``sacct``/``squeue`` states of the chain's jobs; ``action=cancel chain=RUN_DIR``
cancels them. This module turns Hydra config into the plain specs of :mod:`nemo_steerlm.launchers` (which reads no
config).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from nemo_steerlm import launchers
from nemo_steerlm.errors import UserError
from nemo_steerlm.launchers.layout import devices_per_node
from nemo_steerlm.launchers.render import stage_command
from nemo_steerlm.launchers.slurm import client_runner, code_version, write_scripts
from nemo_steerlm.launchers.spec import flatten_overrides
from nemo_steerlm.megatron.config import ConfigError
from nemo_steerlm.recipes.common import check_stage_layout, config_error, run_stage, stage_app
from nemo_steerlm.stages import BY_NAME, Stage
from nemo_steerlm.stages import STAGES as REGISTRY

ACTIONS = ("submit", "status", "cancel")
# stages that load a model: on a GPU cluster each such job asks for GPUs, distributed or not
MODEL_STAGES = tuple(s.name for s in REGISTRY if s.loads_model)
TRAINING_STAGES = tuple(s.name for s in REGISTRY if s.trains)
_STEP_KEYS = {f.name for f in dataclasses.fields(launchers.StepSpec)} - {"name"}


def config_name(stage_name: str) -> str:
    """The config a step's stage composes (from the stage registry; an unregistered name is looked up as itself)."""
    known = BY_NAME.get(stage_name)
    return known.config if known is not None else stage_name


def cluster_from_cfg(c: DictConfig) -> launchers.ClusterSpec:
    """The ``cluster`` config group as a :class:`launchers.ClusterSpec` (``workdir: null`` = the current folder)."""
    plain: dict[str, Any] = OmegaConf.to_container(c, resolve=True)  # type: ignore[assignment]
    box = plain.pop("container")
    known = {f.name for f in dataclasses.fields(launchers.ClusterSpec)}
    unknown = sorted(set(plain) - known)
    if unknown:
        raise UserError(f"cluster.{unknown[0]}: unknown cluster setting (known: {', '.join(sorted(known))})")
    plain["workdir"] = plain["workdir"] or os.getcwd()
    plain["env"] = {str(k): str(v) for k, v in (plain["env"] or {}).items()}
    for key in ("setup", "sbatch_extra", "srun_extra"):
        plain[key] = tuple(str(v) for v in plain[key] or ())
    if plain["mem"] is not None:
        plain["mem"] = str(plain["mem"])
    container = launchers.ContainerSpec(box["image"], tuple(box["mounts"] or ()), box["workdir"])
    return launchers.ClusterSpec(container=container, **plain)


def check_step_layout(step: launchers.StepSpec, cluster: launchers.ClusterSpec) -> None:
    """Checks a distributed step's layout with the stage's own check, on its config composed as the job will run it.

    Raises:
        UserError: the step, the layout problem (config keys) and the launch keys that set the device count.
    """
    per_node = devices_per_node(step, cluster)
    forced = {"trainer.devices": str(per_node), "trainer.num_nodes": str(step.nodes)}
    overrides = [f"{k}={v}" for k, v in {**step.overrides, **forced}.items()]
    try:
        composed = hydra.compose(config_name=config_name(step.stage), overrides=overrides)
    except MissingConfigException as err:  # a stage config not in this version
        print(f"nemo-steerlm launch: warning: layout of stage {step.stage} not checked against its config ({err})")
        return
    except ConfigCompositionException as err:  # the stage's schema refuses an override: the job would fail at start
        raise UserError(f"step {step.name!r} (launch.steps.{step.name}.overrides): {config_error(err)}") from None
    try:
        check_stage_layout(composed)
    except ConfigError as err:
        own = step.devices_per_node is not None
        devices_key = f"launch.steps.{step.name}.devices_per_node" if own else "cluster.devices_per_node"
        raise UserError(
            f"step {step.name!r} (launch.steps.{step.name}): {err} (the job runs launch.steps.{step.name}.nodes="
            f"{step.nodes} × {devices_key}={per_node} processes)"
        ) from None


def forwarded_overrides(stage: str) -> dict[str, str]:
    """The user's ``preset``/``dataset``/``attributes`` overrides of ``launch`` for a stage whose config has them.

    As ``run`` does: ``launch dataset.path=F preset.init_from=M attributes.drop=[humor]`` reaches ``prepare`` (the
    dataset), the training stages (preset, attributes), ... Outside a Hydra run (a library call) there are none.
    """
    from hydra.core.hydra_config import HydraConfig

    from nemo_steerlm.recipes.run import stage_groups

    if not HydraConfig.initialized():
        return {}
    groups = stage_groups(config_name(stage))
    out = {}
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        if key.lstrip("+~").split(".")[0] in groups:
            out[key] = value
    return out


def step_from_cfg(name: str, s: DictConfig, cluster: launchers.ClusterSpec) -> launchers.StepSpec:
    """One entry of ``launch.steps`` as a :class:`launchers.StepSpec` (layout resolved for distributed steps).

    The user's top-level ``preset``/``dataset``/``attributes`` overrides are added to the step's own (and win); a
    step that runs a model on a GPU cluster asks for the node's GPUs (``gpus_per_node``) when it is not distributed.
    """
    plain: dict[str, Any] = OmegaConf.to_container(s, resolve=True)  # type: ignore[assignment]
    unknown = sorted(set(plain) - _STEP_KEYS)
    if unknown:
        raise UserError(
            f"launch.steps.{name}.{unknown[0]}: unknown step setting (known: {', '.join(sorted(_STEP_KEYS))})"
        )
    if "stage" not in plain:
        raise UserError(f"launch.steps.{name}.stage is missing: the nemo-steerlm stage this step runs")
    plain["overrides"] = {**flatten_overrides(plain.get("overrides") or {}), **forwarded_overrides(plain["stage"])}
    plain["inputs"] = {str(k): str(v) for k, v in (plain.get("inputs") or {}).items()}
    if cluster.gpus and plain["stage"] in MODEL_STAGES and plain.get("gpus_per_node") is None:
        plain["gpus_per_node"] = cluster.devices_per_node
    step = launchers.StepSpec(name=name, **plain)
    if step.distributed:
        check_step_layout(step, cluster)
    return step


def check_real_run(cfg: DictConfig, steps: tuple[launchers.StepSpec, ...]) -> None:
    """Refuses a chain for a real preset that would train on the shipped sample or from random weights.

    Raises:
        UserError: naming ``dataset.path``, ``preset.init_from`` and ``allow_random_init``.
    """
    if cfg.preset.name == "tiny_cpu":
        return
    stages = {s.stage for s in steps}
    problems = []
    if "prepare" in stages and cfg.dataset.path is None:
        problems.append(
            "dataset.path is null, so prepare would use the 399-row sample: pass dataset.path=nvidia/HelpSteer "
            "(or a local file/folder)"
        )
    if stages & set(TRAINING_STAGES) and cfg.preset.init_from is None and not cfg.allow_random_init:
        problems.append(
            "preset.init_from is null, so training would start from random weights: pass preset.init_from=BASE "
            "(a Hugging Face folder or a .nemo from import-hf), or allow_random_init=true"
        )
    if problems:
        raise UserError(f"preset={cfg.preset.name}: " + "; ".join(problems))


def check_environment(cluster: launchers.ClusterSpec) -> None:
    """At submit time: the jobs' set-up finds what it sources and the stage command (no container).

    Raises:
        UserError: naming ``cluster.setup`` / ``cluster.workdir`` / ``cluster.command``.
    """
    import shlex
    import shutil

    if cluster.container.image:
        return  # the image provides the environment
    workdir = Path(cluster.workdir or os.getcwd())
    venv_bin = None
    for line in cluster.setup:
        words = shlex.split(line)
        if len(words) == 2 and words[0] in ("source", "."):
            target = workdir / os.path.expandvars(os.path.expanduser(words[1]))
            if not target.is_file():
                raise UserError(
                    f"cluster.setup: {line!r} runs in cluster.workdir={workdir} but {target} does not exist: set "
                    f"cluster.workdir=<the checkout> or an absolute path in cluster.setup (e.g. "
                    f"'cluster.setup=[source {Path(sys.prefix) / 'bin' / 'activate'}]')"
                )
            venv_bin = target.parent
    program = shlex.split(cluster.command)[0]
    found = (venv_bin / program).exists() if venv_bin is not None else shutil.which(program) is not None
    if not found:
        where = f"in {venv_bin}" if venv_bin is not None else "on PATH (no cluster.setup activates an environment)"
        raise UserError(f"cluster.command={cluster.command!r}: {program} not found {where}")


def chains_from_cfg(cfg: DictConfig, cluster: launchers.ClusterSpec) -> tuple[launchers.ChainSpec, launchers.ChainSpec]:
    """The whole chain (to check) and the part to submit (``only``), both rooted at ``output_dir``."""
    run_dir = str(Path(cfg.output_dir).resolve())
    steps = tuple(step_from_cfg(str(n), s, cluster) for n, s in cfg.launch.steps.items() if s is not None)
    check_real_run(cfg, steps)
    full = launchers.ChainSpec(name=cfg.launch.name, steps=steps, run_dir=run_dir)
    if cfg.only is None:
        return full, full
    only = [str(n) for n in cfg.only]
    missing = [n for n in only if n not in {s.name for s in steps}]
    if missing:
        raise UserError(
            f"only={only}: {missing[0]!r} is not a step of launch.steps ({', '.join(s.name for s in steps)})"
        )
    return full, dataclasses.replace(full, steps=tuple(s for s in steps if s.name in only))


def _step_records(cfg: DictConfig, chain: launchers.ChainSpec, cluster: launchers.ClusterSpec) -> dict[str, str]:
    records = {}
    for step in chain.steps:
        command = stage_command(step, chain, cluster)
        plain = json.loads(json.dumps({"step": dataclasses.asdict(step), "command": command}))
        records[step.name] = OmegaConf.to_yaml(OmegaConf.create(plain))
    records["launch"] = OmegaConf.to_yaml(cfg)
    return records


def submit(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """``action=submit``: check, render, write and submit the chain; returns the job ids."""
    cluster = cluster_from_cfg(cfg.cluster)
    full, chain = chains_from_cfg(cfg, cluster)
    launchers.check_chain(full, cluster, for_submit=True)
    check_environment(cluster)
    jobs = launchers.render_chain(chain, cluster)
    version = code_version(cluster.workdir or ".")
    ldir = write_scripts(jobs, chain, _step_records(cfg, chain, cluster), version)
    submitted = launchers.submit(jobs, chain, cluster, client_runner(cluster))
    for job in submitted:
        print(f"submitted {job.job:<16} job {job.job_id:<8} {'after ' + job.depends_on if job.depends_on else ''}")
    print(f"chain manifest: {ldir / 'chain.json'}   status: nemo-steerlm launch action=status chain={output_dir}")
    return {"chain": str(ldir / "chain.json"), "jobs": {j.job: j.job_id for j in submitted}, "version": version}


def dry_run(cfg: DictConfig) -> None:
    """``dry_run=true``: check the chain and print every script; nothing is written or submitted."""
    cluster = cluster_from_cfg(cfg.cluster)
    full, chain = chains_from_cfg(cfg, cluster)
    launchers.check_chain(full, cluster, for_submit=False)
    for job in launchers.render_chain(chain, cluster):
        print(f"# ===== {job.script_path} =====")
        print(job.text)
    print(f"# dry run: {len(chain.steps)} steps rendered, nothing submitted")


def report(cfg: DictConfig) -> None:
    """``action=status`` / ``action=cancel`` on the chain at ``chain`` (or ``output_dir``)."""
    manifest = launchers.load_manifest(cfg.chain if cfg.chain is not None else cfg.output_dir)
    runner = client_runner(dataclasses.replace(cluster_from_cfg(cfg.cluster), env=manifest["env"]))
    if cfg.action == "status":
        print(f"chain {manifest['chain']} ({manifest['run_dir']}), submitted {manifest['submitted_at']}")
        print(launchers.format_status(launchers.status(manifest, runner)))
    else:
        ids = launchers.cancel(manifest, runner)
        print(f"cancelled chain {manifest['chain']}: jobs {' '.join(ids)}")


def _read_only(cfg: DictConfig) -> None:
    """Dry runs, status and cancel write no run record; errors still exit 2 with one line."""
    try:
        OmegaConf.resolve(cfg)
        dry_run(cfg) if cfg.action == "submit" else report(cfg)
    except MissingMandatoryValue as err:
        _fail(f"missing required setting: pass {getattr(err, 'full_key', None) or err}=...")
    except (UserError, launchers.LaunchError) as err:
        _fail(str(err))


def _fail(message: str) -> None:
    print(f"nemo-steerlm launch: error: {message}", file=sys.stderr)
    sys.exit(2)


def _submit_body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    try:
        return submit(cfg, output_dir)
    except launchers.LaunchError as err:
        raise UserError(str(err)) from err


@stage_app("launch")
def main(cfg: DictConfig, stage: Stage) -> None:
    """Hydra entry point."""
    if cfg.action not in ACTIONS:
        _fail(f"action={cfg.action}: choose one of {', '.join(ACTIONS)}")
    if cfg.action == "submit" and not cfg.dry_run:
        run_stage(stage.name, cfg, _submit_body)
    else:
        _read_only(cfg)


if __name__ == "__main__":
    main()
