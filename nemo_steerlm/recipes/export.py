"""Stage ``export``: a ``.nemo`` (APM or SFT, any saved layout) -> a Hugging Face directory ``output_dir/hf``.

Run ``nemo-steerlm export model=PATH.nemo output_dir=D [format=hf]`` or ``python -m nemo_steerlm.recipes.export``.
One process: the model is restored at TP=1, PP=1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.errors import UserError
from nemo_steerlm.recipes.common import require_path, stage_main

FORMATS = ("hf",)


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Exports the model and returns the output folder, architecture and parameter count."""
    from nemo_steerlm.interop.convert import export_hf
    from nemo_steerlm.models.checkpoint import read_nemo_meta

    nemo = require_path(cfg, "model", "a .nemo model (from train-apm, train-sft or import-hf)")
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format!r}: choose one of {', '.join(FORMATS)}")
    if nemo.is_dir():
        raise UserError(f"model={nemo} is a directory; export takes a .nemo file (import-hf converts directories)")
    read_nemo_meta(nemo)  # a clear error for a file that is not one of our archives
    return export_hf(nemo, output_dir / "hf")


main = stage_main("export", body)


if __name__ == "__main__":
    main()
