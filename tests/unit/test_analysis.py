"""The dataset analysis against numbers computed here with numpy/scipy, on the shipped sample and hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import linalg, stats

from nemo_steerlm.attributes import ALL_ATTRIBUTES, HELPSTEER_ATTRIBUTES, SYSTEM_PROMPT, AttributeSchema
from nemo_steerlm.data.io import DataError
from nemo_steerlm.evaluation.analysis import (
    ANALYSIS_KEYS,
    LabelledRow,
    analyze,
    read_labelled_jsonl,
    read_sources,
    write_analysis,
)
from nemo_steerlm.resources import helpsteer_sample_path

SCHEMA = AttributeSchema()
HS = list(HELPSTEER_ATTRIBUTES)
OASST_FIXTURE = Path(__file__).resolve().parents[1] / "data" / "oasst_fixture.trees.jsonl"


def sample_rows() -> list[dict]:
    return [json.loads(x) for x in helpsteer_sample_path().read_text(encoding="utf-8").splitlines()]


def sft_line(turns: list[tuple[str, str, str | None]]) -> str:
    conv = [{"value": v, "from": who, "label": label} for v, who, label in turns]
    return json.dumps({"conversations": conv, "system": SYSTEM_PROMPT, "mask": "User", "type": "VALUE_TO_TEXT"})


@pytest.fixture(scope="module")
def sample_analysis() -> dict:
    return analyze(read_sources([("helpsteer", str(helpsteer_sample_path()))], SCHEMA).rows, SCHEMA)


def test_sample_distribution_and_keys(sample_analysis: dict) -> None:
    raw = sample_rows()
    assert set(sample_analysis) == set(ANALYSIS_KEYS)
    assert sample_analysis["rows"] == len(raw) == 399
    assert sample_analysis["attributes"] == HS  # the OASST attributes are never labelled in HelpSteer
    for name in HS:
        expected = np.bincount([r[name] for r in raw], minlength=5).tolist()
        assert sample_analysis["distribution"][name] == expected


def test_sample_correlations_match_scipy(sample_analysis: dict) -> None:
    raw = sample_rows()
    words = np.array([len(r["response"].split()) for r in raw], dtype=float)
    for a in HS:
        x = np.array([r[a] for r in raw], dtype=float)
        assert sample_analysis["length_pearson"][a] == pytest.approx(stats.pearsonr(x, words)[0], abs=1e-12)
        for b in HS:
            y = np.array([r[b] for r in raw], dtype=float)
            assert sample_analysis["pearson"][a][b] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)


def test_sample_helpfulness_ols_matches_scipy_lstsq(sample_analysis: dict) -> None:
    raw = sample_rows()
    others = HS[1:]
    x = np.array([[r[a] for a in others] + [1.0] for r in raw], dtype=float)
    y = np.array([r["helpfulness"] for r in raw], dtype=float)
    coef = linalg.lstsq(x, y)[0]
    fit = sample_analysis["helpfulness_ols"]
    assert set(fit) == {"coefficients", "intercept", "r2"}
    assert list(fit["coefficients"]) == others
    assert [fit["coefficients"][a] for a in others] == pytest.approx(coef[:-1], abs=1e-9)
    assert fit["intercept"] == pytest.approx(coef[-1], abs=1e-9)
    residual = y - x @ coef
    assert fit["r2"] == pytest.approx(1 - residual @ residual / np.sum((y - y.mean()) ** 2), abs=1e-9)
    # with an intercept, R² is the squared correlation between fitted and observed values
    assert fit["r2"] == pytest.approx(stats.pearsonr(x @ coef, y)[0] ** 2, abs=1e-9)


def row(words: int, **scores: int) -> LabelledRow:
    return LabelledRow(dict(scores), words)


def test_hand_made_linear_anti_correlated_and_missing() -> None:
    rows = [
        row(10 * c + 5, helpfulness=c, correctness=c, coherence=4 - c, verbosity=3 if c % 2 else 1) for c in range(5)
    ]
    out = analyze(rows, SCHEMA)
    assert out["attributes"] == ["helpfulness", "correctness", "coherence", "verbosity"]  # complexity: never labelled
    assert "complexity" not in out["pearson"] and "complexity" not in out["distribution"]
    assert out["pearson"]["helpfulness"]["correctness"] == pytest.approx(1.0)
    assert out["pearson"]["helpfulness"]["coherence"] == pytest.approx(-1.0)
    assert out["length_pearson"]["correctness"] == pytest.approx(1.0)  # words = 10c + 5, exactly linear
    assert out["length_pearson"]["coherence"] == pytest.approx(-1.0)
    assert out["distribution"]["verbosity"] == [0, 3, 0, 2, 0]
    fit = out["helpfulness_ols"]
    # coherence = 4 - correctness is collinear with correctness and the intercept: the coefficients are not unique,
    # but the fit is exact: every row's helpfulness is reproduced
    assert fit["r2"] == pytest.approx(1.0)
    assert list(fit["coefficients"]) == ["correctness", "coherence", "verbosity"]
    for r in rows:
        fitted = fit["intercept"] + sum(b * r.scores[a] for a, b in fit["coefficients"].items())
        assert fitted == pytest.approx(r.scores["helpfulness"])


def test_exact_ols_coefficients_and_constant_attribute_is_null() -> None:
    rng = np.random.default_rng(3)
    c = rng.integers(0, 3, 40)
    v = rng.integers(0, 3, 40)
    rows = [
        row(5, helpfulness=int(ci + 2 - vi), correctness=int(ci), verbosity=int(vi), complexity=2)
        for ci, vi in zip(c, v, strict=True)
    ]
    out = analyze(rows, SCHEMA)
    fit = out["helpfulness_ols"]
    assert fit["coefficients"]["correctness"] == pytest.approx(1.0)
    assert fit["coefficients"]["verbosity"] == pytest.approx(-1.0)
    # complexity is constant (collinear with the intercept): only intercept + 2 * its coefficient is determined
    assert fit["intercept"] + 2 * fit["coefficients"]["complexity"] == pytest.approx(2.0)
    assert fit["r2"] == pytest.approx(1.0)
    assert out["pearson"]["complexity"]["helpfulness"] is None  # constant: undefined, not 0 or NaN
    assert out["pearson"]["complexity"]["complexity"] is None
    assert out["length_pearson"]["helpfulness"] is None  # every response has 5 words
    json.dumps(out, allow_nan=False)


def test_pairwise_rows_where_both_are_labelled() -> None:
    rng = np.random.default_rng(0)
    h = rng.integers(0, 5, 30)
    c = rng.integers(0, 5, 30)
    words = rng.integers(1, 200, 30)
    rows = [
        row(int(w), helpfulness=int(a), correctness=int(b)) if i % 3 else row(int(w), helpfulness=int(a))
        for i, (a, b, w) in enumerate(zip(h, c, words, strict=True))
    ]
    rows += [row(7, correctness=1), row(9, quality=2)]
    out = analyze(rows, SCHEMA)
    both = [i for i in range(30) if i % 3]
    assert out["rows"] == 32
    assert out["attributes"] == ["quality", "helpfulness", "correctness"]
    assert out["pearson"]["helpfulness"]["correctness"] == pytest.approx(stats.pearsonr(h[both], c[both])[0])
    c_all = np.append(c[both], 1)
    w_c = np.append(words[both], 7)
    assert out["length_pearson"]["correctness"] == pytest.approx(stats.pearsonr(c_all, w_c)[0])
    assert out["pearson"]["quality"]["helpfulness"] is None  # never labelled together
    fit = out["helpfulness_ols"]
    assert list(fit["coefficients"]) == ["correctness"]  # quality never labelled with helpfulness
    slope = stats.linregress(c[both], h[both])
    assert fit["coefficients"]["correctness"] == pytest.approx(slope.slope)
    assert fit["intercept"] == pytest.approx(slope.intercept)
    assert fit["r2"] == pytest.approx(slope.rvalue**2)


def test_no_helpfulness_no_fit() -> None:
    out = analyze([row(3, correctness=1, verbosity=2), row(8, correctness=3, verbosity=0)], SCHEMA)
    assert "helpfulness_ols" not in out
    assert out["pearson"]["correctness"]["verbosity"] == pytest.approx(-1.0)


def test_multi_turn_sft_one_row_per_labelled_assistant_turn(tmp_path: Path) -> None:
    lines = [
        sft_line(
            [
                ("q1", "User", None),
                ("one two three", "Assistant", "helpfulness:1,verbosity:0"),
                ("q2", "User", None),
                ("a b c d e f", "Assistant", "helpfulness:3,verbosity:2"),
                ("q3", "User", None),
                ("no label here", "Assistant", None),
            ]
        ),
        sft_line([("q", "User", None), ("x y", "Assistant", "quality:4")]),
    ]
    path = tmp_path / "multi.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = read_labelled_jsonl(path, SCHEMA)
    assert data.kind == "sft" and data.unlabelled_turns == 1
    assert [(r.scores, r.words) for r in data.rows] == [
        ({"helpfulness": 1, "verbosity": 0}, 3),
        ({"helpfulness": 3, "verbosity": 2}, 6),
        ({"quality": 4}, 2),
    ]
    out = analyze(data.rows, SCHEMA)
    assert out["rows"] == 3 and out["distribution"]["quality"] == [0, 0, 0, 0, 1]


def test_regression_jsonl_masks_and_response_words(tmp_path: Path) -> None:
    def text(response: str) -> str:
        return (
            f"<extra_id_0>System\n{SYSTEM_PROMPT}\n<extra_id_1>User\nq\n<extra_id_1>Assistant\nold answer here\n"
            f"<extra_id_1>User\nmore\n<extra_id_1>Assistant\n{response}\n<extra_id_2>"
        )

    labels = [[-100.0] * 4 + [3.0, 2.0, 4.0, -100.0, 1.0], [-100.0] * 9, [2.0] + [-100.0] * 8]
    path = tmp_path / "reg.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": text(r), "label": lab}) + "\n"
            for r, lab in zip(["a b", "c", "d e f g"], labels, strict=True)
        ),
        encoding="utf-8",
    )
    data = read_labelled_jsonl(path, SCHEMA)
    assert data.kind == "regression" and data.unlabelled_turns == 1
    assert [(r.scores, r.words) for r in data.rows] == [
        ({"helpfulness": 3, "correctness": 2, "coherence": 4, "verbosity": 1}, 2),
        ({"quality": 2}, 4),
    ]


def test_oasst_tree_counts_each_labelled_message_once() -> None:
    trees = [json.loads(x) for x in OASST_FIXTURE.read_text(encoding="utf-8").splitlines()]
    labelled = unlabelled = 0
    stack = [t["prompt"] for t in trees]
    while stack:
        node = stack.pop()
        stack += node.get("replies", [])
        if node["role"] != "assistant":
            continue
        if any(a in node.get("labels", {}) for a in ALL_ATTRIBUTES[:4]):
            labelled += 1
        else:
            unlabelled += 1
    data = read_sources([("oasst", str(OASST_FIXTURE))], SCHEMA)
    assert (len(data.rows), data.unlabelled_turns) == (labelled, unlabelled)
    assert labelled > 0


def test_bad_lines_name_file_line_and_field(tmp_path: Path) -> None:
    good = sft_line([("q", "User", None), ("a", "Assistant", "helpfulness:3")])
    cases = [
        (sft_line([("q", "User", None), ("a", "Assistant", "helpfulness:7")]), "conversations[1].label"),
        ('{"text": "x", "label": []}', "field 'conversations'"),  # the first line made it an SFT file
        ("{oops", "malformed JSON"),
    ]
    for bad, needle in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(good + "\n" + bad + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=r"bad\.jsonl:2") as err:
            read_labelled_jsonl(path, SCHEMA)
        assert needle in str(err.value)
    path.write_text('{"prompt": "p"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: neither an SFT line"):
        read_labelled_jsonl(path, SCHEMA)
    reg = {"text": "<extra_id_0>System\ns\n<extra_id_1>User\nq\n<extra_id_1>Assistant\na\n<extra_id_2>"}
    path.write_text(json.dumps({**reg, "label": [2.5] + [-100.0] * 8}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'label.quality'"):
        read_labelled_jsonl(path, SCHEMA)


def test_write_analysis_writes_nothing_without_labelled_rows(tmp_path: Path) -> None:
    data = read_sources([("helpsteer", str(helpsteer_sample_path()))], SCHEMA)
    data.rows = []
    with pytest.raises(ValueError, match="no labelled assistant turn"):
        write_analysis(data, SCHEMA, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_evaluation_report_links_the_analysis(tmp_path: Path) -> None:
    from nemo_steerlm.evaluation.analysis import report_section
    from nemo_steerlm.evaluation.report import render_report

    assert report_section(tmp_path / "analyze") is None  # a run without the analyze stage: no section
    raw = sample_rows()
    result = analyze(read_sources([("helpsteer", str(helpsteer_sample_path()))], SCHEMA).rows, SCHEMA)
    (tmp_path / "analyze").mkdir()
    (tmp_path / "analyze" / "analysis.json").write_text(json.dumps(result), encoding="utf-8")
    section = report_section(tmp_path / "analyze")
    report = render_report({"data_analysis": section}, tmp_path / "evaluate")
    assert "## Data analysis" in report and "[../analyze/analysis.md](../analyze/analysis.md)" in report
    verbosity = stats.pearsonr([r["verbosity"] for r in raw], [len(r["response"].split()) for r in raw])[0]
    assert f"verbosity {verbosity:.2f}" in report
    assert f"R² {result['helpfulness_ols']['r2']:.3f}" in report


def test_prepared_folder_reads_train_and_val(tmp_path: Path) -> None:
    from nemo_steerlm.data.prepare import PrepareSpec, SourceSpec, prepare
    from nemo_steerlm.evaluation.analysis import read_prepared_folder

    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in sample_rows()[:50]), encoding="utf-8")
    prepare(PrepareSpec([SourceSpec("helpsteer", str(src))], val_fraction=0.2, seed=1), SCHEMA, tmp_path / "prep")
    data = read_prepared_folder(tmp_path / "prep", SCHEMA)
    raw = read_sources([("helpsteer", str(src))], SCHEMA)
    assert len(data.rows) == 50 and data.kind == "sft"
    # the split reorders rows; the statistics do not depend on the order
    assert analyze(data.rows, SCHEMA)["distribution"] == analyze(raw.rows, SCHEMA)["distribution"]
    assert analyze(data.rows, SCHEMA)["pearson"]["helpfulness"]["verbosity"] == pytest.approx(
        analyze(raw.rows, SCHEMA)["pearson"]["helpfulness"]["verbosity"]
    )
    (tmp_path / "prep" / "sft" / "val.jsonl").unlink()
    with pytest.raises(DataError, match=r"val\.jsonl: missing"):
        read_prepared_folder(tmp_path / "prep", SCHEMA)
