"""The HelpSteer paper's dataset analysis: label distributions, correlations, length, and an OLS fit of helpfulness.

The unit is one labelled assistant turn (a multi-turn conversation gives one row per labelled assistant turn); a turn
is labelled when it carries at least one attribute of the schema. For each row the response length is its word count,
``len(response.split())``. :func:`analyze` returns exactly::

    rows               number of labelled assistant turns
    attributes         schema order, only the attributes labelled on at least one row
    distribution       attribute -> counts of the values min_value..max_value (5 counts for 0..4)
    pearson            attribute -> attribute -> Pearson r over the rows where both are labelled
    length_pearson     attribute -> Pearson r against the word count, over the rows where it is labelled
    helpfulness_ols    {"coefficients": {attribute: b}, "intercept": a, "r2": R^2}: helpfulness fitted by ordinary
                       least squares on the other attributes labelled together with it (on the rows where all of
                       them are); present when helpfulness and at least one other attribute are labelled together

A correlation is ``None`` (JSON ``null``) where it is undefined: fewer than two rows, or a constant side. Inputs are
read with the project's readers (``data.sources`` for raw HelpSteer/OASST, ``data.formats`` for SFT and regression
JSONL), so bad input fails with the same messages as ``prepare``. Pure numpy; plots use matplotlib's Agg canvas.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nemo_steerlm.attributes import ASSISTANT_ROLE, MASK_VALUE, AttributeSchema
from nemo_steerlm.data.formats import parse_regression_object, parse_sft_object
from nemo_steerlm.data.io import DataError, read_jsonl, write_text_atomic
from nemo_steerlm.data.template import Conversation, regression_response
from nemo_steerlm.evaluation._io import new_figure, save_figure

HELPFULNESS = "helpfulness"
ANALYSIS_KEYS: tuple[str, ...] = (
    "rows",
    "attributes",
    "distribution",
    "pearson",
    "length_pearson",
    "helpfulness_ols",
)
PLOT_FILES: dict[str, str] = {
    "distribution": "analysis_distribution.png",
    "correlation": "analysis_correlation.png",
    "length": "analysis_length.png",
}


@dataclass(frozen=True)
class LabelledRow:
    """One labelled assistant turn.

    Args:
        scores: attribute name -> integer score, only the labelled attributes.
        words: the response's word count, ``len(response.split())``.
    """

    scores: dict[str, int]
    words: int


@dataclass
class AnalysisInput:
    """What was read: the labelled rows and what was left out.

    Args:
        rows: the labelled assistant turns, in input order.
        unlabelled_turns: assistant turns without any schema attribute (not rows; counted, never dropped silently).
        source: what was read (files or hub ids), for the report.
        kind: ``sft``, ``regression`` or the raw source names.
    """

    rows: list[LabelledRow]
    unlabelled_turns: int
    source: str
    kind: str


# ------------------------------------------------------------------------------------------------------ reading


def rows_from_conversations(
    conversations: Iterable[Conversation], schema: AttributeSchema
) -> tuple[list[LabelledRow], int]:
    """One :class:`LabelledRow` per labelled assistant turn (each ``Turn`` object once), and the unlabelled count.

    A turn object shared by several conversations (the common prefix of OpenAssistant threads) is counted once.
    """
    rows: list[LabelledRow] = []
    unlabelled, seen = 0, set()
    for conv in conversations:
        for turn in conv.turns:
            if turn.role != ASSISTANT_ROLE or id(turn) in seen:
                continue
            seen.add(id(turn))
            scores = schema.parse_label(turn.label) if turn.label else {}
            if scores:
                rows.append(LabelledRow(scores, len(turn.value.split())))
            else:
                unlabelled += 1
    return rows, unlabelled


def _regression_row(obj: dict[str, Any], schema: AttributeSchema, path: str, line: int) -> LabelledRow | None:
    example = parse_regression_object(obj, schema, path, line)
    scores: dict[str, int] = {}
    for name, value in zip(schema.names, example.label, strict=True):
        if value == MASK_VALUE:
            continue
        if not float(value).is_integer():
            raise DataError(
                path, f"{value!r} is not an integer score (the analysis counts values)", line, f"label.{name}"
            )
        scores[name] = int(value)
    return LabelledRow(scores, len(regression_response(example.text).split())) if scores else None


def read_labelled_jsonl(path: str | os.PathLike[str], schema: AttributeSchema) -> AnalysisInput:
    """Reads an SFT or a regression JSONL file (told apart by the first line's keys) into labelled rows.

    Raises:
        DataError: naming the file, the line and the field, as ``prepare`` and the training stages do.
    """
    path = str(path)
    convs: list[Conversation] = []
    rows: list[LabelledRow] = []
    unlabelled, kind = 0, None
    for line, obj in read_jsonl(path):
        if kind is None:
            kind = "sft" if "conversations" in obj else "regression" if "text" in obj else None
            if kind is None:
                raise DataError(
                    path, "neither an SFT line ('conversations') nor a regression line ('text', 'label')", line
                )
        if kind == "sft":
            convs.append(parse_sft_object(obj, schema, path, line))
            continue
        row = _regression_row(obj, schema, path, line)
        if row is None:
            unlabelled += 1
        else:
            rows.append(row)
    if kind == "sft":
        rows, unlabelled = rows_from_conversations(convs, schema)
    return AnalysisInput(rows, unlabelled, path, str(kind))


def read_prepared_folder(folder: str | os.PathLike[str], schema: AttributeSchema) -> AnalysisInput:
    """Reads a ``prepare`` output folder: its ``sft/train.jsonl`` and ``sft/val.jsonl`` (as written, repeats kept).

    Raises:
        DataError: when either file is missing, or on a bad line.
    """
    files = [Path(folder) / "sft" / name for name in ("train.jsonl", "val.jsonl")]
    for path in files:
        if not path.is_file():
            raise DataError(path, "missing: not a `prepare` output folder")
    parts = [read_labelled_jsonl(path, schema) for path in files if path.stat().st_size > 0]
    rows = [r for p in parts for r in p.rows]
    return AnalysisInput(rows, sum(p.unlabelled_turns for p in parts), str(folder), "sft")


# -------------------------------------------------------------------------------------------------- statistics


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length samples; ``None`` for fewer than two rows or a constant side."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    r = float(np.dot(dx, dy) / np.sqrt(np.dot(dx, dx) * np.dot(dy, dy)))
    return max(-1.0, min(1.0, r))


def _matrix(rows: Sequence[LabelledRow], names: Sequence[str]) -> np.ndarray:
    """``[N, A + 1]``: each attribute's score (NaN where unlabelled), then the word count."""
    out = np.full((len(rows), len(names) + 1), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(names)] = [row.scores.get(n, np.nan) for n in names]
        out[i, -1] = row.words
    return out


def _pair(data: np.ndarray, a: int, b: int) -> float | None:
    keep = ~np.isnan(data[:, a]) & ~np.isnan(data[:, b])
    return pearson(data[keep, a], data[keep, b])


def helpfulness_ols(data: np.ndarray, names: Sequence[str]) -> tuple[dict[str, Any], int] | None:
    """OLS of helpfulness on the other attributes labelled together with it; ``(fit, rows used)`` or ``None``.

    The predictors are the other attributes labelled on at least one helpfulness row; the rows are those where
    helpfulness and every predictor are labelled. Coefficients come from ``numpy.linalg.lstsq`` (the minimum-norm
    solution when predictors are collinear); ``r2`` is ``1 - SS_res / SS_tot``, ``None`` when helpfulness is constant.
    """
    if HELPFULNESS not in names:
        return None
    h = list(names).index(HELPFULNESS)
    labelled = ~np.isnan(data[:, h])
    predictors = [i for i, _ in enumerate(names) if i != h and (labelled & ~np.isnan(data[:, i])).any()]
    if not predictors:
        return None
    keep = labelled & ~np.isnan(data[:, predictors]).any(axis=1)
    x = np.column_stack([data[keep][:, predictors], np.ones(int(keep.sum()))])
    y = data[keep, h]
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - x @ coef) ** 2)) / ss_tot if ss_tot > 0 else None
    fit = {
        "coefficients": {names[i]: float(c) for i, c in zip(predictors, coef[:-1], strict=True)},
        "intercept": float(coef[-1]),
        "r2": r2,
    }
    return fit, int(keep.sum())


