"""Annotation: label every assistant turn of SFT conversations with an attribute prediction model.

Each assistant turn is read exactly as :func:`~nemo_steerlm.data.template.render_regression` renders it (the
conversation up to and including the turn, then ``<extra_id_2>``), whatever label it carried before; the model's
scores are clipped to the schema's range and rounded half to even, and the turn's label becomes every attribute the
APM was trained with labels for (its ``labelled_schema``: all nine for HelpSteer + OpenAssistant, the five HelpSteer
ones for HelpSteer alone; an output that never met a label is not a prediction). Over-long conversations are cut from
the left (the read-out survives) and counted.

Work is committed in chunks of conversations, each chunk file written atomically into a state folder, so a killed
run resumes where it stopped; the final file is the concatenation of the chunks, written atomically. The result does
not depend on where a run was interrupted (chunks are fixed by ``chunk_size``). Contiguous shards of the input
(``shard_index`` of ``num_shards``) serve SLURM job arrays; :func:`merge_shards` joins them in input order.

Library code: plain arguments in, no Hydra config.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.formats import sft_line
from nemo_steerlm.data.io import sha256_file, write_json_atomic, write_jsonl_atomic
from nemo_steerlm.data.template import Conversation, Turn, render_regression
from nemo_steerlm.errors import UserError

if TYPE_CHECKING:
    from nemo_steerlm.models.apm import AttributePredictionModel

STATE_VERSION = 1


@dataclass(frozen=True)
class AnnotationStats:
    """Counts of one annotation run (the whole input or one shard).

    Args:
        conversations: conversations written.
        turns: assistant turns labelled.
        truncated: turns whose context was cut from the left to fit the model.
        chunks_total: chunks of this run.
        chunks_resumed: chunks found already committed (work skipped).
    """

    conversations: int
    turns: int
    truncated: int
    chunks_total: int
    chunks_resumed: int


def assistant_turn_texts(conv: Conversation, schema: AttributeSchema) -> list[tuple[int, str]]:
    """``(turn index, regression text)`` of every assistant turn, as :func:`render_regression` renders labelled ones.

    The text is produced by ``render_regression`` itself on a copy whose assistant turns all carry a placeholder
    label, so it is byte for byte what the attribute model was trained on.
    """
    placeholder = schema.format_label({schema.names[0]: schema.min_value})
    indices = [i for i, t in enumerate(conv.turns) if not conv.is_user(t)]
    turns = [replace(t, label=placeholder) if i in indices else t for i, t in enumerate(conv.turns)]
    texts = [text for text, _ in render_regression(replace(conv, turns=turns), schema)]
    return list(zip(indices, texts, strict=True))


def apply_labels(conv: Conversation, labels: dict[int, str]) -> Conversation:
    """A copy of ``conv`` whose turns at the given indices carry the given labels (the label key written)."""
    turns = [
        Turn(t.value, t.role, labels[i], has_label_key=True) if i in labels else replace(t)
        for i, t in enumerate(conv.turns)
    ]
    return Conversation(turns, conv.system, conv.mask, conv.type, dict(conv.extra))


@dataclass(frozen=True)
class TurnScore:
    """The attribute model's reading of one assistant turn.

    Args:
        conversation: index of the conversation in the input.
        turn: index of the assistant turn in the conversation.
        raw: the model's raw outputs, one per attribute of its schema, in schema order.
        label: the label annotation writes for the turn (clipped, rounded, the attributes the APM had labels for).
    """

    conversation: int
    turn: int
    raw: list[float]
    label: str


def score_turns(
    model: AttributePredictionModel,
    conversations: Sequence[Conversation],
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[TurnScore], int]:
    """Scores every assistant turn of the conversations with the attribute model (call on every rank).

    Args:
        model: an :class:`~nemo_steerlm.models.apm.AttributePredictionModel`.
        conversations: the conversations.
        batch_size: samples per prediction batch (per data-parallel rank); default the model's.
        progress: as in :func:`annotate_conversations`.

    Returns:
        ``(one TurnScore per assistant turn in input order, turns cut from the left to fit)``, the same on every rank.
    """
    schema: AttributeSchema = model.schema
    written = model.labelled_schema  # attributes the APM never saw labels for are not written
    requests = [(c, t, text) for c, conv in enumerate(conversations) for t, text in assistant_turn_texts(conv, schema)]
    if not requests:
        return [], 0
    on_batch = None if progress is None else lambda n: progress(n, len(requests))
    preds, truncated = model.predict_texts([text for _, _, text in requests], batch_size, on_batch)
    out = []
    for (c, t, _), pred in zip(requests, preds, strict=True):
        scores = schema.from_predictions(pred.tolist())
        label = written.format_label({n: v for n, v in scores.items() if n in written})
        out.append(TurnScore(c, t, [float(x) for x in pred.tolist()], label))
    return out, truncated


def annotate_conversations(
    model: AttributePredictionModel,
    conversations: Sequence[Conversation],
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[str], int, int]:
    """Labels a list of conversations with the attribute model (call on every rank).

    Args:
        model: an :class:`~nemo_steerlm.models.apm.AttributePredictionModel`.
        conversations: the conversations.
        batch_size: samples per prediction batch (per data-parallel rank); default the model's.
        progress: called after each prediction batch with the assistant turns this rank just scored and the number
            of turns to score in all.

    Returns:
        ``(SFT JSONL lines, assistant turns, truncated turns)``, the same on every rank.
    """
    scored, truncated = score_turns(model, conversations, batch_size, progress)
    per_conv: list[dict[int, str]] = [{} for _ in conversations]
    for s in scored:
        per_conv[s.conversation][s.turn] = s.label
    lines = [sft_line(apply_labels(conv, per_conv[c])) for c, conv in enumerate(conversations)]
    return lines, len(scored), truncated


def shard_range(total: int, shard_index: int, num_shards: int) -> tuple[int, int]:
    """The contiguous ``[start, end)`` of conversations of shard ``shard_index`` (shards differ by at most one)."""
    if num_shards < 1:
        raise UserError(f"num_shards={num_shards}: must be at least 1")
    if not 0 <= shard_index < num_shards:
        raise UserError(f"shard_index={shard_index}: must be in [0, {num_shards - 1}] (num_shards={num_shards})")
    return total * shard_index // num_shards, total * (shard_index + 1) // num_shards


def _load_or_start_state(state_dir: Path, identity: dict[str, Any]) -> None:
    """Creates the state folder with its identity, or checks that an existing one belongs to the same job."""
    meta = state_dir / "state.json"
    if meta.exists():
        found = json.loads(meta.read_text(encoding="utf-8"))
        if found != identity:
            diff = sorted(k for k in identity if found.get(k) != identity[k])
            raise UserError(
                f"{state_dir} holds progress of a different annotation job (differs in {', '.join(diff)}); "
                f"delete it to start over, or rerun with the same model, data and chunk_size"
            )
        return
    write_json_atomic(meta, identity)


def chunk_path(state_dir: Path, start: int, end: int) -> Path:
    """The committed file of conversations ``[start, end)``."""
    return state_dir / f"chunk_{start:09d}_{end:09d}.jsonl"


def run_chunks(
    model: AttributePredictionModel,
    conversations: Sequence[Conversation],
    state_dir: Path,
    identity: dict[str, Any],
    chunk_size: int,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Path], AnnotationStats]:
    """Annotates ``conversations`` chunk by chunk, skipping chunks already committed under ``state_dir``.

    Call on every rank. Global rank 0 writes each chunk atomically (``chunk_<start>_<end>.jsonl``) before the next
    starts; chunk bounds depend only on ``chunk_size``. ``progress`` receives conversations done: within a chunk
    after each prediction batch (estimated from this rank's share), the exact rest when the chunk is committed.

    Returns:
        The chunk files in order and the run's counts (turn counts cover the chunks computed in this run and
        those resumed).
    """
    from nemo_steerlm.megatron import parallel  # here: merging shards needs neither megatron nor torch.distributed

    if chunk_size < 1:
        raise UserError(f"chunk_size={chunk_size}: must be at least 1")
    if parallel.is_global_rank_zero():
        _load_or_start_state(state_dir, identity)
    parallel.barrier()
    paths, turns, truncated, resumed = [], 0, 0, 0
    for start in range(0, len(conversations), chunk_size):
        end = min(start + chunk_size, len(conversations))
        path = chunk_path(state_dir, start, end)
        paths.append(path)
        counts = verified_chunk(path, end - start) if parallel.is_global_rank_zero() else None
        counts = parallel.broadcast_from_rank_zero(counts)
        if counts is not None:
            resumed += 1
            turns, truncated = turns + counts["turns"], truncated + counts["truncated"]
            if progress is not None:
                progress(end - start)
        else:
            rows = _ChunkProgress(end - start, parallel.dp_size(), progress)
            lines, n_turns, n_trunc = annotate_conversations(model, conversations[start:end], batch_size, rows.scored)
            turns, truncated = turns + n_turns, truncated + n_trunc
            if parallel.is_global_rank_zero():
                _commit_chunk(path, lines, {"turns": n_turns, "truncated": n_trunc})
            parallel.barrier()
            rows.finish()
    stats = AnnotationStats(len(conversations), turns, truncated, len(paths), resumed)
    return paths, stats


class _ChunkProgress:
    """Turns "assistant turns scored on this rank" into whole conversations of one chunk for a progress callback.

    Ranks score interleaved shares of the chunk's turns, so this rank's count times the data-parallel size estimates
    the chunk's; the estimate stays below the chunk's size, and :meth:`finish` reports the exact rest.
    """

    def __init__(self, rows: int, dp: int, progress: Callable[[int], None] | None) -> None:
        self.rows, self.dp, self.progress = rows, dp, progress
        self.done = self.reported = 0

    def scored(self, n: int, turns: int) -> None:
        """Called after each prediction batch with the turns this rank just scored and the chunk's turns in all."""
        if self.progress is None:
            return
        self.done += n * self.dp
        now = min(self.rows - 1, self.rows * self.done // turns)
        if now > self.reported:
            self.progress(now - self.reported)
            self.reported = now

    def finish(self) -> None:
        """The chunk is committed: reports its remaining conversations."""
        if self.progress is not None:
            self.progress(self.rows - self.reported)


def _commit_chunk(path: Path, lines: list[str], counts: dict[str, int]) -> None:
    """The chunk, then its record (row count, sha256, turn counts); a chunk is reused only when both agree."""
    write_jsonl_atomic(path, lines)
    record = {**counts, "rows": len(lines), "sha256": sha256_file(path)}
    write_json_atomic(path.with_suffix(".json"), record)


def verified_chunk(path: Path, rows: int) -> dict[str, Any] | None:
    """The record of a committed chunk of ``rows`` conversations, or None when the chunk must be (re)computed.

    A chunk whose file is missing, whose record is missing or unreadable, or whose row count or sha256 differs
    from its record (a truncated or edited file) is not reused; a message says so for a chunk that existed.
    """
    record_path = path.with_suffix(".json")
    if not path.exists():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        ok = record["rows"] == rows and record["sha256"] == sha256_file(path)
        ok = ok and sum(1 for _ in open(path, "rb")) == rows and isinstance(record["turns"], int)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        print(f"nemo-steerlm annotate: {path.name} does not match its record (damaged or unfinished): recomputing")
        return None
    return record


def concatenate(paths: Sequence[Path], target: Path) -> int:
    """Writes the lines of ``paths`` in order into ``target`` atomically; returns the row count."""

    def lines() -> Any:
        for p in paths:
            with open(p, encoding="utf-8", newline="\n") as fh:
                for line in fh:
                    yield line.rstrip("\n")

    return write_jsonl_atomic(target, lines())


def remove_state(state_dir: Path) -> None:
    """Deletes a finished run's state folder."""
    shutil.rmtree(state_dir, ignore_errors=True)


def job_identity(
    model_path: Path | None,
    data_path: Path,
    chunk_size: int,
    shard: tuple[int, int],
    model_sha256: str | None = None,
) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one: model and data bytes, chunking and shard.

    ``model_sha256`` stands for the model file's digest when the model runs elsewhere (a scoring server).
    """
    return {
        "version": STATE_VERSION,
        "model_sha256": model_sha256 if model_sha256 is not None else sha256_file(model_path),
        "data_sha256": sha256_file(data_path),
        "chunk_size": chunk_size,
        "shard": list(shard),
    }


def shard_file(shards_dir: Path, shard_index: int) -> Path:
    """The output of shard ``shard_index``: ``shards/shard_XXXXX.jsonl`` (and its manifest ``.json``)."""
    return shards_dir / f"shard_{shard_index:05d}.jsonl"


def merge_shards(shards_dir: Path, num_shards: int, total: int, data_sha256: str, target: Path) -> int:
    """Joins ``num_shards`` shard files into ``target`` in input order after checking each one is complete.

    Each shard's manifest must name the same input (``data_sha256``) and the rows ``[start, end)`` that
    :func:`shard_range` gives it.

    Raises:
        UserError: a shard is missing, belongs to other data or holds the wrong rows.
    """
    paths = []
    for k in range(num_shards):
        path = shard_file(shards_dir, k)
        manifest = path.with_suffix(".json")
        if not path.exists() or not manifest.exists():
            raise UserError(f"shard {k} of {num_shards} is missing ({path}); run it with shard_index={k}")
        info = json.loads(manifest.read_text(encoding="utf-8"))
        start, end = shard_range(total, k, num_shards)
        if info.get("data_sha256") != data_sha256 or info.get("num_shards") != num_shards:
            raise UserError(f"{manifest} was made from other data or another num_shards; rerun shard {k}")
        if (info.get("start"), info.get("end"), info.get("rows")) != (start, end, end - start):
            raise UserError(f"{manifest}: holds rows {info.get('start')}..{info.get('end')}, expected {start}..{end}")
        paths.append(path)
    return concatenate(paths, target)
