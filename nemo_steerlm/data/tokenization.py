"""Tokenizer loading and the truncation rules of the two models' inputs.

Any Hugging Face *fast* tokenizer directory works (character offsets are needed for the loss mask). The SteerLM
markers are plain text for most tokenizers; they are tokenised as part of the rendered text, never piece by piece.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_steerlm.attributes import ASSISTANT_ROLE, TURN_MARKER
from nemo_steerlm.errors import MissingInputError, UserError


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Loads a Hugging Face fast tokenizer from a local directory (offline) and gives it a pad token.

    Raises:
        MissingInputError: the directory does not exist.
        UserError: the tokenizer is not a fast tokenizer (no character offsets).
    """
    from transformers import AutoTokenizer

    directory = Path(path)
    if not directory.is_dir():
        raise MissingInputError(f"tokenizer directory {directory} does not exist (set model.tokenizer.path=DIR)")
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:  # a missing or damaged file, or custom code (refused, never asked)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"tokenizer at {directory} cannot be loaded: {first}") from None
    if not getattr(tok, "is_fast", False):
        raise UserError(f"tokenizer at {directory} is not a fast tokenizer; character offsets are needed")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


@dataclass(frozen=True)
class Encoded:
    """Token ids of one sample, its per-token loss mask (SFT only) and whether it was truncated."""

    input_ids: list[int]
    loss_mask: list[bool] | None
    truncated: bool


def final_response_start(text: str) -> int:
    """Character offset where the last assistant turn's header starts (0 when there is none)."""
    idx = text.rfind(f"{TURN_MARKER}{ASSISTANT_ROLE}\n")
    return max(idx, 0)


def truncate_left(
    ids: list[int], offsets: list[tuple[int, int]], keep_from_char: int, seq_length: int, max_context_tokens: int
) -> tuple[int, bool]:
    """First token to keep so the tail survives; the context before ``keep_from_char`` is cut from the left.

    Args:
        ids: token ids of the whole text.
        offsets: character offsets of the tokens.
        keep_from_char: character where the part that must survive starts (the final response).
        seq_length: the most tokens kept in all.
        max_context_tokens: the most context tokens kept before that part (``0`` = no cap beyond ``seq_length``).

    Returns:
        ``(start, truncated)``.
    """
    n = len(ids)
    tail_start = next((i for i, (s, _) in enumerate(offsets) if s >= keep_from_char), n)
    context = tail_start
    allowed_context = max(seq_length - (n - tail_start), 0)
    if max_context_tokens > 0:
        allowed_context = min(allowed_context, max_context_tokens)
    start = max(context - allowed_context, 0)
    start = max(start, n - seq_length)
    return start, start > 0


def encode_regression(text: str, tokenizer: Any, seq_length: int, max_context_tokens: int) -> Encoded:
    """Tokenises a regression text; the final response and the ``<extra_id_2>`` read-out always survive."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    start, truncated = truncate_left(ids, offsets, final_response_start(text), seq_length, max_context_tokens)
    return Encoded(ids[start:], None, truncated)


def encode_sft(ids: list[int], loss_mask: list[bool], seq_length: int, max_context_tokens: int) -> Encoded:
    """Truncates a tokenised SFT sample: the context before the first trained token is cut from the left first.

    ``seq_length`` counts input tokens, so a sample keeps at most ``seq_length + 1`` ids (inputs and shifted labels).
    """
    first_trained = next((i for i, m in enumerate(loss_mask) if m), len(ids))
    limit = seq_length + 1
    allowed_context = max(limit - (len(ids) - first_trained), 0)
    if max_context_tokens > 0:
        allowed_context = min(allowed_context, max_context_tokens)
    start = max(first_trained - allowed_context, 0, len(ids) - limit)
    return Encoded(ids[start:], loss_mask[start:], start > 0)
