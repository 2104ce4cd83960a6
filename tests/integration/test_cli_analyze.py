"""The real `nemo-steerlm analyze` CLI: the shipped sample, an SFT file, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from steerlm_test_helpers.cli import ok, steerlm

from nemo_steerlm.attributes import SYSTEM_PROMPT
from nemo_steerlm.resources import helpsteer_sample_path

pytestmark = pytest.mark.integration

HS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
KEYS = {"rows", "attributes", "distribution", "pearson", "length_pearson", "helpfulness_ols"}
PNGS = ("analysis_distribution.png", "analysis_correlation.png", "analysis_length.png")


def sample() -> list[dict]:
    return [json.loads(x) for x in helpsteer_sample_path().read_text(encoding="utf-8").splitlines()]


def test_analyze_shipped_sample(tmp_path: Path) -> None:
    out = tmp_path / "a"
    start = time.perf_counter()
    res = ok(steerlm("analyze", f"output_dir={out}"))
    assert time.perf_counter() - start < 60
    assert f"399 rows -> {out / 'analysis.md'}" in res.stdout
    result = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    assert set(result) == KEYS
    rows = sample()
    assert result["rows"] == 399 and result["attributes"] == HS
    assert result["distribution"]["verbosity"] == np.bincount([r["verbosity"] for r in rows], minlength=5).tolist()
    words = [len(r["response"].split()) for r in rows]
    assert result["length_pearson"]["verbosity"] == pytest.approx(
        stats.pearsonr([r["verbosity"] for r in rows], words)[0]
    )
    report = (out / "analysis.md").read_text(encoding="utf-8")
    for png in PNGS:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png})" in report
    assert f"R² {result['helpfulness_ols']['r2']:.3f}" in report
    summary = json.loads((out / "analyze.summary.json").read_text())
    assert summary["rows"] == 399 and summary["unlabelled_turns"] == 0


def test_analyze_sft_file_equals_raw_rows(tmp_path: Path) -> None:
    rows = sample()[:60]
    src = tmp_path / "sft.jsonl"
    lines = []
    for r in rows:
        label = ",".join(f"{a}:{r[a]}" for a in HS)
        conv = [
            {"value": r["prompt"], "from": "User", "label": None},
            {"value": r["response"], "from": "Assistant", "label": label},
        ]
        lines.append(
            json.dumps({"conversations": conv, "system": SYSTEM_PROMPT, "mask": "User", "type": "VALUE_TO_TEXT"})
        )
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ok(steerlm("analyze", f"data={src}", f"output_dir={tmp_path / 'a'}"))
    ok(steerlm("analyze", "dataset=helpsteer", f"dataset.path={raw}", f"output_dir={tmp_path / 'b'}"))
    a = json.loads((tmp_path / "a" / "analysis.json").read_text())
    b = json.loads((tmp_path / "b" / "analysis.json").read_text())
    assert a == b and a["rows"] == 60


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["dataset.path={bad}"], "bad.jsonl:2: field 'helpfulness'"),
        (["data={bad_sft}"], "bad_sft.jsonl:2: field 'conversations[1].label'"),
        (["data={missing}"], "data="),
        (["data={unlabelled}"], "nothing to analyse"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    good = helpsteer_sample_path().open(encoding="utf-8").readline()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + '{"prompt": "p", "response": "r", "helpfulness": 5}\n', encoding="utf-8")
    turn = {"value": "a", "from": "Assistant", "label": "helpfulness:9"}
    sft = {"conversations": [{"value": "q", "from": "User", "label": None}, turn], "system": "", "mask": "User"}
    sft["type"] = "VALUE_TO_TEXT"
    bad_sft = tmp_path / "bad_sft.jsonl"
    bad_sft.write_text(json.dumps({**sft, "conversations": sft["conversations"][:1]}) + "\n" + json.dumps(sft) + "\n")
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(
        json.dumps({**sft, "conversations": [sft["conversations"][0], {**turn, "label": None}]}) + "\n"
    )
    paths = {"bad": bad, "bad_sft": bad_sft, "missing": tmp_path / "nope.jsonl", "unlabelled": unlabelled}
    out = tmp_path / "out"
    res = steerlm("analyze", *[a.format(**paths) for a in args], f"output_dir={out}")
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("nemo-steerlm analyze: error:") and needle in last
    assert not out.exists()
