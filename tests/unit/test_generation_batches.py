"""Batching of prompts for generation: sorted order kept, size and length spread bounded, nothing lost."""

from hypothesis import given
from hypothesis import strategies as st

from nemo_steerlm.models.generation import length_batches


@given(st.lists(st.integers(1, 500), max_size=60), st.integers(1, 9), st.integers(0, 64))
def test_length_batches_cover_all_in_order_with_bounded_spread(lengths, batch_size, spread):
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = length_batches(order, lengths, batch_size, spread)
    assert [i for b in batches for i in b] == order
    for b in batches:
        assert 1 <= len(b) <= batch_size
        assert lengths[b[-1]] - lengths[b[0]] <= spread


def test_length_batches_split_on_spread_not_only_size():
    lengths = [10, 12, 40, 41, 42]
    assert length_batches([0, 1, 2, 3, 4], lengths, 8, 8) == [[0, 1], [2, 3, 4]]


def test_batched_prefill_fills_batches_whatever_the_spread():
    """With the KV cache and per-row RoPE positions a spread costs only masked padding in one prefill, so batches are
    cut by size alone; the stepwise loop keeps the bound (each spread token costs a decode step for the batch)."""
    import torch

    from nemo_steerlm.models.generation import SamplingParams, spread_bound
    from nemo_steerlm.models.gpt import PositionAwareGPTModel

    params = SamplingParams(max_new_tokens=64, greedy=True, batch_size=8)
    prefilled = object.__new__(PositionAwareGPTModel)
    lengths = [5, 90, 180, 400, 410, 800]
    order = list(range(len(lengths)))
    assert length_batches(order, lengths, 4, spread_bound(prefilled, params)) == [[0, 1, 2, 3], [4, 5]]
    assert spread_bound(torch.nn.Linear(1, 1), params) == 32
    assert spread_bound(prefilled, SamplingParams(max_new_tokens=64, greedy=True, use_cache=False)) == 32
