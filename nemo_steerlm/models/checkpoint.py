"""``.nemo`` archives for model-parallel megatron models: save at any TP/PP layout, restore at any other.

:class:`SteerLMSaveRestoreConnector` plugs this into NeMo's ``ModelPT.save_to`` / ``restore_from``.

NeMo's own ``ModelPT.save_to`` refuses model-parallel sizes above one. Here the weights are a megatron
``dist_checkpointing`` directory written by every rank (each saves its shards; replicas are written once), so a
model trained at TP=2 or PP=2 restores at TP=1 (and back). The archive (an uncompressed tar) holds::

    model_config.yaml   the model config (NeMo's convention; ``target`` names the class)
    model_weights/      megatron distributed checkpoint
    tokenizer/          the Hugging Face tokenizer directory
    steerlm.json        model kind, attribute schema, template markers, package version, sha256 of every
                        other member (``members_sha256``)

Saving needs a folder all ranks can reach (the archive's folder): on a cluster, a shared file system.

Everything that knows the archive's layout lives here: :func:`save_nemo`, :func:`restore_nemo` (a whole model),
:func:`opened_nemo` (an unpacked, verified archive for a caller that wants its config or weights, e.g. ``init_from``),
:func:`load_matching_weights` (the tensors a built model shares with an archive) and :func:`model_meta` (the
``steerlm.json`` description of a model, also written next to a Hugging Face export).

Restoring treats the archive as untrusted (see ``docs/reliability.md``): :func:`unpack_nemo` accepts only an
uncompressed tar whose members stay inside the extraction folder (tarfile's ``data`` filter) and whose sizes add up
to no more than the archive itself (no tar bomb, no sparse member); it verifies each member against the recorded
sha256 (archives saved before the record existed load with a warning) and refuses weights whose pickles name
anything outside an allow-list (:mod:`nemo_steerlm.megatron.safe_load`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import get_class
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from nemo.core.connectors.save_restore_connector import SaveRestoreConnector
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from nemo_steerlm import __version__
from nemo_steerlm.attributes import MARKERS, SYSTEM_PROMPT
from nemo_steerlm.config_schema import typed_model_config
from nemo_steerlm.data.io import atomic_write
from nemo_steerlm.errors import DamagedCheckpointError, MissingInputError, UnsafeCheckpointError, UserError
from nemo_steerlm.megatron import parallel
from nemo_steerlm.megatron.safe_load import check_dist_checkpoint

if TYPE_CHECKING:
    from nemo_steerlm.models.base import MegatronGPTBase

CONFIG_NAME = "model_config.yaml"
WEIGHTS_DIR = "model_weights"
TOKENIZER_DIR = "tokenizer"
META_NAME = "steerlm.json"
KIND_NAMES = {"apm": "attribute prediction model (train-apm)", "sft": "SteerLM SFT model (train-sft)"}
MODEL_CLASSES = {
    "apm": "nemo_steerlm.models.apm.AttributePredictionModel",
    "sft": "nemo_steerlm.models.sft.SteerLMSFTModel",
}
CHECKSUM_KEY = "members_sha256"
log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def member_checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except ``steerlm.json``, keyed by its archive path."""
    return {
        p.relative_to(root).as_posix(): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != META_NAME
    }


