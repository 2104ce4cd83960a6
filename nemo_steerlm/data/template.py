r"""The SteerLM prompt template: conversations, their rendering for SFT, regression and inference, and tokenisation.

The rendered strings match the reference implementation byte for byte (see ``docs/data.md``):

* SFT training text: ``<extra_id_0>System\n{system}\n<extra_id_1>User\n{prompt}\n<extra_id_1>Assistant\n``
  ``<extra_id_2>{label}\n{response}\n<extra_id_1>``; the loss covers each assistant ``{response}\n`` and the
  ``<extra_id_1>`` marker after it, nothing else.
* Regression text: the conversation up to a labelled assistant turn, then ``<extra_id_2>`` (the read-out position).
* Inference prompt: the SFT text up to ``<extra_id_2>{label}\n``; generation stops at ``<extra_id_1>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nemo_steerlm.attributes import (
    ASSISTANT_ROLE,
    LABEL_MARKER,
    SYSTEM_MARKER,
    SYSTEM_PROMPT,
    SYSTEM_ROLE,
    TURN_MARKER,
    USER_ROLE,
    AttributeSchema,
)

VALUE_TO_TEXT = "VALUE_TO_TEXT"


@dataclass
class Turn:
    """One turn of a conversation.

    Args:
        value: the turn's text.
        role: ``"User"`` or ``"Assistant"``.
        label: the attribute label (``name:value,...``) of an assistant turn, or ``None``.
        has_label_key: whether the JSON form carries a ``label`` key at all (OpenAssistant assistant turns without
            annotations have none in the reference output).
    """

    value: str
    role: str
    label: str | None = None
    has_label_key: bool = True

    def to_json(self) -> dict[str, Any]:
        """The reference JSON object, keys in reference order."""
        out: dict[str, Any] = {"value": self.value, "from": self.role}
        if self.has_label_key:
            out["label"] = self.label
        return out


@dataclass
class Conversation:
    """A conversation in the reference SFT JSONL shape (``conversations``, ``system``, ``mask``, ``type``)."""

    turns: list[Turn]
    system: str = SYSTEM_PROMPT
    mask: str = USER_ROLE
    type: str = VALUE_TO_TEXT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The reference JSON object, keys in reference order."""
        return {
            "conversations": [t.to_json() for t in self.turns],
            "system": self.system,
            "mask": self.mask,
            "type": self.type,
            **self.extra,
        }

    def is_user(self, turn: Turn) -> bool:
        """Whether ``turn`` is on the masked (user) side."""
        return turn.role == self.mask

    def key(self) -> tuple:
        """What makes two conversations the same prompt: the system prompt and every turn's role, text and label."""
        return (self.system, *((t.role, t.value, t.label) for t in self.turns))


def system_header(system: str) -> str:
    r"""``<extra_id_0>System\n{system}\n``."""
    return f"{SYSTEM_MARKER}{SYSTEM_ROLE}\n{system}\n"


def turn_header(role: str) -> str:
    r"""``<extra_id_1>{role}\n``."""
    return f"{TURN_MARKER}{role}\n"


def label_block(label: str) -> str:
    r"""``<extra_id_2>{label}\n`` (the conditioning of an assistant turn)."""
    return f"{LABEL_MARKER}{label}\n"


@dataclass(frozen=True)
class RenderedText:
    """A rendered training string with the character spans that carry loss (half-open ``[start, end)``)."""

    text: str
    loss_spans: tuple[tuple[int, int], ...]

    def char_mask(self) -> list[bool]:
        """Per-character loss mask."""
        mask = [False] * len(self.text)
        for start, end in self.loss_spans:
            mask[start:end] = [True] * (end - start)
        return mask


