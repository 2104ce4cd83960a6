"""Stage ``train-sft``: attribute-conditioned SFT; saves ``output_dir/sft.nemo``.

Run ``nemo-steerlm train-sft [overrides]`` or ``python -m nemo_steerlm.recipes.train_sft [overrides]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.models.sft import SteerLMSFTModel
from nemo_steerlm.recipes.common import require_path, stage_main
from nemo_steerlm.recipes.training import train_and_save, training_summary


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Trains, saves the ``.nemo`` and returns the summary (conversations skipped for lack of trained tokens)."""
    val = require_path(cfg, "val_data", "a held-out SFT JSONL") if cfg.val_data is not None else None
    model, trainer, nemo_path, _, _ = train_and_save(cfg, output_dir, SteerLMSFTModel, "sft", val)
    return {
        **training_summary(model, trainer, nemo_path),
        "train_skipped_no_trained_tokens": model.train_set.num_skipped,
    }


main = stage_main("train-sft", body, relaunch=True)


if __name__ == "__main__":
    main()
