"""The ``nemo-steerlm`` console script: ``nemo-steerlm STAGE [hydra overrides]`` dispatches to one Hydra app per stage.

Each stage is also runnable as ``python -m nemo_steerlm.recipes.<stage>`` with the same overrides.
"""

from __future__ import annotations

import importlib
import sys

from nemo_steerlm.stages import STAGES as REGISTRY

# stage name on the command line -> recipe module (from the registry)
STAGES: dict[str, str] = {s.name: s.module for s in REGISTRY}

USAGE = f"""usage: nemo-steerlm STAGE [key=value ...]

SteerLM with HelpSteer on NeMo + megatron-core. Stages:
{chr(10).join(f"  {s.name:<11} {s.summary}" for s in REGISTRY)}

Overrides are Hydra's: nemo-steerlm prepare output_dir=runs/data dataset.val_fraction=0.1
Show a stage's config: nemo-steerlm STAGE --cfg job
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script.

    Args:
        argv: command-line arguments without the program name (defaults to ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    stage, overrides = args[0], args[1:]
    if stage not in STAGES:
        print(f"nemo-steerlm: unknown stage {stage!r}; choose one of: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(STAGES[stage])
    except ModuleNotFoundError as err:
        if err.name == STAGES[stage]:
            print(f"nemo-steerlm: stage {stage!r} is not available in this version", file=sys.stderr)
            return 2
        raise
    sys.argv = [f"nemo-steerlm {stage}", *overrides]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
