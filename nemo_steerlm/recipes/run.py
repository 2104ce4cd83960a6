"""Stage ``run``: the whole SteerLM chain locally in one run folder, resumable stage by stage.

prepare -> train-apm -> annotate -> train-sft -> evaluate, each in ``output_dir/<stage>/``; every stage is the same
code as its own command (composed from its own YAML, run in this process, so NeMo and megatron load once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nemo_steerlm.errors import UserError
from nemo_steerlm.recipes.common import accept_steer_overrides, run_stage, stage_app

FORWARDED_GROUPS = ("preset", "dataset", "attributes")
STAGE_NAMES = {
    "prepare": "prepare",
    "train_apm": "train-apm",
    "annotate": "annotate",
    "train_sft": "train-sft",
    "evaluate": "evaluate",
}


def _stage_groups(stage: str) -> set[str]:
    """The config groups a stage's YAML declares in its defaults list (of ``preset``, ``dataset``, ``attributes``)."""
    from nemo_steerlm.recipes.common import CONF_DIR

    conf = OmegaConf.load(Path(CONF_DIR) / f"{stage}.yaml")
    defaults = conf.defaults if "defaults" in conf else []
    names = {str(next(iter(d))) for d in defaults if OmegaConf.is_dict(d)}
    return names & set(FORWARDED_GROUPS)


def _forwarded(stage: str) -> list[str]:
    """The user's preset/dataset/attributes overrides of ``run``, for the stages whose config has those groups."""
    groups = _stage_groups(stage)
    return [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=")[0].split(".")[0] in groups]


def stage_overrides(cfg: DictConfig, root: Path) -> dict[str, list[str]]:
    """How each stage is wired to the previous ones."""
    apm, sft = root / "train-apm" / "apm.nemo", root / "train-sft" / "sft.nemo"
    prepared = root / "prepare"
    annotated = root / "annotate" / "train.annotated.jsonl"
    if str(cfg.sft_labels) == "annotated":
        sft_data, sft_train = [f"data={annotated}", f"val_data={prepared / 'sft' / 'val.jsonl'}"], annotated
    elif str(cfg.sft_labels) == "human":
        sft_data, sft_train = [f"data={prepared}"], prepared / "sft" / "train.jsonl"
    else:
        raise UserError(f"sft_labels={cfg.sft_labels}: choose annotated or human")
    return {
        "prepare": [],
        "train_apm": [f"data={prepared}"],
        "annotate": [f"model={apm}", f"data={prepared / 'sft' / 'train.jsonl'}"],
        "train_sft": sft_data,
        "evaluate": [
            f"model={sft}",
            f"apm={apm}",
            f"data={prepared}",
            f"run_dir={root}",
            f"steerability.reference={sft_train}",
        ],
    }


def _run_one(stage: str, cfg: DictConfig, root: Path, wiring: list[str]) -> dict[str, Any]:
    import importlib

    from nemo_steerlm.recipes.provenance import check_fingerprint

    name = STAGE_NAMES[stage]
    out = root / name
    summary_file = out / f"{name}.summary.json"
    overrides = [*_forwarded(stage), *wiring, *[str(o) for o in cfg.overrides[stage]], f"output_dir={out}"]
    if stage == "evaluate":
        overrides = accept_steer_overrides(overrides)
    stage_cfg = compose(config_name=stage, overrides=overrides)
    if summary_file.exists():
        OmegaConf.resolve(stage_cfg)
        check_fingerprint(name, stage_cfg, out, overwrite=False)  # refuses a finished stage of other settings
        print(f"nemo-steerlm run: {name} already done ({summary_file}), skipping")
        return json.loads(summary_file.read_text(encoding="utf-8"))
    print(f"nemo-steerlm run: {name} {' '.join(overrides)}", flush=True)
    module = importlib.import_module(f"nemo_steerlm.recipes.{stage}")
    run_stage(name, stage_cfg, module.body)
    return json.loads(summary_file.read_text(encoding="utf-8"))


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Runs the configured stages in order, skipping finished ones; returns each stage's summary."""
    unknown = [s for s in cfg.stages if s not in STAGE_NAMES]
    if unknown:
        raise UserError(f"stages={list(cfg.stages)}: unknown {unknown}; choose from {list(STAGE_NAMES)}")
    root = output_dir.resolve()
    wiring = stage_overrides(cfg, root)
    summaries = {str(s): _run_one(str(s), cfg, root, wiring[str(s)]) for s in cfg.stages}
    seconds = {name: round(float(s["seconds"]), 1) for name, s in summaries.items()}
    report = summaries.get("evaluate", {}).get("report")
    print("\nnemo-steerlm run: finished. Stage seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    if report:
        print(f"nemo-steerlm run: report -> {report}")
    return {"report": report, "stage_seconds": seconds, "output_dir": str(root)}


@stage_app("run")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    OmegaConf.resolve(cfg)
    run_stage("run", cfg, body)


if __name__ == "__main__":
    main()
