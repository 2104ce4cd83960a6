"""What every stage entry point shares: the Hydra app, config resolution, user-error handling, timings.

A recipe is ``@stage_app("name") def main(cfg, stage): run_stage(stage.name, cfg, body)`` where
``body(cfg, output_dir)`` does the work and returns a JSON-serialisable summary; ``name`` is the stage's entry in
:mod:`nemo_steerlm.stages`, the only place its config and module are named. Recipes are the only modules that read
Hydra config.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from nemo_steerlm import config_files, config_schema, stages
from nemo_steerlm.attributes import AttributeSchema, LabelError
from nemo_steerlm.data.io import write_json_atomic
from nemo_steerlm.errors import MissingInputError, UserError
from nemo_steerlm.ranks import is_global_rank_zero, launcher_rank, started_by_launcher, world_size
from nemo_steerlm.sampling import SamplingParams
from nemo_steerlm.stages import Stage

CONF_DIR = str(config_files.CONF_DIR)
# the YAML files name their schemas (`- train_apm_schema`): whoever composes them from CONF_DIR finds them stored
config_schema.register()

StageBody = Callable[[DictConfig, Path], "dict[str, Any] | None"]


# What NeMo's hydra_runner sets too: run in the current folder, no .hydra output folder, plain stdout logging.
# Our own decorator keeps stages that build no model (prepare, launch) free of NeMo's ~8 s import.
HYDRA_DEFAULTS: tuple[str, ...] = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout")


def stage_app(name: str) -> Callable[[Callable[[DictConfig, Stage], None]], Callable[[], None]]:
    """Decorates a stage's ``main(cfg, stage)`` as a Hydra app on the registered stage's ``conf/<config>.yaml``.

    ``name`` is the stage's command-line name in :mod:`nemo_steerlm.stages`, the one place a recipe names itself;
    the decorated function gets the :class:`~nemo_steerlm.stages.Stage` (for :func:`run_stage` and
    :func:`relaunch_under_torchrun`). Overrides come from argv. A config Hydra cannot compose against the stage's
    schema (:mod:`nemo_steerlm.config_schema`: a value of the wrong type, an unknown key) is one error line naming
    the key, exit 2, before any work.
    """
    from hydra.errors import ConfigCompositionException

    stage = stages.stage(name)

    def decorate(task: Callable[[DictConfig, Stage], None]) -> Callable[[], None]:
        @functools.wraps(task)
        def main() -> None:
            given = {arg.split("=", 1)[0] for arg in sys.argv[1:]}
            sys.argv += [d for d in HYDRA_DEFAULTS if d.split("=", 1)[0] not in given]
            # Hydra then raises composition errors instead of printing them and exiting 1
            os.environ.setdefault("HYDRA_FULL_ERROR", "1")
            try:
                hydra.main(config_path=CONF_DIR, config_name=stage.config, version_base=None)(
                    lambda cfg: task(cfg, stage)
                )()
            except ConfigCompositionException as err:
                _fail(stage.name, config_error(err))
            finally:
                teardown_distributed()

        return main

    return decorate


def stage_main(
    name: str, body: StageBody, *, relaunch: bool = False, argv: Callable[[list[str]], list[str]] | None = None
) -> Callable[[], None]:
    """The entry point of a stage whose whole work is one :func:`run_stage` of ``body`` (most stages).

    Args:
        name: the stage's name in :mod:`nemo_steerlm.stages`.
        body: ``body(cfg, output_dir)``, the stage's work.
        relaunch: restart under torchrun when ``trainer.devices`` > 1 (:func:`relaunch_under_torchrun`).
        argv: rewrites the command line before Hydra reads it (e.g. :func:`accept_steer_overrides`).
    """

    @stage_app(name)
    def app(cfg: DictConfig, stage: Stage) -> None:
        if relaunch:
            relaunch_under_torchrun(cfg, stage)
        run_stage(stage.name, cfg, body)

    def main() -> None:
        if argv is not None:
            sys.argv = argv(sys.argv)
        app()

    return main


_EXPECTED = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}


def config_error(err: Exception) -> str:
    """A config composition or validation error in one line: ``KEY=VALUE: expected an integer (...)``.

    Args:
        err: Hydra's ``ConfigCompositionException`` (its cause is OmegaConf's error, with the key), or an OmegaConf
            error raised while an interpolation resolves.
    """
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    key = getattr(cause, "full_key", None)
    reason = str(getattr(cause, "msg", None) or cause).split("\n")[0]
    known = getattr(cause, "object_type", None)
    if key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and dataclasses.is_dataclass(known):
        return f"{key}: no such setting (the keys there: {', '.join(f.name for f in dataclasses.fields(known))})"
    if not isinstance(cause, ValidationError) or not key:  # e.g. an unknown config group option: Hydra's words
        said = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        return said.split(" Config search path:")[0] if cause is err else f"{said}: {reason}"
    override = str(err).split("\n")[0].removeprefix("Error merging override ")
    shown = override if override.split("=", 1)[0].lstrip("+~") == key else f"{key}={getattr(cause, 'value', '?')}"
    expected = next((words for kind, words in _EXPECTED.items() if reason.endswith(f"converted to {kind}")), None)
    return f"{shown}: expected {expected} ({reason})" if expected else f"{shown}: {reason}"


#: how long a rank waits for a file that global rank 0 makes (seconds; ``NEMO_STEERLM_RANK_WAIT_S`` overrides)
RANK_WAIT_S = 1800.0


def rank_zero_makes(marker: Path, make: Callable[[], object], what: str) -> None:
    """Lets exactly one process of a job make a file set: global rank 0 runs ``make``, the others wait for ``marker``.

    Works before ``torch.distributed`` exists (several ranks of one stage started by torchrun or srun, sharing
    ``output_dir``), across nodes on a shared file system. ``make`` must write ``marker`` last (atomically), so a
    waiting rank that sees it sees every file. Nothing is made when ``marker`` exists already.

    Raises:
        UserError: on a rank other than 0 when ``marker`` has not appeared within ``NEMO_STEERLM_RANK_WAIT_S``
            seconds (default :data:`RANK_WAIT_S`): rank 0 failed or is too slow, and its log says why.
    """
    if marker.exists():
        return
    rank = launcher_rank()
    if rank == 0:
        make()
        return
    raw = os.environ.get("NEMO_STEERLM_RANK_WAIT_S", str(RANK_WAIT_S))
    try:
        limit = float(raw)
    except ValueError:
        raise UserError(f"NEMO_STEERLM_RANK_WAIT_S={raw!r}: expected a number of seconds") from None
    deadline = time.monotonic() + limit
    while not marker.exists():
        if time.monotonic() > deadline:
            raise UserError(
                f"rank {rank}: waited {limit:g} s for {marker} ({what}), which global rank 0 makes; it never came. "
                "Read rank 0's log for its error, or set NEMO_STEERLM_RANK_WAIT_S to wait longer"
            )
        time.sleep(0.1)


def teardown_distributed() -> None:
    """Destroys megatron's groups and the torch.distributed process group, if this process made them.

    A gloo process group left to the interpreter's exit can keep a background thread alive after the stage finished
    (seen on a requeued SLURM job); tearing it down explicitly lets the process exit.
    """
    dist_module = sys.modules.get("torch.distributed")
    if dist_module is None or not dist_module.is_available() or not dist_module.is_initialized():
        return
    parallel_state = sys.modules.get("megatron.core.parallel_state")
    if parallel_state is not None and parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    dist_module.destroy_process_group()


def schema_from_cfg(cfg: DictConfig) -> AttributeSchema:
    """Builds the attribute schema from the ``attributes`` config group."""
    a = cfg.attributes
    return AttributeSchema.create(list(a.names), list(a.drop), a.min_value, a.max_value)


def accept_steer_overrides(argv: list[str]) -> list[str]:
    """``steer.NAME=V`` -> ``+steer.NAME=V`` (the names depend on the model's schema; they are checked later)."""
    return [f"+{a}" if a.startswith("steer.") else a for a in argv]


def steer_overrides(steer: DictConfig, schema: AttributeSchema) -> dict[str, int]:
    """The ``steer.NAME=V`` overrides of the default steering label, each checked against ``schema``.

    Raises:
        UserError: naming ``steer.NAME`` for an attribute the model's labels do not hold or a value out of range.
    """
    overrides = OmegaConf.to_container(steer, resolve=True) or {}
    checked: dict[str, int] = {}
    for name, value in overrides.items():
        try:
            checked[str(name)] = schema.check_value(str(name), value)
        except LabelError as err:
            raise UserError(f"steer.{name}={value}: {err}") from None
    return checked


def require_path(cfg: DictConfig, key: str, what: str) -> Path:
    """Returns the existing path at config key ``key`` or raises a MissingInputError saying how to pass it."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None or OmegaConf.is_missing(cfg, key):
        raise MissingInputError(f"this stage needs {what}: pass {key}=PATH")
    path = Path(str(value))
    if not path.exists():
        raise MissingInputError(f"{key}={path}: no such file or directory ({what})")
    return path


def run_stage(stage: str, cfg: DictConfig, body: StageBody, job: str | None = None) -> dict[str, Any] | None:
    """Runs ``body`` for ``stage`` with uniform error handling; writes the resolved config and timing on success.

    A :class:`UserError` (bad data, bad config, a missing input) prints one line naming what to change and exits
    with status 2; nothing is written for a failed stage. While ``body`` runs, ``output_dir`` is locked and its
    fingerprint checked (see :mod:`nemo_steerlm.recipes.provenance`); ``job`` names both (default: ``stage``; the
    shards of one annotate run use one per shard).
    """
    from nemo_steerlm.recipes.provenance import guard_output_dir

    start = time.perf_counter()
    try:
        OmegaConf.resolve(cfg)
        output_dir = Path(cfg.output_dir)
        with guard_output_dir(job or stage, cfg, output_dir):
            summary = body(cfg, output_dir)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err)
        _fail(stage, f"missing required setting: pass {key}=...")
    except UserError as err:
        _fail(stage, str(err))
    except ValidationError as err:  # a value that its interpolation gives the wrong type
        _fail(stage, config_error(err))
    except OSError as err:
        if err.errno not in _STORAGE_HINTS:
            raise
        _fail(stage, f"cannot write {err.filename or cfg.output_dir}: {err.strerror} ({_STORAGE_HINTS[err.errno]})")
    elapsed = time.perf_counter() - start
    if not is_global_rank_zero():
        return summary
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stage}.config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    write_json_atomic(
        output_dir / f"{stage}.summary.json", {"stage": stage, "seconds": round(elapsed, 3), **(summary or {})}
    )
    # a stage whose product is a folder inside output_dir (export: output_dir/hf) names that folder
    shown = (summary or {}).get("model_dir", output_dir)
    print(f"nemo-steerlm {stage}: done in {elapsed:.2f}s -> {shown}")
    return summary


_NO_ROOM = "free space there, or set output_dir= to a folder with room"
_NOT_WRITABLE = "set output_dir= to a folder you can write"
#: write failures that are the storage's, not the program's: a full disk or quota, a file size limit, a read-only
#: mount or folder
_STORAGE_HINTS = {
    errno.ENOSPC: _NO_ROOM,
    errno.EDQUOT: _NO_ROOM,
    errno.EFBIG: _NO_ROOM,
    errno.EROFS: _NOT_WRITABLE,
    errno.EACCES: _NOT_WRITABLE,
}


def _fail(stage: str, message: str) -> None:
    print(f"nemo-steerlm {stage}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _resource(relpath: str) -> str:
    from nemo_steerlm import resources

    return str(Path(resources.__file__).resolve().parent / relpath)


# `${steerlm_resource:tokenizers/steerlm_bpe_4k}` in YAML: a file shipped in the package
if not OmegaConf.has_resolver("steerlm_resource"):
    OmegaConf.register_new_resolver("steerlm_resource", _resource)


def relaunch_under_torchrun(cfg: DictConfig, stage: Stage) -> None:
    """Re-executes this stage under ``torchrun`` when ``trainer.devices`` > 1 and no launcher started it.

    On a single node this makes ``nemo-steerlm train-apm trainer.devices=2`` just work; on SLURM the launcher's
    ``srun`` starts one task per device instead.
    """
    devices = cfg.trainer.devices
    if devices <= 1 or cfg.trainer.num_nodes > 1 or started_by_launcher():
        return
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}"]
    args += ["-m", stage.module, *sys.argv[1:]]
    print(f"nemo-steerlm: starting {devices} processes: {' '.join(args[1:])}", flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, args)


def sampling_params(section: DictConfig, key: str) -> SamplingParams:
    """The library's :class:`~nemo_steerlm.sampling.SamplingParams` from a stage's sampling section.

    The section's schema is that class (:mod:`nemo_steerlm.config_schema`), so Hydra has checked each field's type;
    building it runs its range checks.

    Args:
        section: ``sampling`` of ``generate`` and ``bootstrap``, ``generation`` of ``evaluate``.
        key: the section's config key, for errors.

    Raises:
        UserError: a value out of range, naming ``key.field``.
    """
    try:
        params = OmegaConf.to_object(section)
    except UserError as err:
        raise UserError(f"{key}.{err}") from None
    assert isinstance(params, SamplingParams), f"{key} is not typed by its schema"
    return params


def inference_layout(layout: DictConfig, micro_batch_size: int) -> dict[str, Any]:
    """Model-config overrides that restore a model at the ``layout`` section's TP and PP for inference.

    No sequence parallelism; a global batch of one micro-batch per data-parallel replica (world size / TP·PP).
    """
    tp, pp = layout.tensor_model_parallel_size, layout.pipeline_model_parallel_size
    dp = max(world_size() // (tp * pp), 1)
    return {
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "sequence_parallel": False,
        "micro_batch_size": micro_batch_size,
        "global_batch_size": micro_batch_size * dp,
    }


def check_stage_layout(cfg: DictConfig) -> int:
    """The parallel layout of a stage config against ``trainer.devices × trainer.num_nodes``; returns the DP size.

    A training config (``model`` holds the shape) gets the whole check: shape, TP/PP and batch sizes. An inference
    config (``layout.*``; the shape is in the ``.nemo``) gets the TP/PP one. Both through the one
    :func:`~nemo_steerlm.megatron.config.validate_layout`; the training stages call this before any work, ``launch``
    for each distributed step before anything is submitted.

    Raises:
        ConfigError: naming every key that must change.
    """
    from nemo_steerlm.megatron.config import ParallelConfig, gpt_config_from, parallel_config_from, validate_layout

    world = cfg.trainer.devices * cfg.trainer.num_nodes
    model = OmegaConf.select(cfg, "model", default=None)
    if isinstance(model, DictConfig) and "num_layers" in model:  # a training stage (elsewhere `model` is a path)
        return validate_layout(
            gpt_config_from(model, vocab_size=1),
            parallel_config_from(model),
            world,
            model.micro_batch_size,
            model.global_batch_size,
        )
    layout = OmegaConf.select(cfg, "layout", default=None)  # evaluate has none: it restores at TP = PP = 1
    parallel = ParallelConfig(
        tensor_model_parallel_size=layout.tensor_model_parallel_size if layout is not None else 1,
        pipeline_model_parallel_size=layout.pipeline_model_parallel_size if layout is not None else 1,
    )
    return validate_layout(None, parallel, world, None, None)
