"""Steerability: does the realised response move when the requested attribute value moves?

For each swept attribute the caller generates responses at several requested values (see :func:`sweep_labels`) and
passes, per response, the requested value, the text, and optionally the APM prediction for that response and its
token count. For every response we measure:

* ``words``: whitespace-separated words (``len(text.split())``);
* ``tokens``: the token count given by the caller (``None`` when not given);
* ``fk_grade``: Flesch-Kincaid grade ``0.39 * words/sentences + 11.8 * syllables/words - 15.59``, with
  textstat's word and sentence counting and its pyphen (``en_US``) syllable counter. textstat's own
  ``flesch_kincaid_grade`` looks words up in NLTK's cmudict first and tries to download it when missing, which
  would make the number depend on the machine (and reach for the network); we always use the pyphen counter;
* ``apm``: the APM prediction of the swept attribute for this response (``None`` when not given).

Per requested level we report mean and population standard deviation (``ddof=0``) of each measure, and per
attribute the Spearman rank correlation between the requested value and each measure, computed over the individual
responses (not over the level means, which would have as few points as levels), on the responses where the measure
exists; ``None`` when it is undefined (fewer than two responses, or a constant side). Prompts differ far more from
each other than one prompt's answers at two levels do, so when the responses carry their prompt we also report the
within-prompt Spearman: per prompt, the correlation between its requested levels and its responses' measure, averaged
over the prompts where it is defined (does asking for more move *this* answer?).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from nemo_steerlm.attributes import ASSISTANT_ROLE, AttributeSchema
from nemo_steerlm.data.template import Conversation
from nemo_steerlm.evaluation._io import new_figure, save_figure

MEASURES: tuple[str, ...] = ("words", "tokens", "fk_grade", "apm")
#: the plot of a sweep, in ``evaluate``'s output folder
PLOT_FILE = "steerability.png"


@dataclass(frozen=True)
class SteerSample:
    """One steered response.

    Attributes:
        requested: the value asked for in the steering label.
        text: the generated response.
        apm_prediction: the APM prediction of the swept attribute for ``text``, if computed.
        tokens: the number of generated tokens, if known.
        prompt: which prompt the response answers (for the within-prompt Spearman), if known.
    """

    requested: float
    text: str
    apm_prediction: float | None = None
    tokens: int | None = None
    prompt: int | None = None


def sweep_labels(
    schema: AttributeSchema,
    attribute: str,
    values: Iterable[int],
    base_overrides: Mapping[str, int] | None = None,
) -> list[str]:
    """Steering label strings for a sweep of ``attribute`` over ``values``.

    Args:
        schema: the attribute schema (defaults of every attribute come from ``schema.steer_label``).
        attribute: the swept attribute.
        values: the requested values, in order.
        base_overrides: other attributes to fix for the whole sweep.

    Returns:
        One label per value, e.g. ``"...,verbosity:0"``, ``"...,verbosity:1"``.
    """
    schema.index(attribute)
    base = dict(base_overrides or {})
    return [schema.steer_label({**base, attribute: value}) for value in values]


@lru_cache(maxsize=1)
def _hyphenator() -> Any:
    import pyphen

    return pyphen.Pyphen(lang="en_US")


def fk_grade(text: str) -> float:
    """Flesch-Kincaid grade of ``text`` (0.0 for text without words); see the module docstring for the counters."""
    import textstat

    words = textstat.remove_punctuation(text).lower().split()
    if not words:
        return 0.0
    sentences = textstat.sentence_count(text)
    syllables = sum(len(_hyphenator().positions(word)) + 1 for word in words)
    return 0.39 * len(words) / sentences + 11.8 * syllables / len(words) - 15.59


def _as_sample(item: SteerSample | Sequence[Any]) -> SteerSample:
    if isinstance(item, SteerSample):
        return item
    if not 2 <= len(item) <= 5:
        raise ValueError(f"a sweep item is (requested, text[, apm_prediction[, tokens[, prompt]]]), got {item!r}")
    return SteerSample(*item)


def measure_response(sample: SteerSample) -> dict[str, Any]:
    """The per-response measures of one steered sample (see the module docstring)."""
    if not isinstance(sample.text, str):
        raise ValueError(f"response text must be a string, got {type(sample.text).__name__}")
    return {
        "requested": float(sample.requested),
        "words": len(sample.text.split()),
        "tokens": None if sample.tokens is None else int(sample.tokens),
        "fk_grade": fk_grade(sample.text),
        "apm": None if sample.apm_prediction is None else float(sample.apm_prediction),
        "prompt": sample.prompt,
    }


def _mean_std(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy import stats

    if len(xs) < 2 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    value = float(stats.spearmanr(xs, ys)[0])
    return value if math.isfinite(value) else None


def _within_prompt_spearman(rows: list[dict[str, Any]], measure: str) -> dict[str, Any] | None:
    """Mean over prompts of Spearman(requested, measure) among one prompt's responses; ``None`` without prompts."""
    by_prompt: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row["prompt"] is not None and row[measure] is not None:
            by_prompt.setdefault(int(row["prompt"]), []).append(row)
    values = [_spearman([r["requested"] for r in g], [r[measure] for r in g]) for g in by_prompt.values()]
    defined = [v for v in values if v is not None]
    if not defined:
        return None
    return {"mean": float(np.mean(defined)), "prompts": len(defined), "undefined": len(values) - len(defined)}


