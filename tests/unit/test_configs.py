"""Every stage YAML composes with every preset, and every interpolation resolves (torchtune's habit)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import nemo_steerlm.recipes.common as common  # registers the steerlm_resource resolver

CONF = Path(common.CONF_DIR)
STAGES = sorted(p.stem for p in CONF.glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONF / "preset").glob("*.yaml"))
WITH_PRESET = [s for s in STAGES if "preset" in (CONF / f"{s}.yaml").read_text()]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_composes_with_defaults(stage: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=stage, overrides=["output_dir=/tmp/x"])
    assert cfg.output_dir == "/tmp/x"


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("stage", WITH_PRESET)
def test_stage_resolves_with_every_preset(stage: str, preset: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=stage, overrides=[f"preset={preset}", "output_dir=/tmp/x"])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    if "model" in container and isinstance(container["model"], dict):
        assert container["model"]["num_layers"] == cfg.preset.arch.num_layers


def test_presets_match_the_megatron_presets() -> None:
    """The YAML presets and the typed GPTConfig presets describe the same shapes."""
    from nemo_steerlm.megatron.config import PRESETS as TYPED

    for preset in PRESETS:
        arch = OmegaConf.load(CONF / "preset" / f"{preset}.yaml").arch
        typed = TYPED[preset]
        for key, value in arch.items():
            assert getattr(typed, key) == value, f"{preset}.{key}: yaml {value} != typed {getattr(typed, key)}"


@pytest.mark.parametrize("stage", ["train_apm", "train_sft"])
@pytest.mark.parametrize(
    "preset, expected", [("tiny_cpu", False), ("smollm2_135m", False), ("llama2_7b", True), ("llama2_70b", True)]
)
def test_llama_presets_turn_the_distributed_optimizer_on(stage: str, preset: str, expected: bool) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=stage, overrides=[f"preset={preset}", "output_dir=/tmp/x"])
        off = compose(
            config_name=stage,
            overrides=[f"preset={preset}", "output_dir=/tmp/x", "model.optim.use_distributed_optimizer=false"],
        )
    assert cfg.model.optim.use_distributed_optimizer is expected
    assert off.model.optim.use_distributed_optimizer is False
