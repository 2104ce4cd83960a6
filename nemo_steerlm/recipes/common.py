"""What every stage entry point shares: config resolution, the output folder, user-error handling, timings.

A recipe is ``@hydra_runner(...) def main(cfg): run_stage("name", cfg, body)`` where ``body(cfg, output_dir)``
does the work and returns a JSON-serialisable summary. Recipes are the only modules that read Hydra config.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.errors import MissingInputError, UserError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

StageBody = Callable[[DictConfig, Path], "dict[str, Any] | None"]


def schema_from_cfg(cfg: DictConfig) -> AttributeSchema:
    """Builds the attribute schema from the ``attributes`` config group."""
    a = cfg.attributes
    return AttributeSchema.create(list(a.names), list(a.drop), int(a.min_value), int(a.max_value))


def require_path(cfg: DictConfig, key: str, what: str) -> Path:
    """Returns the existing path at config key ``key`` or raises a MissingInputError saying how to pass it."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None or OmegaConf.is_missing(cfg, key):
        raise MissingInputError(f"this stage needs {what}: pass {key}=PATH")
    path = Path(str(value))
    if not path.exists():
        raise MissingInputError(f"{key}={path}: no such file or directory ({what})")
    return path


def write_json_atomic(path: Path, obj: Any) -> None:
    """Writes ``obj`` as indented JSON through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_stage(stage: str, cfg: DictConfig, body: StageBody) -> dict[str, Any] | None:
    """Runs ``body`` for ``stage`` with uniform error handling; writes the resolved config and timing on success.

    A :class:`UserError` (bad data, bad config, a missing input) prints one line naming what to change and exits
    with status 2; nothing is written for a failed stage.
    """
    start = time.perf_counter()
    try:
        OmegaConf.resolve(cfg)
        output_dir = Path(str(cfg.output_dir))
        summary = body(cfg, output_dir)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err)
        _fail(stage, f"missing required setting: pass {key}=...")
    except UserError as err:
        _fail(stage, str(err))
    elapsed = time.perf_counter() - start
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stage}.config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    write_json_atomic(
        output_dir / f"{stage}.summary.json", {"stage": stage, "seconds": round(elapsed, 3), **(summary or {})}
    )
    print(f"nemo-steerlm {stage}: done in {elapsed:.1f}s -> {output_dir}")
    return summary


def _fail(stage: str, message: str) -> None:
    print(f"nemo-steerlm {stage}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _resource(relpath: str) -> str:
    from nemo_steerlm import resources

    return str(Path(resources.__file__).resolve().parent / relpath)


# `${steerlm_resource:tokenizers/steerlm_bpe_4k}` in YAML: a file shipped in the package
if not OmegaConf.has_resolver("steerlm_resource"):
    OmegaConf.register_new_resolver("steerlm_resource", _resource)
