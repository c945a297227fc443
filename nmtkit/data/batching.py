"""Batching options (the `dataset` config group) and length-bucketed batch construction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from nmtkit.errors import ConfigError


@dataclass(kw_only=True)
class DatasetConfig:
    """How training and validation data are read and batched."""

    max_tokens: Optional[int] = None
    """Largest padded batch: batch size x longest item (source or target) <= max_tokens."""
    batch_size: Optional[int] = None
    """Largest number of sentences per batch (combine with max_tokens or use alone)."""
    required_batch_size_multiple: int = 1
    """Batch sizes are rounded down to a multiple of this (8 suits tensor cores)."""
    max_tokens_valid: Optional[int] = None
    """max_tokens for validation batches (defaults to max_tokens)."""
    batch_size_valid: Optional[int] = None
    """batch_size for validation batches (defaults to batch_size)."""
    num_workers: int = 0
    """DataLoader worker processes that collate batches (0 = in the main process)."""
    skip_invalid_size_inputs: bool = False
    """Drop (and count) pairs longer than the model's max positions instead of failing."""
    train_subset: str = "train"
    """Split used for training."""
    valid_subset: str = "valid"
    """Split used for validation (comma-separated for several)."""
    validate_interval: int = 1
    """Validate every N epochs (0 = never at epoch ends)."""
    validate_interval_updates: int = 0
    """Also validate every N updates (0 = only at epoch ends)."""
    disable_validation: bool = False
    """Skip validation entirely."""

    def validate(self) -> list[str]:
        errors = []
        if self.max_tokens is None and self.batch_size is None:
            errors.append("max_tokens/batch_size: set at least one (e.g. dataset.max_tokens=4096)")
        for name in ("max_tokens", "batch_size", "max_tokens_valid", "batch_size_valid"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                errors.append(f"{name}={value}: must be positive")
        if self.required_batch_size_multiple < 1:
            errors.append("required_batch_size_multiple: must be >= 1")
        if self.num_workers < 0:
            errors.append("num_workers: must be >= 0")
        return errors


NumTokens = Union[np.ndarray, Sequence[int], Callable[[int], int]]


def seeded_random_state(seed: int, epoch: int, purpose: int) -> np.random.RandomState:
    """A RandomState for one (seed, epoch, purpose) triple.

    The legacy RandomState keeps its permutation algorithm fixed across numpy releases, which
    an exactly resumable epoch plan needs; distinct `purpose` values give independent streams
    (sample order vs. batch order) for the same seed and epoch.
    """
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, epoch & 0xFFFFFFFF, purpose]
    return np.random.RandomState(words)


def filter_indices_by_size(
    indices: np.ndarray,
    src_sizes: np.ndarray,
    tgt_sizes: Optional[np.ndarray],
    max_source_positions: Optional[int],
    max_target_positions: Optional[int],
) -> tuple[np.ndarray, int]:
    """Keeps the samples whose source and target sizes fit the limits (None = no limit);
    returns (kept indices in their original order, number dropped)."""
    indices = np.asarray(indices, dtype=np.int64)
    keep = np.ones(len(indices), dtype=bool)
    if max_source_positions is not None:
        keep &= src_sizes[indices] <= max_source_positions
    if max_target_positions is not None and tgt_sizes is not None:
        keep &= tgt_sizes[indices] <= max_target_positions
    kept = indices[keep]
    return kept, len(indices) - len(kept)


def ordered_indices(
    src_sizes: np.ndarray,
    tgt_sizes: Optional[np.ndarray],
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> np.ndarray:
    """Sample ids sorted by source length, then target length, ties in seeded random order.

    As in fairseq: a random permutation (from `seed` and `epoch`) followed by a stable sort on
    (source size, target size), so similar lengths sit together while each epoch forms
    different batches. Without `shuffle` ties keep their id order.
    """
    src_sizes = np.asarray(src_sizes)
    count = len(src_sizes)
    if shuffle:
        order = seeded_random_state(seed, epoch, purpose=0).permutation(count)
    else:
        order = np.arange(count, dtype=np.int64)
    if tgt_sizes is None:
        keys: tuple[np.ndarray, ...] = (src_sizes[order],)
    else:
        # np.lexsort sorts by the LAST key first and is stable.
        keys = (np.asarray(tgt_sizes)[order], src_sizes[order])
    return order[np.lexsort(keys)].astype(np.int64, copy=False)


def shuffle_batches(batches: list[np.ndarray], seed: int, epoch: int) -> list[np.ndarray]:
    """The batches in a seeded random order (so consecutive updates see different lengths)."""
    order = seeded_random_state(seed, epoch, purpose=1).permutation(len(batches))
    return [batches[i] for i in order]


def build_batches_by_size(
    indices: np.ndarray,
    num_tokens: NumTokens,
    max_tokens: Optional[int],
    batch_size: Optional[int],
    required_batch_size_multiple: int = 1,
) -> list[np.ndarray]:
    """Cuts length-sorted `indices` into consecutive batches, like fairseq's batch_by_size.

    `num_tokens` gives the size of sample id i (an array indexed by id, or a function). A batch
    is closed before the item that would make (items + 1) x longest exceed `max_tokens`, or when
    it holds `batch_size` items. A closed batch of at least `required_batch_size_multiple`
    items is rounded down to a multiple of it and the rest starts the next batch; the last
    batch keeps whatever remains. Both limits may be None (unbounded), but not both.
    """
    if max_tokens is None and batch_size is None:
        raise ConfigError(
            "dataset.max_tokens/dataset.batch_size: set at least one to build batches"
        )
    if required_batch_size_multiple < 1:
        raise ConfigError(
            f"dataset.required_batch_size_multiple={required_batch_size_multiple}: must be >= 1"
        )
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        return []
    if callable(num_tokens):
        lengths = [int(num_tokens(int(i))) for i in indices]
    else:
        lengths = np.asarray(num_tokens)[indices].tolist()
    token_limit = max_tokens if max_tokens is not None else float("inf")
    item_limit = batch_size if batch_size is not None else len(lengths) + 1
    multiple = required_batch_size_multiple

    # A plain loop over Python ints: the rule is sequential (each batch starts where the last
    # one ended) and this runs at about 0.1 s per million items, far from a bottleneck.
    ends: list[int] = []
    start = 0  # first item of the open batch
    count = 0  # items in the open batch
    longest = 0  # longest item in the open batch
    position = 0
    total = len(lengths)
    while position < total:
        length = lengths[position]
        new_longest = length if length > longest else longest
        if count and (count == item_limit or (count + 1) * new_longest > token_limit):
            keep = count if count < multiple else count - count % multiple
            start += keep
            ends.append(start)
            count -= keep
            longest = max(lengths[start:position]) if count else 0
            continue
        if length > token_limit:
            raise ConfigError(
                f"dataset.max_tokens={max_tokens}: sample {int(indices[position])} has {length} "
                "tokens, more than a whole batch may hold; raise dataset.max_tokens or filter "
                "long samples (lower max_source_positions/max_target_positions with "
                "dataset.skip_invalid_size_inputs=true)"
            )
        longest = new_longest
        count += 1
        position += 1
    return np.split(indices, ends)
