"""What every task provides to the trainer, generation and the CLIs.

The trainer and `nmtkit-generate` know nothing about text or audio: they ask the task for
datasets and batches, call `train_step`/`valid_step` (which return `(loss, sample_size,
logging_output)`), hand `sample["net_input"]` to the models whatever its shape, and let the
task turn token ids back into text. Members that raise NotImplementedError are the contract a
new task fills in; see nmtkit/tasks/translation.py and nmtkit/tasks/speech_to_text.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from nmtkit.criterions import CRITERIONS, Criterion
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.iterators import BatchableDataset, EpochBatchIterator
from nmtkit.errors import ConfigError
from nmtkit.registry import ComponentConfig, Registry


class Task:
    """Base class of tasks: data, model and criterion building, steps, inference, text."""

    source_unit: str = "tokens"
    """What source lengths and max_source_positions count, for messages (speech: frames)."""

    def __init__(self, cfg: ComponentConfig, state: dict[str, Any] | None = None) -> None:
        """Built from the data directory in `cfg` (training), or from a checkpoint's
        `state_dict()` (inference: no data directory needed)."""
        self.cfg = cfg

    # --- dictionaries ------------------------------------------------------------------------
    @property
    def target_dictionary(self) -> Dictionary:
        """The dictionary of the tokens the models predict."""
        raise NotImplementedError

    @property
    def padding_idx(self) -> int:
        return self.target_dictionary.pad()

    # --- building ----------------------------------------------------------------------------
    def build_model(self, model_cfg: ComponentConfig) -> nn.Module:
        raise NotImplementedError

    def build_criterion(self, criterion_cfg: ComponentConfig) -> Criterion:
        return CRITERIONS.build(criterion_cfg, padding_idx=self.padding_idx)

    # --- data --------------------------------------------------------------------------------
    def load_dataset(
        self, split: str, epoch: int = 1, training: bool = False, seed: int = 1
    ) -> BatchableDataset:
        """Split `split` of the data directory (`training`: with training-only augmentation,
        seeded by the run's `seed`)."""
        raise NotImplementedError

    def max_positions(self, model_cfg: Any) -> Optional[tuple[Optional[int], Optional[int]]]:
        """(longest source, longest target) the model accepts, for filtering batches."""
        limits = (
            getattr(model_cfg, "max_source_positions", None),
            getattr(model_cfg, "max_target_positions", None),
        )
        return None if None in limits else limits

    def batch_iterator(
        self,
        split: str,
        dataset_cfg: Any,
        *,
        model_cfg: Any,
        epoch: int,
        seed: int,
        num_shards: int = 1,
        shard_id: int = 0,
        training: bool = True,
    ) -> Any:
        """Batches of `split`, length-bucketed, filtered to the model's maximum positions;
        `dataset.max_tokens` counts what the dataset's `num_tokens_array` counts."""
        return self.epoch_batch_iterator(
            self.load_dataset(split, epoch, training=training, seed=seed),
            dataset_cfg,
            model_cfg=model_cfg,
            epoch=epoch,
            seed=seed,
            num_shards=num_shards,
            shard_id=shard_id,
            training=training,
        )

    def epoch_batch_iterator(
        self,
        dataset: BatchableDataset,
        dataset_cfg: Any,
        *,
        model_cfg: Any,
        epoch: int,
        seed: int,
        num_shards: int = 1,
        shard_id: int = 0,
        training: bool = True,
    ) -> EpochBatchIterator:
        return EpochBatchIterator(
            dataset,
            max_tokens=dataset_cfg.max_tokens if training else (
                dataset_cfg.max_tokens_valid or dataset_cfg.max_tokens
            ),
            batch_size=dataset_cfg.batch_size if training else (
                dataset_cfg.batch_size_valid or dataset_cfg.batch_size
            ),
            required_batch_size_multiple=dataset_cfg.required_batch_size_multiple,
            seed=seed,
            num_shards=num_shards,
            shard_id=shard_id,
            num_workers=dataset_cfg.num_workers,
            shuffle=training,
            max_positions=self.max_positions(model_cfg),
            skip_invalid_size_inputs=dataset_cfg.skip_invalid_size_inputs,
            epoch=epoch,
        )  # fmt: skip

    # --- the two steps the trainer calls -------------------------------------------------------
    def train_step(
        self, model: nn.Module, criterion: Criterion, sample: dict[str, Any]
    ) -> tuple[torch.Tensor, int, dict[str, Any]]:
        model.train()
        criterion.train()
        return criterion(model, sample)

    @torch.no_grad()
    def valid_step(
        self, model: nn.Module, criterion: Criterion, sample: dict[str, Any]
    ) -> tuple[torch.Tensor, int, dict[str, Any]]:
        model.eval()
        criterion.eval()
        return criterion(model, sample)

    # --- inference -----------------------------------------------------------------------------
    def read_inference_inputs(self, path: str | None, buffer_size: int) -> Iterator[list[Any]]:
        """Chunks of up to `buffer_size` inputs from `path` (None or '-': stdin)."""
        raise NotImplementedError

    def inference_dataset(
        self, inputs: Sequence[Any], max_source_positions: Optional[int] = None
    ) -> BatchableDataset:
        """Inputs as read by `read_inference_inputs` -> a source-only dataset; sources longer
        than `max_source_positions` (when given) are cut to it (generate's truncate_source)."""
        raise NotImplementedError

    def inference_data_split(self, data_dir: Path, split: str) -> BatchableDataset:
        """Split `split` of a data directory made by nmtkit-preprocess, with references."""
        raise ConfigError(f"data={data_dir}: this task cannot decode a binarized split")

    def is_empty_input(self, item: Any) -> bool:
        """Inputs that are not sent to the model (they get empty outputs)."""
        return False

    def input_name(self, item: Any, index: int) -> Any:
        """How an input is identified in jsonl/fairseq output (its index for text lines)."""
        return index

    def input_location(self, item: Any, index: int) -> str:
        """Where input number `index` (from 0) is in the input, for messages: 'line 7'."""
        return f"line {index + 1}"

    def describe_source(self, sample: dict[str, Any], row: int) -> tuple[str, str]:
        """(source as a user reads it, its model-side form) for logs and S- lines."""
        raise NotImplementedError

    def postprocess(self, tokens: Sequence[int]) -> str:
        """Target token ids -> the text users see (detokenized)."""
        raise NotImplementedError

    def target_pieces(self, tokens: Sequence[int]) -> str:
        """Target token ids -> space-separated model symbols (H- lines)."""
        return self.target_dictionary.string(list(tokens))

    def encode_target(self, lines: Sequence[str]) -> list[np.ndarray]:
        """Target texts -> token ids ending with `</s>` (the inverse of `postprocess`), for
        scoring given translations (forced decoding)."""
        raise NotImplementedError

    def uses_sentencepiece(self, side: str) -> bool:
        """Whether the text of `side` ("source" or "target") is cut by a SentencePiece model;
        fairseq's S-/T- lines then join the pieces back into words."""
        return False

    def compatible_with(self, other: Task) -> Optional[str]:
        """Why `other`'s models cannot join an ensemble with this task's, or None."""
        if type(other) is not type(self) or other.target_dictionary != self.target_dictionary:
            return "its task or target dictionary differs"
        return None

    # --- what a checkpoint needs to rebuild this task without the data directory --------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def data_fingerprint(self) -> dict[str, Any]:
        return {}


TASKS: Registry[Task] = Registry("task", Task)
register_task = TASKS.register
