"""The package's YAML files read as plain data: where ``conf/`` is, a preset's model shape, a stage's defaults.

Recipes compose these files with Hydra; library code that needs one of their facts (the shape of a named preset, the
layout and optimizer constants every model section has) reads it here instead of writing it again, so each value
lives in one YAML file. Only ``omegaconf`` is imported (no Hydra, no torch); no interpolation is resolved here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent / "conf"


def load_conf(relpath: str) -> DictConfig:
    """``conf/<relpath>`` as an OmegaConf node (interpolations left unresolved)."""
    node = OmegaConf.load(CONF_DIR / relpath)
    if not isinstance(node, DictConfig):
        raise TypeError(f"{CONF_DIR / relpath}: not a mapping")
    return node


def preset_names() -> list[str]:
    """The presets in ``conf/preset/``, sorted."""
    return sorted(p.stem for p in (CONF_DIR / "preset").glob("*.yaml"))


def preset_arch(name: str) -> dict[str, Any]:
    """The ``arch`` section (model shape) of ``conf/preset/<name>.yaml`` as a plain dict."""
    return OmegaConf.to_container(load_conf(f"preset/{name}.yaml").arch)  # type: ignore[return-value]


def literal_values(node: DictConfig) -> dict[str, Any]:
    """The keys of a config node whose values are written out (not interpolations), as plain data."""
    return {
        key: OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        for key in node
        if not OmegaConf.is_interpolation(node, str(key))
        for value in [node[key]]
    }
