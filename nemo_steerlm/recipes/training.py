"""Shared set-up of the training stages: process launch, Lightning trainer with exp_manager, and input data."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch import Trainer
from megatron.core import parallel_state
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_steerlm.data.prepare import prepare
from nemo_steerlm.errors import DamagedCheckpointError, MissingInputError, UserError
from nemo_steerlm.megatron import parallel
from nemo_steerlm.models.log_lines import LogLinesCallback
from nemo_steerlm.models.strategy import MegatronStrategy
from nemo_steerlm.recipes.common import check_stage_layout, rank_zero_makes, schema_from_cfg
from nemo_steerlm.recipes.prepare import prepare_spec_from_cfg

if TYPE_CHECKING:
    from nemo_steerlm.models.base import MegatronGPTBase


def log_line_callbacks(cfg: DictConfig, trainer_kwargs: dict[str, Any]) -> list[Any]:
    """The plain log-line callback when ``log_lines.when`` asks for it (``auto``: stdout is not a terminal).

    Plain lines replace Lightning's progress bar (``trainer_kwargs["enable_progress_bar"]`` is turned off).
    """
    when, every = cfg.log_lines.when, cfg.log_lines.every_n_steps
    if when not in ("auto", "always", "never"):
        raise UserError(f"log_lines.when={when!r}: choose auto, always or never")
    if every < 1:  # an integer: the schema says so
        raise UserError(f"log_lines.every_n_steps={every!r}: an integer >= 1")
    if when == "never" or (when == "auto" and sys.stdout.isatty()):
        return []
    trainer_kwargs["enable_progress_bar"] = False
    return [LogLinesCallback(every, parallel_state.get_data_parallel_world_size)]


def build_trainer(cfg: DictConfig, output_dir: Path) -> Trainer:
    """A Lightning trainer with the megatron strategy, set up by NeMo's exp_manager (checkpoints, TensorBoard)."""
    from nemo.utils.exp_manager import exp_manager

    trainer_kwargs: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    callbacks = log_line_callbacks(cfg, trainer_kwargs)
    trainer = Trainer(
        strategy=MegatronStrategy(),
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    em = OmegaConf.to_container(cfg.exp_manager, resolve=True)
    em.update({"exp_dir": str(output_dir), "version": "run", "use_datetime_version": False})
    exp_manager(trainer, OmegaConf.create(em))
    return trainer


def init_weights(model: MegatronGPTBase, init_from: Any) -> None:
    """Loads pretrained weights into a freshly built model: a Hugging Face folder or a ``.nemo`` (``preset.init_from``).

    An APM started from a causal LM keeps its freshly seeded regression head. A resumed run then overwrites these
    weights from its checkpoint.
    """
    if init_from is None:
        return
    from nemo_steerlm.interop.convert import load_initial_weights

    kept = load_initial_weights(model, str(init_from))
    print(f"nemo-steerlm: initial weights from {init_from} (kept their initialisation: {kept or 'none'})")


def resume_checkpoint(trainer: Trainer) -> str | None:
    """The checkpoint to resume from: the newest intact one of the run's log folder.

    Candidates are exp_manager's ``last.ckpt`` (``trainer.ckpt_path``), the other checkpoints it kept, and
    Lightning's SLURM ``hpc_ckpt_N.ckpt``: on a requeued SLURM job Lightning saved one in the log folder when the
    pre-walltime signal came, and exp_manager moves earlier files of the log folder into ``run_K/`` sub-folders before
    Lightning looks for them, so the newest is found here and given to ``trainer.fit`` explicitly. A checkpoint cut
    short (a full disk, a kill while writing) is passed over with a warning naming it.

    Raises:
        DamagedCheckpointError: every checkpoint found is damaged (resuming from none would silently start over).
    """
    log_dir = Path(str(trainer.default_root_dir))
    candidates = {p for p in log_dir.rglob("*.ckpt") if p.is_file()}
    if trainer.ckpt_path and Path(str(trainer.ckpt_path)).is_file():
        candidates.add(Path(str(trainer.ckpt_path)))
    damaged = []
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if checkpoint_is_intact(path):
            for bad in damaged:
                print(f"nemo-steerlm: warning: {bad} is damaged (cut short?); resuming from the older {path}")
            return str(path)
        damaged.append(path)
    if damaged:
        raise DamagedCheckpointError(
            f"{damaged[0]}: damaged checkpoint (cut short?), and no intact one to resume from in {log_dir}: "
            "delete the damaged file(s) or rerun with overwrite=true to start over"
        )
    return None


def checkpoint_is_intact(path: Path) -> bool:
    """Whether a Lightning checkpoint (a ``torch.save`` zip archive) is whole: its zip directory, at the end, reads."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def resolve_training_files(cfg: DictConfig, output_dir: Path, kind: str) -> tuple[Path, Path | None]:
    """The ``(train, validation)`` JSONL files of ``kind`` (``regression`` or ``sft``) for a training stage.

    ``data`` may be a ``prepare`` output folder, a single train file, or null (prepare ``dataset`` into
    ``output_dir/data``, once: global rank 0 prepares, the other ranks of the job wait for its manifest).
    """
    if cfg.data is None:
        data_dir = output_dir / "data"
        spec, schema = prepare_spec_from_cfg(cfg.dataset), schema_from_cfg(cfg)
        rank_zero_makes(data_dir / "manifest.json", lambda: prepare(spec, schema, data_dir), "the prepared data")
        return data_dir / kind / "train.jsonl", data_dir / kind / "val.jsonl"
    path = Path(cfg.data)
    if path.is_dir():
        train, val = path / kind / "train.jsonl", path / kind / "val.jsonl"
        if not train.exists():
            raise MissingInputError(f"data={path}: {train} is missing (expected a `prepare` output folder)")
        return train, val if val.exists() and val.stat().st_size > 0 else None
    if not path.exists():
        raise MissingInputError(f"data={path}: no such file or folder")
    return path, None


def set_model_data(cfg: DictConfig, train: Path, val: Path | None) -> None:
    """Writes the resolved data files into ``model.data`` (they are recorded in the checkpoint's config)."""
    with open_dict(cfg):
        cfg.model.data.train = str(train)
        cfg.model.data.validation = str(val) if val is not None and val.stat().st_size > 0 else None


def train_and_save(
    cfg: DictConfig, output_dir: Path, model_cls: type, data_kind: str, val_override: Path | None = None
) -> tuple[Any, Trainer, Path, Path, Path | None]:
    """The body every training stage shares: check, resolve data, build, (init,) fit or resume, save ``.nemo``.

    Args:
        cfg: the stage config.
        output_dir: the stage's folder.
        model_cls: the NeMo model class to build from ``cfg.model``.
        data_kind: ``regression`` or ``sft`` (which files of a ``prepare`` folder).
        val_override: a validation file that replaces the one found from ``data``.

    Returns:
        ``(model, trainer, nemo_path, train_file, val_file)``.
    """
    check_stage_layout(cfg)
    train, val = resolve_training_files(cfg, output_dir, data_kind)
    val = val_override or val
    set_model_data(cfg, train, val)
    trainer = build_trainer(cfg, output_dir)
    model = model_cls(cfg.model, trainer)
    init_weights(model, cfg.preset.init_from)
    trainer.fit(model, ckpt_path=resume_checkpoint(trainer))
    model.to(parallel.device())  # Lightning's teardown moves the module to the CPU; evaluation follows on its device
    nemo_path = output_dir / f"{model.model_kind}.nemo"
    model.save_to(str(nemo_path))
    return model, trainer, nemo_path, train, val


def training_summary(model: MegatronGPTBase, trainer: Trainer, nemo_path: Path) -> dict[str, Any]:
    """The summary fields every training stage reports."""
    return {
        "model": str(nemo_path),
        "steps": int(trainer.global_step),
        "last_logged": {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()},
        "train_samples": len(model.train_set),
        "train_truncated": model.train_set.num_truncated,
    }
