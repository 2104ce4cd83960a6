"""The stage registry is the one list of stages: each entry names a real recipe and config, and the CLI, ``run`` and
``launch`` take their stage facts from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nemo_steerlm import cli
from nemo_steerlm.recipes import launch, run
from nemo_steerlm.recipes.common import CONF_DIR
from nemo_steerlm.stages import BY_NAME, STAGES


def test_every_stage_has_its_recipe_and_config() -> None:
    assert len(BY_NAME) == len(STAGES)  # names are unique
    for s in STAGES:
        assert importlib.util.find_spec(s.module) is not None, s
        assert (Path(CONF_DIR) / f"{s.config}.yaml").is_file(), s


def test_cli_run_and_launch_read_the_registry(tmp_path: Path) -> None:
    assert list(cli.STAGES) == [s.name for s in STAGES]
    assert all(f"  {s.name:<11} {s.summary}" in cli.USAGE for s in STAGES)
    for key, (folder, config) in run.STAGES.items():
        assert config == run.STEPS[key][0].config and (key == "train_sft_bootstrap" or folder == run.STEPS[key][0].name)
    assert run.artefact(tmp_path, "train_apm") == tmp_path / "train-apm" / "apm.nemo"
    assert launch.config_name("import-hf") == "import_hf" and launch.config_name("train-sft") == "train_sft"
    assert set(launch.TRAINING_STAGES) == {"train-apm", "train-sft"}


def test_training_artefacts_are_named_after_the_model_kind() -> None:
    # train_and_save writes f"{model.model_kind}.nemo"; the registry's `produces` must say the same
    from nemo_steerlm.models.apm import AttributePredictionModel
    from nemo_steerlm.models.sft import SteerLMSFTModel

    assert BY_NAME["train-apm"].produces == f"{AttributePredictionModel.model_kind}.nemo"
    assert BY_NAME["train-sft"].produces == f"{SteerLMSFTModel.model_kind}.nemo"
