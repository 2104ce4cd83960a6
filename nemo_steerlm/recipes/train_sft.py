"""Stage ``train-sft``: attribute-conditioned SFT; saves ``output_dir/sft.nemo``.

Run ``nemo-steerlm train-sft [overrides]`` or ``python -m nemo_steerlm.recipes.train_sft [overrides]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.models.sft import SteerLMSFTModel
from nemo_steerlm.recipes.common import require_path, run_stage, stage_app
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
    train, val = resolve_training_files(cfg, output_dir, "sft")
    if cfg.val_data is not None:
        val = require_path(cfg, "val_data", "a held-out SFT JSONL")
    set_model_data(cfg, train, val)
    trainer = build_trainer(cfg, output_dir)
    model = SteerLMSFTModel(cfg.model, trainer)
    init_weights(model, cfg.preset.init_from)
    trainer.fit(model, ckpt_path=resume_checkpoint(trainer))
    nemo_path = output_dir / "sft.nemo"
    model.save_to(str(nemo_path))
    return {
        "model": str(nemo_path),
        "steps": int(trainer.global_step),
        "last_logged": {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()},
        "train_conversations": len(model.train_set),
        "train_truncated": model.train_set.num_truncated,
        "train_skipped_no_trained_tokens": model.train_set.num_skipped,
    }


@stage_app("train_sft")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    relaunch_under_torchrun(cfg, "nemo_steerlm.recipes.train_sft")
    run_stage("train-sft", cfg, body)


if __name__ == "__main__":
    main()
