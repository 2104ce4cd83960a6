"""The ``prepare`` stage as a library call: raw sources → SFT and regression JSONL, train and validation, + manifest.

Output layout (all written atomically: every file or none)::

    output_dir/sft/train.jsonl          reference SFT lines, train conversations (each repeated `repeat` times)
    output_dir/sft/val.jsonl
    output_dir/regression/train.jsonl   reference regression lines derived from sft/train.jsonl
    output_dir/regression/val.jsonl
    output_dir/manifest.json            row counts, sha256 per file, sources, attributes, val_fraction, seed, version

Splitting:

* A source with its own validation split (a hub dataset, a folder or dict with ``validation``) keeps it as is.
* Other HelpSteer(2) rows are split by prompt: the distinct prompts (over all such sources) are shuffled with
  ``random.Random(seed)`` and ``round(n * val_fraction)`` of them (at least one when ``val_fraction > 0``) go to
  validation with all their responses; both sides keep the input order.
* OpenAssistant trees are split by tree with the reference rule (``split_oasst``: shuffle with ``seed``, keep
  ``int(n * (1 - val_fraction))``); ``seed=10, val_fraction=0.05`` is the reference split.
* Chat ``messages`` conversations are split by conversation with the same rule as OpenAssistant trees.
* ``val_fraction=0`` puts every row in train in input order (the val files exist and are empty).

The repeat factor applies to training data only: each training conversation is written ``repeat`` times in a row,
as the reference recipe does before deriving the regression file from the merged training file.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_steerlm import __version__
from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.formats import regression_lines, sft_line
from nemo_steerlm.data.io import atomic_files
from nemo_steerlm.data.sources import (
    VALIDATION_SPLITS,
    HelpSteerRow,
    helpsteer_to_conversation,
    load_chat_messages,
    load_helpsteer,
    load_oasst_trees,
    merge_sources,
    oasst_threads,
    split_oasst,
)
from nemo_steerlm.data.template import Conversation
from nemo_steerlm.errors import UserError

log = logging.getLogger(__name__)

SOURCE_NAMES = ("helpsteer", "helpsteer2", "oasst", "chat_messages")
OUTPUT_FILES = ("sft/train.jsonl", "sft/val.jsonl", "regression/train.jsonl", "regression/val.jsonl")


@dataclass
class SourceSpec:
    """One input source.

    Args:
        name: ``helpsteer``, ``helpsteer2``, ``oasst`` or ``chat_messages``.
        path: a local file / folder, or a hub id for the HelpSteer sources.
        repeat: how many times each training conversation is written (validation is never repeated).
    """

    name: str
    path: str
    repeat: int = 1


@dataclass
class PrepareSpec:
    """What ``prepare`` builds.

    Args:
        sources: the inputs, merged in this order.
        val_fraction: share of prompts (HelpSteer) / trees (OASST) held out, in ``[0, 1)``; ignored for sources with
            their own validation split.
        seed: seed of the split shuffles.
    """

    sources: list[SourceSpec]
    val_fraction: float
    seed: int


@dataclass
class _Loaded:
    spec: SourceSpec
    train: list[Conversation] = field(default_factory=list)
    val: list[Conversation] = field(default_factory=list)
    pending: list[HelpSteerRow] | None = None  # HelpSteer rows still to split by prompt
    own_split: bool = False


def _check_spec(spec: PrepareSpec) -> None:
    if not spec.sources:
        raise UserError("prepare needs at least one source (`prepare.sources`)")
    if isinstance(spec.val_fraction, bool) or not isinstance(spec.val_fraction, (int, float)):
        raise UserError(f"`dataset.val_fraction` must be a number in [0, 1), got {spec.val_fraction!r}")
    if not 0.0 <= spec.val_fraction < 1.0:
        raise UserError(f"`dataset.val_fraction` must be in [0, 1), got {spec.val_fraction}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int):
        raise UserError(f"`dataset.seed` must be an integer, got {spec.seed!r}")
    for i, src in enumerate(spec.sources):
        if src.name not in SOURCE_NAMES:
            raise UserError(f"`prepare.sources[{i}].name` is {src.name!r}; expected one of {SOURCE_NAMES}")
        if isinstance(src.repeat, bool) or not isinstance(src.repeat, int) or src.repeat < 1:
            raise UserError(f"`prepare.sources[{i}].repeat` must be an integer >= 1, got {src.repeat!r}")


def _load(src: SourceSpec, schema: AttributeSchema, spec: PrepareSpec) -> _Loaded:
    out = _Loaded(src)
    if src.name == "oasst":
        trees = load_oasst_trees(src.path)
        if spec.val_fraction > 0:
            train_trees, val_trees = split_oasst(trees, spec.seed, 1.0 - spec.val_fraction)
        else:
            train_trees, val_trees = trees, []
        out.train = [c for t in train_trees for c in oasst_threads(t, schema)]
        out.val = [c for t in val_trees for c in oasst_threads(t, schema)]
        if not out.train:
            raise UserError(
                f"dataset.path={src.path}: its {len(trees)} tree(s) give no training conversation with "
                f"dataset.val_fraction={spec.val_fraction} (the split keeps whole trees): add trees or lower it"
            )
        return out
    if src.name == "chat_messages":
        convs = load_chat_messages(src.path, schema)
        if spec.val_fraction > 0:  # split by conversation, as OpenAssistant by tree
            out.train, out.val = split_oasst(convs, spec.seed, 1.0 - spec.val_fraction)
        else:
            out.train = convs
        return out
    splits = load_helpsteer(src.path, schema)
    val_name = next((s for s in VALIDATION_SPLITS if s in splits), None)
    unknown = sorted(set(splits) - {"train", *VALIDATION_SPLITS})
    if unknown or "train" not in splits:
        raise ValueError(
            f"source {src.path!r} has splits {sorted(splits)}; prepare uses 'train' and optionally 'validation' — "
            "point `path` at the files to use"
        )
    if val_name is not None:
        out.own_split = True
        out.train = [helpsteer_to_conversation(r, schema) for r in splits["train"]]
        out.val = [helpsteer_to_conversation(r, schema) for r in splits[val_name]]
    else:
        out.pending = splits["train"]
    return out


def choose_val_prompts(prompts: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The held-out prompts: distinct prompts shuffled with ``random.Random(seed)``, the first ``round(n * f)``.

    At least one prompt is held out when ``val_fraction > 0`` and there are two or more prompts; at least one stays
    in train.
    """
    distinct = list(dict.fromkeys(prompts))
    if val_fraction <= 0 or len(distinct) < 2:
        return set()
    n_val = min(max(1, round(len(distinct) * val_fraction)), len(distinct) - 1)
    order = list(range(len(distinct)))
    random.Random(seed).shuffle(order)
    return {distinct[i] for i in order[:n_val]}