def summarise_sweep(items: Sequence[SteerSample | Sequence[Any]]) -> dict[str, Any]:
    """Per-response measures, per-level mean/std and Spearman(requested, measure) for one swept attribute.

    Args:
        items: ``SteerSample`` or tuples ``(requested, text[, apm_prediction[, tokens]])``.

    Returns:
        ``{"n", "levels": [{"requested", "n", words/tokens/fk_grade/apm: {"mean","std"} | None}],
        "spearman": {measure: float | None}, "spearman_within_prompt": {measure: {"mean", "prompts",
        "undefined"} | None}, "responses": [per-response measures]}``.
    """
    rows = [measure_response(_as_sample(item)) for item in items]
    if not rows:
        raise ValueError("a sweep needs at least one response")
    levels = []
    for value in sorted({row["requested"] for row in rows}):
        at_level = [row for row in rows if row["requested"] == value]
        level: dict[str, Any] = {"requested": value, "n": len(at_level)}
        for measure in MEASURES:
            level[measure] = _mean_std([row[measure] for row in at_level if row[measure] is not None])
        levels.append(level)
    spearman = {}
    for measure in MEASURES:
        have = [row for row in rows if row[measure] is not None]
        spearman[measure] = _spearman([r["requested"] for r in have], [r[measure] for r in have])
    within = {measure: _within_prompt_spearman(rows, measure) for measure in MEASURES}
    return {"n": len(rows), "levels": levels, "spearman": spearman, "spearman_within_prompt": within, "responses": rows}


def reference_samples(
    conversations: Sequence[Conversation], schema: AttributeSchema, attribute: str, levels: Iterable[int]
) -> tuple[list[SteerSample], dict[str, int]]:
    """The data's own (label, response) pairs as a sweep: what imitating the training data would reach.

    Each conversation's final assistant turn becomes a sample requested at its labelled value of ``attribute``
    (responses to the same prompt share a prompt index, for the within-prompt Spearman). Nothing is dropped
    silently: turns without a value for ``attribute`` and values outside ``levels`` are counted.

    Args:
        conversations: labelled conversations (e.g. a ``prepare`` output's ``sft/train.jsonl``).
        schema: the schema the labels are written in.
        attribute: the swept attribute.
        levels: the swept values; responses labelled otherwise are left out (and counted).

    Returns:
        ``(samples, {"unlabelled": n, "outside_levels": n})``.
    """
    wanted = {int(v) for v in levels}
    prompt_ids: dict[tuple[str, ...], int] = {}
    samples: list[SteerSample] = []
    counts = {"unlabelled": 0, "outside_levels": 0}
    for conv in conversations:
        last = conv.turns[-1] if conv.turns else None
        value = schema.parse_label(last.label).get(attribute) if last is not None and last.label else None
        if value is None:
            counts["unlabelled"] += 1
        elif value not in wanted:
            counts["outside_levels"] += 1
        else:
            key = tuple(t.value for t in conv.turns[:-1])
            samples.append(SteerSample(float(value), last.value, prompt=prompt_ids.setdefault(key, len(prompt_ids))))
    return samples, counts


