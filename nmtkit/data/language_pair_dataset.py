"""Source/target sentence pairs read from binarized datasets, and their collation into batches.

A collated sample (fairseq's format, read by every task, criterion and generator):
    {"id": LongTensor(B), "nsentences": B, "ntokens": non-pad target tokens,
     "net_input": {"src_tokens": LongTensor(B, S), "src_lengths": LongTensor(B),
                   "prev_output_tokens": LongTensor(B, T)},
     "target": LongTensor(B, T), "target_positions": LongTensor(ntokens)}
Sequences end with </s>; prev_output_tokens is [</s>] + target[:-1]. Sources are left-padded
and targets right-padded by default. "target_positions" holds the flat indices (into B * T) of
the non-pad target positions, computed here on the CPU so the criterion can leave padding out
of the output projection without a device synchronisation. Without targets (inference)
"target" is None, there is no prev_output_tokens nor target_positions, and "ntokens" counts
source tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Protocol

import numpy as np
import torch

from nmtkit.data.batching import filter_indices_by_size
from nmtkit.data.dictionary import Dictionary


class TokenDataset(Protocol):
    """What a side of the pair needs: per-item token arrays and their sizes (MMapIndexedDataset)."""

    sizes: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


class LanguagePairDataset:
    """Pairs item i of `src` with item i of `tgt` (or source alone, for inference).

    Items are `{"id": i, "source": LongTensor, "target": LongTensor | None}`; `collater` pads a
    list of them into the sample format every task, criterion and generator reads.
    """

    def __init__(
        self,
        src: TokenDataset,
        src_dict: Dictionary,
        tgt: Optional[TokenDataset] = None,
        tgt_dict: Optional[Dictionary] = None,
        left_pad_source: bool = True,
        left_pad_target: bool = False,
    ) -> None:
        if tgt is not None and len(tgt) != len(src):
            raise ValueError(
                f"source and target datasets differ in length: {len(src)} vs {len(tgt)} items"
            )
        if tgt_dict is not None and tgt_dict.pad() != src_dict.pad():
            raise ValueError("source and target dictionaries use different padding ids")
        self.src = src
        self.tgt = tgt
        self.src_dict = src_dict
        self.tgt_dict = tgt_dict if tgt_dict is not None else src_dict
        self.left_pad_source = left_pad_source
        self.left_pad_target = left_pad_target
        self.src_sizes = np.asarray(src.sizes, dtype=np.int64)
        self.tgt_sizes = np.asarray(tgt.sizes, dtype=np.int64) if tgt is not None else None
        self._num_tokens = (
            self.src_sizes if self.tgt_sizes is None else np.maximum(self.src_sizes, self.tgt_sizes)
        )
        self.pad_index = self.src_dict.pad()
        self.eos_index = self.tgt_dict.eos()
        # Named in error messages: the binarized file's prefix when the source has one.
        self.name = str(getattr(src, "prefix", "")) or type(self).__name__

    def __len__(self) -> int:
        return len(self.src_sizes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = torch.from_numpy(np.asarray(self.src[index], dtype=np.int64))
        target = (
            torch.from_numpy(np.asarray(self.tgt[index], dtype=np.int64))
            if self.tgt is not None
            else None
        )
        return {"id": index, "source": source, "target": target}

    # ---- sizes (used for filtering and batching) ----------------------------------------
    def num_tokens(self, index: int) -> int:
        """Padded width this pair needs in a batch: the longer of its two sides."""
        return int(self._num_tokens[index])

    def size(self, index: int) -> int:
        return int(self._num_tokens[index])

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        """`num_tokens` of many pairs at once."""
        return self._num_tokens[indices]

    @property
    def num_tokens_array(self) -> np.ndarray:
        """`num_tokens` of every pair, indexed by id."""
        return self._num_tokens

    def filter_by_size(
        self,
        indices: np.ndarray,
        max_source_positions: Optional[int],
        max_target_positions: Optional[int],
    ) -> tuple[np.ndarray, int]:
        """Keeps the pairs whose sides fit the model's positions (None = no limit); returns
        (kept indices in their original order, number dropped)."""
        return filter_indices_by_size(
            indices, self.src_sizes, self.tgt_sizes, max_source_positions, max_target_positions
        )

    # ---- batches ------------------------------------------------------------------------
    def collater(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Pads `items` into a sample in the format of this module's docstring."""
        if len(items) == 0:
            return {}
        ids = torch.tensor([item["id"] for item in items], dtype=torch.long)
        sources = [item["source"] for item in items]
        src_tokens, src_lengths = pad_sequences(sources, self.pad_index, self.left_pad_source)
        sample: dict[str, Any] = {
            "id": ids,
            "nsentences": len(items),
            "net_input": {"src_tokens": src_tokens, "src_lengths": src_lengths},
        }
        if items[0]["target"] is None:
            sample["target"] = None
            sample["ntokens"] = int(src_lengths.sum())
            return sample
        targets = [item["target"] for item in items]
        flat, lengths = _flatten(targets)
        filled = _filled_positions(lengths, self.left_pad_target)
        shifted = _move_last_token_first(flat, lengths, self.eos_index)
        sample["target"] = _scatter_rows(flat, filled, self.pad_index)
        sample["target_positions"] = torch.from_numpy(np.flatnonzero(filled))
        sample["ntokens"] = int(lengths.sum())
        sample["net_input"]["prev_output_tokens"] = _scatter_rows(shifted, filled, self.pad_index)
        return sample


def pad_sequences(
    sequences: Sequence[torch.Tensor],
    pad_index: int,
    left_pad: bool,
    first_token: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks 1-D LongTensors into a (B, longest) tensor padded with `pad_index`; returns it
    with the lengths.

    With `first_token`, each row becomes [first_token] + sequence[:-1] (same length): the
    decoder input for teacher forcing, with the final </s> moved to the front as fairseq does.
    """
    flat, lengths = _flatten(sequences)
    if first_token is not None:
        flat = _move_last_token_first(flat, lengths, first_token)
    padded = _scatter_rows(flat, _filled_positions(lengths, left_pad), pad_index)
    return padded, torch.from_numpy(lengths)


# One concatenation and one boolean-mask copy fill a whole batch, without per-row copies; the
# copy runs in numpy because its mask assignment is far faster than torch's on CPU.
def _flatten(sequences: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if len(sequences) == 0:
        return np.zeros(0, dtype=np.int64), lengths
    return torch.cat(list(sequences)).numpy().astype(np.int64, copy=False), lengths


def _move_last_token_first(flat: np.ndarray, lengths: np.ndarray, first_token: int) -> np.ndarray:
    """Per sequence: [first_token] + sequence[:-1], on the concatenation of the sequences."""
    shifted = np.roll(flat, 1)
    starts = np.cumsum(lengths) - lengths
    shifted[starts[lengths > 0]] = first_token
    return shifted


def _filled_positions(lengths: np.ndarray, left_pad: bool) -> np.ndarray:
    """(B, longest) mask of the non-pad positions."""
    width = int(lengths.max()) if len(lengths) else 0
    columns = np.arange(width)
    if left_pad:
        return columns[None, :] >= (width - lengths)[:, None]
    return columns[None, :] < lengths[:, None]


def _scatter_rows(flat: np.ndarray, filled: np.ndarray, pad_index: int) -> torch.Tensor:
    padded = np.full(filled.shape, pad_index, dtype=np.int64)
    padded[filled] = flat
    return torch.from_numpy(padded)
