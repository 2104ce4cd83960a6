"""Token-weighted perplexity from per-sequence negative log-likelihood sums and token counts.

``perplexity = exp(sum_i nll_i / sum_i tokens_i)``: every token weighs the same, whatever sequence it is in (the
mean of per-sequence perplexities would over-weight short sequences).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[int]) -> dict[str, Any]:
    """Token-weighted perplexity.

    Args:
        nll_sums: per sequence (or batch), the summed negative log-likelihood in nats of its scored tokens.
        token_counts: the number of scored tokens of each entry, same length.

    Returns:
        ``{"perplexity", "nll_per_token", "tokens", "sequences"}``.

    Raises:
        ValueError: on mismatched lengths, a negative count or NLL, non-finite values, or no tokens at all.
    """
    if len(nll_sums) != len(token_counts):
        raise ValueError(f"{len(nll_sums)} NLL sums but {len(token_counts)} token counts")
    total_nll, total_tokens = 0.0, 0
    for i, (nll, count) in enumerate(zip(nll_sums, token_counts, strict=True)):
        if not math.isfinite(float(nll)) or float(nll) < 0:
            raise ValueError(f"entry {i}: NLL sum {nll!r} must be finite and >= 0")
        if int(count) != count or count < 0:
            raise ValueError(f"entry {i}: token count {count!r} must be a non-negative integer")
        total_nll += float(nll)
        total_tokens += int(count)
    if total_tokens == 0:
        raise ValueError("perplexity needs at least one scored token")
    nll_per_token = total_nll / total_tokens
    return {
        "perplexity": math.exp(nll_per_token),
        "nll_per_token": nll_per_token,
        "tokens": total_tokens,
        "sequences": len(nll_sums),
    }
