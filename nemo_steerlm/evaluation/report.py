"""Render the evaluation ``report.md`` (and its ``results.json``) from one results dict.

Every number in the report is read from the results dict, which is written as JSON next to the report, so the two
cannot disagree. The dict has optional sections, each the output of the matching evaluation function:

* ``apm``: :func:`nemo_steerlm.evaluation.apm_metrics.compute_apm_metrics`;
* ``steerability``: :func:`nemo_steerlm.evaluation.steerability.compute_steerability`;
* ``conditioning``: :func:`nemo_steerlm.evaluation.conditioning.selection_accuracy` (with ``file``);
* ``truthfulqa``: :func:`nemo_steerlm.evaluation.truthfulqa.evaluate_truthfulqa`;
* ``perplexity``: :func:`nemo_steerlm.evaluation.perplexity.perplexity`;
* ``mt_bench``: ``{"answer_file": str, "n_questions": int, "judge": judge_answers(...) or None}``;
* ``plots``: ``{name: png path}`` (linked relative to the report);
* ``versions``: ``{package: version}`` (see :func:`package_versions`);
* ``timings``: ``{stage: seconds}``;
* ``data_analysis``: :func:`nemo_steerlm.evaluation.analysis.report_section` (the ``analyze`` stage's key numbers).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from nemo_steerlm.data.io import write_text_atomic

DEFAULT_PACKAGES: tuple[str, ...] = (
    "nemo-steerlm",
    "torch",
    "megatron-core",
    "nemo_toolkit",
    "transformers",
    "numpy",
    "scipy",
    "matplotlib",
    "textstat",
    "pyphen",
)
PREDICTOR_TITLES = {"model": "APM", "mean": "train mean", "length": "length fit"}


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (``None`` when not installed), read from package metadata, importing nothing."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _level(value: Any) -> str:
    """A requested attribute level: integral values without decimals."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else fmt(value)


def fmt(value: Any, digits: int = 3) -> str:
    """Formats a number for the report: ``—`` for ``None``, integers as is, floats with ``digits`` decimals."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{float(value):.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _apm_section(apm: Mapping[str, Any]) -> list[str]:
    lines = ["## Attribute prediction model", "", f"Held-out rows: {fmt(apm['n_rows'])}.", ""]
    header = ["attribute", "predictor", "n", "Pearson", "Spearman", "MAE", "RMSE", "accuracy"]
    rows = []
    for name, entry in apm["attributes"].items():
        if entry.get("absent"):
            continue
        for key, title in PREDICTOR_TITLES.items():
            m = entry[key]
            if m is None:
                rows.append([name, title] + ["—"] * 6)
                continue
            metrics = [m["n"], m["pearson"], m["spearman"], m["mae"], m["rmse"], m["accuracy"]]
            rows.append([name, title] + [fmt(v) for v in metrics])
    lines += _table(header, rows)
    if apm["absent"]:
        lines += [f"No labelled held-out rows for: {', '.join(apm['absent'])}.", ""]
    return lines


def _mean_std(cell: Mapping[str, float] | None) -> str:
    return "—" if cell is None else f"{fmt(cell['mean'])} ± {fmt(cell['std'])}"


def _steer_section(steer: Mapping[str, Any]) -> list[str]:
    lines = ["## Steerability", ""]
    for name, summary in steer.items():
        lines += [f"### {name}", ""]
        header = ["requested", "n", "words", "tokens", "FK grade", "APM prediction"]
        rows = [
            [_level(lvl["requested"]), fmt(lvl["n"])]
            + [_mean_std(lvl[m]) for m in ("words", "tokens", "fk_grade", "apm")]
            for lvl in summary["levels"]
        ]
        lines += _table(header, rows)
        rho = summary["spearman"]
        lines += [
            "Spearman(requested, realised) over individual responses: "
            + ", ".join(f"{m} {fmt(rho[m])}" for m in ("words", "tokens", "fk_grade", "apm")),
            "",
        ]
        within = summary.get("spearman_within_prompt") or {}
        if any(within.values()):
            parts = [f"{m} {fmt(within[m]['mean'])}" for m in ("words", "tokens", "fk_grade", "apm") if within.get(m)]
            prompts = max(w["prompts"] for w in within.values() if w)
            lines += [f"Within-prompt Spearman, mean over {prompts} prompts: " + ", ".join(parts), ""]
        if summary.get("data_reference") is not None:
            lines += _reference_lines(summary["data_reference"])
    return lines


def _reference_lines(ref: Mapping[str, Any]) -> list[str]:
    """The training data's own responses at their labels (what imitating the data would reach)."""
    left_out = f"{fmt(ref['outside_levels'])} at other levels and {fmt(ref['unlabelled'])} unlabelled left out"
    lines = [f"Training data `{ref['file']}`, its responses at their labels ({fmt(ref['n'])}; {left_out}):", ""]
    if not ref["n"]:
        return lines
    rows = [
        [_level(lvl["requested"]), fmt(lvl["n"]), _mean_std(lvl["words"]), _mean_std(lvl["fk_grade"])]
        for lvl in ref["levels"]
    ]
    lines += _table(["label", "n", "words", "FK grade"], rows)
    within = ref["spearman_within_prompt"]
    parts = [
        f"{m} {fmt(ref['spearman'][m])} (within-prompt {fmt(within[m]['mean'] if within[m] else None)})"
        for m in ("words", "fk_grade")
    ]
    lines += ["Spearman(label, measure) in the training data: " + ", ".join(parts), ""]
    return lines + (_coverage_lines(ref["coverage"]) if ref.get("coverage") else [])


