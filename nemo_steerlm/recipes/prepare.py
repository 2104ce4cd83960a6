"""Stage ``prepare``: HelpSteer / HelpSteer2 / OpenAssistant rows -> SteerLM SFT and regression JSONL.

Run ``nemo-steerlm prepare [overrides]`` or ``python -m nemo_steerlm.recipes.prepare [overrides]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.data.prepare import PrepareSpec, SourceSpec, prepare
from nemo_steerlm.recipes.common import schema_from_cfg, stage_main
from nemo_steerlm.resources import helpsteer_sample_path


def prepare_spec_from_cfg(dataset: DictConfig) -> PrepareSpec:
    """Builds the library's PrepareSpec from the ``dataset`` config group (``path: null`` = the shipped sample)."""
    path = dataset.path if dataset.path is not None else str(helpsteer_sample_path())
    sources = [SourceSpec(name=dataset.name, path=path, repeat=dataset.repeat)]
    sources += [SourceSpec(name=s.name, path=s.path, repeat=s.repeat) for s in dataset.extra_sources]
    return PrepareSpec(sources=sources, val_fraction=dataset.val_fraction, seed=dataset.seed)


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Writes ``output_dir/{sft,regression}/{train,val}.jsonl`` and ``manifest.json``."""
    manifest = prepare(prepare_spec_from_cfg(cfg.dataset), schema_from_cfg(cfg), output_dir)
    rows = {name: entry["rows"] for name, entry in manifest["files"].items()}
    return {"manifest": str(output_dir / "manifest.json"), "rows": rows}


main = stage_main("prepare", body)


if __name__ == "__main__":
    main()
