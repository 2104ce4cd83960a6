"""Evaluate an attribute prediction model on regression JSONL: per-attribute metrics next to the two baselines.

Used by ``train-apm`` (on its validation split) and ``evaluate`` (for any ``apm.nemo``). Writes the files named in
:mod:`nemo_steerlm.evaluation.apm_metrics` (``apm_metrics.json``, ``apm_predictions.jsonl``, ``apm_scatter.png``);
every number is recomputable from the
predictions file and the training labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nemo_steerlm.data.formats import read_regression_jsonl
from nemo_steerlm.data.io import write_json_atomic, write_jsonl_atomic
from nemo_steerlm.data.template import regression_response
from nemo_steerlm.evaluation.apm_metrics import (
    METRICS_FILE,
    PLOT_FILE,
    PREDICTIONS_FILE,
    compute_apm_metrics,
    plot_apm,
)
from nemo_steerlm.megatron import parallel

if TYPE_CHECKING:
    from nemo_steerlm.models.apm import AttributePredictionModel


def _words(text: str) -> int:
    return len(regression_response(text).split())


def evaluate_apm(
    model: AttributePredictionModel, eval_path: Path, train_path: Path, out_dir: Path
) -> dict[str, Any] | None:
    """Predicts ``eval_path`` with ``model`` and writes metrics against the training-set baselines.

    Must be called on every rank; the files are written and the metrics returned on global rank 0 (``None``
    elsewhere). ``model`` is an :class:`~nemo_steerlm.models.apm.AttributePredictionModel` or anything with its
    ``schema`` and ``predict_texts`` (a :class:`~nemo_steerlm.serving.client.RemoteScorer`): the eval rows' texts are
    predicted as the model's own regression dataset of the file would be (same tokens, same cut, same batches).
    """
    evals = read_regression_jsonl(eval_path, model.schema)
    trains = read_regression_jsonl(train_path, model.schema)
    preds, _ = model.predict_texts([e.text for e in evals])
    if not parallel.is_global_rank_zero():
        return None
    names = list(model.schema.names)
    targets = np.array([e.label for e in evals], dtype=np.float64)
    metrics = compute_apm_metrics(
        preds.astype(np.float64),
        targets,
        names,
        np.array([e.label for e in trains], dtype=np.float64),
        np.array([_words(e.text) for e in trains], dtype=np.float64),
        np.array([_words(e.text) for e in evals], dtype=np.float64),
        model.schema.min_value,
        model.schema.max_value,
    )
    metrics["eval_file"], metrics["train_file"] = str(eval_path), str(train_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(
        out_dir / PREDICTIONS_FILE,
        (
            json.dumps({"line": i + 1, "prediction": [round(float(v), 6) for v in p], "label": e.label})
            for i, (p, e) in enumerate(zip(preds, evals, strict=True))
        ),
    )
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    plot_apm(preds, targets, names, out_dir / PLOT_FILE)
    return metrics
