"""HelpSteer loading and validation, the OpenAssistant thread mapping and split, and merging with repeats."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from nemo_steerlm.attributes import ALL_ATTRIBUTES, DEFAULT_SCHEMA, AttributeSchema
from nemo_steerlm.data.formats import regression_lines, sft_line
from nemo_steerlm.data.io import DataError
from nemo_steerlm.data.sources import (
    helpsteer_to_conversation,
    load_helpsteer,
    load_oasst_trees,
    merge_sources,
    oasst_threads,
    split_oasst,
)
from nemo_steerlm.resources import helpsteer_sample_path

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURE = DATA / "oasst_fixture.trees.jsonl"
SYS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TAIL = f', "system": "{SYS}", "mask": "User", "type": "VALUE_TO_TEXT"}}'

# Hand-written expectations for the fixture: labels are round(value * 4), half to even, in the order quality,
# toxicity, humor, creativity; the unlabelled assistant node has no "label" key; tree t3 (one turn) yields nothing.
EXPECTED_OASST = {
    "t1": [
        '{"conversations": [{"value": "What is the capital of France?", "from": "User", "label": null}, '
        '{"value": "Paris.", "from": "Assistant", "label": "quality:2,toxicity:0,humor:2,creativity:4"}, '
        '{"value": "And of Italy?", "from": "User", "label": null}, '
        '{"value": "Rome — «Roma» in Italian.", "from": "Assistant", "label": "quality:4,toxicity:0"}]' + TAIL,
        '{"conversations": [{"value": "What is the capital of France?", "from": "User", "label": null}, '
        '{"value": "It is Paris, on the Seine.", "from": "Assistant", "label": "quality:3,humor:1"}]' + TAIL,
    ],
    "t2": [
        '{"conversations": [{"value": "Tell me a joke.", "from": "User", "label": null}, '
        '{"value": "Why did the chicken cross the road?\\nTo get to the other side.", "from": "Assistant"}]' + TAIL,
        '{"conversations": [{"value": "Tell me a joke.", "from": "User", "label": null}, '
        '{"value": "I would rather not.", "from": "Assistant", "label": ""}]' + TAIL,
    ],
    "t3": [],
    "t4": [
        '{"conversations": [{"value": "Write a haiku about rain.", "from": "User", "label": null}, '
        '{"value": "Soft rain on the roof\\nwhispers to the sleeping town\\npuddles hold the sky", '
        '"from": "Assistant", "label": "quality:2,creativity:2"}, '
        '{"value": "Now one about snow.", "from": "User", "label": null}]' + TAIL,
    ],
}


def test_sample_loads() -> None:
    rows = load_helpsteer(helpsteer_sample_path(), DEFAULT_SCHEMA)
    assert list(rows) == ["train"]
    assert len(rows["train"]) == 399
    assert len({r.prompt for r in rows["train"]}) == 111
    assert rows["train"][0].scores == {
        "helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 2, "verbosity": 2,
    }  # fmt: skip


def test_label_only_schema_attributes() -> None:
    schema = AttributeSchema.create(ALL_ATTRIBUTES, drop=["verbosity", "humor"])
    row = load_helpsteer(helpsteer_sample_path(), schema)["train"][0]
    conv = helpsteer_to_conversation(row, schema)
    assert conv.turns[1].label == "helpfulness:3,correctness:4,coherence:4,complexity:2"
    (line,) = regression_lines(conv, schema)
    assert json.loads(line)["label"] == [-100.0, -100.0, -100.0, 3.0, 4.0, 4.0, 2.0]


GOOD = {"prompt": "p", "response": "r", "helpfulness": 1, "correctness": 2, "coherence": 3, "complexity": 4,
        "verbosity": 0}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field", "needle"),
    [
        ({"helpfulness": 5}, "helpfulness", "value 5 is out of range [0, 4]"),
        ({"correctness": -1}, "correctness", "out of range"),
        ({"coherence": "3"}, "coherence", "not an integer"),
        ({"complexity": 2.5}, "complexity", "not an integer"),
        ({"complexity": 3.0}, "complexity", "not an integer"),
        ({"verbosity": True}, "verbosity", "not an integer"),
        ({"verbosity": None}, "verbosity", "not an integer"),
        ({"prompt": ""}, "prompt", "empty"),
        ({"response": "  \n"}, "response", "empty"),
        ({"response": ["a"]}, "response", "expected a string"),
        ({"helpfulness": ...}, "helpfulness", "missing"),
        ({"prompt": ...}, "prompt", "missing"),
    ],
)
def test_helpsteer_row_errors(tmp_path: Path, change: dict, field: str, needle: str) -> None:
    bad = {k: v for k, v in {**GOOD, **change}.items() if v is not ...}
    p = tmp_path / "data.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in (GOOD, GOOD, bad, GOOD)) + "\n")
    with pytest.raises(DataError) as info:
        load_helpsteer(p, DEFAULT_SCHEMA)
    assert str(info.value).startswith(f"{p}:3: field '{field}': ")
    assert needle in str(info.value)


def test_split_dict_folder_and_json_array(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(json.dumps(GOOD) + "\n")
    (tmp_path / "validation.json").write_text(json.dumps([GOOD, {**GOOD, "prompt": "q"}]))
    by_folder = load_helpsteer(tmp_path, DEFAULT_SCHEMA)
    assert {k: len(v) for k, v in by_folder.items()} == {"train": 1, "validation": 2}
    by_dict = load_helpsteer({"train": tmp_path / "train.jsonl"}, DEFAULT_SCHEMA)
    assert list(by_dict) == ["train"]
    (tmp_path / "bad.json").write_text(json.dumps([GOOD, {**GOOD, "verbosity": 7}]))
    with pytest.raises(DataError, match=r"bad.json: item 2: field 'verbosity'"):
        load_helpsteer(tmp_path / "bad.json", DEFAULT_SCHEMA)


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "prompt": "q"}]), p)
    assert [r.prompt for r in load_helpsteer(p, DEFAULT_SCHEMA)["train"]] == ["p", "q"]
    pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "helpfulness": 9}]), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 2: field 'helpfulness'"):
        load_helpsteer(tmp_path / "bad.parquet", DEFAULT_SCHEMA)


def test_hub_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataError, match=r"dataset\.path=/path/to/train\.jsonl"):
        load_helpsteer("nvidia/HelpSteer", DEFAULT_SCHEMA)
    assert time.monotonic() - start < 5


def test_hub_unreachable_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(DataError, match="unreachable"):
        load_helpsteer("nvidia/HelpSteer2", DEFAULT_SCHEMA)
    assert time.monotonic() - start < 10


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_helpsteer(str(tmp_path / "missing"), DEFAULT_SCHEMA)


# --------------------------------------------------------------------------------------------------- OASST


def test_oasst_threads_match_hand_written() -> None:
    trees = load_oasst_trees(FIXTURE)
    assert [t["message_tree_id"] for t in trees] == ["t1", "t2", "t3", "t4"]
    for tree in trees:
        got = [sft_line(c) for c in oasst_threads(tree, DEFAULT_SCHEMA)]
        assert got == EXPECTED_OASST[tree["message_tree_id"]], tree["message_tree_id"]


def test_oasst_regression_lines() -> None:
    tree = load_oasst_trees(FIXTURE)[0]
    first = oasst_threads(tree, DEFAULT_SCHEMA)[0]
    lines = [json.loads(x) for x in regression_lines(first, DEFAULT_SCHEMA)]
    assert [x["label"] for x in lines] == [
        [2.0, 0.0, 2.0, 4.0, -100.0, -100.0, -100.0, -100.0, -100.0],
        [4.0, 0.0, -100.0, -100.0, -100.0, -100.0, -100.0, -100.0, -100.0],
    ]
    assert lines[0]["text"] == (
        f"<extra_id_0>System\n{SYS}\n<extra_id_1>User\nWhat is the capital of France?\n"
        "<extra_id_1>Assistant\nParis.\n<extra_id_2>"
    )
    assert lines[1]["text"].endswith(
        "<extra_id_1>User\nAnd of Italy?\n<extra_id_1>Assistant\nRome — «Roma» in Italian.\n<extra_id_2>"
    )


def test_oasst_bad_tree(tmp_path: Path) -> None:
    tree = json.loads(FIXTURE.read_text().splitlines()[0])
    tree["prompt"]["replies"][0]["role"] = "bot"
    p = tmp_path / "trees.jsonl"
    p.write_text(FIXTURE.read_text() + json.dumps(tree) + "\n")
    with pytest.raises(DataError, match=r"trees.jsonl:5: field 'prompt.replies\[0\].role'"):
        load_oasst_trees(p)


def test_split_oasst_matches_reference_seed_10() -> None:
    trees = [{"message_tree_id": f"t{i}"} for i in range(200)]
    expected = list(trees)
    random.seed(10)  # the reference: random.seed(10); random.shuffle(trees); 95% train
    random.shuffle(expected)
    train, val = split_oasst(trees)
    assert train == expected[:190] and val == expected[190:]
    assert trees[0]["message_tree_id"] == "t0", "the input list is not shuffled in place"
    assert not {t["message_tree_id"] for t in train} & {t["message_tree_id"] for t in val}


def test_merge_sources_repeats_each_line_in_a_row() -> None:
    a = oasst_threads(load_oasst_trees(FIXTURE)[0], DEFAULT_SCHEMA)
    b = oasst_threads(load_oasst_trees(FIXTURE)[3], DEFAULT_SCHEMA)
    merged = merge_sources([(a, 2), (b, 3)])
    assert merged == [a[0], a[0], a[1], a[1], b[0], b[0], b[0]]
    with pytest.raises(ValueError, match="repeat"):
        merge_sources([(a, 0)])
