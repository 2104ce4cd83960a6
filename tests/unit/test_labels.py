"""Property tests of the label grammar: format_label / parse_label / to_vector round trips and parse errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_steerlm.attributes import ALL_ATTRIBUTES, DEFAULT_SCHEMA, MASK_VALUE, AttributeSchema, LabelError

SCHEMA = DEFAULT_SCHEMA
scores = st.dictionaries(st.sampled_from(ALL_ATTRIBUTES), st.integers(0, 4), min_size=1)


@given(scores)
def test_format_parse_round_trip(values: dict[str, int]) -> None:
    text = SCHEMA.format_label(values)
    parsed = SCHEMA.parse_label(text)
    assert parsed == values
    # written in schema order, whatever the insertion order
    assert list(parsed) == [n for n in ALL_ATTRIBUTES if n in values]
    assert text == ",".join(f"{n}:{values[n]}" for n in ALL_ATTRIBUTES if n in values)


@given(scores)
def test_to_vector_positions(values: dict[str, int]) -> None:
    vec = SCHEMA.to_vector(SCHEMA.parse_label(SCHEMA.format_label(values)))
    assert len(vec) == 9
    for i, name in enumerate(ALL_ATTRIBUTES):
        assert vec[i] == (float(values[name]) if name in values else MASK_VALUE)
        assert isinstance(vec[i], float)


@given(scores, st.randoms())
def test_parse_accepts_any_order(values: dict[str, int], rnd) -> None:
    pairs = [f"{k}:{v}" for k, v in values.items()]
    rnd.shuffle(pairs)
    assert SCHEMA.parse_label(",".join(pairs)) == values


@given(st.text(alphabet=st.characters(categories=("Ll",)), min_size=1, max_size=12).filter(lambda s: s not in SCHEMA))
def test_unknown_attribute_rejected(name: str) -> None:
    with pytest.raises(LabelError, match="unknown attribute"):
        SCHEMA.parse_label(f"quality:1,{name}:2")


@given(st.sampled_from(ALL_ATTRIBUTES), st.integers(0, 4), st.integers(0, 4))
def test_duplicate_rejected(name: str, a: int, b: int) -> None:
    with pytest.raises(LabelError, match="twice"):
        SCHEMA.parse_label(f"{name}:{a},{name}:{b}")


@given(st.sampled_from(ALL_ATTRIBUTES), st.integers().filter(lambda v: not 0 <= v <= 4))
def test_out_of_range_rejected(name: str, value: int) -> None:
    with pytest.raises(LabelError, match="out of range"):
        SCHEMA.parse_label(f"{name}:{value}")
    with pytest.raises(LabelError):
        SCHEMA.format_label({name: value})


@pytest.mark.parametrize("raw", ["2.5", "3.0", "abc", "", "٣", "²", "+", "1e0", "0x3", "True"])
def test_non_integer_rejected(raw: str) -> None:
    with pytest.raises(LabelError):
        SCHEMA.parse_label(f"quality:{raw}")


@pytest.mark.parametrize("text", ["", " ", "quality", "quality:", ":3", "quality:3,", "quality=3", None, 3])
def test_malformed_rejected(text) -> None:
    with pytest.raises(LabelError):
        SCHEMA.parse_label(text)


@given(st.text(max_size=40))
def test_parse_raises_only_label_error(text: str) -> None:
    try:
        out = SCHEMA.parse_label(text)
    except LabelError:
        return
    assert all(name in SCHEMA and 0 <= v <= 4 for name, v in out.items())


@pytest.mark.parametrize("value", [True, False, 2.5, "3", None, float("nan")])
def test_check_value_rejects_non_integers(value) -> None:
    with pytest.raises(LabelError):
        SCHEMA.check_value("quality", value)


def test_dropped_schema() -> None:
    schema = AttributeSchema.create(ALL_ATTRIBUTES, drop=["humor"])
    assert "humor" not in schema
    with pytest.raises(LabelError, match="unknown attribute"):
        schema.parse_label("humor:2")


@given(st.sets(st.sampled_from(ALL_ATTRIBUTES), min_size=1))
def test_subset_keeps_schema_order_and_its_steer_label_only_names_the_subset(names: set[str]) -> None:
    sub = SCHEMA.subset(sorted(names))  # input order must not matter
    assert sub.names == tuple(n for n in ALL_ATTRIBUTES if n in names)
    assert list(sub.parse_label(sub.steer_label())) == list(sub.names)
    assert SCHEMA.parse_label(sub.steer_label()) == {n: SCHEMA.parse_label(SCHEMA.steer_label())[n] for n in sub.names}


def test_subset_of_unknown_name_is_refused() -> None:
    with pytest.raises(LabelError, match="unknown attribute 'sarcasm'"):
        SCHEMA.subset(["verbosity", "sarcasm"])


@given(
    st.sampled_from(ALL_ATTRIBUTES), st.text(alphabet=st.characters(categories=("Nd", "No")), min_size=1, max_size=3)
)
def test_only_ascii_digits_are_values(name: str, raw: str) -> None:
    # str.isdigit() accepts "²" and "٣"; the grammar takes ASCII digits only
    try:
        out = SCHEMA.parse_label(f"{name}:{raw}")
    except LabelError:
        return
    assert raw.isascii() and out == {name: int(raw)}
