from __future__ import annotations

import numpy as np
import pytest

from nmtkit.data.batching import build_batches_by_size, ordered_indices, shuffle_batches
from nmtkit.errors import ConfigError


def sorted_sizes(count: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.random.RandomState(seed).randint(1, 40, size=count)
    return np.argsort(sizes, kind="stable"), sizes


def test_batches_cover_indices_in_order_and_respect_max_tokens() -> None:
    indices, sizes = sorted_sizes()
    batches = build_batches_by_size(indices, sizes, max_tokens=100, batch_size=None)
    assert np.concatenate(batches).tolist() == indices.tolist()
    for batch, following in zip(batches, batches[1:]):
        assert len(batch) * sizes[batch].max() <= 100
        # A batch closes only when the next item would not fit.
        longest = max(sizes[batch].max(), sizes[following[0]])
        assert (len(batch) + 1) * longest > 100
    assert len(batches[-1]) * sizes[batches[-1]].max() <= 100


def test_batch_size_caps_the_number_of_items() -> None:
    indices, sizes = sorted_sizes()
    batches = build_batches_by_size(indices, sizes, max_tokens=None, batch_size=7)
    assert [len(b) for b in batches] == [7] * 42 + [6]
    batches = build_batches_by_size(indices, sizes, max_tokens=200, batch_size=7)
    assert all(len(b) <= 7 and len(b) * sizes[b].max() <= 200 for b in batches)
    assert np.concatenate(batches).tolist() == indices.tolist()


def test_batch_lengths_round_down_to_the_required_multiple() -> None:
    indices, sizes = sorted_sizes()
    batches = build_batches_by_size(indices, sizes, 120, None, required_batch_size_multiple=4)
    assert np.concatenate(batches).tolist() == indices.tolist()
    assert all(len(b) % 4 == 0 for b in batches[:-1] if len(b) >= 4)
    assert any(len(b) < 4 for b in batches[:-1])  # items of 31+ tokens: 3 per batch at most
    assert all(len(b) * sizes[b].max() <= 120 for b in batches)


def test_num_tokens_may_be_a_function() -> None:
    indices, sizes = sorted_sizes(50)
    from_array = build_batches_by_size(indices, sizes, 64, 5, 2)
    from_function = build_batches_by_size(indices, lambda i: int(sizes[i]), 64, 5, 2)
    assert [b.tolist() for b in from_array] == [b.tolist() for b in from_function]


def test_an_item_longer_than_max_tokens_is_an_error() -> None:
    with pytest.raises(ConfigError, match="dataset.max_tokens=10: sample 1 has 11 tokens"):
        build_batches_by_size(np.array([0, 1]), np.array([3, 11]), 10, None)
    with pytest.raises(ConfigError, match="set at least one"):
        build_batches_by_size(np.array([0]), np.array([3]), None, None)
    assert build_batches_by_size(np.array([], dtype=np.int64), np.array([]), 10, None) == []


def test_ordered_indices_sort_by_source_then_target_with_seeded_ties() -> None:
    rng = np.random.RandomState(1)
    src, tgt = rng.randint(1, 5, 200), rng.randint(1, 5, 200)
    order = ordered_indices(src, tgt, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(200))
    keys = list(zip(src[order], tgt[order]))
    assert keys == sorted(keys)
    assert order.tolist() == ordered_indices(src, tgt, seed=3, epoch=1).tolist()
    assert order.tolist() != ordered_indices(src, tgt, seed=3, epoch=2).tolist()
    assert order.tolist() != ordered_indices(src, tgt, seed=4, epoch=1).tolist()
    # Without shuffling, ties keep id order; without targets only the source length counts.
    unshuffled = ordered_indices(src, tgt, seed=3, epoch=1, shuffle=False)
    assert unshuffled.tolist() == sorted(range(200), key=lambda i: (src[i], tgt[i], i))
    source_only = ordered_indices(src, None, seed=3, epoch=1, shuffle=False)
    assert source_only.tolist() == sorted(range(200), key=lambda i: (src[i], i))


def test_shuffle_batches_is_a_seeded_permutation() -> None:
    batches = [np.array([i]) for i in range(30)]
    shuffled = shuffle_batches(batches, seed=1, epoch=1)
    assert sorted(int(b[0]) for b in shuffled) == list(range(30))
    assert [int(b[0]) for b in shuffled] == [int(b[0]) for b in shuffle_batches(batches, 1, 1)]
    assert [int(b[0]) for b in shuffled] != [int(b[0]) for b in shuffle_batches(batches, 1, 2)]
