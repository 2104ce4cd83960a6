"""Metrics of the attribute prediction model (APM) against held-out human labels, next to two baselines.

For every attribute, on the rows whose target is not ``attributes.MASK_VALUE``:

* MAE and RMSE of the raw predictions;
* Pearson and Spearman correlation (``None`` when either side is constant or fewer than two rows exist);
* accuracy after clipping to ``[min_value, max_value]`` and rounding half to even (the annotation rule).

The same numbers are computed for two baselines, so a reader can tell whether the APM learned anything:

* ``mean``: predict the training mean of the attribute for every row;
* ``length``: a least-squares line ``a + b * words`` of the attribute on the response length in words, fitted on the
  training rows where the attribute is labelled.

Everything returned is plain Python (floats, ints, ``None``, lists, dicts), ready for ``json.dumps``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nemo_steerlm.attributes import MASK_VALUE, MAX_VALUE, MIN_VALUE
from nemo_steerlm.evaluation._io import new_figure, save_figure

PREDICTORS: tuple[str, ...] = ("model", "mean", "length")
#: the files an APM evaluation writes into its output folder (see :mod:`nemo_steerlm.inference.apm_eval`)
METRICS_FILE = "apm_metrics.json"
PREDICTIONS_FILE = "apm_predictions.jsonl"
PLOT_FILE = "apm_scatter.png"


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def correlations(pred: np.ndarray, target: np.ndarray) -> tuple[float | None, float | None]:
    """Pearson and Spearman correlation, ``None`` where undefined (constant input or fewer than 2 rows).

    Args:
        pred: predictions, 1-D.
        target: targets, 1-D, same length.

    Returns:
        ``(pearson, spearman)``.
    """
    from scipy import stats

    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return None, None
    pearson = _finite_or_none(stats.pearsonr(pred, target)[0])
    spearman = _finite_or_none(stats.spearmanr(pred, target)[0])
    return pearson, spearman


def regression_metrics(
    pred: np.ndarray, target: np.ndarray, min_value: int = MIN_VALUE, max_value: int = MAX_VALUE
) -> dict[str, Any]:
    """MAE, RMSE, Pearson, Spearman and rounded accuracy of ``pred`` against ``target`` (no masking here).

    Args:
        pred: raw predictions, 1-D.
        target: integer-valued targets, 1-D, same length, at least one row.
        min_value: lower clip bound for the accuracy.
        max_value: upper clip bound for the accuracy.

    Returns:
        ``{"n", "mae", "rmse", "pearson", "spearman", "accuracy"}``.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    err = pred - target
    rounded = np.round(np.clip(pred, min_value, max_value))  # numpy rounds half to even, as the annotator does
    pearson, spearman = correlations(pred, target)
    return {
        "n": int(target.size),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "pearson": pearson,
        "spearman": spearman,
        "accuracy": float(np.mean(rounded == target)),
    }