def analyze(rows: Sequence[LabelledRow], schema: AttributeSchema) -> dict[str, Any]:
    """The analysis of ``rows`` (see the module docstring for the keys); plain Python, ready for ``json.dumps``.

    Raises:
        ValueError: when ``rows`` is empty (there is nothing to analyse).
    """
    if not rows:
        raise ValueError("no labelled assistant turns to analyse")
    names = [n for n in schema.names if any(n in r.scores for r in rows)]
    data = _matrix(rows, names)
    values = range(schema.min_value, schema.max_value + 1)
    out: dict[str, Any] = {
        "rows": len(rows),
        "attributes": names,
        "distribution": {n: [int(np.sum(data[:, i] == v)) for v in values] for i, n in enumerate(names)},
        "pearson": {a: {b: _pair(data, i, j) for j, b in enumerate(names)} for i, a in enumerate(names)},
        "length_pearson": {n: _pair(data, i, len(names)) for i, n in enumerate(names)},
    }
    fit = helpfulness_ols(data, names)
    if fit is not None:
        out["helpfulness_ols"] = fit[0]
    return out


def words_by_value(rows: Sequence[LabelledRow], name: str, schema: AttributeSchema) -> list[float | None]:
    """Mean response word count at each value ``min_value..max_value`` of ``name`` (``None`` where no row has it)."""
    out: list[float | None] = []
    for v in range(schema.min_value, schema.max_value + 1):
        words = [r.words for r in rows if r.scores.get(name) == v]
        out.append(float(np.mean(words)) if words else None)
    return out