def _coverage_lines(cov: Mapping[str, Any]) -> list[str]:
    """How many labelled training turns carry each requested value, and each whole sweep label."""
    values = "; ".join(
        f"{name} " + ", ".join(f"{value}: {fmt(n)}" for value, n in counts.items())
        for name, counts in cov["values"].items()
    )
    whole = ", ".join(fmt(n) for n in cov["labels"].values())
    lines = [
        f"Label coverage, labelled training turns ({fmt(cov['turns'])}) with each requested value: {values}. "
        f"With the whole sweep label, level by level: {whole}.",
        "",
    ]
    if cov["unseen"]:
        lines += [
            f"**Never in the training data: {', '.join(cov['unseen'])}.** The sweep asks for labels the model never "
            "saw; `steer.NAME=V` sets an attribute the sweep holds fixed to a level the data has.",
            "",
        ]
    return lines


def _mt_bench_section(mt: Mapping[str, Any]) -> list[str]:
    lines = ["## MT-Bench", "", f"Answers: `{mt['answer_file']}` ({fmt(mt['n_questions'])} questions).", ""]
    judge = mt.get("judge")
    if not judge:
        return lines + ["Not judged (no judge configured).", ""]
    lines += [
        f"Judge `{judge['judge_model']}`: overall {fmt(judge['overall'])}; failed judgments "
        f"{fmt(judge['n_failed'])} of {fmt(judge['n_judgments'])} (no verdict obtained; left out of the means).",
        "",
    ]
    turns = sorted({k for entry in judge["per_category"].values() for k in entry if k.startswith("turn_")})
    header = ["category", "mean"] + [t.replace("_", " ") for t in turns] + ["failed"]
    rows = [
        [cat, fmt(e["mean"])] + [fmt(e.get(t)) for t in turns] + [fmt(e["n_failed"])]
        for cat, e in judge["per_category"].items()
    ]
    rows.append(["all", fmt(judge["overall"])] + [fmt(judge["per_turn"].get(t[5:])) for t in turns] + [""])
    return lines + _table(header, rows)


def _conditioning_section(cond: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Conditioning (does the model listen to its labels?)",
        "",
        f"On {cond['groups']} training prompts with differently labelled responses (`{cond['file']}`): under each "
        "label, is the response that carries it the most likely one (teacher-forced, summed NLL)?",
        "",
    ]
    row = [fmt(cond["groups"]), fmt(cond["selections"]), fmt(cond["correct"]), fmt(cond["accuracy"])]
    lines += _table(
        ["prompts", "labels tried", "selected own response", "accuracy", "chance"], [row + [fmt(cond["chance"])]]
    )
    if not cond["groups"]:
        lines += ["No training prompt has two responses with different labels: nothing to check.", ""]
    return lines


