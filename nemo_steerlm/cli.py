"""The ``nemo-steerlm`` console script: ``nemo-steerlm STAGE [hydra overrides]`` dispatches to one Hydra app per stage.

Each stage is also runnable as ``python -m nemo_steerlm.recipes.<stage>`` with the same overrides.
"""

from __future__ import annotations

import importlib
import sys

# stage name on the command line -> recipe module
STAGES: dict[str, str] = {
    "prepare": "nemo_steerlm.recipes.prepare",
    "analyze": "nemo_steerlm.recipes.analyze",
    "train-apm": "nemo_steerlm.recipes.train_apm",
    "annotate": "nemo_steerlm.recipes.annotate",
    "train-sft": "nemo_steerlm.recipes.train_sft",
    "bootstrap": "nemo_steerlm.recipes.bootstrap",
    "generate": "nemo_steerlm.recipes.generate",
    "evaluate": "nemo_steerlm.recipes.evaluate",
    "export": "nemo_steerlm.recipes.export",
    "import-hf": "nemo_steerlm.recipes.import_hf",
    "launch": "nemo_steerlm.recipes.launch",
    "run": "nemo_steerlm.recipes.run",
    "ablate": "nemo_steerlm.recipes.ablate",
    "serve": "nemo_steerlm.recipes.serve",
}

USAGE = """usage: nemo-steerlm STAGE [key=value ...]

SteerLM with HelpSteer on NeMo + megatron-core. Stages:
  prepare     HelpSteer/OASST -> SFT + regression JSONL
  analyze     dataset analysis: label distributions, correlations, length, OLS
  train-apm   train the attribute prediction model
  annotate    label SFT data with an attribute model
  train-sft   attribute-conditioned SFT
  bootstrap   SFT answers at varied labels, APM-labelled: data for a second SFT
  generate    steered generation
  evaluate    APM metrics, steerability, MT-Bench answers, TruthfulQA
  export      .nemo -> Hugging Face
  import-hf   Hugging Face -> .nemo
  launch      submit stages to SLURM
  run         the whole chain locally
  ablate      run a baseline and each attributes.drop ablation, compare them
  serve       OpenAI-compatible HTTP server (steered chat; attribute scoring)

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
