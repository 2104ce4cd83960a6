"""``.nemo`` archives for model-parallel megatron models: save at any TP/PP layout, restore at any other.

:class:`SteerLMSaveRestoreConnector` plugs this into NeMo's ``ModelPT.save_to`` / ``restore_from``.

NeMo's own ``ModelPT.save_to`` refuses model-parallel sizes above one. Here the weights are a megatron
``dist_checkpointing`` directory written by every rank (each saves its shards; replicas are written once), so a
model trained at TP=2 or PP=2 restores at TP=1 (and back). The archive (an uncompressed tar) holds::

    model_config.yaml   the model config (NeMo's convention; ``target`` names the class)
    model_weights/      megatron distributed checkpoint
    tokenizer/          the Hugging Face tokenizer directory
    steerlm.json        model kind, attribute schema, template markers, package version

Saving needs a folder all ranks can reach (the archive's folder): on a cluster, a shared file system.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from megatron.core import dist_checkpointing
from nemo.core.connectors.save_restore_connector import SaveRestoreConnector
from omegaconf import DictConfig, OmegaConf

from nemo_steerlm import __version__
from nemo_steerlm.attributes import MARKERS, SYSTEM_PROMPT
from nemo_steerlm.errors import MissingInputError, UserError
from nemo_steerlm.megatron import parallel

CONFIG_NAME = "model_config.yaml"
WEIGHTS_DIR = "model_weights"
TOKENIZER_DIR = "tokenizer"
META_NAME = "steerlm.json"
KIND_NAMES = {"apm": "attribute prediction model (train-apm)", "sft": "SteerLM SFT model (train-sft)"}


def save_nemo(model: Any, path: str | os.PathLike[str]) -> Path:
    """Writes ``model`` (a :class:`~nemo_steerlm.models.base.MegatronGPTBase`) to a ``.nemo`` file, atomically.

    Must be called on every rank. Returns the archive path.
    """
    path = Path(path).resolve()
    staging = path.with_name(f".{path.name}.staging")
    if parallel.is_global_rank_zero():
        shutil.rmtree(staging, ignore_errors=True)
        (staging / WEIGHTS_DIR).mkdir(parents=True)
    parallel.barrier()
    dist_checkpointing.save(model.model.sharded_state_dict(), str(staging / WEIGHTS_DIR))
    parallel.barrier()
    if parallel.is_global_rank_zero():
        cfg = OmegaConf.create(OmegaConf.to_container(model.cfg, resolve=True))
        cfg.tokenizer.path = TOKENIZER_DIR
        (staging / CONFIG_NAME).write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
        model.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        meta = {
            "kind": model.model_kind,
            "attributes": list(model.schema.names),
            "labelled_attributes": list(model.labelled_schema.names),
            "value_range": [model.schema.min_value, model.schema.max_value],
            "markers": list(MARKERS),
            "system_prompt": SYSTEM_PROMPT,
            "prompt_policy": model.prompt_policy.to_json(),
            "saved_layout": {
                "tp": model.parallel_config.tensor_model_parallel_size,
                "pp": model.parallel_config.pipeline_model_parallel_size,
            },
            "nemo_steerlm_version": __version__,
        }
        (staging / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        tmp = path.with_name(f".{path.name}.tmp")
        with tarfile.open(tmp, "w") as tar:
            for item in sorted(staging.iterdir()):
                tar.add(item, arcname=item.name)
        os.replace(tmp, path)
        shutil.rmtree(staging, ignore_errors=True)
    parallel.barrier()
    return path


def read_nemo_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``steerlm.json`` of an archive (kind, attributes, layout) without unpacking the weights."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"model={path}: no such .nemo file")
    try:
        with tarfile.open(path, "r") as tar:
            member = tar.extractfile(META_NAME)
            if member is None:
                raise KeyError(META_NAME)
            return json.loads(member.read().decode("utf-8"))
    except (tarfile.TarError, KeyError) as err:
        raise UserError(f"model={path} is not a nemo-steerlm .nemo archive ({err})") from err


def check_kind(path: str | os.PathLike[str], expected: str) -> dict[str, Any]:
    """Raises a UserError unless the archive holds a model of kind ``expected`` (``apm`` or ``sft``)."""
    meta = read_nemo_meta(path)
    if meta.get("kind") != expected:
        got = KIND_NAMES.get(str(meta.get("kind")), repr(meta.get("kind")))
        raise UserError(f"model={path} is a {got}, but this stage needs a {KIND_NAMES[expected]}")
    return meta


def _extract(path: Path, into: Path) -> None:
    with tarfile.open(path, "r") as tar:
        tar.extractall(into, filter="data")


def restore_nemo(
    path: str | os.PathLike[str],
    expected_kind: str | None = None,
    overrides: dict[str, Any] | None = None,
    trainer: Any = None,
) -> Any:
    """Restores a model from a ``.nemo`` at the current layout; ``overrides`` set model-config keys (TP, PP, ...).

    Must be called on every rank. Each rank unpacks the archive to a private temporary folder.

    Args:
        path: the archive.
        expected_kind: ``apm`` or ``sft`` (a clear error otherwise); ``None`` accepts either.
        overrides: dotted model-config keys to set before building, e.g. ``{"tensor_model_parallel_size": 1}``.
        trainer: a Lightning trainer to attach (to continue training).
    """
    path = Path(path).resolve()
    if expected_kind is None:
        read_nemo_meta(path)
    else:
        check_kind(path, expected_kind)
    with tempfile.TemporaryDirectory(prefix="nemo_steerlm_restore_") as tmp:
        root = Path(tmp)
        _extract(path, root)
        cfg: DictConfig = OmegaConf.load(root / CONFIG_NAME)
        cfg.tokenizer.path = str(root / TOKENIZER_DIR)
        for key, value in (overrides or {}).items():
            OmegaConf.update(cfg, key, value, merge=False)
        target = str(cfg.target)
        if not target.startswith("nemo_steerlm."):
            raise UserError(f"model={path}: class {target!r} is not a nemo-steerlm model")
        model = get_class(target)(cfg=cfg, trainer=trainer)
        state = dist_checkpointing.load(model.model.sharded_state_dict(), str(root / WEIGHTS_DIR))
        model.model.load_state_dict(state)
    model.model.eval()
    return model


class SteerLMSaveRestoreConnector(SaveRestoreConnector):
    """NeMo connector that saves and restores model-parallel models through :func:`save_nemo` / :func:`restore_nemo`."""

    def save_to(self, model: Any, save_path: str) -> None:
        """Called by ``ModelPT.save_to`` on every rank."""
        save_nemo(model, save_path)

    def restore_from(  # type: ignore[override]
        self,
        calling_cls: type,
        restore_path: str,
        override_config_path: Any = None,
        map_location: Any = None,
        strict: bool = True,
        return_config: bool = False,
        trainer: Any = None,
        validate_access_integrity: bool = True,
    ) -> Any:
        """Called by ``ModelPT.restore_from``; ``override_config_path`` may be a dict of model-config overrides."""
        kind = getattr(calling_cls, "model_kind", "") or None
        overrides = dict(override_config_path) if isinstance(override_config_path, dict) else None
        return restore_nemo(restore_path, kind, overrides, trainer)