def render_sft(conv: Conversation) -> RenderedText:
    r"""Renders an SFT training string: loss on each assistant ``value\n`` plus the next turn marker."""
    parts = [system_header(conv.system)]
    pos = len(parts[0])
    spans: list[tuple[int, int]] = []
    for turn in conv.turns:
        head = turn_header(turn.role)
        if not conv.is_user(turn) and turn.label is not None:
            head += label_block(turn.label)
        body = f"{turn.value}\n"
        parts += [head, body]
        start = pos + len(head)
        pos = start + len(body)
        if not conv.is_user(turn):
            # the response, its newline and the marker that opens the next turn (or closes the text)
            spans.append((start, pos + len(TURN_MARKER)))
    parts.append(TURN_MARKER)
    return RenderedText("".join(parts), tuple(spans))


def render_prompt(conv: Conversation, label: str | None) -> str:
    """Renders an inference prompt: the conversation so far, then the assistant header and the steering label."""
    return render_prompt_marked(conv, label)[0]


def render_prompt_marked(conv: Conversation, label: str | None) -> tuple[str, int]:
    """:func:`render_prompt` and the character where its first assistant answer starts (its length when none).

    That answer is where training's loss starts (:func:`render_sft`), so the prompt policy counts the context before
    it the same way at inference (see :class:`~nemo_steerlm.data.tokenization.PromptPolicy`).
    """
    text = system_header(conv.system)
    first_answer = -1
    for turn in conv.turns:
        text += turn_header(turn.role)
        if not conv.is_user(turn) and turn.label is not None:
            text += label_block(turn.label)
        if not conv.is_user(turn) and first_answer < 0:
            first_answer = len(text)
        text += f"{turn.value}\n"
    text += turn_header(ASSISTANT_ROLE)
    if label is not None:
        text += label_block(label)
    return text, first_answer if first_answer >= 0 else len(text)


def render_regression(conv: Conversation, schema: AttributeSchema) -> list[tuple[str, list[float]]]:
    """One ``(text, label vector)`` per labelled assistant turn; the text is the prefix up to it plus ``<extra_id_2>``.

    A turn is labelled when its label is a non-empty string (as in the reference formatter).
    """
    text = system_header(conv.system)
    out: list[tuple[str, list[float]]] = []
    for turn in conv.turns:
        text += f"{turn_header(turn.role)}{turn.value}\n"
        if not conv.is_user(turn) and turn.label:
            out.append((text + LABEL_MARKER, schema.to_vector(schema.parse_label(turn.label))))
    return out


@dataclass(frozen=True)
class TokenizedText:
    """Token ids and the per-token loss mask (True = trained on)."""

    input_ids: list[int]
    loss_mask: list[bool]


def tokenize_rendered(rendered: RenderedText, tokenizer: Any, add_bos: bool = False) -> TokenizedText:
    """Tokenises a rendered text with a Hugging Face fast tokenizer and maps the character mask onto tokens.

    A token is trained on when its first character lies in a loss span. The text is tokenised whole (never piece by
    piece), so the ids equal what inference sees.
    """
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: Sequence[tuple[int, int]] = enc["offset_mapping"]
    mask_chars = rendered.char_mask()
    loss = [bool(end > start and mask_chars[start]) for start, end in offsets]
    if add_bos and tokenizer.bos_token_id is not None:
        ids, loss = [tokenizer.bos_token_id] + ids, [False] + loss
    return TokenizedText(ids, loss)


def regression_response(text: str) -> str:
    """The final assistant response of a regression text (between its last assistant header and ``<extra_id_2>``)."""
    header = turn_header(ASSISTANT_ROLE)
    start = text.rfind(header)
    body = text[start + len(header) :] if start >= 0 else text
    return body[: -len(f"\n{LABEL_MARKER}")] if body.endswith(f"\n{LABEL_MARKER}") else body


def regression_text(conv: Conversation, response: str) -> str:
    """The attribute model's input for ``response`` as the next assistant turn of ``conv`` (ends at the read-out)."""
    text = system_header(conv.system)
    for turn in conv.turns:
        text += f"{turn_header(turn.role)}{turn.value}\n"
    return f"{text}{turn_header(ASSISTANT_ROLE)}{response}\n{LABEL_MARKER}"
