"""The one attribute schema of SteerLM: names, order, value range, label grammar and prompt markers.

Every other module imports its attribute facts from here; nothing redefines them.

The reference order is the OpenAssistant attributes followed by the HelpSteer ones. A label is written
``name:value,name:value`` with integer values in ``[min_value, max_value]``; a missing attribute is encoded as
``MASK_VALUE`` (``-100.0``) in regression vectors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nemo_steerlm.errors import UserError

OASST_ATTRIBUTES: tuple[str, ...] = ("quality", "toxicity", "humor", "creativity")
HELPSTEER_ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
ALL_ATTRIBUTES: tuple[str, ...] = OASST_ATTRIBUTES + HELPSTEER_ATTRIBUTES

MIN_VALUE = 0
MAX_VALUE = 4
MASK_VALUE = -100.0

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
SYSTEM_MARKER = "<extra_id_0>"
TURN_MARKER = "<extra_id_1>"
LABEL_MARKER = "<extra_id_2>"
MARKERS: tuple[str, ...] = (SYSTEM_MARKER, TURN_MARKER, LABEL_MARKER)
USER_ROLE = "User"
ASSISTANT_ROLE = "Assistant"
SYSTEM_ROLE = "System"

# The steering label of the paper at inference: everything good at 4, the unwanted OASST attributes at 0.
DEFAULT_STEER: dict[str, int] = {
    "quality": 4,
    "toxicity": 0,
    "humor": 0,
    "creativity": 0,
    "helpfulness": 4,
    "correctness": 4,
    "coherence": 4,
    "complexity": 4,
    "verbosity": 4,
}


class LabelError(UserError):
    """A label string or label value that does not fit the attribute schema."""


@dataclass(frozen=True)
class AttributeSchema:
    """An ordered set of attributes with an integer value range.

    Args:
        names: attribute names in their canonical order (a subset of ``ALL_ATTRIBUTES`` in reference order, or any
            names for a custom data set).
        min_value: smallest allowed score.
        max_value: largest allowed score.
    """

    names: tuple[str, ...] = ALL_ATTRIBUTES
    min_value: int = MIN_VALUE
    max_value: int = MAX_VALUE
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not names:
            raise LabelError("the attribute schema is empty: list at least one name in `attributes.names`")
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if not name or not name.replace("_", "").isalnum():
                raise LabelError(f"attribute name {name!r} must be a non-empty identifier (`attributes.names`)")
            if name in seen:
                raise LabelError(f"attribute {name!r} is listed twice in `attributes.names`")
            seen[name] = i
        if self.min_value >= self.max_value:
            raise LabelError(f"min_value {self.min_value} must be below max_value {self.max_value}")
        object.__setattr__(self, "_index", seen)

    @classmethod
    def create(
        cls, names: Sequence[str], drop: Iterable[str] = (), min_value: int = MIN_VALUE, max_value: int = MAX_VALUE
    ) -> AttributeSchema:
        """Builds a schema from names, minus those in ``drop`` (the paper's ablations are one ``drop``)."""
        dropped = set(drop)
        unknown = dropped - set(names)
        if unknown:
            raise LabelError(f"`attributes.drop` names {sorted(unknown)} which are not in `attributes.names`")
        return cls(tuple(n for n in names if n not in dropped), min_value, max_value)

    def subset(self, names: Iterable[str]) -> AttributeSchema:
        """The schema restricted to ``names`` (kept in this schema's order; each must be in it)."""
        wanted = set(names)
        for name in wanted:
            self.index(name)
        return AttributeSchema(tuple(n for n in self.names if n in wanted), self.min_value, self.max_value)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index(self, name: str) -> int:
        """Position of ``name`` in the schema order."""
        if name not in self._index:
            raise LabelError(f"unknown attribute {name!r}; known: {', '.join(self.names)}")
        return self._index[name]

    def check_value(self, name: str, value: object) -> int:
        """Returns ``value`` as an int after checking it is an integer score in range for ``name``."""
        self.index(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LabelError(f"attribute {name!r}: value {value!r} is not an integer")
        if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
            raise LabelError(f"attribute {name!r}: value {value!r} is not an integer")
        ivalue = int(value)
        if not self.min_value <= ivalue <= self.max_value:
            raise LabelError(f"attribute {name!r}: value {ivalue} is out of range [{self.min_value}, {self.max_value}]")
        return ivalue

    def parse_label(self, text: str) -> dict[str, int]:
        """Parses ``name:value,name:value`` into an ordered dict, in the order written.

        Raises:
            LabelError: on an empty label, a pair without ``:``, an unknown or duplicate attribute, a value that is
                not an integer or is out of range.
        """
        if not isinstance(text, str) or not text.strip():
            raise LabelError(f"label {text!r} is empty; expected 'name:value,name:value'")
        out: dict[str, int] = {}
        for pair in text.split(","):
            name, sep, raw = pair.partition(":")
            name, raw = name.strip(), raw.strip()
            if not sep or not name or not raw:
                raise LabelError(f"label {text!r}: {pair!r} is not of the form 'name:value'")
            if name not in self._index:
                raise LabelError(f"label {text!r}: unknown attribute {name!r}; known: {', '.join(self.names)}")
            if name in out:
                raise LabelError(f"label {text!r}: attribute {name!r} appears twice")
            digits = raw[1:] if raw[0] in "+-" else raw
            # ASCII digits only: str.isdigit() also accepts "²" (int() then fails) and "٣" (int() reads it as 3)
            if not (digits.isascii() and digits.isdigit()):
                raise LabelError(f"label {text!r}: value {raw!r} of {name!r} is not an integer")
            out[name] = self.check_value(name, int(raw))
        return out

    def format_label(self, values: Mapping[str, object]) -> str:
        """Formats ``values`` as ``name:value,...`` in schema order; only the attributes present are written."""
        for name in values:
            self.index(name)
        return ",".join(f"{n}:{self.check_value(n, values[n])}" for n in self.names if n in values)

    def to_vector(self, values: Mapping[str, object]) -> list[float]:
        """Regression target in schema order, ``MASK_VALUE`` where an attribute is absent."""
        for name in values:
            self.index(name)
        return [float(self.check_value(n, values[n])) if n in values else MASK_VALUE for n in self.names]

    def from_predictions(self, predictions: Sequence[float]) -> dict[str, int]:
        """Turns raw regression outputs into scores: clip to the range, then round half to even."""
        if len(predictions) != len(self.names):
            raise LabelError(
                f"expected {len(self.names)} predictions ({', '.join(self.names)}), got {len(predictions)}"
            )
        return {
            n: int(round(min(max(float(p), self.min_value), self.max_value)))
            for n, p in zip(self.names, predictions, strict=True)
        }

    def steer_label(
        self, overrides: Mapping[str, object] | None = None, defaults: Mapping[str, int] = DEFAULT_STEER
    ) -> str:
        """The label to condition generation on: the defaults for every schema attribute, then ``overrides``."""
        values: dict[str, object] = {n: defaults.get(n, self.max_value) for n in self.names}
        for name, value in (overrides or {}).items():
            self.index(name)
            values[name] = value
        return self.format_label(values)


DEFAULT_SCHEMA = AttributeSchema()
