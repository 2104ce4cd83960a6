"""Chat ``messages`` JSONL (OpenAI / TRL) into the reference SFT and regression lines, and its file:line errors.

The expected lines are written out here from the reference format (ARCHITECTURE: SFT line, regression line), not
produced by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.data.formats import regression_lines, sft_line
from nemo_steerlm.data.io import DataError
from nemo_steerlm.data.prepare import PrepareSpec, SourceSpec, prepare
from nemo_steerlm.data.sources import load_chat_messages

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROWS = [
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!", "label": "verbosity:1,helpfulness:3"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                  {"role": "assistant", "content": "6", "label": "quality:4,correctness:4"}]},
]  # fmt: skip


def write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_messages_become_reference_sft_and_regression_lines(tmp_path):
    convs = load_chat_messages(write(tmp_path / "c.jsonl", ROWS), AttributeSchema())
    first = {"conversations": [{"value": "Hi", "from": "User", "label": None},
                               {"value": "Hello!", "from": "Assistant", "label": "helpfulness:3,verbosity:1"}],
             "system": SYSTEM, "mask": "User", "type": "VALUE_TO_TEXT"}  # fmt: skip
    second = {"conversations": [{"value": "2+2?", "from": "User", "label": None},
                                {"value": "4", "from": "Assistant", "label": None},
                                {"value": "and 3+3?", "from": "User", "label": None},
                                {"value": "6", "from": "Assistant", "label": "quality:4,correctness:4"}],
              "system": "Be brief.", "mask": "User", "type": "VALUE_TO_TEXT"}  # fmt: skip
    assert [sft_line(c) for c in convs] == [json.dumps(first), json.dumps(second)]
    text = (
        "<extra_id_0>System\nBe brief.\n<extra_id_1>User\n2+2?\n<extra_id_1>Assistant\n4\n<extra_id_1>User\nand 3+3?\n"
    )
    text += "<extra_id_1>Assistant\n6\n<extra_id_2>"
    label = [4.0, -100.0, -100.0, -100.0, -100.0, 4.0, -100.0, -100.0, -100.0]
    assert regression_lines(convs[1], AttributeSchema()) == [json.dumps({"text": text, "label": label})]


@pytest.mark.parametrize(
    "row, where",
    [
        ({"messages": []}, "messages"),
        ({"conversations": []}, "unsupported keys ['conversations']"),
        ({"messages": [{"role": "user", "content": "x"}]}, "needs a user message and an assistant answer"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}, "messages[1].role"),
        ({"messages": [{"role": "user", "content": "x"},
                       {"role": "system", "content": "s"}]}, "system only as the first"),
        ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "label": "quality:1"},
                       {"role": "assistant", "content": "y"}]}, "messages[0].label"),
        ({"messages": [{"role": "user", "content": "x"},
                       {"role": "assistant", "content": "y", "label": "verbosity:7"}]}, "messages[1].label"),
        ({"messages": [{"role": "user", "content": "x"},
                       {"role": "tool", "content": "y"}]}, "role 'tool'"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"},
                       {"role": "assistant", "content": "y"}]}, "unsupported keys ['name']"),
    ],
)  # fmt: skip
def test_bad_lines_name_file_line_and_field(tmp_path, row, where):
    path = write(tmp_path / "bad.jsonl", [ROWS[0], row])
    with pytest.raises(DataError) as err:
        load_chat_messages(path, AttributeSchema())
    assert f"{path}:2" in str(err.value) and where in str(err.value)


def test_prepare_splits_chat_messages_by_conversation(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}", "label": "helpfulness:2"}]}
            for i in range(20)]  # fmt: skip
    spec = PrepareSpec([SourceSpec("chat_messages", str(write(tmp_path / "c.jsonl", rows)), repeat=2)], 0.25, 7)
    manifest = prepare(spec, AttributeSchema(), tmp_path / "out")
    rows_out = {k: v["rows"] for k, v in manifest["files"].items() if k.endswith(".jsonl")}
    assert rows_out == {"sft/train.jsonl": 30, "sft/val.jsonl": 5, "regression/train.jsonl": 30,
                        "regression/val.jsonl": 5}  # fmt: skip
    train = [json.loads(x)["conversations"][0]["value"] for x in (tmp_path / "out/sft/train.jsonl").open()]
    val = [json.loads(x)["conversations"][0]["value"] for x in (tmp_path / "out/sft/val.jsonl").open()]
    assert not set(train) & set(val) and set(train) | set(val) == {f"q{i}" for i in range(20)}
