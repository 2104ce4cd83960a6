"""Stage ``ablate``: a baseline ``run`` and one ``run`` per ablation (``attributes.drop``), compared side by side.

Run ``nemo-steerlm ablate drop=[helpfulness] output_dir=D [any run override]``. Each run is the real ``run`` command
in a child process, in ``D/baseline`` and ``D/no_<names>``; then ``D/comparison.md`` and ``D/comparison.json`` are
built from the runs' ``evaluate/results.json`` (see :mod:`nemo_steerlm.evaluation.comparison`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nemo_steerlm.errors import UserError
from nemo_steerlm.recipes.common import stage_main

OWN_KEYS = ("drop", "output_dir")


def ablations(cfg: DictConfig) -> dict[str, list[str]]:
    """Run name -> the attributes it drops: ``baseline`` (none), then ``no_a`` / ``no_a+b`` per ``drop`` entry.

    Raises:
        UserError: naming ``drop`` for an unknown or repeated attribute, or ``attributes.drop`` when it is set.
    """
    if list(cfg.attributes.drop):
        raise UserError(
            f"attributes.drop={list(cfg.attributes.drop)}: ablate trains the baseline with every attribute; "
            "list the ablations in drop= instead"
        )
    entries = OmegaConf.to_container(cfg.drop, resolve=True)
    if not isinstance(entries, list) or not entries:
        raise UserError(f"drop={entries}: give a non-empty list, e.g. drop=[helpfulness] or drop=[[a,b],c]")
    known = list(cfg.attributes.names)
    out: dict[str, list[str]] = {"baseline": []}
    for entry in entries:
        names = [str(n) for n in (entry if isinstance(entry, list) else [entry])]
        unknown = [n for n in names if n not in known]
        if unknown or not names or len(set(names)) != len(names):
            raise UserError(f"drop entry {entry}: each must name distinct attributes of {', '.join(known)}")
        name = "no_" + "+".join(n for n in known if n in names)
        if name in out:
            raise UserError(f"drop entry {entry}: listed twice")
        out[name] = [n for n in known if n in names]
    return out


def _run_overrides() -> list[str]:
    """The user's overrides of ``ablate`` that are ``run`` keys (everything but ``drop`` and ``output_dir``)."""
    return [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=")[0] not in OWN_KEYS]


def _run(name: str, drop: list[str], overrides: list[str], out: Path) -> None:
    args = [*overrides, f"attributes.drop=[{','.join(drop)}]", f"output_dir={out}"]
    print(f"nemo-steerlm ablate: {name}: nemo-steerlm run {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "nemo_steerlm.cli", "run", *args], check=False)
    if done.returncode != 0:
        raise UserError(
            f"the {name} run failed (exit {done.returncode}; its error is above); fix it and rerun the same "
            f"command: finished stages are kept ({out})"
        )


def body(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Runs the baseline and every ablation (each resumable), then writes ``comparison.md`` and ``.json``."""
    from nemo_steerlm.evaluation.comparison import write_comparison

    plan = ablations(cfg)
    root = output_dir.resolve()
    overrides = _run_overrides()
    for name, drop in plan.items():
        _run(name, drop, overrides, root / name)
    write_comparison({name: root / name for name in plan}, plan, root)
    print(f"nemo-steerlm ablate: comparison -> {root / 'comparison.md'}")
    return {"comparison": str(root / "comparison.md"), "runs": {name: str(root / name) for name in plan}}


main = stage_main("ablate", body)


if __name__ == "__main__":
    main()