def read_sources(sources: Sequence[tuple[str, str]], schema: AttributeSchema) -> AnalysisInput:
    """Reads raw sources ``(name, path)`` (``helpsteer``, ``helpsteer2``, ``oasst``) with ``prepare``'s readers.

    Every split of a HelpSteer source is read (no train/validation split, no repeats); an OpenAssistant tree gives
    each labelled assistant message once, however many threads pass through it.

    Raises:
        DataError: on any bad row, naming the file, the line and the field.
        ValueError: on an unknown source name.
    """
    from nemo_steerlm.data.sources import helpsteer_to_conversation, load_helpsteer, load_oasst_trees, oasst_threads

    rows: list[LabelledRow] = []
    unlabelled = 0
    for name, path in sources:
        if name == "oasst":
            convs = [c for tree in load_oasst_trees(path) for c in oasst_threads(tree, schema)]
        elif name in ("helpsteer", "helpsteer2"):
            splits = load_helpsteer(path, schema)
            convs = [helpsteer_to_conversation(r, schema) for split in splits.values() for r in split]
        else:
            raise ValueError(f"source {name!r}: expected helpsteer, helpsteer2 or oasst")
        got, skipped = rows_from_conversations(convs, schema)
        rows += got
        unlabelled += skipped
    return AnalysisInput(rows, unlabelled, ", ".join(p for _, p in sources), "+".join(n for n, _ in sources))


# ------------------------------------------------------------------------------------------------------- plots