def _simple_sections(results: Mapping[str, Any], report_dir: Path) -> list[str]:
    lines: list[str] = []
    if "truthfulqa" in results:
        tqa = results["truthfulqa"]
        lines += ["## TruthfulQA", ""] + _table(
            ["n", "MC1", "MC2"], [[fmt(tqa["n"]), fmt(tqa["mc1"]), fmt(tqa["mc2"])]]
        )
    if "perplexity" in results:
        ppl = results["perplexity"]
        row = [fmt(ppl["perplexity"]), fmt(ppl["nll_per_token"]), fmt(ppl["tokens"])]
        lines += ["## Perplexity", ""] + _table(["perplexity", "NLL per token", "tokens"], [row])
    if results.get("plots"):
        lines += ["## Plots", ""]
        for name, png in results["plots"].items():
            rel = os.path.relpath(Path(png), report_dir) if Path(png).is_absolute() else str(png)
            lines += [f"![{name}]({Path(rel).as_posix()})", ""]
    return lines


def _analysis_section(analysis: Mapping[str, Any], report_dir: Path) -> list[str]:
    """A link to the ``analyze`` stage's report and its key numbers (the training data's attributes and length)."""
    rel = Path(os.path.relpath(Path(analysis["report"]).resolve(), report_dir)).as_posix()
    length = ", ".join(f"{name} {fmt(r, 2)}" for name, r in analysis["length_pearson"].items())
    lines = ["## Data analysis", "", f"[{rel}]({rel}): {fmt(analysis['rows'])} labelled turns."]
    lines += [f"Pearson with response words: {length}."]
    if analysis["helpfulness_r2"] is not None:
        lines += [f"Helpfulness fitted on the other attributes (OLS): R² {fmt(analysis['helpfulness_r2'])}."]
    return lines + [""]


def _meta_sections(results: Mapping[str, Any], config_yaml: str | None) -> list[str]:
    lines: list[str] = []
    if config_yaml is not None:
        lines += ["## Resolved config", "", "```yaml", config_yaml.rstrip("\n"), "```", ""]
    if results.get("versions"):
        rows = [[name, version or "not installed"] for name, version in results["versions"].items()]
        lines += ["## Package versions", ""] + _table(["package", "version"], rows)
    if results.get("timings"):
        rows = [[stage, fmt(seconds, 1)] for stage, seconds in results["timings"].items()]
        lines += ["## Timings", ""] + _table(["stage", "seconds"], rows)
    return lines


def render_report(
    results: Mapping[str, Any], report_dir: str | os.PathLike[str] = ".", config_yaml: str | None = None
) -> str:
    """The Markdown text of the report.

    Args:
        results: the results dict (see the module docstring); missing sections are left out.
        report_dir: folder the report will live in (plot links are made relative to it).
        config_yaml: the resolved config as YAML text, shown verbatim.

    Returns:
        The Markdown.
    """
    lines = ["# nemo-steerlm evaluation report", ""]
    if "apm" in results:
        lines += _apm_section(results["apm"])
    if "steerability" in results:
        lines += _steer_section(results["steerability"])
    if "conditioning" in results:
        lines += _conditioning_section(results["conditioning"])
    lines += _simple_sections(results, Path(report_dir).resolve())
    if "mt_bench" in results:
        lines += _mt_bench_section(results["mt_bench"])
    if "data_analysis" in results:
        lines += _analysis_section(results["data_analysis"], Path(report_dir).resolve())
    lines += _meta_sections(results, config_yaml)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(
    results: Mapping[str, Any], out_dir: str | os.PathLike[str], config_yaml: str | None = None
) -> tuple[Path, Path]:
    """Writes ``results.json`` and ``report.md`` into ``out_dir``, both atomically.

    Args:
        results: the results dict (JSON-serialisable).
        out_dir: destination folder (created if missing).
        config_yaml: the resolved config as YAML text.

    Returns:
        ``(report_path, json_path)``.
    """
    out = Path(out_dir)
    json_path = write_text_atomic(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    report_path = write_text_atomic(out / "report.md", render_report(results, out, config_yaml))
    return report_path, json_path
