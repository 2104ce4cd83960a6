"""Token-weighted perplexity."""

import math

import pytest

from nemo_steerlm.evaluation.perplexity import perplexity


def test_token_weighted():
    out = perplexity([2.0, 4.0], [1, 3])
    assert out["perplexity"] == pytest.approx(math.exp(1.5))  # (2 + 4) / (1 + 3), not the mean of exp(2), exp(4/3)
    assert out["tokens"] == 4 and out["sequences"] == 2 and out["nll_per_token"] == pytest.approx(1.5)


@pytest.mark.parametrize(
    "nll, counts", [([1.0], [1, 2]), ([1.0], [0]), ([-1.0], [2]), ([float("nan")], [2]), ([1.0], [1.5])]
)
def test_rejects_bad_input(nll, counts):
    with pytest.raises(ValueError):
        perplexity(nll, counts)
