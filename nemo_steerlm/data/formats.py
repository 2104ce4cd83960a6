r"""The two on-disk formats of SteerLM: SFT JSONL (conversations with labels) and regression JSONL (text + vector).

Writers produce the reference bytes (``json.dumps(obj, ensure_ascii=False)``, keys in reference order); readers
validate every line and raise :class:`~nemo_steerlm.data.io.DataError` naming the file, the line and the field.

SFT line::

    {"conversations": [{"value": ..., "from": "User", "label": null},
                       {"value": ..., "from": "Assistant", "label": "helpfulness:3,..."}],
     "system": ..., "mask": "User", "type": "VALUE_TO_TEXT"}

Regression line (one per labelled turn)::

    {"text": "<extra_id_0>System\n...<extra_id_1>Assistant\n{response}\n<extra_id_2>", "label": [9 floats]}
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from nemo_steerlm.attributes import (
    ASSISTANT_ROLE,
    LABEL_MARKER,
    MASK_VALUE,
    SYSTEM_MARKER,
    USER_ROLE,
    AttributeSchema,
    LabelError,
)
from nemo_steerlm.data.io import DataError, dump_json_line, read_jsonl
from nemo_steerlm.data.template import VALUE_TO_TEXT, Conversation, Turn, render_regression

_TURN_KEYS = ("value", "from", "label")
_ROLES = (USER_ROLE, ASSISTANT_ROLE)


@dataclass(frozen=True)
class RegressionExample:
    """One regression row: the text up to ``<extra_id_2>`` and the target vector (``MASK_VALUE`` = missing)."""

    text: str
    label: list[float]


def sft_line(conv: Conversation) -> str:
    """The reference SFT JSONL line of ``conv`` (no trailing newline)."""
    return dump_json_line(conv.to_json())


def regression_lines(conv: Conversation, schema: AttributeSchema) -> list[str]:
    """The reference regression JSONL lines of ``conv``: one per turn with a non-empty label, in turn order."""
    return [dump_json_line({"text": text, "label": vector}) for text, vector in render_regression(conv, schema)]


def _turn(obj: Any, schema: AttributeSchema, path: str, line: int, where: str) -> Turn:
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object, got {type(obj).__name__}", line, where)
    extra = [k for k in obj if k not in _TURN_KEYS]
    if extra:
        raise DataError(path, f"unexpected key(s) {extra}; a turn holds only {list(_TURN_KEYS)}", line, where)
    value, role = obj.get("value"), obj.get("from")
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, "missing, not a string or empty", line, f"{where}.value")
    if role not in _ROLES:
        raise DataError(path, f"{role!r} is not one of {list(_ROLES)}", line, f"{where}.from")
    label = obj.get("label")
    if label is not None:
        if not isinstance(label, str):
            raise DataError(path, f"expected a string or null, got {type(label).__name__}", line, f"{where}.label")
        if role == USER_ROLE:
            raise DataError(path, "a user turn carries no label (expected null)", line, f"{where}.label")
        if label:
            try:
                schema.parse_label(label)
            except LabelError as err:
                raise DataError(path, str(err), line, f"{where}.label") from None
    return Turn(value, role, label, has_label_key="label" in obj)


def parse_sft_object(obj: dict[str, Any], schema: AttributeSchema, path: str, line: int) -> Conversation:
    """Validates one decoded SFT object and builds its :class:`Conversation` (extra top-level keys are kept)."""
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(path, "missing or not a non-empty list of turns", line, "conversations")
    system = obj.get("system")
    if not isinstance(system, str):
        raise DataError(path, "missing or not a string", line, "system")
    if obj.get("mask") != USER_ROLE:
        raise DataError(path, f"{obj.get('mask')!r}: only {USER_ROLE!r} is supported", line, "mask")
    if obj.get("type") != VALUE_TO_TEXT:
        raise DataError(path, f"{obj.get('type')!r}: only {VALUE_TO_TEXT!r} is supported", line, "type")
    parsed = [_turn(t, schema, path, line, f"conversations[{i}]") for i, t in enumerate(turns)]
    extra = {k: v for k, v in obj.items() if k not in ("conversations", "system", "mask", "type")}
    return Conversation(parsed, system=system, extra=extra)


def read_sft_jsonl(path: str | os.PathLike[str], schema: AttributeSchema) -> list[Conversation]:
    """Reads and validates an SFT JSONL file.

    Checks: ``conversations`` a non-empty list of turns ``{"value", "from", "label"?}`` with non-empty values and
    roles ``User``/``Assistant``; user labels null; assistant labels null, ``""`` or a label the schema parses;
    ``system`` a string; ``mask`` ``"User"``; ``type`` ``"VALUE_TO_TEXT"``.

    Raises:
        DataError: naming the file, the line and the field (e.g. ``conversations[1].label``).
    """
    return [parse_sft_object(obj, schema, str(path), line) for line, obj in read_jsonl(path)]


def parse_regression_object(obj: dict[str, Any], schema: AttributeSchema, path: str, line: int) -> RegressionExample:
    """Validates one decoded regression object."""
    extra = [k for k in obj if k not in ("text", "label")]
    if extra:
        raise DataError(path, f"unexpected key(s) {extra}; a regression row holds only 'text' and 'label'", line)
    text = obj.get("text")
    if not isinstance(text, str) or not text.startswith(SYSTEM_MARKER) or not text.endswith(LABEL_MARKER):
        raise DataError(path, f"must be a string from {SYSTEM_MARKER!r} to {LABEL_MARKER!r}", line, "text")
    label = obj.get("label")
    if not isinstance(label, list) or len(label) != len(schema):
        raise DataError(path, f"expected a list of {len(schema)} numbers ({', '.join(schema.names)})", line, "label")
    vector = []
    for name, value in zip(schema.names, label, strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(path, f"{value!r} is not a number", line, f"label.{name}")
        if value != MASK_VALUE and not schema.min_value <= value <= schema.max_value:
            raise DataError(
                path,
                f"value {value} is out of range [{schema.min_value}, {schema.max_value}] (or {MASK_VALUE} for missing)",
                line,
                f"label.{name}",
            )
        vector.append(float(value))
    return RegressionExample(text, vector)


def read_regression_jsonl(path: str | os.PathLike[str], schema: AttributeSchema) -> list[RegressionExample]:
    """Reads and validates a regression JSONL file (one label entry per schema attribute, -100 = missing).

    Raises:
        DataError: naming the file, the line and the field.
    """
    return [parse_regression_object(obj, schema, str(path), line) for line, obj in read_jsonl(path)]
