"""Epoch-by-epoch batch iteration with exact resume, sharded for data-parallel training.

Each epoch has a plan: the dataset's ids ordered by length with seeded ties
(`ordered_indices`), cut into batches (`build_batches_by_size`), the batches shuffled with the
same seed and epoch, then striped over the shards (batch j goes to shard j % num_shards).

Sharding: every shard yields the same number of batches, or DDP would hang waiting for a rank
that has run out. Shards that come up one batch short get a copy of the epoch's first batch
flagged `sample["is_dummy"] = True`; the trainer runs it (so gradients still synchronize) with
its loss multiplied by zero and leaves it out of the statistics. Padding was chosen over
truncating to the shortest shard because truncation silently drops up to num_shards - 1
batches per epoch, which matters for validation sets (a few dozen batches over 8 GPUs could
lose a quarter of the set) and makes results depend on the number of GPUs.

Resume: `state_dict()` records the epoch, the batches consumed in it and the batching
parameters that made the plan. Loaded with the same parameters, the epoch continues with
exactly the batches it would have yielded. Loaded with different ones (max_tokens,
batch_size, number of GPUs, ...), the old plan is rebuilt from the saved parameters to find
the samples already consumed, and only the remaining samples of the epoch are batched with the
new parameters. A state saved at the end of an epoch resumes at the start of the next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Optional, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from nmtkit.data.batching import build_batches_by_size, ordered_indices, shuffle_batches
from nmtkit.errors import CheckpointError, ConfigError, DataError

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class BatchableDataset(Protocol):
    """What the iterator needs from a dataset (LanguagePairDataset and SpeechDataset provide
    it). A dataset whose class sets `collates_with_epoch = True` gets `collater(items,
    epoch=...)` (SpecAugment seeds its masks with the epoch)."""

    src_sizes: np.ndarray
    tgt_sizes: Optional[np.ndarray]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @property
    def num_tokens_array(self) -> np.ndarray: ...

    def filter_by_size(
        self,
        indices: np.ndarray,
        max_source_positions: Optional[int],
        max_target_positions: Optional[int],
    ) -> tuple[np.ndarray, int]: ...

    def collater(self, items: list[dict[str, Any]]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BatchingParams:
    """Everything that decides an epoch's plan over all shards (the shard id does not)."""

    max_tokens: Optional[int]
    batch_size: Optional[int]
    required_batch_size_multiple: int
    seed: int
    num_shards: int
    shuffle: bool
    max_source_positions: Optional[int]
    max_target_positions: Optional[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> BatchingParams:
        def optional_int(key: str) -> Optional[int]:
            return None if state[key] is None else int(state[key])

        return cls(
            max_tokens=optional_int("max_tokens"),
            batch_size=optional_int("batch_size"),
            required_batch_size_multiple=int(state["required_batch_size_multiple"]),
            seed=int(state["seed"]),
            num_shards=int(state["num_shards"]),
            shuffle=bool(state["shuffle"]),
            max_source_positions=optional_int("max_source_positions"),
            max_target_positions=optional_int("max_target_positions"),
        )


class PlannedBatch(NamedTuple):
    """One batch of a shard's plan: the sample ids, whether it only pads the shard, and the
    epoch (for datasets whose collation depends on it, e.g. SpecAugment's seeds)."""

    indices: np.ndarray
    is_dummy: bool
    epoch: int = 1


class _CollatingDataset:
    """Hands DataLoader whole collated batches: `__getitems__` receives a PlannedBatch (what the
    batch sampler yields) and returns the sample, so collation runs in the worker processes
    and the dummy flag travels with the batch."""

    def __init__(self, dataset: BatchableDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def __getitems__(self, batch: PlannedBatch) -> dict[str, Any]:
        items = [self.dataset[int(i)] for i in batch.indices]
        if getattr(self.dataset, "collates_with_epoch", False):
            sample = self.dataset.collater(items, epoch=batch.epoch)  # type: ignore[call-arg]
        else:
            sample = self.dataset.collater(items)
        if batch.is_dummy:
            sample["is_dummy"] = True
        return sample


def _already_collated(sample: dict[str, Any]) -> dict[str, Any]:
    return sample


class EpochIterator:
    """The batches left in one epoch, as collated samples; counts what the caller consumed."""

    def __init__(
        self,
        owner: EpochBatchIterator,
        batches: list[PlannedBatch],
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        self._owner = owner
        self._batches = batches
        self._num_workers = num_workers
        self._pin_memory = pin_memory
        self._loader_iterator: Optional[Iterator[dict[str, Any]]] = None
        self._generation = owner._generation
        self.yielded = 0

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> EpochIterator:
        return self

    def has_next(self) -> bool:
        return self.yielded < len(self._batches)

    def __next__(self) -> dict[str, Any]:
        if not self.has_next():
            raise StopIteration
        if self._generation != self._owner._generation:
            # Counting its batches would corrupt the position that state_dict() saves.
            raise RuntimeError(
                "this epoch iterator was superseded by a later next_epoch_itr() or "
                "load_state_dict() call"
            )
        if self._loader_iterator is None:
            # Created on first use so that workers start only when batches are wanted.
            loader = DataLoader(
                _CollatingDataset(self._owner.dataset),
                batch_sampler=self._batches,
                collate_fn=_already_collated,
                num_workers=self._num_workers,
                pin_memory=self._pin_memory,
                # Its own generator: creating a DataLoader iterator otherwise draws from the
                # global torch RNG, which would shift dropout masks after an exact resume.
                generator=torch.Generator().manual_seed(self._owner.params.seed),
            )
            self._loader_iterator = iter(loader)
        sample = next(self._loader_iterator)
        self.yielded += 1
        self._owner._consumed_in_segment += 1
        return sample


class EpochBatchIterator:
    """Plans, shards and iterates the batches of each epoch; see the module docstring."""

    def __init__(
        self,
        dataset: BatchableDataset,
        *,
        max_tokens: Optional[int],
        batch_size: Optional[int],
        required_batch_size_multiple: int = 1,
        seed: int = 1,
        num_shards: int = 1,
        shard_id: int = 0,
        num_workers: int = 0,
        shuffle: bool = True,
        max_positions: Optional[tuple[Optional[int], Optional[int]]] = None,
        skip_invalid_size_inputs: bool = False,
        epoch: int = 1,
        pin_memory: Optional[bool] = None,
    ) -> None:
        errors = []
        if max_tokens is None and batch_size is None:
            errors.append("dataset.max_tokens/dataset.batch_size: set at least one")
        for key, value in (("max_tokens", max_tokens), ("batch_size", batch_size)):
            if value is not None and value <= 0:
                errors.append(f"dataset.{key}={value}: must be positive")
        if required_batch_size_multiple < 1:
            errors.append(
                f"dataset.required_batch_size_multiple={required_batch_size_multiple}: must be >= 1"
            )
        if num_shards < 1 or not 0 <= shard_id < num_shards:
            errors.append(f"shard_id={shard_id}, num_shards={num_shards}: need 0 <= id < shards")
        if num_workers < 0:
            errors.append(f"dataset.num_workers={num_workers}: must be >= 0")
        if epoch < 1:
            errors.append(f"epoch={epoch}: epochs count from 1")
        if errors:
            raise ConfigError("; ".join(errors))
        max_source_positions, max_target_positions = max_positions or (None, None)
        self.dataset = dataset
        # Named in error messages (LanguagePairDataset: the binarized source file's prefix).
        self.dataset_name: str = getattr(dataset, "name", type(dataset).__name__)
        self.params = BatchingParams(
            max_tokens=max_tokens,
            batch_size=batch_size,
            required_batch_size_multiple=required_batch_size_multiple,
            seed=seed,
            num_shards=num_shards,
            shuffle=shuffle,
            max_source_positions=max_source_positions,
            max_target_positions=max_target_positions,
        )
        self.shard_id = shard_id
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.skip_invalid_size_inputs = skip_invalid_size_inputs
        self.epoch = epoch

        self._valid_masks: dict[tuple[Optional[int], Optional[int]], np.ndarray] = {}
        self.num_filtered = self._check_sizes()
        # Earlier parts of this epoch that ran with other batching parameters (after a resume
        # with changed settings): (their parameters, batches each shard consumed).
        self._earlier_segments: list[tuple[BatchingParams, int]] = []
        self._consumed_in_segment = 0
        self._plan: Optional[list[PlannedBatch]] = None
        self._epoch_started = False
        self._generation = 0  # bumped whenever earlier EpochIterators stop being valid

    # ---- sizes --------------------------------------------------------------------------
    def _valid_mask(self, params: BatchingParams) -> np.ndarray:
        """Which sample ids fit `params`' max positions (cached per limit pair)."""
        key = (params.max_source_positions, params.max_target_positions)
        if key not in self._valid_masks:
            kept, _ = self.dataset.filter_by_size(np.arange(len(self.dataset)), *key)
            mask = np.zeros(len(self.dataset), dtype=bool)
            mask[kept] = True
            self._valid_masks[key] = mask
        return self._valid_masks[key]

    def _check_sizes(self) -> int:
        """Counts the pairs too long for the model (an error unless they may be skipped) and
        checks that every remaining pair fits in a batch of max_tokens."""
        params, dataset = self.params, self.dataset
        valid = self._valid_mask(params)
        num_filtered = int(len(valid) - valid.sum())
        if num_filtered:
            too_long = np.flatnonzero(~valid)
            longest = int(too_long[np.argmax(dataset.num_tokens_array[too_long])])
            target = (
                f" / {int(dataset.tgt_sizes[longest])} target"
                if dataset.tgt_sizes is not None
                else ""
            )
            message = (
                f"{self.dataset_name}: {num_filtered} of {len(valid)} pairs are longer than "
                f"max_source_positions={params.max_source_positions}/"
                f"max_target_positions={params.max_target_positions} (longest: pair {longest} "
                f"with {int(dataset.src_sizes[longest])} source{target} tokens)"
            )
            if not self.skip_invalid_size_inputs:
                raise DataError(
                    f"{message}; set dataset.skip_invalid_size_inputs=true or raise "
                    "max_source_positions/max_target_positions"
                )
            logger.warning("%s; skipping them", message)
        if params.max_tokens is not None and valid.any():
            sizes = np.where(valid, self.dataset.num_tokens_array, 0)
            longest = int(np.argmax(sizes))
            if sizes[longest] > params.max_tokens:
                raise ConfigError(
                    f"dataset.max_tokens={params.max_tokens}: {self.dataset_name} pair {longest} "
                    f"has {int(sizes[longest])} tokens and cannot fit in any batch; raise "
                    "dataset.max_tokens or lower max_source_positions/max_target_positions "
                    "with dataset.skip_invalid_size_inputs=true"
                )
        return num_filtered

    # ---- planning -----------------------------------------------------------------------
    def _all_shard_batches(
        self, params: BatchingParams, exclude: Optional[np.ndarray]
    ) -> list[np.ndarray]:
        """This epoch's batches over all shards, before striping, from the samples that fit
        `params` and are not in the `exclude` mask."""
        src_sizes, tgt_sizes = self.dataset.src_sizes, self.dataset.tgt_sizes
        order = ordered_indices(src_sizes, tgt_sizes, params.seed, self.epoch, params.shuffle)
        keep = self._valid_mask(params)[order]
        if exclude is not None:
            keep &= ~exclude[order]
        batches = build_batches_by_size(
            order[keep],
            self.dataset.num_tokens_array,
            params.max_tokens,
            params.batch_size,
            params.required_batch_size_multiple,
        )
        if params.shuffle:
            batches = shuffle_batches(batches, params.seed, self.epoch)
        return batches

    def _consumed_mask(self) -> Optional[np.ndarray]:
        """Samples consumed by the earlier segments of this epoch (None when there are none)."""
        if not self._earlier_segments:
            return None
        consumed = np.zeros(len(self.dataset), dtype=bool)
        for params, iterations in self._earlier_segments:
            batches = self._all_shard_batches(params, consumed)
            # Shards advance in lockstep: after k steps every shard consumed its first k
            # batches, i.e. the first k * num_shards batches of the striped plan.
            taken = batches[: iterations * params.num_shards]
            if taken:
                consumed[np.concatenate(taken)] = True
        return consumed

    def _build_plan(self) -> list[PlannedBatch]:
        batches = self._all_shard_batches(self.params, self._consumed_mask())
        num_shards = self.params.num_shards
        per_shard = -(-len(batches) // num_shards)
        plan = [
            PlannedBatch(batch, False, self.epoch) for batch in batches[self.shard_id :: num_shards]
        ]
        while len(plan) < per_shard:
            plan.append(PlannedBatch(batches[0], True, self.epoch))
        return plan

    def _current_plan(self) -> list[PlannedBatch]:
        if self._plan is None:
            self._plan = self._build_plan()
        return self._plan

    # ---- iteration ----------------------------------------------------------------------
    def _earlier_iterations(self) -> int:
        return sum(iterations for _, iterations in self._earlier_segments)

    def __len__(self) -> int:
        """Batches this shard yields in the current epoch (consumed ones included)."""
        return self._earlier_iterations() + len(self._current_plan())

    @property
    def iterations_in_epoch(self) -> int:
        """Batches consumed so far in the current epoch."""
        return self._earlier_iterations() + self._consumed_in_segment

    def end_of_epoch(self) -> bool:
        return self._consumed_in_segment >= len(self._current_plan())

    @property
    def next_epoch_idx(self) -> int:
        """The epoch that the next `next_epoch_itr()` call iterates."""
        return self.epoch + 1 if self._epoch_started and self.end_of_epoch() else self.epoch

    def next_epoch_itr(self) -> EpochIterator:
        """An iterator over the rest of the current epoch, or over the next epoch when the
        current one has been iterated to its end."""
        if self._epoch_started and self.end_of_epoch():
            self.epoch += 1
            self._earlier_segments = []
            self._consumed_in_segment = 0
            self._plan = None
        self._epoch_started = True
        self._generation += 1
        remaining = self._current_plan()[self._consumed_in_segment :]
        return EpochIterator(self, remaining, self.num_workers, self.pin_memory)

    # ---- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain values only (loadable with torch.load(weights_only=True))."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "iterations_in_epoch": self.iterations_in_epoch,
            "batching": self.params.to_dict(),
            "earlier_segments": [
                {"batching": params.to_dict(), "iterations": iterations}
                for params, iterations in self._earlier_segments
            ],
            "dataset_size": len(self.dataset),
        }
        if self._epoch_started and self.end_of_epoch():
            state.update(epoch=self.epoch + 1, iterations_in_epoch=0, earlier_segments=[])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"data iterator state version {state.get('version')!r} is not supported "
                f"(expected {STATE_VERSION})"
            )
        # At an epoch start nothing is resumed, so the next epoch may read another dataset
        # (e.g. round-robin over data directories).
        mid_epoch = int(state["iterations_in_epoch"]) > 0
        if mid_epoch and int(state["dataset_size"]) != len(self.dataset):
            raise DataError(
                f"{self.dataset_name}: the data iterator state was saved for "
                f"{state['dataset_size']} pairs but the dataset has {len(self.dataset)}; the "
                "epoch cannot resume where it stopped (start it afresh with "
                "checkpoint.reset_dataloader=true)"
            )
        segments = [
            (BatchingParams.from_dict(segment["batching"]), int(segment["iterations"]))
            for segment in state["earlier_segments"]
        ]
        consumed = int(state["iterations_in_epoch"]) - sum(its for _, its in segments)
        saved_params = BatchingParams.from_dict(state["batching"])
        if consumed and saved_params != self.params:
            segments.append((saved_params, consumed))
            consumed = 0
            logger.info(
                "batching parameters changed since the checkpoint: the remaining samples of "
                "epoch %d are re-batched with the new ones",
                int(state["epoch"]),
            )
        self.epoch = int(state["epoch"])
        self._earlier_segments = [(params, its) for params, its in segments if its]
        self._consumed_in_segment = consumed
        self._epoch_started = False
        self._generation += 1
        self._plan = None
        if consumed > len(self._current_plan()):
            raise CheckpointError(
                f"data iterator state says {consumed} batches of epoch {self.epoch} were "
                f"consumed but the epoch has only {len(self._current_plan())}; was the "
                "dataset changed?"
            )
