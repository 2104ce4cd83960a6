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
from nemo_steerlm.data.template import Conversation, render_prompt_marked
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


def keep_from(n_ids: int, tail_start: int, limit: int, max_context_tokens: int) -> int:
    """THE truncation rule of every model input: the first of ``n_ids`` tokens to keep.

    The tail (tokens from ``tail_start`` on: the trained response(s) of an SFT sample, the response and read-out of
    an APM text, or the prompt's earlier answers plus the response still to come at inference) survives; the context
    before it keeps at most ``max_context_tokens`` tokens (``0`` = no cap) and whatever fits in ``limit``; only a
    tail longer than ``limit`` is cut itself, from the left.
    """
    allowed_context = max(limit - (n_ids - tail_start), 0)
    if max_context_tokens > 0:
        allowed_context = min(allowed_context, max_context_tokens)
    return max(tail_start - allowed_context, 0, n_ids - limit)


def first_token_at(offsets: list[tuple[int, int]], char: int) -> int:
    """Index of the first token starting at or after character ``char`` (``len(offsets)`` when none does)."""
    return next((i for i, (s, _) in enumerate(offsets) if s >= char), len(offsets))


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
    start = keep_from(len(ids), first_token_at(offsets, keep_from_char), seq_length, max_context_tokens)
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
    start = keep_from(len(ids), first_trained, seq_length + 1, max_context_tokens)
    return Encoded(ids[start:], loss_mask[start:], start > 0)


#: the fewest conversation tokens an inference prompt must keep before its label block
MIN_PROMPT_TOKENS = 8


@dataclass(frozen=True)
class PromptPolicy:
    """What an SFT model reads of a conversation, the same in training and at inference.

    Training (:func:`encode_sft`) keeps at most ``max_context_tokens`` tokens before the first trained response (the
    system prompt, the user turn(s), the assistant header and the label, cut from the left) and at most
    ``seq_length + 1`` ids in all. At inference the response is still to come: a prompt keeps what training would
    have kept before a response of ``max_new_tokens`` tokens (:meth:`cut_prompt`). The policy is the model's
    ``seq_length`` and ``max_context_tokens``, recorded in its ``.nemo``.

    Args:
        seq_length: the model's sequence length.
        max_context_tokens: the cap on the tokens before the first response (``0`` = none beyond ``seq_length``).
    """

    seq_length: int
    max_context_tokens: int

    def prompt_limit(self, max_new_tokens: int) -> int:
        """The most tokens a single-turn prompt keeps when ``max_new_tokens`` must still fit after it."""
        room = max(self.seq_length - max_new_tokens, 0)
        return min(room, self.max_context_tokens) if self.max_context_tokens > 0 else room

    def cut_prompt(self, ids: list[int], first_response: int, max_new_tokens: int) -> tuple[list[int], bool]:
        """The tokens of an inference prompt the model reads, and whether any were cut.

        Args:
            ids: the rendered prompt's tokens (up to and including the label line).
            first_response: index of the first token of the prompt's first assistant answer (an earlier turn of a
                multi-turn conversation), ``len(ids)`` when it has none: what training counts as trained.
            max_new_tokens: the generation budget, which must fit after the prompt.
        """
        start = keep_from(len(ids) + max_new_tokens, first_response, self.seq_length, self.max_context_tokens)
        return ids[start:], start > 0

    def check_budget(self, label_tokens: int, max_new_tokens: int, earlier_answers: bool = False) -> None:
        """Refuses a budget that leaves no room for the label block and :data:`MIN_PROMPT_TOKENS` of conversation.

        Args:
            label_tokens: tokens of the final assistant header and label line.
            max_new_tokens: the generation budget.
            earlier_answers: the prompt holds an assistant answer before its final label block; training does not
                count the tokens after a first answer against ``max_context_tokens``, so only ``seq_length`` bounds
                the final label block then.

        Raises:
            UserError: naming ``sampling.max_new_tokens`` and the model's ``seq_length`` / ``max_context_tokens``.
        """
        room = max(self.seq_length - max_new_tokens, 0) if earlier_answers else self.prompt_limit(max_new_tokens)
        if room < label_tokens + MIN_PROMPT_TOKENS:
            raise UserError(
                f"sampling.max_new_tokens={max_new_tokens} leaves {room} prompt tokens (model seq_length="
                f"{self.seq_length}, max_context_tokens={self.max_context_tokens}), fewer than the label block's "
                f"{label_tokens} plus {MIN_PROMPT_TOKENS} of conversation: lower sampling.max_new_tokens"
            )

    def to_json(self) -> dict[str, int]:
        """The policy as recorded in a ``.nemo``'s ``steerlm.json``."""
        return {"seq_length": self.seq_length, "max_context_tokens": self.max_context_tokens}


def encode_prompt(
    conv: Conversation, label: str | None, tokenizer: Any, policy: PromptPolicy, max_new_tokens: int
) -> Encoded:
    """The ids an SFT model reads to answer ``conv`` under ``label``: rendered, tokenised whole, cut by ``policy``.

    Raises:
        UserError: when ``max_new_tokens`` leaves no room for the label block and some conversation
            (:meth:`PromptPolicy.check_budget`).
    """
    text, first_answer = render_prompt_marked(conv, label)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    first_response = first_token_at(offsets, first_answer)
    label_tokens = len(ids) - first_token_at(offsets, final_response_start(text))
    policy.check_budget(label_tokens, max_new_tokens, earlier_answers=first_response < len(ids))
    kept, truncated = policy.cut_prompt(ids, first_response, max_new_tokens)
    return Encoded(kept, None, truncated)
