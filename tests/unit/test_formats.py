# ruff: noqa: E501  (the reference lines below are kept verbatim, one line each)
"""Byte compatibility with the reference SFT / regression lines, and validation of the two formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_steerlm.attributes import DEFAULT_SCHEMA
from nemo_steerlm.data.formats import read_regression_jsonl, read_sft_jsonl, regression_lines, sft_line
from nemo_steerlm.data.io import DataError
from nemo_steerlm.data.sources import helpsteer_to_conversation, load_helpsteer
from nemo_steerlm.resources import helpsteer_sample_path

DATA = Path(__file__).resolve().parents[1] / "data"

# Written out by hand (not produced by our code): the reference json.dumps(obj, ensure_ascii=False) lines.
SYS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
EXPECTED = {
    # sample line 1
    1: (
        r"""{"conversations": [{"value": "What are the three most important things to consider when deciding what technology to use to build an assist device to help an elderly person with basic needs?", "from": "User", "label": null}, {"value": "To build an assistive device to help an elderly person with basic needs, one must consider three crucial things: safety, compatibility, and ease of use. Safety is paramount, as the device must not cause harm to the user. Compatibility with the user's environment and other devices is also essential. Finally, the device must be simple enough for the elderly person to operate.", "from": "Assistant", "label": "helpfulness:3,correctness:4,coherence:4,complexity:2,verbosity:2"}], "system": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.", "mask": "User", "type": "VALUE_TO_TEXT"}""",
        r"""{"text": "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.\n<extra_id_1>User\nWhat are the three most important things to consider when deciding what technology to use to build an assist device to help an elderly person with basic needs?\n<extra_id_1>Assistant\nTo build an assistive device to help an elderly person with basic needs, one must consider three crucial things: safety, compatibility, and ease of use. Safety is paramount, as the device must not cause harm to the user. Compatibility with the user's environment and other devices is also essential. Finally, the device must be simple enough for the elderly person to operate.\n<extra_id_2>", "label": [-100.0, -100.0, -100.0, -100.0, 3.0, 4.0, 4.0, 2.0, 2.0]}""",
    ),
    # sample line 319: quotes and newlines in the response
    319: (
        r"""{"conversations": [{"value": "What are some words that rhyme with \"flung\"?", "from": "User", "label": null}, {"value": "stung\nflung\n\nThese are the only words that rhyme with \"flung\" that are at least 4 letters long.", "from": "Assistant", "label": "helpfulness:3,correctness:3,coherence:3,complexity:1,verbosity:1"}], "system": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.", "mask": "User", "type": "VALUE_TO_TEXT"}""",
        r"""{"text": "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.\n<extra_id_1>User\nWhat are some words that rhyme with \"flung\"?\n<extra_id_1>Assistant\nstung\nflung\n\nThese are the only words that rhyme with \"flung\" that are at least 4 letters long.\n<extra_id_2>", "label": [-100.0, -100.0, -100.0, -100.0, 3.0, 3.0, 3.0, 1.0, 1.0]}""",
    ),
    # sample line 377: a non-ASCII apostrophe, written raw (ensure_ascii=False), and a zero score
    377: (
        r"""{"conversations": [{"value": "What are some of the pros and cons of a tow truck driver’s job?", "from": "User", "label": null}, {"value": "Pros:\n\n- Good pay\n- Flexible hours\n- Interesting and varied work\n- Chance to help people in need\nCons:\n\n- Dangerous work\n- Long hours\n- Physical labor\n- Seasonal work", "from": "Assistant", "label": "helpfulness:2,correctness:3,coherence:3,complexity:1,verbosity:0"}], "system": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.", "mask": "User", "type": "VALUE_TO_TEXT"}""",
        r"""{"text": "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.\n<extra_id_1>User\nWhat are some of the pros and cons of a tow truck driver’s job?\n<extra_id_1>Assistant\nPros:\n\n- Good pay\n- Flexible hours\n- Interesting and varied work\n- Chance to help people in need\nCons:\n\n- Dangerous work\n- Long hours\n- Physical labor\n- Seasonal work\n<extra_id_2>", "label": [-100.0, -100.0, -100.0, -100.0, 2.0, 3.0, 3.0, 1.0, 0.0]}""",
    ),
}


@pytest.fixture(scope="module")
def sample_rows():
    return load_helpsteer(helpsteer_sample_path(), DEFAULT_SCHEMA)["train"]


@pytest.mark.parametrize("line", sorted(EXPECTED))
def test_reference_bytes(sample_rows, line: int) -> None:
    conv = helpsteer_to_conversation(sample_rows[line - 1], DEFAULT_SCHEMA)
    sft, reg = EXPECTED[line]
    assert sft_line(conv) == sft
    assert regression_lines(conv, DEFAULT_SCHEMA) == [reg]
    assert SYS in sft


