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