def save_nemo(model: MegatronGPTBase, path: str | os.PathLike[str]) -> Path:
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
            **model_meta(model),
            "saved_layout": {
                "tp": model.parallel_config.tensor_model_parallel_size,
                "pp": model.parallel_config.pipeline_model_parallel_size,
            },
            "nemo_steerlm_version": __version__,
            CHECKSUM_KEY: member_checksums(staging),
        }
        (staging / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        try:
            atomic_write(path, lambda tmp: _tar_folder(staging, tmp))
        except OSError as err:  # e.g. a full disk: leave neither the partial archive nor the staging folder
            raise UserError(f"cannot write {path} ({err.strerror or err})") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    parallel.barrier()
    return path


def _tar_folder(folder: Path, archive: Path) -> None:
    """Writes ``folder``'s entries (sorted) into the uncompressed tar ``archive``, named relative to ``folder``."""
    with tarfile.open(archive, "w") as tar:
        for item in sorted(folder.iterdir()):
            tar.add(item, arcname=item.name)


def model_meta(model: MegatronGPTBase) -> dict[str, Any]:
    """What ``steerlm.json`` says of a model: kind, attribute schema, template markers, system prompt, prompt policy.

    The ``.nemo`` archive records this (plus layout, version and checksums); a Hugging Face export records it too.
    """
    return {
        "kind": model.model_kind,
        "attributes": list(model.schema.names),
        "labelled_attributes": list(model.labelled_schema.names),
        "value_range": [model.schema.min_value, model.schema.max_value],
        "markers": list(MARKERS),
        "system_prompt": SYSTEM_PROMPT,
        "prompt_policy": model.prompt_policy.to_json(),
    }


def read_nemo_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``steerlm.json`` of an archive (kind, attributes, layout) without unpacking the weights."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"model={path}: no such .nemo file")
    try:
        with tarfile.open(path, "r:") as tar:
            member = tar.extractfile(META_NAME)
            if member is None:
                raise KeyError(META_NAME)
            return json.loads(member.read().decode("utf-8"))
    except (tarfile.TarError, KeyError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCheckpointError(f"model={path} is not a nemo-steerlm .nemo archive ({err})") from None


def check_kind(path: str | os.PathLike[str], expected: str) -> dict[str, Any]:
    """Raises a UserError unless the archive holds a model of kind ``expected`` (``apm`` or ``sft``)."""
    meta = read_nemo_meta(path)
    if meta.get("kind") != expected:
        got = KIND_NAMES.get(str(meta.get("kind")), repr(meta.get("kind")))
        raise UserError(f"model={path} is a {got}, but this stage needs a {KIND_NAMES[expected]}")
    return meta


def _check_members(path: Path, members: list[tarfile.TarInfo], into: Path) -> None:
    """Refuses sparse members and members whose sizes add up to more than the archive (or the free disk)."""
    total = sum(member.size for member in members if member.isfile())
    archive_size = path.stat().st_size
    if total > archive_size:
        raise UnsafeCheckpointError(
            f"model={path}: members add up to {total} bytes, more than the archive's {archive_size} (refused: a .nemo "
            "is an uncompressed tar, so this is a tar bomb or a damaged header)"
        )
    for member in members:
        if member.issparse() or not (member.isfile() or member.isdir()):
            raise UnsafeCheckpointError(f"model={path}: member {member.name} is not a plain file or folder (refused)")
    free = shutil.disk_usage(into).free
    if total > free:
        raise DamagedCheckpointError(
            f"model={path}: unpacking needs {total} bytes but {into} has {free} free (set TMPDIR to a larger disk)"
        )


def verify_members(path: Path, root: Path, meta: dict[str, Any]) -> None:
    """Compares every unpacked member with the sha256 recorded at save; warns when there is no record.

    Raises:
        DamagedCheckpointError: naming the first member that is missing, altered or not in the record.
    """
    recorded = meta.get(CHECKSUM_KEY)
    if recorded is None:
        log.warning(
            "model=%s has no checksum record (saved before nemo-steerlm recorded one); its members are not verified",
            path,
        )
        return
    found = member_checksums(root)
    for name, digest in sorted(recorded.items()):
        if name not in found:
            raise DamagedCheckpointError(f"model={path}: member {name} is missing")
        if found[name] != digest:
            raise DamagedCheckpointError(f"model={path}: member {name} is damaged (its sha256 differs from the record)")
    extra = sorted(set(found) - set(recorded))
    if extra:
        raise DamagedCheckpointError(f"model={path}: member {extra[0]} is not in the archive's checksum record")


def unpack_nemo(path: str | os.PathLike[str], into: str | os.PathLike[str]) -> dict[str, Any]:
    """Unpacks an untrusted ``.nemo`` into ``into``, checks it and returns its ``steerlm.json``.

    Raises:
        DamagedCheckpointError: not an uncompressed tar, truncated, or a member differs from its recorded sha256.
        UnsafeCheckpointError: a member outside ``into``, a link or device, a tar bomb, or a pickle that names code.
    """
    path, root = Path(path).resolve(), Path(into)
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            _check_members(path, members, root)
            tar.extractall(root, members=members, filter="data")
    except tarfile.FilterError as err:
        raise UnsafeCheckpointError(f"model={path}: refused member ({err})") from None
    except (tarfile.TarError, EOFError) as err:
        raise DamagedCheckpointError(f"model={path}: damaged .nemo archive ({err})") from None
    except OSError as err:
        raise DamagedCheckpointError(f"model={path}: cannot unpack into {root} ({err.strerror or err})") from None
    meta_path = root / META_NAME
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCheckpointError(f"model={path}: member {META_NAME} is missing or unreadable ({err})") from None
    if not isinstance(meta, dict):
        raise DamagedCheckpointError(f"model={path}: member {META_NAME} is not a JSON object")
    verify_members(path, root, meta)
    check_dist_checkpoint(root / WEIGHTS_DIR, f"model={path}: {WEIGHTS_DIR}")
    return meta


def load_model_config(path: Path, root: Path) -> DictConfig:
    """The unpacked archive's ``model_config.yaml``, typed by its model's schema; ``target`` must be a known class."""
    try:
        cfg = OmegaConf.load(root / CONFIG_NAME)
    except Exception as err:  # noqa: BLE001 - yaml and omegaconf raise many types for a damaged file
        raise DamagedCheckpointError(f"model={path}: member {CONFIG_NAME} is missing or unreadable ({err})") from None
    target = OmegaConf.select(cfg, "target") if isinstance(cfg, DictConfig) else None
    kind = next((k for k, cls in MODEL_CLASSES.items() if cls == target), None)
    if kind is None:
        raise UserError(f"model={path}: {CONFIG_NAME}: class {target!r} is not a nemo-steerlm model")
    try:
        return typed_model_config(cfg, kind)
    except ValidationError as err:
        raise DamagedCheckpointError(f"model={path}: {CONFIG_NAME}: {err.full_key}: {err.msg}") from None
    except KeyError as err:
        raise DamagedCheckpointError(f"model={path}: {CONFIG_NAME}: {err.args[0]}") from None


@dataclass(frozen=True)
class OpenedNemo:
    """A ``.nemo`` unpacked into a private folder and checked (members, pickles, model class).

    Attributes:
        path: the archive.
        root: the folder it is unpacked in (removed when :func:`opened_nemo` exits).
        meta: its ``steerlm.json``.
        cfg: its ``model_config.yaml``.
    """

    path: Path
    root: Path
    meta: dict[str, Any]
    cfg: DictConfig

    @property
    def weights_dir(self) -> Path:
        """The megatron distributed checkpoint folder."""
        return self.root / WEIGHTS_DIR

    @property
    def tokenizer_dir(self) -> Path:
        """The Hugging Face tokenizer folder."""
        return self.root / TOKENIZER_DIR


@contextlib.contextmanager
def opened_nemo(
    path: str | os.PathLike[str], expected_kind: str | None = None, prefix: str = "nemo_steerlm_restore_"
) -> Iterator[OpenedNemo]:
    """Unpacks an untrusted ``.nemo`` into a private temporary folder (one per rank) and checks it.

    Args:
        path: the archive (named as given in error messages).
        expected_kind: ``apm`` or ``sft`` (a clear error otherwise); ``None`` accepts either.
        prefix: the temporary folder's name prefix.
    """
    path = Path(path)
    if expected_kind is None:
        read_nemo_meta(path)
    else:
        check_kind(path, expected_kind)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        meta = unpack_nemo(path, root)
        yield OpenedNemo(path, root, meta, load_model_config(path, root))


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
    with opened_nemo(Path(path).resolve(), expected_kind) as nemo:
        cfg = nemo.cfg
        cfg.tokenizer.path = str(nemo.tokenizer_dir)
        for key, value in (overrides or {}).items():
            OmegaConf.update(cfg, key, value, merge=False)
        model = get_class(cfg.target)(cfg=cfg, trainer=trainer)
        state = dist_checkpointing.load(model.model.sharded_state_dict(), str(nemo.weights_dir))
        model.model.load_state_dict(state)
    model.model.eval()
    return model


def load_matching_weights(
    model: Any, path: str | os.PathLike[str], check_config: Callable[[DictConfig], None] | None = None
) -> list[str]:
    """Loads into a built model, at its own layout, the tensors it shares with a ``.nemo`` (collective).

    The trunk is loaded; a regression head only when the archive has one (an APM's head into an APM).

    Args:
        model: a :class:`~nemo_steerlm.models.base.MegatronGPTBase`.
        path: the archive.
        check_config: called with the archive's model config before any weight is read (e.g. a shape check).

    Returns:
        This rank's parameter names that were not loaded (``_extra_state`` entries left out).
    """
    with opened_nemo(path, prefix="nemo_steerlm_init_") as nemo:
        if check_config is not None:
            check_config(nemo.cfg)
        weights = str(nemo.weights_dir)
        available = set(dist_checkpointing.load_tensors_metadata(weights))
        wanted = {}
        for key, item in model.model.sharded_state_dict().items():
            if isinstance(item, ShardedTensor) and item.key not in available:
                continue
            if "regression_head" in key and not any("regression_head" in k for k in available):
                continue
            wanted[key] = item
        state = dist_checkpointing.load(wanted, weights)
    result = model.model.load_state_dict(state, strict=False)
    return [k for k in result.missing_keys if not k.endswith("_extra_state")]


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
