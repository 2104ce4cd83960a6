"""Property-based tests of every reader: any input loads, or raises the project's own error naming the file (and
line); never another exception. Inputs mix arbitrary JSON, near-valid records with one field changed, and raw bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nemo_steerlm.attributes import DEFAULT_SCHEMA, HELPSTEER_ATTRIBUTES, OASST_ATTRIBUTES
from nemo_steerlm.data.formats import read_regression_jsonl, read_sft_jsonl
from nemo_steerlm.data.io import read_jsonl
from nemo_steerlm.data.sources import load_oasst_trees, oasst_threads, validate_helpsteer_row
from nemo_steerlm.errors import UserError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCALARS = st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False) | st.text(max_size=12)
JSON = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=12,
)
LABEL_TEXT = st.lists(
    st.tuples(st.sampled_from([*DEFAULT_SCHEMA.names, "x", ""]), st.sampled_from(["0", "4", "5", "-1", "a", ""])),
    max_size=4,
).map(lambda pairs: ",".join(f"{n}:{v}" for n, v in pairs)) | st.text(max_size=20)


def _mutate(base: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """``base`` with one key replaced by arbitrary JSON, dropped, or kept."""
    obj = json.loads(json.dumps(base))
    key = data.draw(st.sampled_from(sorted(obj)))
    action = data.draw(st.sampled_from(["replace", "drop", "keep"]))
    if action == "replace":
        obj[key] = data.draw(JSON)
    elif action == "drop":
        del obj[key]
    return obj


def _check(lines: list[bytes], reader: Callable[[Path], Any]) -> None:
    fd, name = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
        try:
            reader(Path(name))
        except UserError as err:
            assert name in str(err), str(err)  # names the file
    finally:
        os.unlink(name)


def _conversation(data: st.DataObject) -> dict[str, Any]:
    turns = [
        {"value": data.draw(st.text(max_size=10)), "from": "User", "label": None},
        {"value": data.draw(st.text(max_size=10)), "from": "Assistant", "label": data.draw(LABEL_TEXT | st.none())},
    ]
    turns[data.draw(st.integers(0, 1))] = _mutate(turns[1], data)
    base = {"conversations": turns, "system": "s", "mask": "User", "type": "VALUE_TO_TEXT"}
    return _mutate(base, data)


@SETTINGS
@given(st.data())
def test_sft_reader_loads_or_names_the_file(data: st.DataObject) -> None:
    objs = [data.draw(st.one_of(JSON, st.builds(lambda: None).map(lambda _: _conversation(data)))) for _ in range(3)]
    raw = data.draw(st.lists(st.binary(max_size=20), max_size=1))
    _check([json.dumps(o).encode() for o in objs] + raw, lambda p: read_sft_jsonl(p, DEFAULT_SCHEMA))


@SETTINGS
@given(st.data())
def test_regression_reader_loads_or_names_the_file(data: st.DataObject) -> None:
    base = {"text": data.draw(st.text(max_size=20)), "label": [-100.0] * 4 + [3.0, 4.0, 4.0, 2.0, 2.0]}
    objs = [_mutate(base, data), data.draw(JSON)]
    _check([json.dumps(o).encode() for o in objs], lambda p: read_regression_jsonl(p, DEFAULT_SCHEMA))


@SETTINGS
@given(st.data())
def test_helpsteer_row_validation_raises_only_the_projects_error(data: st.DataObject) -> None:
    base = {"prompt": "p", "response": "r", **{name: 2 for name in HELPSTEER_ATTRIBUTES}}
    obj = _mutate(base, data)
    try:
        validate_helpsteer_row(obj, DEFAULT_SCHEMA, "rows.jsonl", 7)
    except UserError as err:
        assert "rows.jsonl:7" in str(err)


def _node(data: st.DataObject, depth: int) -> Any:
    if data.draw(st.integers(0, 9)) == 0:
        return data.draw(JSON)
    labels = {n: {"value": data.draw(st.floats(-0.5, 1.5) | JSON), "count": 1} for n in OASST_ATTRIBUTES[:2]}
    node = {
        "role": data.draw(st.sampled_from(["prompter", "assistant", "bot"])),
        "text": data.draw(st.text(max_size=6)),
        "labels": labels if data.draw(st.booleans()) else data.draw(JSON),
        "replies": [_node(data, depth - 1) for _ in range(data.draw(st.integers(0, 2 if depth > 0 else 0)))],
    }
    return _mutate(node, data) if data.draw(st.booleans()) else node


@SETTINGS
@given(st.data())
def test_oasst_reader_and_threads_raise_only_the_projects_error(data: st.DataObject) -> None:
    trees = [{"message_tree_id": "t", "prompt": _node(data, 3)} for _ in range(2)]
    trees = [_mutate(t, data) if data.draw(st.booleans()) else t for t in trees]

    def read(path: Path) -> None:
        for tree in load_oasst_trees(path):
            oasst_threads(tree, DEFAULT_SCHEMA)

    _check([json.dumps(t).encode() for t in trees], read)


FRAGMENTS = [b"{", b"}", b"[", b"]", b'"a"', b":", b",", b"1", b"null", b'"\\ud800"', b"\\", b"\xff", b"NaN", b" "]
NEAR_JSON = st.lists(st.sampled_from(FRAGMENTS), max_size=12).map(b"".join)


@SETTINGS
@given(st.lists(st.binary(max_size=40) | NEAR_JSON, min_size=0, max_size=4))
def test_jsonl_reader_on_raw_bytes(lines: list[bytes]) -> None:
    _check(lines, lambda p: list(read_jsonl(p)))


@SETTINGS
@given(LABEL_TEXT)
def test_label_strings_parse_or_raise_label_error(text: str) -> None:
    try:
        values = DEFAULT_SCHEMA.parse_label(text)
    except UserError:
        return
    assert all(name in DEFAULT_SCHEMA.names and 0 <= v <= 4 for name, v in values.items())
