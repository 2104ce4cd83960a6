"""Stage ``train-apm``: train the attribute prediction model and save ``output_dir/apm.nemo``.

Run ``nemo-steerlm train-apm [overrides]`` or ``python -m nemo_steerlm.recipes.train_apm [overrides]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.evaluation.apm_eval import evaluate_apm
from nemo_steerlm.models.apm import AttributePredictionModel
from nemo_steerlm.recipes.common import run_stage, stage_app
from nemo_steerlm.recipes.training import (
    build_trainer,
    check_layout,
    init_weights,
    relaunch_under_torchrun,
    resolve_training_files,
    resume_checkpoint,
    set_model_data,
)


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Trains, saves the ``.nemo`` and returns where it is with the final losses."""
    check_layout(cfg)
    train, val = resolve_training_files(cfg, output_dir, "regression")
    set_model_data(cfg, train, val)
    trainer = build_trainer(cfg, output_dir)
    model = AttributePredictionModel(cfg.model, trainer)
    init_weights(model, cfg.preset.init_from)
    trainer.fit(model, ckpt_path=resume_checkpoint(trainer))
    nemo_path = output_dir / "apm.nemo"
    model.save_to(str(nemo_path))
    evaluation = evaluate_apm(model, val, train, output_dir / "eval") if val is not None else None
    return {
        "model": str(nemo_path),
        "steps": int(trainer.global_step),
        "last_logged": {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()},
        "train_samples": len(model.train_set),
        "train_truncated": model.train_set.num_truncated,
        "eval_pearson": None
        if evaluation is None
        else {n: m["model"]["pearson"] for n, m in evaluation["attributes"].items() if not m.get("absent")},
    }


@stage_app("train_apm")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    relaunch_under_torchrun(cfg, "nemo_steerlm.recipes.train_apm")
    run_stage("train-apm", cfg, body)


if __name__ == "__main__":
    main()
