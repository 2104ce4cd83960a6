"""Stage ``export``: a ``.nemo`` (APM or SFT, any saved layout) -> a Hugging Face directory ``output_dir/hf``.

Run ``nemo-steerlm export model=PATH.nemo output_dir=D [format=hf]`` or ``python -m nemo_steerlm.recipes.export``.
One process: the model is restored at TP=1, PP=1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_steerlm.errors import MissingInputError, UserError
from nemo_steerlm.recipes.common import run_stage, stage_app

FORMATS = ("hf",)


def accept_model_override(argv: Sequence[str]) -> list[str]:
    """Maps ``model=PATH`` to ``model_path=PATH``: ``model`` names a Hydra config group, so it cannot be a value."""
    return [f"model_path={a.split('=', 1)[1]}" if a.startswith("model=") else a for a in argv]


def model_path(cfg: DictConfig, what: str) -> Path:
    """The existing input path given as ``model=PATH``, or a MissingInputError saying how to pass it."""
    if cfg.model_path is None:
        raise MissingInputError(f"this stage needs {what}: pass model=PATH")
    path = Path(str(cfg.model_path)).expanduser()
    if not path.exists():
        raise MissingInputError(f"model={path}: no such file or directory ({what})")
    return path


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Exports the model and returns the output folder, architecture and parameter count."""
    from nemo_steerlm.interop.convert import export_hf
    from nemo_steerlm.models.checkpoint import read_nemo_meta

    nemo = model_path(cfg, "a .nemo model (from train-apm, train-sft or import-hf)")
    if str(cfg.format) not in FORMATS:
        raise UserError(f"format={cfg.format!r}: choose one of {', '.join(FORMATS)}")
    if nemo.is_dir():
        raise UserError(f"model={nemo} is a directory; export takes a .nemo file (import-hf converts directories)")
    read_nemo_meta(nemo)  # a clear error for a file that is not one of our archives
    return export_hf(nemo, output_dir / "hf")


@stage_app("export")
def _app(cfg: DictConfig) -> None:
    run_stage("export", cfg, body)


def main() -> None:
    """Hydra entry point (``model=PATH`` accepted)."""
    sys.argv = accept_model_override(sys.argv)
    _app()


if __name__ == "__main__":
    main()
