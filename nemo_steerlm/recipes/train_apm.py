"""Stage ``train-apm``: train the attribute prediction model and save ``output_dir/apm.nemo``.

Run ``nemo-steerlm train-apm [overrides]`` or ``python -m nemo_steerlm.recipes.train_apm [overrides]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.inference.apm_eval import evaluate_apm
from nemo_steerlm.models.apm import AttributePredictionModel
from nemo_steerlm.recipes.common import stage_main
from nemo_steerlm.recipes.training import train_and_save, training_summary


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Trains, saves the ``.nemo``, evaluates on the validation split; returns the summary."""
    model, trainer, nemo_path, train, val = train_and_save(cfg, output_dir, AttributePredictionModel, "regression")
    evaluation = evaluate_apm(model, val, train, output_dir / "eval") if val is not None else None
    pearson = None
    if evaluation is not None:
        pearson = {n: m["model"]["pearson"] for n, m in evaluation["attributes"].items() if not m.get("absent")}
    return {**training_summary(model, trainer, nemo_path), "eval_pearson": pearson}


main = stage_main("train-apm", body, relaunch=True)


if __name__ == "__main__":
    main()
