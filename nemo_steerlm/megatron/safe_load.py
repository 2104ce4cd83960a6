"""Checks that a megatron distributed-checkpoint folder can be loaded without running code it carries.

A ``.nemo``'s ``model_weights/`` folder is a megatron ``dist_checkpointing`` directory (torch distributed-checkpoint
format). Three kinds of pickle live there, and torch/megatron read two of them with plain ``pickle``:

* ``.metadata``: torch's ``FileSystemReader.read_metadata`` calls ``pickle.load``. It is read here through a
  restricted unpickler that resolves only the torch distributed-checkpoint metadata classes, ``torch.Size``, torch
  dtypes and layouts (the allow-list below was built from what a saved ``.nemo`` of the tiny model holds).
* byte items inside the ``*.distcp`` files (megatron's ``_extra_state`` entries): torch's default load planner calls
  ``torch.load(..., weights_only=False)`` on them. Each one is read here with ``weights_only=True``.
* ``*.pt`` files (``common.pt``, sharded objects): megatron calls ``torch.load`` without ``weights_only`` (safe only
  while torch's default holds). Each one is read here with ``weights_only=True``.

:func:`check_dist_checkpoint` runs all three checks; a folder that passes holds only allow-listed globals, so the
later megatron load of the same (private, unpacked) files runs no code from it. Anything else raises
:class:`~nemo_steerlm.errors.UnsafeCheckpointError` naming the member.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from nemo_steerlm.errors import UnsafeCheckpointError

DCP_METADATA = "torch.distributed.checkpoint.metadata"
# (module, name) pairs a distributed-checkpoint ``.metadata`` pickle may name; nothing else resolves.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        (DCP_METADATA, "Metadata"),
        (DCP_METADATA, "MetadataIndex"),
        (DCP_METADATA, "StorageMeta"),
        (DCP_METADATA, "ChunkStorageMetadata"),
        (DCP_METADATA, "TensorStorageMetadata"),
        (DCP_METADATA, "BytesStorageMetadata"),
        (DCP_METADATA, "TensorProperties"),
        (DCP_METADATA, "_MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.distributed.checkpoint.planner", "SavePlan"),
        ("torch.distributed.checkpoint.planner", "WriteItem"),
        ("torch.distributed.checkpoint.planner", "WriteItemType"),
        ("torch.distributed.checkpoint.planner", "TensorWriteData"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("collections", "OrderedDict"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and torch dtypes; refuses anything else.

    Args:
        file: the binary stream.
        member: how the error names the pickle (e.g. ``model_weights/.metadata``).
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, member: str) -> None:
        super().__init__(file)
        self.member = member

    def find_class(self, module: str, name: str) -> Any:
        """Resolves an allow-listed global; raises UnsafeCheckpointError for any other."""
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.member}: refused to load: the pickle names {module}.{name}, which is not a distributed-checkpoint "
            "metadata type (a checkpoint could run code this way)"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids are never part of distributed-checkpoint metadata."""
        raise UnsafeCheckpointError(f"{self.member}: refused to load: the pickle holds a persistent id")


def load_dcp_metadata(path: str | os.PathLike[str], member: str) -> Any:
    """Reads a torch distributed-checkpoint ``.metadata`` file through :class:`RestrictedUnpickler`.

    Raises:
        UnsafeCheckpointError: the pickle names a global outside the allow-list, or is not a pickle at all.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(path, "rb") as f:
            metadata = RestrictedUnpickler(f, member).load()
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any malformed pickle is a damaged member
        raise UnsafeCheckpointError(f"{member}: not a readable distributed-checkpoint metadata file ({err})") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{member}: holds a {type(metadata).__name__}, not distributed-checkpoint metadata")
    return metadata


def _weights_only(data: bytes | Path, member: str) -> None:
    source: Any = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(f"{member}: refused to load with weights_only=True ({first})") from None


def _byte_items(metadata: Any, root: Path, label: str) -> list[tuple[str, Path, int, int]]:
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    byte_fqns = {fqn for fqn, item in metadata.state_dict_metadata.items() if isinstance(item, BytesStorageMetadata)}
    items = []
    for index, info in (metadata.storage_data or {}).items():
        rel = str(info.relative_path)
        if Path(rel).name != rel or rel in ("", ".", ".."):
            raise UnsafeCheckpointError(f"{label}/.metadata: storage path {rel!r} leaves the weights folder")
        if info.transform_descriptors:
            raise UnsafeCheckpointError(f"{label}/{rel}: storage transforms {info.transform_descriptors} are refused")
        if index.fqn in byte_fqns:
            items.append((index.fqn, root / rel, int(info.offset), int(info.length)))
    return items


def check_dist_checkpoint(weights_dir: str | os.PathLike[str], label: str) -> None:
    """Refuses a distributed-checkpoint folder whose pickles name anything outside the allow-lists.

    Args:
        weights_dir: the unpacked folder (e.g. ``<tmp>/model_weights``).
        label: how errors name the folder (e.g. ``model=run/apm.nemo: model_weights``).

    Raises:
        UnsafeCheckpointError: naming the member (``.metadata``, a ``.distcp`` item or a ``.pt`` file).
    """
    root = Path(weights_dir)
    meta_path = root / ".metadata"
    if not meta_path.is_file():
        raise UnsafeCheckpointError(f"{label}/.metadata: missing (not a distributed checkpoint)")
    metadata = load_dcp_metadata(meta_path, f"{label}/.metadata")
    for fqn, path, offset, length in _byte_items(metadata, root, label):
        member = f"{label}/{path.name} (item {fqn})"
        if not path.is_file():
            raise UnsafeCheckpointError(f"{member}: the file is missing")
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise UnsafeCheckpointError(f"{member}: truncated ({len(data)} of {length} bytes)")
        _weights_only(data, member)
    for pt in sorted(root.rglob("*.pt")):
        _weights_only(pt, f"{label}/{pt.relative_to(root)}")
