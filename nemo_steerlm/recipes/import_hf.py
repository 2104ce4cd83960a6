"""Stage ``import-hf``: a local Hugging Face Llama-architecture directory -> ``output_dir/<apm|sft>.nemo``.

Run ``nemo-steerlm import-hf model=DIR model_type=sft|apm [overrides]`` or
``python -m nemo_steerlm.recipes.import_hf ...``. With ``trainer.devices=N`` it relaunches under ``torchrun`` and
every rank loads its TP/PP shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemo_steerlm.errors import MissingInputError, UserError
from nemo_steerlm.recipes.common import schema_from_cfg, stage_main

MODEL_TYPES = ("apm", "sft")


def accept_model_override(argv: Sequence[str]) -> list[str]:
    """Maps ``model=PATH`` to ``model_path=PATH``: ``model`` names a Hydra config group, so it cannot be a value."""
    return [f"model_path={a.split('=', 1)[1]}" if a.startswith("model=") else a for a in argv]


def model_path(cfg: DictConfig, what: str) -> Path:
    """The existing input path given as ``model=PATH``, or a MissingInputError saying how to pass it."""
    if cfg.model_path is None:
        raise MissingInputError(f"this stage needs {what}: pass model=PATH")
    path = Path(cfg.model_path).expanduser()
    if not path.exists():
        raise MissingInputError(f"model={path}: no such file or directory ({what})")
    return path


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Converts the model and returns where the ``.nemo`` is with its shape and layout."""
    from nemo_steerlm.interop.convert import import_hf, read_hf_config
    from nemo_steerlm.interop.hf_llama import gpt_config_from_hf

    hf_dir = model_path(cfg, "a Hugging Face model directory")
    if not hf_dir.is_dir():
        raise UserError(
            f"model={hf_dir} is a file; import-hf takes a Hugging Face model directory "
            "(a .nemo is already imported: use it directly, or `nemo-steerlm export` to go the other way)"
        )
    kind = cfg.model_type
    if kind not in MODEL_TYPES:
        raise UserError(f"model_type={kind!r}: choose one of {', '.join(MODEL_TYPES)}")
    layout: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[assignment]
    layout = {k: v for k, v in layout.items() if v is not None}
    out = import_hf(hf_dir, kind, output_dir / f"{kind}.nemo", layout, schema_from_cfg(cfg), {"seed": cfg.seed})
    gpt = gpt_config_from_hf(read_hf_config(hf_dir))
    return {
        "model": str(out),
        "kind": kind,
        "source": str(hf_dir.resolve()),
        "shape": {"num_layers": gpt.num_layers, "hidden_size": gpt.hidden_size, "vocab_size": gpt.vocab_size},
        "layout": {k: layout[k] for k in ("tensor_model_parallel_size", "pipeline_model_parallel_size")},
    }


main = stage_main("import-hf", body, relaunch=True, argv=accept_model_override)


if __name__ == "__main__":
    main()
