"""The real `nemo-steerlm prepare` CLI on the shipped HelpSteer sample: outputs, reference bytes, errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_steerlm.resources import helpsteer_sample_path

pytestmark = pytest.mark.integration

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
HS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
ALL = ["quality", "toxicity", "humor", "creativity", *HS]


def run_cli(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    cmd = (
        [sys.executable, "-m", "nemo_steerlm.recipes.prepare"]
        if module
        else [sys.executable, "-m", "nemo_steerlm.cli", "prepare"]
    )
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)


def reference_lines(rows: list[dict]) -> tuple[list[str], list[str]]:
    """What NeMo-Aligner's preprocess_helpsteer_data.py + process_to_regression_format.py write (rewritten here)."""
    sft, reg = [], []
    for r in rows:
        label = ",".join(f"{a}:{r[a]}" for a in HS)
        obj = {
            "conversations": [
                {"value": r["prompt"], "from": "User", "label": None},
                {"value": r["response"], "from": "Assistant", "label": label},
            ],
            "system": SYSTEM,
            "mask": "User",
            "type": "VALUE_TO_TEXT",
        }
        sft.append(json.dumps(obj, ensure_ascii=False))
        text = (
            f"<extra_id_0>System\n{SYSTEM}\n<extra_id_1>User\n{r['prompt']}\n"
            f"<extra_id_1>Assistant\n{r['response']}\n<extra_id_2>"
        )
        given = dict(p.split(":") for p in label.split(","))
        reg.append(json.dumps({"text": text, "label": [float(given.get(a, -100)) for a in ALL]}, ensure_ascii=False))
    return sft, reg


def test_default_prepare_on_shipped_sample(tmp_path: Path) -> None:
    out = tmp_path / "d"
    res = run_cli(f"output_dir={out}")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {name: entry["rows"] for name, entry in manifest["files"].items()}
    n_train, n_val = rows["sft/train.jsonl"], rows["sft/val.jsonl"]
    assert n_train + n_val == 399 and n_val > 0
    assert rows["regression/train.jsonl"] == n_train and rows["regression/val.jsonl"] == n_val
    for rel in ("sft/train.jsonl", "sft/val.jsonl", "regression/train.jsonl", "regression/val.jsonl"):
        path = out / rel
        assert sum(1 for _ in path.open()) == rows[rel]
        assert manifest["files"][rel]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    train_prompts = {json.loads(x)["conversations"][0]["value"] for x in (out / "sft/train.jsonl").open()}
    val_prompts = {json.loads(x)["conversations"][0]["value"] for x in (out / "sft/val.jsonl").open()}
    assert train_prompts and val_prompts and not train_prompts & val_prompts
    assert (out / "prepare.config.yaml").exists()


def test_val_fraction_zero_matches_reference_formatter_bytes(tmp_path: Path) -> None:
    rows = [json.loads(x) for x in helpsteer_sample_path().open(encoding="utf-8")][:57]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "d"
    res = run_cli(
        "dataset=helpsteer", f"dataset.path={src}", "dataset.val_fraction=0", f"output_dir={out}", module=True
    )
    assert res.returncode == 0, res.stderr
    sft, reg = reference_lines(rows)
    assert (out / "sft/train.jsonl").read_text(encoding="utf-8").splitlines() == sft
    assert (out / "regression/train.jsonl").read_text(encoding="utf-8").splitlines() == reg
    assert (out / "sft/val.jsonl").read_text() == ""


def test_ablation_without_helpfulness_is_one_override(tmp_path: Path) -> None:
    out = tmp_path / "d"
    res = run_cli("attributes.drop=[helpfulness]", "dataset.val_fraction=0", f"output_dir={out}")
    assert res.returncode == 0, res.stderr
    first = json.loads((out / "sft/train.jsonl").open().readline())
    assert first["conversations"][1]["label"].startswith("correctness:")
    reg = json.loads((out / "regression/train.jsonl").open().readline())
    assert len(reg["label"]) == 8


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (
            '{"prompt": "p", "response": "r", "helpfulness": 5, "correctness": 1, "coherence": 1, "complexity": 1, '
            '"verbosity": 1}',
            "helpfulness",
        ),
        ('{"prompt": "p", "response": "r", "helpfulness": 2}', "correctness"),
        (
            '{"prompt": "p", "response": "", "helpfulness": 1, "correctness": 1, "coherence": 1, "complexity": 1, '
            '"verbosity": 1}',
            "response",
        ),
        (
            '{"prompt": "p", "response": "r", "helpfulness": 2.5, "correctness": 1, "coherence": 1, "complexity": 1, '
            '"verbosity": 1}',
            "helpfulness",
        ),
        ("{not json", "malformed JSON"),
    ],
)
def test_bad_row_exits_2_naming_file_line_field_and_writes_nothing(tmp_path: Path, line: str, needle: str) -> None:
    good = helpsteer_sample_path().open(encoding="utf-8").readline()
    src = tmp_path / "bad.jsonl"
    src.write_text(good + line + "\n", encoding="utf-8")
    out = tmp_path / "out"
    res = run_cli(f"dataset.path={src}", f"output_dir={out}")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert "bad.jsonl:2:" in err and needle in err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_missing_input_file_and_unknown_stage(tmp_path: Path) -> None:
    res = run_cli(f"dataset.path={tmp_path / 'nope.jsonl'}", f"output_dir={tmp_path / 'o'}")
    assert res.returncode == 2 and "nope.jsonl" in res.stderr
    res = subprocess.run([sys.executable, "-m", "nemo_steerlm.cli", "bogus"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown stage" in res.stderr


def test_prepare_chat_messages_through_the_cli(tmp_path: Path) -> None:
    chats = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}?"},
                      {"role": "assistant", "content": f"Answer {i}.", "label": "verbosity:1,helpfulness:4"}]}
        for i in range(10)
    ]  # fmt: skip
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "d"
    res = run_cli("dataset=chat_messages", f"dataset.path={chats}", "dataset.val_fraction=0.2", f"output_dir={out}")
    assert res.returncode == 0, res.stderr
    sft = [json.loads(x) for x in (out / "sft" / "train.jsonl").read_text().splitlines()]
    assert len(sft) == 8 and len((out / "sft" / "val.jsonl").read_text().splitlines()) == 2
    assert sft[0]["conversations"][1]["label"] == "helpfulness:4,verbosity:1" and sft[0]["system"] == SYSTEM
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    res = run_cli("dataset=chat_messages", f"dataset.path={bad}", f"output_dir={tmp_path / 'e'}")
    assert res.returncode == 2 and f"{bad}:2" in res.stderr and "messages" in res.stderr
    assert not (tmp_path / "e" / "sft").exists()