def test_sft_round_trip(tmp_path: Path, sample_rows) -> None:
    lines = [sft_line(helpsteer_to_conversation(r, DEFAULT_SCHEMA)) for r in sample_rows]
    p = tmp_path / "sft.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    convs = read_sft_jsonl(p, DEFAULT_SCHEMA)
    assert [sft_line(c) for c in convs] == lines


def test_reads_nemo_aligner_regression_example() -> None:
    path = DATA / "nemo_aligner_regression_format_example.jsonl"
    rows = read_regression_jsonl(path, DEFAULT_SCHEMA)
    assert len(rows) == 8
    assert rows[0].label == [-100.0, -100.0, -100.0, -100.0, 4.0, 4.0, 4.0, 3.0, 2.0]
    # our serialisation reproduces the reference file byte for byte
    original = path.read_text(encoding="utf-8").splitlines()
    assert [json.dumps({"text": r.text, "label": r.label}, ensure_ascii=False) for r in rows] == original


def _sft_obj(label="helpfulness:3", user_label=None, role="Assistant", **top):
    obj = {
        "conversations": [
            {"value": "Hi?", "from": "User", "label": user_label},
            {"value": "Hello.", "from": role, "label": label},
        ],
        "system": SYS,
        "mask": "User",
        "type": "VALUE_TO_TEXT",
    }
    obj.update(top)
    return obj


@pytest.mark.parametrize(
    ("bad", "field", "needle"),
    [
        (_sft_obj(label="helpfulness:5"), "conversations[1].label", "out of range"),
        (_sft_obj(label="helpfulness=3"), "conversations[1].label", "not of the form"),
        (_sft_obj(label="kindness:3"), "conversations[1].label", "unknown attribute"),
        (_sft_obj(label="helpfulness:3,helpfulness:2"), "conversations[1].label", "twice"),
        (_sft_obj(label="helpfulness:2.5"), "conversations[1].label", "not an integer"),
        (_sft_obj(label=3), "conversations[1].label", "string or null"),
        (_sft_obj(user_label="helpfulness:3"), "conversations[0].label", "user turn"),
        (_sft_obj(role="Bot"), "conversations[1].from", "not one of"),
        (_sft_obj(conversations=[]), "conversations", "non-empty"),
        (_sft_obj(mask="Assistant"), "mask", "only"),
        ({"system": SYS, "mask": "User", "type": "VALUE_TO_TEXT"}, "conversations", "missing"),
    ],
)
def test_sft_errors_name_file_line_field(tmp_path: Path, bad: dict, field: str, needle: str) -> None:
    p = tmp_path / "sft.jsonl"
    p.write_text(json.dumps(_sft_obj()) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=needle) as info:
        read_sft_jsonl(p, DEFAULT_SCHEMA)
    assert str(info.value).startswith(f"{p}:2: field '{field}': ")


def test_sft_accepts_empty_and_missing_labels(tmp_path: Path) -> None:
    obj = _sft_obj(label="")
    no_key = _sft_obj()
    del no_key["conversations"][1]["label"]
    p = tmp_path / "sft.jsonl"
    p.write_text(json.dumps(obj) + "\n" + json.dumps(no_key) + "\n", encoding="utf-8")
    a, b = read_sft_jsonl(p, DEFAULT_SCHEMA)
    assert regression_lines(a, DEFAULT_SCHEMA) == [] and regression_lines(b, DEFAULT_SCHEMA) == []
    assert '"label"' not in json.dumps(b.to_json()["conversations"][1])


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"text": "<extra_id_0>System\nx\n<extra_id_2>", "label": [1.0] * 8}, "label"),
        ({"text": "<extra_id_0>System\nx\n<extra_id_2>", "label": [1.0] * 8 + [5.0]}, "label.verbosity"),
        ({"text": "<extra_id_0>System\nx\n<extra_id_2>", "label": [1.0] * 8 + ["3"]}, "label.verbosity"),
        ({"text": "<extra_id_0>System\nx\n<extra_id_2>", "label": [True] + [1.0] * 8}, "label.quality"),
        ({"text": "no markers", "label": [1.0] * 9}, "text"),
    ],
)
def test_regression_errors(tmp_path: Path, bad: dict, field: str) -> None:
    p = tmp_path / "reg.jsonl"
    p.write_text(json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_regression_jsonl(p, DEFAULT_SCHEMA)
    assert str(info.value).startswith(f"{p}:1: field '{field}': ")
