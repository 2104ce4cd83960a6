"""APM metrics against hand-computed values."""

import json
import math

import numpy as np
import pytest

from nemo_steerlm.attributes import MASK_VALUE
from nemo_steerlm.evaluation.apm_metrics import compute_apm_metrics, fit_length_baseline, plot_apm, regression_metrics

M = MASK_VALUE
NAMES = ["helpfulness", "verbosity", "coherence"]


def _fixture():
    preds = np.array([[1.0, 3.0, 2.0], [2.5, 3.0, 2.0], [3.5, 3.0, 2.0], [0.2, 3.0, 2.0]])
    targets = np.array([[1, M, 1], [2, M, 2], [4, M, 4], [M, M, 4]], dtype=float)
    train = np.array([[0, 1, M], [2, 2, M], [4, 3, M], [M, 1, M]], dtype=float)
    train_len = np.array([10.0, 20.0, 30.0, 99.0])
    eval_len = np.array([15.0, 20.0, 25.0, 0.0])
    return preds, targets, train, train_len, eval_len


def test_model_metrics_match_hand_computation_on_unmasked_rows():
    out = compute_apm_metrics(*_fixture()[:2], NAMES, *_fixture()[2:])
    m = out["attributes"]["helpfulness"]["model"]
    assert m["n"] == 3  # the masked 4th row is ignored
    assert m["mae"] == pytest.approx(1 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 6))
    assert m["pearson"] == pytest.approx(11 / math.sqrt(133))  # by hand: sum dxdy = 11/3, sxx = 19/6, syy = 14/3
    assert m["spearman"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(1.0)  # 2.5 -> 2 and 3.5 -> 4 (half to even)


def test_baselines_match_hand_computation():
    out = compute_apm_metrics(*_fixture()[:2], NAMES, *_fixture()[2:])
    entry = out["attributes"]["helpfulness"]
    assert entry["train_mean"] == pytest.approx(2.0)  # masked train row excluded
    assert entry["length_fit"]["slope"] == pytest.approx(0.2)
    assert entry["length_fit"]["intercept"] == pytest.approx(-2.0)
    mean = entry["mean"]  # predicts 2 for targets 1, 2, 4
    assert (mean["mae"], mean["rmse"], mean["accuracy"]) == pytest.approx((1.0, math.sqrt(5 / 3), 1 / 3))
    assert mean["pearson"] is None and mean["spearman"] is None
    length = entry["length"]  # predicts 1, 2, 3 for targets 1, 2, 4
    assert (length["mae"], length["accuracy"]) == pytest.approx((1 / 3, 2 / 3))
    assert length["pearson"] == pytest.approx(3 / math.sqrt(2 * 14 / 3))


def test_absent_attribute_and_constant_predictions():
    out = compute_apm_metrics(*_fixture()[:2], NAMES, *_fixture()[2:])
    assert out["absent"] == ["verbosity"]
    assert out["attributes"]["verbosity"] == {"n": 0, "absent": True}
    coherence = out["attributes"]["coherence"]
    assert coherence["model"]["pearson"] is None  # predictions are all 2.0
    assert coherence["model"]["n"] == 4
    assert coherence["mean"] is None and coherence["length"] is None  # no labelled training row
    json.dumps(out, allow_nan=False)


def test_accuracy_rounds_half_to_even_after_clipping():
    pred = np.array([2.5, 3.5, 0.5, 1.5, 4.7, -0.6, 2.5])
    target = np.array([2, 4, 0, 2, 4, 0, 3])
    assert regression_metrics(pred, target)["accuracy"] == pytest.approx(6 / 7)


def test_length_fit_degenerate_cases():
    assert fit_length_baseline(np.array([5.0, 5.0]), np.array([1.0, 3.0])) == {"intercept": 2.0, "slope": 0.0}
    assert fit_length_baseline(np.array([7.0]), np.array([4.0])) == {"intercept": 4.0, "slope": 0.0}


def test_shape_errors_are_reported():
    preds, targets, train, train_len, eval_len = _fixture()
    with pytest.raises(ValueError, match="attribute names"):
        compute_apm_metrics(preds, targets, NAMES[:2], train, train_len, eval_len)
    with pytest.raises(ValueError, match="eval_lengths"):
        compute_apm_metrics(preds, targets, NAMES, train, train_len, eval_len[:2])


def test_plot_is_a_png(tmp_path):
    preds, targets = _fixture()[:2]
    path = plot_apm(preds, targets, NAMES, tmp_path / "apm.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["apm.png"]  # no temporary file left behind