def _split_pending(loaded: list[_Loaded], schema: AttributeSchema, spec: PrepareSpec) -> None:
    prompts = [r.prompt for item in loaded if item.pending is not None for r in item.pending]
    val_prompts = choose_val_prompts(prompts, spec.val_fraction, spec.seed)
    for item in loaded:
        if item.pending is None:
            continue
        for row in item.pending:
            (item.val if row.prompt in val_prompts else item.train).append(helpsteer_to_conversation(row, schema))
        item.pending = None


def _manifest(
    spec: PrepareSpec, schema: AttributeSchema, loaded: list[_Loaded], files: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    return {
        "package": "nemo-steerlm",
        "package_version": __version__,
        "attributes": list(schema.names),
        "val_fraction": spec.val_fraction,
        "seed": spec.seed,
        "sources": [
            {
                "name": item.spec.name,
                "path": str(item.spec.path),
                "repeat": item.spec.repeat,
                "validation": "own split" if item.own_split else "val_fraction",
                "conversations": {"train": len(item.train), "val": len(item.val)},
            }
            for item in loaded
        ],
        "files": files,
    }


def prepare(spec: PrepareSpec, schema: AttributeSchema, output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Builds the SFT and regression files and the manifest under ``output_dir``.

    Every source is loaded and validated before anything is written; the files are then written all-or-none.

    Returns:
        The manifest (also written to ``output_dir/manifest.json``); ``manifest["files"][relpath]["rows"]`` holds
        the row count of each file.

    Raises:
        DataError: on any bad input row (naming file, line and field); nothing is written then.
        ValueError: on a bad spec (naming the config key).
    """
    _check_spec(spec)
    loaded = [_load(src, schema, spec) for src in spec.sources]
    _split_pending(loaded, schema, spec)
    train = merge_sources((item.train, item.spec.repeat) for item in loaded)
    val = [c for item in loaded for c in item.val]
    files: dict[str, dict[str, Any]] = {}
    with atomic_files(Path(output_dir)) as out:
        for split, convs in (("train", train), ("val", val)):
            sft = out.open(f"sft/{split}.jsonl")
            reg = out.open(f"regression/{split}.jsonl")
            cache: dict[int, tuple[str, list[str]]] = {}  # repeated conversations are rendered once
            for conv in convs:
                key = id(conv)
                if key not in cache:
                    cache = {key: (sft_line(conv), regression_lines(conv, schema))}
                line, reg_lines = cache[key]
                sft.write_line(line)
                reg.write_lines(reg_lines)
            files[f"sft/{split}.jsonl"] = {"rows": sft.rows, "sha256": sft.sha256}
            files[f"regression/{split}.jsonl"] = {"rows": reg.rows, "sha256": reg.sha256}
        manifest = _manifest(spec, schema, loaded, files)
        out.open("manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    for relpath, info in files.items():
        log.info("prepare: wrote %s (%d rows)", Path(output_dir) / relpath, info["rows"])
    return manifest
