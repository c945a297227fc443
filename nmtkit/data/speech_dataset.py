"""Utterances (filterbank features) with their target token ids, and their collation.

A collated speech sample has the same keys as a text one (nmtkit/data/language_pair_dataset.py),
with features in place of source tokens:
    {"id": LongTensor(B), "nsentences": B, "ntokens": non-pad target tokens,
     "net_input": {"src_tokens": FloatTensor(B, T, F) right-padded with zeros,
                   "src_lengths": LongTensor(B) frames, "prev_output_tokens": LongTensor(B, L)},
     "target": LongTensor(B, L), "target_positions": LongTensor(ntokens),
     "source_text": LongTensor(B, S) (only with a transcript for source-side CTC),
     "source_names": utterance ids or audio paths (when known)}
Targets end with </s> and are right-padded. `num_tokens_array` counts source frames, so
`dataset.max_tokens` bounds the frames of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Protocol

import numpy as np
import torch

from nmtkit.data.batching import filter_indices_by_size
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.language_pair_dataset import pad_sequences
from nmtkit.data.spec_augment import SpecAugment, utterance_seed


class ArrayDataset(Protocol):
    """Items as numpy arrays with their sizes (an MMapIndexedDataset, or in-memory arrays)."""

    sizes: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


class SpeechDataset:
    """Item i = features of utterance i (frames, feature_dim) + its target (and transcript)."""

    # The collater takes the epoch (SpecAugment's seed); see nmtkit/data/iterators.py.
    collates_with_epoch = True

    def __init__(
        self,
        features: ArrayDataset,
        feature_dim: int,
        target_dict: Dictionary,
        targets: Optional[ArrayDataset] = None,
        source_text: Optional[ArrayDataset] = None,
        *,
        spec_augment: Optional[SpecAugment] = None,
        seed: int = 1,
        names: Optional[list[str]] = None,
        name: str = "",
    ) -> None:
        if targets is not None and len(targets) != len(features):
            raise ValueError(f"{len(features)} utterances but {len(targets)} targets")
        self.features = features
        self.feature_dim = feature_dim
        self.targets = targets
        self.source_text = source_text
        self.target_dict = target_dict
        self.spec_augment = spec_augment
        self.seed = seed
        self.names = names
        self.name = name or type(self).__name__
        # Frames per utterance and target lengths: what the batch iterator sorts by.
        self.src_sizes = np.asarray(features.sizes, dtype=np.int64) // feature_dim
        self.tgt_sizes = np.asarray(targets.sizes, dtype=np.int64) if targets is not None else None
        self.pad_index = target_dict.pad()
        self.eos_index = target_dict.eos()

    def __len__(self) -> int:
        return len(self.src_sizes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        features = torch.from_numpy(
            np.asarray(self.features[index], dtype=np.float32).reshape(-1, self.feature_dim)
        )
        item: dict[str, Any] = {"id": index, "source": features, "target": None}
        if self.targets is not None:
            item["target"] = torch.from_numpy(np.asarray(self.targets[index], dtype=np.int64))
        if self.source_text is not None:
            item["source_text"] = torch.from_numpy(
                np.asarray(self.source_text[index], dtype=np.int64)
            )
        return item

    # ---- sizes (used for filtering and batching) ----------------------------------------
    @property
    def num_tokens_array(self) -> np.ndarray:
        """Frames of every utterance, indexed by id (what max_tokens counts)."""
        return self.src_sizes

    def filter_by_size(
        self,
        indices: np.ndarray,
        max_source_positions: Optional[int],
        max_target_positions: Optional[int],
    ) -> tuple[np.ndarray, int]:
        """Keeps utterances whose frames and targets fit the model; (kept, number dropped)."""
        return filter_indices_by_size(
            indices, self.src_sizes, self.tgt_sizes, max_source_positions, max_target_positions
        )

    # ---- batches ------------------------------------------------------------------------
    def collater(self, items: Sequence[dict[str, Any]], epoch: int = 1) -> dict[str, Any]:
        """Pads `items` into a sample (module docstring); SpecAugment when training."""
        if len(items) == 0:
            return {}
        features = [item["source"] for item in items]
        if self.spec_augment is not None:
            features = [
                self.spec_augment(f, utterance_seed(self.seed, epoch, item["id"]))
                for f, item in zip(features, items)
            ]
        lengths = torch.tensor([f.size(0) for f in features], dtype=torch.long)
        batch = torch.zeros(len(features), int(lengths.max()), self.feature_dim)
        for row, f in enumerate(features):
            batch[row, : f.size(0)] = f
        sample: dict[str, Any] = {
            "id": torch.tensor([item["id"] for item in items], dtype=torch.long),
            "nsentences": len(items),
            "net_input": {"src_tokens": batch, "src_lengths": lengths},
            "target": None,
            "ntokens": int(lengths.sum()),
        }
        if self.names is not None:
            sample["source_names"] = [self.names[item["id"]] for item in items]
        if items[0]["target"] is not None:
            targets = [item["target"] for item in items]
            target, target_lengths = pad_sequences(targets, self.pad_index, left_pad=False)
            prev_output_tokens, _ = pad_sequences(
                targets, self.pad_index, left_pad=False, first_token=self.eos_index
            )
            sample["target"] = target
            sample["target_positions"] = target.ne(self.pad_index).view(-1).nonzero().squeeze(1)
            sample["ntokens"] = int(target_lengths.sum())
            sample["net_input"]["prev_output_tokens"] = prev_output_tokens
        if "source_text" in items[0]:
            sample["source_text"], _ = pad_sequences(
                [item["source_text"] for item in items], self.pad_index, left_pad=False
            )
        return sample


class InMemoryArrays:
    """Arrays held in memory with the interface of an indexed dataset (on-the-fly features)."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.sizes = np.array([a.size for a in arrays], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.arrays[index]