def data_reference(
    conversations: Sequence[Conversation], schema: AttributeSchema, attribute: str, levels: Iterable[int]
) -> dict[str, Any]:
    """:func:`summarise_sweep` of :func:`reference_samples`, without the per-response rows.

    Returns:
        The summary's ``n``, ``levels``, ``spearman`` and ``spearman_within_prompt`` (``n`` 0 and empty parts when
        no response was labelled at a swept level), plus the ``unlabelled`` and ``outside_levels`` counts.
    """
    samples, counts = reference_samples(conversations, schema, attribute, levels)
    if not samples:
        return {"n": 0, "levels": [], "spearman": {}, "spearman_within_prompt": {}, **counts}
    summary = summarise_sweep(samples)
    summary.pop("responses")
    return {**summary, **counts}


def label_coverage(
    conversations: Sequence[Conversation], schema: AttributeSchema, labels: Sequence[str]
) -> dict[str, Any]:
    """How often the training data holds the values a sweep asks for: a model cannot imitate what it never saw.

    Every labelled assistant turn counts (that is what SFT trains on). For each attribute of ``labels`` the number
    of turns labelled with each requested value is given, and for each label how many turns carry exactly it.

    Args:
        conversations: labelled conversations (the SFT training data).
        schema: the schema the labels are written in.
        labels: the sweep's steering labels (see :func:`sweep_labels`).

    Returns:
        ``{"turns": n labelled turns, "values": {attribute: {"value": count}}, "labels": {label: count},
        "unseen": ["attribute=value", ...]}`` (``unseen``: requested values that no turn carries).
    """
    requested = [schema.parse_label(label) for label in labels]
    seen: list[dict[str, int]] = [
        schema.parse_label(turn.label)
        for conv in conversations
        for turn in conv.turns
        if turn.role == ASSISTANT_ROLE and turn.label
    ]
    names = dict.fromkeys(name for wanted in requested for name in wanted)
    counts = {name: Counter(got[name] for got in seen if name in got) for name in names}
    values: dict[str, dict[str, int]] = {}
    for wanted in requested:
        for name, value in wanted.items():
            values.setdefault(name, {})[str(value)] = counts[name][value]
    exact = {label: sum(1 for got in seen if got == wanted) for label, wanted in zip(labels, requested, strict=True)}
    unseen = [f"{name}={value}" for name, counts in values.items() for value, n in counts.items() if n == 0]
    return {"turns": len(seen), "values": values, "labels": exact, "unseen": unseen}


def compute_steerability(sweeps: Mapping[str, Sequence[SteerSample | Sequence[Any]]]) -> dict[str, Any]:
    """:func:`summarise_sweep` for every swept attribute.

    Args:
        sweeps: swept attribute name -> its responses.

    Returns:
        ``{attribute: summary}``, JSON-serialisable.
    """
    return {name: summarise_sweep(items) for name, items in sweeps.items()}


def plot_steerability(results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """PNG of steering curves: one row of panels per swept attribute, one panel per measure with data.

    Each panel shows the per-level mean with a ±1 std band against the requested value, and, where the summary
    carries a ``data_reference`` (see :func:`reference_samples`), the training data's per-level mean as a dashed line.

    Args:
        results: the output of :func:`compute_steerability`.
        path: PNG destination, written atomically.

    Returns:
        The PNG path.
    """
    if not results:
        raise ValueError("nothing to plot: no swept attribute")
    measures = [m for m in MEASURES if any(lvl[m] is not None for r in results.values() for lvl in r["levels"])]
    fig = new_figure(3.6 * len(measures), 3.0 * len(results))
    axes = fig.subplots(len(results), len(measures), squeeze=False)
    for row, (name, summary) in enumerate(results.items()):
        for col, measure in enumerate(measures):
            ax = axes[row, col]
            pts = [(lvl["requested"], lvl[measure]) for lvl in summary["levels"] if lvl[measure] is not None]
            ax.set_title(f"{name}: {measure}")
            ax.set_xlabel(f"requested {name}")
            if not pts:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
                continue
            x = np.array([p[0] for p in pts])
            mean = np.array([p[1]["mean"] for p in pts])
            std = np.array([p[1]["std"] for p in pts])
            ax.plot(x, mean, marker="o", label="model")
            ax.fill_between(x, mean - std, mean + std, alpha=0.25)
            ref = summary.get("data_reference") or {}
            ref_pts = [(lvl["requested"], lvl[measure]["mean"]) for lvl in ref.get("levels", []) if lvl[measure]]
            if ref_pts:
                ref_x, ref_mean = [p[0] for p in ref_pts], [p[1] for p in ref_pts]
                ax.plot(ref_x, ref_mean, linestyle="--", marker="x", color="gray", label="training data")
                ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)
