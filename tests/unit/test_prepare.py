"""The prepare library entry: splits, repeats, manifest, and no partial output on bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from nemo_steerlm.attributes import DEFAULT_SCHEMA
from nemo_steerlm.data.formats import read_regression_jsonl, read_sft_jsonl
from nemo_steerlm.data.io import DataError
from nemo_steerlm.data.prepare import PrepareSpec, SourceSpec, prepare
from nemo_steerlm.resources import helpsteer_sample_path

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "oasst_fixture.trees.jsonl"
SAMPLE = str(helpsteer_sample_path())
FILES = ["manifest.json", "regression/train.jsonl", "regression/val.jsonl", "sft/train.jsonl", "sft/val.jsonl"]


def _raw_rows() -> list[dict]:
    return [json.loads(x) for x in Path(SAMPLE).read_text(encoding="utf-8").splitlines()]


def _prompts(path: Path) -> list[str]:
    return [c.turns[0].value for c in read_sft_jsonl(path, DEFAULT_SCHEMA)]


def test_val_fraction_zero_keeps_input_order(tmp_path: Path) -> None:
    manifest = prepare(PrepareSpec([SourceSpec("helpsteer", SAMPLE)], 0.0, 1), DEFAULT_SCHEMA, tmp_path)
    rows = _raw_rows()
    convs = read_sft_jsonl(tmp_path / "sft" / "train.jsonl", DEFAULT_SCHEMA)
    assert [(c.turns[0].value, c.turns[1].value) for c in convs] == [(r["prompt"], r["response"]) for r in rows]
    assert (tmp_path / "sft" / "val.jsonl").read_bytes() == b""
    assert (tmp_path / "regression" / "val.jsonl").read_bytes() == b""
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.json*")) == FILES
    assert {k: v["rows"] for k, v in manifest["files"].items()} == {
        "sft/train.jsonl": 399, "regression/train.jsonl": 399, "sft/val.jsonl": 0, "regression/val.jsonl": 0,
    }  # fmt: skip
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    for rel, info in manifest["files"].items():
        assert hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest() == info["sha256"]
    assert manifest["attributes"] == list(DEFAULT_SCHEMA.names)
    assert manifest["sources"][0]["path"] == SAMPLE and manifest["sources"][0]["repeat"] == 1
    assert manifest["seed"] == 1 and manifest["val_fraction"] == 0.0 and manifest["package_version"]


def test_val_split_by_prompt(tmp_path: Path) -> None:
    manifest = prepare(PrepareSpec([SourceSpec("helpsteer", SAMPLE)], 0.2, 7), DEFAULT_SCHEMA, tmp_path / "a")
    train, val = _prompts(tmp_path / "a/sft/train.jsonl"), _prompts(tmp_path / "a/sft/val.jsonl")
    assert not set(train) & set(val)
    assert len(set(val)) == round(111 * 0.2)
    assert len(train) + len(val) == 399
    order = [r["prompt"] for r in _raw_rows()]
    assert train == [p for p in order if p not in set(val)]  # input order on each side
    assert manifest["files"]["regression/val.jsonl"]["rows"] == len(val)
    again = prepare(PrepareSpec([SourceSpec("helpsteer", SAMPLE)], 0.2, 7), DEFAULT_SCHEMA, tmp_path / "b")
    assert again["files"] == manifest["files"]  # same seed, same bytes
    other = prepare(PrepareSpec([SourceSpec("helpsteer", SAMPLE)], 0.2, 8), DEFAULT_SCHEMA, tmp_path / "c")
    assert set(_prompts(tmp_path / "c/sft/val.jsonl")) != set(val)
    assert other["seed"] == 8


def test_repeat_applies_to_train_only(tmp_path: Path) -> None:
    spec = PrepareSpec([SourceSpec("oasst", str(FIXTURE), 2), SourceSpec("helpsteer", SAMPLE, 3)], 0.1, 10)
    manifest = prepare(spec, DEFAULT_SCHEMA, tmp_path)
    src = {s["name"]: s["conversations"] for s in manifest["sources"]}
    files = manifest["files"]
    assert files["sft/train.jsonl"]["rows"] == 2 * src["oasst"]["train"] + 3 * src["helpsteer"]["train"]
    assert files["sft/val.jsonl"]["rows"] == src["oasst"]["val"] + src["helpsteer"]["val"]
    lines = (tmp_path / "sft/train.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines[0] == lines[1] != lines[2]  # each line repeated in a row, OASST first
    hs = lines[2 * src["oasst"]["train"] :]
    assert hs[0] == hs[1] == hs[2] != hs[3]
    # oasst: 4 trees, int(4 * 0.9) = 3 train trees; regression rows = labelled assistant turns of train threads
    reg = read_regression_jsonl(tmp_path / "regression/train.jsonl", DEFAULT_SCHEMA)
    assert len(reg) == files["regression/train.jsonl"]["rows"]


def test_own_validation_split_used_as_is(tmp_path: Path) -> None:
    data = tmp_path / "hs"
    data.mkdir()
    rows = Path(SAMPLE).read_text(encoding="utf-8").splitlines()
    (data / "train.jsonl").write_text("\n".join(rows[:300]) + "\n", encoding="utf-8")
    (data / "validation.jsonl").write_text("\n".join(rows[300:]) + "\n", encoding="utf-8")
    manifest = prepare(PrepareSpec([SourceSpec("helpsteer2", str(data), 2)], 0.5, 0), DEFAULT_SCHEMA, tmp_path / "o")
    assert manifest["files"]["sft/train.jsonl"]["rows"] == 600
    assert manifest["files"]["sft/val.jsonl"]["rows"] == 99
    assert manifest["sources"][0]["validation"] == "own split"


def _bad_file(tmp_path: Path, kind: str) -> Path:
    good = Path(SAMPLE).read_bytes().splitlines(keepends=True)[:2]
    row = json.loads(good[0])
    bad: bytes
    if kind == "malformed":
        bad = b'{"prompt": "x", "response": \n'
    elif kind == "non_utf8":
        bad = json.dumps({**row, "response": "caf"}).encode().replace(b"caf", b"caf\xe9") + b"\n"
    elif kind == "empty":
        return _write(tmp_path / "data.jsonl", b"")
    else:
        change = {
            "missing": {"verbosity": ...}, "score5": {"helpfulness": 5}, "score_str": {"correctness": "3"},
            "score_float": {"coherence": 2.5}, "empty_prompt": {"prompt": ""}, "empty_response": {"response": ""},
        }[kind]  # fmt: skip
        obj = {k: v for k, v in {**row, **change}.items() if v is not ...}
        bad = json.dumps(obj).encode() + b"\n"
    return _write(tmp_path / "data.jsonl", b"".join(good) + bad)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("malformed", ":3: malformed JSON"),
        ("non_utf8", ":3: bytes are not valid UTF-8"),
        ("missing", ":3: field 'verbosity': missing"),
        ("score5", ":3: field 'helpfulness': value 5 is out of range [0, 4]"),
        ("score_str", ":3: field 'correctness': value '3' is not an integer"),
        ("score_float", ":3: field 'coherence': value 2.5 is not an integer"),
        ("empty_prompt", ":3: field 'prompt': is empty"),
        ("empty_response", ":3: field 'response': is empty"),
        ("empty", ": the file is empty"),
    ],
)
def test_bad_input_writes_nothing(tmp_path: Path, kind: str, where: str) -> None:
    path = _bad_file(tmp_path, kind)
    out = tmp_path / "out"
    spec = PrepareSpec([SourceSpec("helpsteer", SAMPLE), SourceSpec("helpsteer", str(path))], 0.1, 0)
    with pytest.raises(DataError) as info:
        prepare(spec, DEFAULT_SCHEMA, out)
    assert str(info.value).startswith(f"{path}{where}")
    assert not out.exists() or not any(out.rglob("*"))


def test_bad_oasst_writes_nothing_and_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(PrepareSpec([SourceSpec("helpsteer", SAMPLE)], 0.1, 0), DEFAULT_SCHEMA, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "trees.jsonl"
    shutil.copy(FIXTURE, bad)
    with bad.open("a") as fh:
        fh.write('{"message_tree_id": "x", "prompt": {"role": "prompter", "text": ""}}\n')
    with pytest.raises(DataError, match=r"trees.jsonl:5: field 'prompt.text'"):
        prepare(PrepareSpec([SourceSpec("oasst", str(bad))], 0.1, 0), DEFAULT_SCHEMA, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        (PrepareSpec([SourceSpec("helpsteer", SAMPLE)], 1.0, 0), "val_fraction"),
        (PrepareSpec([SourceSpec("helpsteer", SAMPLE)], -0.1, 0), "val_fraction"),
        (PrepareSpec([SourceSpec("helpsteer", SAMPLE, 0)], 0.1, 0), "repeat"),
        (PrepareSpec([SourceSpec("alpaca", SAMPLE)], 0.1, 0), "name"),
        (PrepareSpec([], 0.1, 0), "sources"),
    ],
)
def test_bad_spec(tmp_path: Path, spec: PrepareSpec, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        prepare(spec, DEFAULT_SCHEMA, tmp_path / "out")
    assert not (tmp_path / "out").exists()