def plot_distribution(analysis: Mapping[str, Any], path: str | os.PathLike[str], min_value: int = 0) -> Path:
    """One bar panel per attribute: how many rows hold each value."""
    names = analysis["attributes"]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = new_figure(4.0 * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        counts = analysis["distribution"][name]
        ax.bar(range(min_value, min_value + len(counts)), counts)
        ax.set_title(f"{name} (n={sum(counts)})")
        ax.set_xlabel("label")
        ax.set_ylabel("rows")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_correlation(analysis: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Heatmap of the Pearson matrix with a last row/column for the word count; undefined cells are blank."""
    names = analysis["attributes"]
    labels = [*names, "words"]
    k = len(labels)
    grid = np.full((k, k), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            grid[i, j] = np.nan if analysis["pearson"][a][b] is None else analysis["pearson"][a][b]
        r = analysis["length_pearson"][a]
        grid[i, -1] = grid[-1, i] = np.nan if r is None else r
    grid[-1, -1] = 1.0
    fig = new_figure(1.0 + 0.9 * k, 0.6 + 0.8 * k)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    for i in range(k):
        for j in range(k):
            text = "—" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize="small")
    ax.set_title(f"Pearson r (n={analysis['rows']} rows)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_length(rows: Sequence[LabelledRow], analysis: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """One panel per attribute: response words against the label (jittered points) and the mean per value."""
    names = analysis["attributes"]
    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    fig = new_figure(4.0 * cols, 3.2 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    rng = np.random.default_rng(0)
    for ax, name in zip(axes, names, strict=False):
        pts = np.array([(r.scores[name], r.words) for r in rows if name in r.scores], dtype=np.float64)
        ax.scatter(pts[:, 0] + rng.uniform(-0.15, 0.15, len(pts)), pts[:, 1], s=6, alpha=0.4)
        levels = sorted(set(pts[:, 0]))
        ax.plot(levels, [pts[pts[:, 0] == v, 1].mean() for v in levels], marker="o", color="black", label="mean")
        ax.set_title(f"{name}: r={_fmt(analysis['length_pearson'][name])}")
        ax.set_xlabel("label")
        ax.set_ylabel("response words")
        ax.legend(fontsize="small")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 3) -> str:
    from nemo_steerlm.evaluation.report import fmt

    return fmt(value, digits)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body] + [""]


def _ols_lines(analysis: Mapping[str, Any], ols_rows: int | None) -> list[str]:
    fit = analysis.get("helpfulness_ols")
    if fit is None:
        return [
            "## Helpfulness from the other attributes",
            "",
            "Not fitted: helpfulness is not labelled together with another attribute.",
            "",
        ]
    body = [[name, _fmt(c)] for name, c in fit["coefficients"].items()] + [["intercept", _fmt(fit["intercept"])]]
    return [
        "## Helpfulness from the other attributes (ordinary least squares)",
        "",
        f"R² {_fmt(fit['r2'])} over {ols_rows} rows (those labelled with helpfulness and every predictor).",
        "",
        *_table(["term", "coefficient"], body),
    ]


def render_markdown(
    analysis: Mapping[str, Any], data: AnalysisInput, schema: AttributeSchema, plots: Mapping[str, str]
) -> str:
    """The Markdown of ``analysis.md``: input, distribution, correlations, length, the helpfulness fit, plots."""
    names = analysis["attributes"]
    values = [str(v) for v in range(schema.min_value, schema.max_value + 1)]
    lines = [
        "# Dataset analysis",
        "",
        f"Input: `{data.source}` ({data.kind}). Rows: {analysis['rows']} labelled assistant turns; "
        f"{data.unlabelled_turns} assistant turns without a label left out.",
        "",
        "## Label distribution",
        "",
    ]
    dist = analysis["distribution"]
    lines += _table(["attribute", *values, "n"], [[n, *map(str, dist[n]), str(sum(dist[n]))] for n in names])
    lines += [f"![distribution]({plots['distribution']})", "", "## Pearson correlation", ""]
    body = [
        [a, *[_fmt(analysis["pearson"][a][b], 2) for b in names], _fmt(analysis["length_pearson"][a], 2)] for a in names
    ]
    lines += ["Over the rows where both are labelled; `words` is the response's word count.", ""]
    lines += _table(["", *names, "words"], body)
    lines += [f"![correlation]({plots['correlation']})", "", "## Attributes and response length", ""]
    body = [
        [n, _fmt(analysis["length_pearson"][n]), *[_fmt(w, 1) for w in words_by_value(data.rows, n, schema)]]
        for n in names
    ]
    lines += _table(["attribute", "Pearson with words", *[f"mean words at {v}" for v in values]], body)
    lines += [f"![length]({plots['length']})", ""]
    fit = helpfulness_ols(_matrix(data.rows, names), names)
    lines += _ols_lines(analysis, fit[1] if fit else None)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_analysis(data: AnalysisInput, schema: AttributeSchema, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Computes the analysis of ``data`` and writes ``analysis.json``, the three PNGs and ``analysis.md``.

    Returns:
        The analysis dict (what ``analysis.json`` holds).

    Raises:
        ValueError: when ``data`` holds no labelled row (nothing is written then).
    """
    if not data.rows:
        raise ValueError(
            f"{data.source}: no labelled assistant turn ({data.unlabelled_turns} without a label) to analyse"
        )
    analysis = analyze(data.rows, schema)
    out = Path(out_dir)
    plot_distribution(analysis, out / PLOT_FILES["distribution"], schema.min_value)
    plot_correlation(analysis, out / PLOT_FILES["correlation"])
    plot_length(data.rows, analysis, out / PLOT_FILES["length"])
    write_text_atomic(out / "analysis.json", json.dumps(analysis, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "analysis.md", render_markdown(analysis, data, schema, PLOT_FILES))
    return analysis


def report_section(analysis_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The key numbers of an ``analyze`` output folder for the evaluation report, or ``None`` when it has none.

    Returns:
        ``{"report": analysis.md path, "rows", "length_pearson", "helpfulness_r2"}`` (``helpfulness_r2`` is
        ``None`` when no OLS was fitted).
    """
    folder = Path(analysis_dir)
    if not (folder / "analysis.json").is_file():
        return None
    analysis = json.loads((folder / "analysis.json").read_text(encoding="utf-8"))
    fit = analysis.get("helpfulness_ols")
    return {
        "report": str(folder / "analysis.md"),
        "rows": analysis["rows"],
        "length_pearson": analysis["length_pearson"],
        "helpfulness_r2": fit["r2"] if fit else None,
    }
