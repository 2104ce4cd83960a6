"""`run bootstrap=true`: where the bootstrap round goes in the chain and how its stages are wired."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_steerlm.errors import UserError
from nemo_steerlm.recipes.run import STAGES, stage_overrides, with_bootstrap

DEFAULT = ["prepare", "analyze", "train_apm", "annotate", "train_sft", "evaluate"]


def test_the_round_goes_right_after_the_first_sft() -> None:
    assert with_bootstrap(DEFAULT) == [*DEFAULT[:5], "bootstrap", "train_sft_bootstrap", "evaluate"]
    assert with_bootstrap([*DEFAULT[:5], "bootstrap", "evaluate"]) == with_bootstrap(DEFAULT)  # not added twice
    with pytest.raises(UserError, match="bootstrap=true needs the train_sft stage"):
        with_bootstrap(["prepare", "evaluate"])
    assert STAGES["train_sft_bootstrap"] == ("train-sft-bootstrap", "train_sft")


def test_the_second_sft_starts_from_the_first_and_evaluate_takes_it(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"sft_labels": "annotated", "stages": with_bootstrap(DEFAULT)})
    wiring = stage_overrides(cfg, tmp_path)
    first, boot = tmp_path / "train-sft" / "sft.nemo", tmp_path / "bootstrap" / "train.bootstrap.jsonl"
    annotated = tmp_path / "annotate" / "train.annotated.jsonl"
    assert wiring["bootstrap"] == [f"model={first}", f"apm={tmp_path / 'train-apm' / 'apm.nemo'}", f"data={annotated}"]
    assert (
        f"data={boot}" in wiring["train_sft_bootstrap"] and f"preset.init_from={first}" in wiring["train_sft_bootstrap"]
    )
    assert f"model={tmp_path / 'train-sft-bootstrap' / 'sft.nemo'}" in wiring["evaluate"]
    assert f"steerability.reference={boot}" in wiring["evaluate"]
    plain = stage_overrides(OmegaConf.create({"sft_labels": "annotated", "stages": DEFAULT}), tmp_path)
    assert f"model={first}" in plain["evaluate"] and f"steerability.reference={annotated}" in plain["evaluate"]
