"""Stage ``run``: the whole SteerLM chain locally in one run folder, resumable stage by stage.

prepare -> analyze -> train-apm -> annotate -> train-sft [-> bootstrap -> train-sft-bootstrap] -> evaluate, each in
``output_dir/<stage>/``; every stage is the same code as its own command (composed from its own YAML, run in this
process, so NeMo and megatron load once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_steerlm.errors import UserError
from nemo_steerlm.recipes.common import accept_steer_overrides, run_stage, stage_app
from nemo_steerlm.stages import Stage, stage

FORWARDED_GROUPS = ("preset", "dataset", "attributes")
#: run's steps (``stages=`` keys) -> the registered stage each one runs; a step's key is its stage's config name and
#: its folder the stage's name, except a second round of a stage, which gets a folder of its own
STEPS: dict[str, tuple[Stage, str]] = {
    **{stage(s).config: (stage(s), s) for s in ("prepare", "analyze", "train-apm", "annotate", "train-sft")},
    "bootstrap": (stage("bootstrap"), "bootstrap"),
    "train_sft_bootstrap": (stage("train-sft"), "train-sft-bootstrap"),
    "evaluate": (stage("evaluate"), "evaluate"),
}
#: run's step keys -> the step's folder (and summary name), and the config it runs
STAGES: dict[str, tuple[str, str]] = {key: (folder, s.config) for key, (s, folder) in STEPS.items()}
STAGE_NAMES = {key: folder for key, (folder, _) in STAGES.items()}
#: the stages ``bootstrap=true`` adds after ``train_sft``
BOOTSTRAP_STAGES = ("bootstrap", "train_sft_bootstrap")


def stage_groups(stage: str) -> set[str]:
    """The config groups a stage's YAML declares in its defaults list (of ``preset``, ``dataset``, ``attributes``)."""
    from nemo_steerlm.recipes.common import CONF_DIR

    conf = OmegaConf.load(Path(CONF_DIR) / f"{stage}.yaml")
    defaults = conf.defaults if "defaults" in conf else []
    names = {str(next(iter(d))) for d in defaults if OmegaConf.is_dict(d)}
    return names & set(FORWARDED_GROUPS)


def _forwarded(stage: str) -> list[str]:
    """The user's preset/dataset/attributes overrides of ``run``, for the stages whose config has those groups."""
    groups = stage_groups(STAGES[stage][1])
    return [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=")[0].split(".")[0] in groups]


def artefact(root: Path, step: str) -> Path:
    """Where a step of a run in ``root`` writes its stage's artefact (:attr:`Stage.produces`)."""
    s, folder = STEPS[step]
    if s.produces is None:
        raise ValueError(f"stage {s.name} has no fixed artefact")
    return root / folder / s.produces


def stage_overrides(cfg: DictConfig, root: Path) -> dict[str, list[str]]:
    """How each stage is wired to the previous ones."""
    apm, sft = artefact(root, "train_apm"), artefact(root, "train_sft")
    prepared = root / "prepare"
    annotated = root / "annotate" / "train.annotated.jsonl"
    if cfg.sft_labels == "annotated":
        sft_data, sft_train = [f"data={annotated}", f"val_data={prepared / 'sft' / 'val.jsonl'}"], annotated
    elif cfg.sft_labels == "human":
        sft_data, sft_train = [f"data={prepared}"], prepared / "sft" / "train.jsonl"
    else:
        raise UserError(f"sft_labels={cfg.sft_labels}: choose annotated or human")
    final_sft, final_train = sft, sft_train
    bootstrapped = artefact(root, "bootstrap")
    if "train_sft_bootstrap" in cfg.stages:
        final_sft, final_train = artefact(root, "train_sft_bootstrap"), bootstrapped
    return {
        "prepare": [],
        "analyze": [f"data={prepared}"],
        "train_apm": [f"data={prepared}"],
        "annotate": [f"model={apm}", f"data={prepared / 'sft' / 'train.jsonl'}"],
        "train_sft": sft_data,
        "bootstrap": [f"model={sft}", f"apm={apm}", f"data={sft_train}"],
        "train_sft_bootstrap": [
            f"data={bootstrapped}",
            f"val_data={prepared / 'sft' / 'val.jsonl'}",
            f"preset.init_from={sft}",
        ],
        "evaluate": [
            f"model={final_sft}",
            f"apm={apm}",
            f"data={prepared}",
            f"run_dir={root}",
            f"steerability.reference={final_train}",
        ],
    }


def _run_one(stage: str, cfg: DictConfig, root: Path, wiring: list[str]) -> dict[str, Any]:
    import importlib

    from nemo_steerlm.recipes.provenance import check_fingerprint

    name, recipe = STAGES[stage]
    out = root / name
    summary_file = out / f"{name}.summary.json"
    overrides = [*_forwarded(stage), *wiring, *[str(o) for o in cfg.overrides[stage]], f"output_dir={out}"]
    if stage == "evaluate":
        overrides = accept_steer_overrides(overrides)
    stage_cfg = compose(config_name=recipe, overrides=overrides)
    if summary_file.exists():
        OmegaConf.resolve(stage_cfg)
        check_fingerprint(name, stage_cfg, out, overwrite=False)  # refuses a finished stage of other settings
        print(f"nemo-steerlm run: {name} already done ({summary_file}), skipping")
        return json.loads(summary_file.read_text(encoding="utf-8"))
    print(f"nemo-steerlm run: {name} {' '.join(overrides)}", flush=True)
    module = importlib.import_module(STEPS[stage][0].module)
    run_stage(name, stage_cfg, module.body)
    return json.loads(summary_file.read_text(encoding="utf-8"))


def with_bootstrap(stages: list[str]) -> list[str]:
    """``stages`` with one bootstrap round (:data:`BOOTSTRAP_STAGES`, once, in order) right after ``train_sft``."""
    if "train_sft" not in stages:
        raise UserError("bootstrap=true needs the train_sft stage in stages")
    rest = [s for s in stages if s not in BOOTSTRAP_STAGES]
    at = rest.index("train_sft") + 1
    return [*rest[:at], *BOOTSTRAP_STAGES, *rest[at:]]


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Runs the configured stages in order, skipping finished ones; returns each stage's summary."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise UserError(f"stages={list(cfg.stages)}: unknown {unknown}; choose from {list(STAGES)}")
    stages = with_bootstrap([str(s) for s in cfg.stages]) if cfg.bootstrap else [str(s) for s in cfg.stages]
    with open_dict(cfg):
        cfg.stages = stages
    root = output_dir.resolve()
    wiring = stage_overrides(cfg, root)
    summaries = {s: _run_one(s, cfg, root, wiring[s]) for s in stages}
    seconds = {name: round(float(s["seconds"]), 1) for name, s in summaries.items()}
    report = summaries.get("evaluate", {}).get("report")
    print("\nnemo-steerlm run: finished. Stage seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    if report:
        print(f"nemo-steerlm run: report -> {report}")
    return {"report": report, "stage_seconds": seconds, "output_dir": str(root)}


@stage_app("run")
def main(cfg: DictConfig, stage: Stage) -> None:
    """Hydra entry point."""
    OmegaConf.resolve(cfg)
    run_stage(stage.name, cfg, body)


if __name__ == "__main__":
    main()
