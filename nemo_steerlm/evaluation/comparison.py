"""Side-by-side comparison of several ``run`` folders (a baseline and its ablations): ``comparison.json`` and ``.md``.

Each run's numbers are read from its ``evaluate/results.json`` (see :mod:`nemo_steerlm.evaluation.report`); nothing
is recomputed. :func:`compare_runs` returns::

    runs            [name, ...] in the order given (the baseline first)
    drop            name -> the attributes that run trained without ([] for the baseline)
    results         name -> the results.json it was read from
    apm             attribute -> metric (pearson, spearman, mae, accuracy) -> name -> value of the APM's prediction
    steerability    swept attribute -> measure (words, tokens, fk_grade, apm) -> name -> Spearman(requested, realised)
    truthfulqa      mc1 / mc2 -> name -> value
    perplexity      name -> held-out perplexity of the SFT model
    mt_bench        name -> the judge's overall score (only when some run was judged)

A value is ``None`` where a run has no such number (an ablated attribute has no APM output and no steering sweep).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nemo_steerlm.data.io import DataError, write_text_atomic
from nemo_steerlm.evaluation.report import fmt

APM_METRICS: tuple[str, ...] = ("pearson", "spearman", "mae", "accuracy")
STEER_MEASURES: tuple[str, ...] = ("words", "tokens", "fk_grade", "apm")


def read_run_results(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``evaluate/results.json`` of a ``run`` folder.

    Raises:
        DataError: naming the file when it is missing or not JSON.
    """
    path = Path(run_dir) / "evaluate" / "results.json"
    if not path.is_file():
        raise DataError(path, "missing: the run has no finished evaluate stage")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(path, f"not valid JSON: {err}") from None


def _names_in_order(per_run: Sequence[Mapping[str, Any]]) -> list[str]:
    out: list[str] = []
    for entry in per_run:
        out += [name for name in entry if name not in out]
    return out


def _apm(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    per_run = {name: (res.get("apm") or {}).get("attributes", {}) for name, res in runs.items()}
    out: dict[str, Any] = {}
    for attr in _names_in_order(list(per_run.values())):
        rows: dict[str, Any] = {}
        for metric in APM_METRICS:
            values = {}
            for name, attrs in per_run.items():
                model = (attrs.get(attr) or {}).get("model")
                values[name] = model[metric] if model else None
            rows[metric] = values
        if any(v is not None for m in rows.values() for v in m.values()):
            out[attr] = rows
    return out


def _steerability(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    per_run = {name: res.get("steerability") or {} for name, res in runs.items()}
    out: dict[str, Any] = {}
    for attr in _names_in_order(list(per_run.values())):
        out[attr] = {
            m: {name: (sweeps[attr]["spearman"].get(m) if attr in sweeps else None) for name, sweeps in per_run.items()}
            for m in STEER_MEASURES
        }
    return out


def compare_runs(runs: Mapping[str, Mapping[str, Any]], drop: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The comparison of ``runs`` (name -> results dict, baseline first); ``drop``: name -> dropped attributes."""

    def get(res: Mapping[str, Any], section: str, key: str) -> Any:
        return (res.get(section) or {}).get(key)

    out: dict[str, Any] = {
        "runs": list(runs),
        "drop": {name: list(drop.get(name, [])) for name in runs},
        "apm": _apm(runs),
        "steerability": _steerability(runs),
        "truthfulqa": {k: {name: get(res, "truthfulqa", k) for name, res in runs.items()} for k in ("mc1", "mc2")},
        "perplexity": {name: get(res, "perplexity", "perplexity") for name, res in runs.items()},
    }
    judged = {name: ((res.get("mt_bench") or {}).get("judge") or {}).get("overall") for name, res in runs.items()}
    if any(v is not None for v in judged.values()):
        out["mt_bench"] = judged
    return out


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body] + [""]


def render_comparison(comparison: Mapping[str, Any], links: Mapping[str, str] | None = None) -> str:
    """The Markdown of ``comparison.md``; ``links``: run name -> its report path (relative to the comparison)."""
    names = comparison["runs"]
    lines = ["# Ablation comparison", ""]
    runs = [
        [name, ", ".join(comparison["drop"][name]) or "(baseline)", f"[report]({links[name]})" if links else ""]
        for name in names
    ]
    lines += _table(["run", "trained without", "report"], runs)
    lines += ["## Attribute prediction model (held-out, APM vs human labels)", ""]
    body = [
        [attr, metric, *[fmt(values[n]) for n in names]]
        for attr, metrics in comparison["apm"].items()
        for metric, values in metrics.items()
    ]
    lines += _table(["attribute", "metric", *names], body)
    lines += ["## Steering: Spearman(requested, realised)", ""]
    body = [
        [attr, measure, *[fmt(values[n]) for n in names]]
        for attr, measures in comparison["steerability"].items()
        for measure, values in measures.items()
        if any(v is not None for v in values.values())
    ]
    lines += _table(["swept attribute", "measure", *names], body)
    lines += ["## TruthfulQA, perplexity" + (", MT-Bench" if "mt_bench" in comparison else ""), ""]
    body = [[f"TruthfulQA {k.upper()}", *[fmt(comparison["truthfulqa"][k][n]) for n in names]] for k in ("mc1", "mc2")]
    body.append(["held-out perplexity", *[fmt(comparison["perplexity"][n]) for n in names]])
    if "mt_bench" in comparison:
        body.append(["MT-Bench judge overall", *[fmt(comparison["mt_bench"][n]) for n in names]])
    lines += _table(["metric", *names], body)
    lines += ["`—`: the run has no such number (an attribute it trained without has no APM output and no sweep).", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_comparison(run_dirs: Mapping[str, Path], drop: Mapping[str, Sequence[str]], out_dir: Path) -> dict:
    """Reads each run's results, writes ``out_dir/comparison.json`` and ``comparison.md``; returns the comparison.

    Raises:
        DataError: when a run has no ``evaluate/results.json`` (nothing is written then).
    """
    runs = {name: read_run_results(path) for name, path in run_dirs.items()}
    comparison = compare_runs(runs, drop)
    comparison["results"] = {name: str(Path(path) / "evaluate" / "results.json") for name, path in run_dirs.items()}
    links = {
        name: Path(os.path.relpath(Path(path).resolve() / "evaluate" / "report.md", out_dir.resolve())).as_posix()
        for name, path in run_dirs.items()
    }
    write_text_atomic(out_dir / "comparison.json", json.dumps(comparison, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out_dir / "comparison.md", render_comparison(comparison, links))
    return comparison
