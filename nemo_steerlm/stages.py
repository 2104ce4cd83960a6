"""The stage registry: every ``nemo-steerlm`` stage once, with its recipe module, its config and what it writes.

The CLI dispatches and prints its usage from it, ``run`` takes its stages' configs and artefacts from it, ``launch``
composes a step's config and decides which steps load a model from it. Plain data: importing it imports nothing
else (no torch, no Hydra).

To add a stage: write ``recipes/<config>.py`` (``@stage_app("<name>") def main(cfg, stage)`` calling
``run_stage(stage.name, cfg, body)``) and ``conf/<config>.yaml``, then add one :class:`Stage` to :data:`STAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage of the command line.

    Attributes:
        name: the name on the command line (``nemo-steerlm NAME``), in ``launch.steps.*.stage`` and the summary file.
        module: the recipe module (also runnable as ``python -m MODULE``); its ``main()`` is the Hydra app.
        config: the stage's YAML in ``conf/`` (without ``.yaml``).
        summary: one line for the usage text.
        produces: the main artefact in ``output_dir`` when its name is fixed (what later stages read), else ``None``.
        loads_model: whether the stage runs a model (a ``launch`` step of it asks for GPUs on a GPU cluster).
        trains: whether the stage trains a model (from ``preset.init_from``).
    """

    name: str
    module: str
    config: str
    summary: str
    produces: str | None = None
    loads_model: bool = False
    trains: bool = False


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "nemo_steerlm.recipes.prepare", "prepare", "HelpSteer/OASST -> SFT + regression JSONL"),
    Stage("analyze", "nemo_steerlm.recipes.analyze", "analyze",
          "dataset analysis: label distributions, correlations, length, OLS"),
    Stage("train-apm", "nemo_steerlm.recipes.train_apm", "train_apm", "train the attribute prediction model",
          produces="apm.nemo", loads_model=True, trains=True),
    Stage("annotate", "nemo_steerlm.recipes.annotate", "annotate", "label SFT data with an attribute model",
          loads_model=True),
    Stage("train-sft", "nemo_steerlm.recipes.train_sft", "train_sft", "attribute-conditioned SFT",
          produces="sft.nemo", loads_model=True, trains=True),
    Stage("bootstrap", "nemo_steerlm.recipes.bootstrap", "bootstrap",
          "SFT answers at varied labels, APM-labelled: data for a second SFT", produces="train.bootstrap.jsonl",
          loads_model=True),
    Stage("generate", "nemo_steerlm.recipes.generate", "generate", "steered generation", loads_model=True),
    Stage("evaluate", "nemo_steerlm.recipes.evaluate", "evaluate",
          "APM metrics, steerability, MT-Bench answers, TruthfulQA", loads_model=True),
    Stage("export", "nemo_steerlm.recipes.export", "export", ".nemo -> Hugging Face", loads_model=True),
    Stage("import-hf", "nemo_steerlm.recipes.import_hf", "import_hf", "Hugging Face -> .nemo", loads_model=True),
    Stage("launch", "nemo_steerlm.recipes.launch", "launch", "submit stages to SLURM"),
    Stage("run", "nemo_steerlm.recipes.run", "run", "the whole chain locally"),
    Stage("ablate", "nemo_steerlm.recipes.ablate", "ablate",
          "run a baseline and each attributes.drop ablation, compare them"),
    Stage("serve", "nemo_steerlm.recipes.serve", "serve",
          "OpenAI-compatible HTTP server (steered chat; attribute scoring)", loads_model=True),
)  # fmt: skip

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    """The registered stage called ``name`` (``KeyError`` for an unknown one)."""
    return BY_NAME[name]