def fit_length_baseline(lengths: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """Least-squares fit ``value ≈ intercept + slope * length``.

    With fewer than two rows or a constant length the slope is 0 and the intercept the mean (the least-squares
    solution of minimum norm in the slope).

    Args:
        lengths: response lengths in words, 1-D.
        values: attribute values, 1-D, same length, at least one row.

    Returns:
        ``{"intercept", "slope"}``.
    """
    x = np.asarray(lengths, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        return {"intercept": float(np.mean(y)), "slope": 0.0}
    x_mean, y_mean = x.mean(), y.mean()
    slope = float(np.sum((x - x_mean) * (y - y_mean)) / np.sum((x - x_mean) ** 2))
    return {"intercept": float(y_mean - slope * x_mean), "slope": slope}


def _check_inputs(preds, targets, names, train_targets, train_lengths, eval_lengths) -> None:
    n, a = targets.shape if targets.ndim == 2 else (None, None)
    if targets.ndim != 2 or preds.shape != targets.shape:
        raise ValueError(f"preds {preds.shape} and targets {targets.shape} must both be [N, A] with the same shape")
    if len(names) != a:
        raise ValueError(f"{len(names)} attribute names given for {a} target columns")
    if train_targets.ndim != 2 or train_targets.shape[1] != a:
        raise ValueError(f"train_targets {train_targets.shape} must be [M, {a}]")
    if train_lengths.shape != (train_targets.shape[0],):
        raise ValueError(f"train_lengths {train_lengths.shape} must be [{train_targets.shape[0]}] (one per train row)")
    if eval_lengths.shape != (n,):
        raise ValueError(f"eval_lengths {eval_lengths.shape} must be [{n}] (one per eval row)")


def compute_apm_metrics(
    preds: np.ndarray,
    targets: np.ndarray,
    attribute_names: Sequence[str],
    train_targets: np.ndarray,
    train_lengths: np.ndarray,
    eval_lengths: np.ndarray,
    min_value: int = MIN_VALUE,
    max_value: int = MAX_VALUE,
) -> dict[str, Any]:
    """Per-attribute APM metrics next to the training-mean and length-fit baselines.

    Args:
        preds: APM predictions, ``[N, A]``.
        targets: held-out labels, ``[N, A]``, ``MASK_VALUE`` where an attribute is not labelled.
        attribute_names: the ``A`` attribute names, in column order.
        train_targets: training labels ``[M, A]`` (masked the same way), for the baselines.
        train_lengths: training response lengths in words, ``[M]``.
        eval_lengths: held-out response lengths in words, ``[N]``.
        min_value: lowest score (clip bound of the accuracy).
        max_value: highest score.

    Returns:
        ``{"n_rows", "attributes": {name: {...}}, "absent": [names]}``. A present attribute holds ``n``,
        ``train_mean``, ``length_fit`` and one metrics dict per predictor in ``PREDICTORS`` (a baseline is ``None``
        when the attribute has no labelled training row). An attribute without labelled held-out rows is
        ``{"n": 0, "absent": True}`` and is listed in ``absent``.
    """
    preds, targets = np.asarray(preds, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    train_targets = np.asarray(train_targets, dtype=np.float64)
    train_lengths, eval_lengths = np.asarray(train_lengths, np.float64), np.asarray(eval_lengths, np.float64)
    names = list(attribute_names)
    _check_inputs(preds, targets, names, train_targets, train_lengths, eval_lengths)
    out: dict[str, Any] = {"n_rows": int(targets.shape[0]), "attributes": {}, "absent": []}
    for col, name in enumerate(names):
        keep = targets[:, col] != MASK_VALUE
        if not keep.any():
            out["attributes"][name] = {"n": 0, "absent": True}
            out["absent"].append(name)
            continue
        target, pred, length = targets[keep, col], preds[keep, col], eval_lengths[keep]
        entry: dict[str, Any] = {"n": int(keep.sum()), "absent": False}
        entry["model"] = regression_metrics(pred, target, min_value, max_value)
        train_keep = train_targets[:, col] != MASK_VALUE
        if train_keep.any():
            train_y = train_targets[train_keep, col]
            mean = float(train_y.mean())
            fit = fit_length_baseline(train_lengths[train_keep], train_y)
            entry["train_mean"], entry["length_fit"] = mean, fit
            entry["mean"] = regression_metrics(np.full_like(target, mean), target, min_value, max_value)
            length_pred = fit["intercept"] + fit["slope"] * length
            entry["length"] = regression_metrics(length_pred, target, min_value, max_value)
        else:
            entry.update(train_mean=None, length_fit=None, mean=None, length=None)
        out["attributes"][name] = entry
    return out


def plot_apm(
    preds: np.ndarray,
    targets: np.ndarray,
    attribute_names: Sequence[str],
    path: str | os.PathLike[str],
    min_value: int = MIN_VALUE,
    max_value: int = MAX_VALUE,
) -> Path:
    """One PNG with a scatter panel per attribute: human label (x, jittered) against APM prediction (y).

    Masked rows are left out; an attribute without labelled rows gets an empty panel saying so.

    Args:
        preds: APM predictions, ``[N, A]``.
        targets: labels, ``[N, A]``, ``MASK_VALUE`` where missing.
        attribute_names: column names.
        path: PNG destination, written atomically.
        min_value: lowest score (axis range).
        max_value: highest score.

    Returns:
        The PNG path.
    """
    preds, targets = np.asarray(preds, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    names = list(attribute_names)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = new_figure(4.0 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    jitter_rng = np.random.default_rng(0)
    lo, hi = min_value - 0.5, max_value + 0.5
    for ax, (col, name) in zip(axes, enumerate(names), strict=False):
        keep = targets[:, col] != MASK_VALUE
        ax.set_title(f"{name} (n={int(keep.sum())})")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("human label")
        ax.set_ylabel("APM prediction")
        if not keep.any():
            ax.text(0.5, 0.5, "no labelled rows", ha="center", va="center", transform=ax.transAxes)
            continue
        x = targets[keep, col] + jitter_rng.uniform(-0.15, 0.15, int(keep.sum()))
        ax.scatter(x, preds[keep, col], s=8, alpha=0.5)
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)
