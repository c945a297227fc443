"""Translation: parallel binarized text in, a sequence-to-sequence model out.

The data directory is nmtkit's (with preprocess.json and SentencePiece models) or a plain
fairseq `data-bin` directory (dictionaries + .bin/.idx, text already tokenized).
Several directories separated by `:` are visited round-robin, one per epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from torch import nn

from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import MMapIndexedDataset, data_file, index_file, split_names
from nmtkit.data.input_lines import read_line_chunks
from nmtkit.data.iterators import EpochBatchIterator
from nmtkit.data.language_pair_dataset import LanguagePairDataset
from nmtkit.data.text_encoder import TextEncoder
from nmtkit.errors import ConfigError, DataError
from nmtkit.models import MODELS
from nmtkit.registry import ComponentConfig
from nmtkit.tasks.base import Task, register_task


@dataclass(kw_only=True)
class TranslationConfig(ComponentConfig):
    """Where the parallel data is and how it is presented to the model."""

    data: str = ""
    """Data directory from nmtkit-preprocess or fairseq-preprocess (dir1:dir2 = round-robin)."""
    source_lang: Optional[str] = None
    """Source language suffix (default: from preprocess.json or the dict.*.txt files)."""
    target_lang: Optional[str] = None
    """Target language suffix (default: as source_lang)."""
    left_pad_source: bool = True
    """Pad source sentences on the left (fairseq's default)."""
    left_pad_target: bool = False
    """Pad target sentences on the left."""


class TokenArrays:
    """In-memory token sequences with the interface of an indexed dataset (for raw input)."""

    def __init__(self, sequences: list[np.ndarray]) -> None:
        self.sequences = sequences
        self.sizes = np.array([len(s) for s in sequences], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.sequences[index]


@register_task("translation", TranslationConfig)
class TranslationTask(Task):
    """Builds translation data, models and validation (loss and optionally BLEU)."""

    def __init__(self, cfg: TranslationConfig, state: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, state)
        self.data_dirs = [Path(p) for p in cfg.data.split(":")] if cfg.data else []
        if state is not None:
            self._restore(state)
        else:
            self._load_from_data_dir()
        self.source_encoder = TextEncoder(self.src_dict, self.spm_models[self.source_lang])
        self.target_encoder = TextEncoder(self.tgt_dict, self.spm_models[self.target_lang])

    # --- dictionaries and SentencePiece models ---------------------------------------------------
    def _load_from_data_dir(self) -> None:
        if not self.data_dirs:
            raise ConfigError("task.data: set the data directory, e.g. task.data=data-bin")
        data_dir = self.data_dirs[0]
        for directory in self.data_dirs:
            if not directory.is_dir():
                raise DataError(f"task.data={directory}: no such directory")
        manifest_path = data_dir / "preprocess.json"
        self.manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        self.source_lang, self.target_lang = self._infer_languages(data_dir)
        self.src_dict = Dictionary.load(data_dir / f"dict.{self.source_lang}.txt")
        self.tgt_dict = Dictionary.load(data_dir / f"dict.{self.target_lang}.txt")
        models = self.manifest.get("bpe", {}).get("models") or {}
        # One bytes object per file: a joined model is then stored once in checkpoints.
        files = {name: (data_dir / name).read_bytes() for name in set(models.values()) if name}
        self.spm_models: dict[str, bytes | None] = {
            lang: files.get(models.get(lang)) for lang in (self.source_lang, self.target_lang)
        }

    def _infer_languages(self, data_dir: Path) -> tuple[str, str]:
        source = self.cfg.source_lang or self.manifest.get("source_lang")
        target = self.cfg.target_lang or self.manifest.get("target_lang")
        if source and target:
            return source, target
        # fairseq directories: infer from train.<src>-<tgt>.<lang>.idx
        for index in sorted(data_dir.glob("*.*-*.*.idx")):
            pair = index.name.split(".")[1]
            found_source, found_target = pair.split("-", 1)
            return source or found_source, target or found_target
        raise DataError(
            f"{data_dir}: cannot tell the languages; set task.source_lang and task.target_lang"
        )

    def _restore(self, state: dict[str, Any]) -> None:
        self.manifest = {}
        self.source_lang, self.target_lang = state["source_lang"], state["target_lang"]
        self.src_dict = Dictionary.from_state_dict(state["dictionaries"][self.source_lang])
        self.tgt_dict = Dictionary.from_state_dict(state["dictionaries"][self.target_lang])
        self.spm_models = dict(state["sentencepiece"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": "translation",
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "dictionaries": {
                self.source_lang: self.src_dict.state_dict(),
                self.target_lang: self.tgt_dict.state_dict(),
            },
            "sentencepiece": dict(self.spm_models),
        }

    def data_fingerprint(self) -> dict[str, Any]:
        return {
            "data": [str(d) for d in self.data_dirs],
            "fingerprint": self.manifest.get("fingerprint"),
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
        }

    @property
    def target_dictionary(self) -> Dictionary:
        return self.tgt_dict

    @property
    def padding_idx(self) -> int:
        return self.src_dict.pad()

    # --- building ------------------------------------------------------------------------------
    def build_model(self, model_cfg: ComponentConfig) -> nn.Module:
        if getattr(model_cfg, "share_all_embeddings", False) and self.src_dict != self.tgt_dict:
            raise ConfigError(
                "model.share_all_embeddings=true needs one dictionary for both languages: "
                "preprocess with joined_dictionary=true, or set model.share_all_embeddings=false"
            )
        return MODELS.build(
            model_cfg,
            src_vocab_size=len(self.src_dict),
            tgt_vocab_size=len(self.tgt_dict),
            padding_idx=self.padding_idx,
        )

    def load_dataset(
        self, split: str, epoch: int = 1, training: bool = False, seed: int = 1
    ) -> LanguagePairDataset:
        """Split `split` of the data directory for this epoch (round-robin over dirs)."""
        if not self.data_dirs:
            raise ConfigError("task.data: this needs the data directory")
        data_dir = self.data_dirs[(epoch - 1) % len(self.data_dirs)]
        pair = f"{self.source_lang}-{self.target_lang}"
        prefix = data_dir / f"{split}.{pair}"
        sides = ((self.source_lang, self.src_dict), (self.target_lang, self.tgt_dict))
        missing = [
            path.name
            for lang, _ in sides
            for path in (data_file(f"{prefix}.{lang}"), index_file(f"{prefix}.{lang}"))
            if not path.is_file()
        ]
        if missing:
            present = split_names(data_dir, f".{pair}.{self.source_lang}")
            raise DataError(
                f"{data_dir}: no split '{split}' for {pair} (missing {', '.join(missing)}); "
                f"splits present: {', '.join(present) or 'none'}"
            )
        datasets = []
        for lang, dictionary in sides:
            dataset = MMapIndexedDataset(f"{prefix}.{lang}")
            # An id beyond the dictionary would fail much later, in the model's embedding.
            dataset.check_token_ids(len(dictionary), data_dir / f"dict.{lang}.txt")
            datasets.append(dataset)
        source, target = datasets
        if len(source) != len(target):
            raise DataError(
                f"{prefix}.{self.source_lang}.idx has {len(source)} sentences but "
                f"{prefix}.{self.target_lang}.idx has {len(target)}; the two sides of a split "
                "must come from one preprocessing run"
            )
        return LanguagePairDataset(
            source,
            self.src_dict,
            target,
            self.tgt_dict,
            left_pad_source=self.cfg.left_pad_source,
            left_pad_target=self.cfg.left_pad_target,
        )

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
        """As Task.batch_iterator; with several data directories, training visits them
        round-robin, one per epoch."""

        def make_iterator(split_epoch: int) -> EpochBatchIterator:
            return self.epoch_batch_iterator(
                self.load_dataset(split, split_epoch), dataset_cfg, model_cfg=model_cfg,
                epoch=split_epoch, seed=seed, num_shards=num_shards, shard_id=shard_id,
                training=training,
            )  # fmt: skip

        if training and len(self.data_dirs) > 1:
            return RoundRobinIterator(make_iterator, epoch)
        return make_iterator(epoch)

    # --- inference -------------------------------------------------------------------------------
    def read_inference_inputs(self, path: str | None, buffer_size: int) -> Iterator[list[str]]:
        """Raw source lines (a file, or stdin translated as lines arrive)."""
        return read_line_chunks(path, buffer_size)

    def is_empty_input(self, item: str) -> bool:
        return not item.strip()

    def inference_dataset(
        self, lines: Sequence[str], max_source_positions: Optional[int] = None
    ) -> LanguagePairDataset:
        """Raw source lines -> a source-only dataset, encoded with the model's SentencePiece.
        A line longer than `max_source_positions` keeps its first tokens and its `</s>`, as
        fairseq's --truncate-source does."""
        sequences = [
            np.asarray(ids, dtype=np.int64) for ids in self.source_encoder.encode_batch(lines)
        ]
        if max_source_positions is not None:
            eos = np.asarray([self.src_dict.eos()], dtype=np.int64)
            sequences = [
                ids if len(ids) <= max_source_positions
                else np.concatenate([ids[: max_source_positions - 1], eos])
                for ids in sequences
            ]  # fmt: skip
        return LanguagePairDataset(
            TokenArrays(sequences), self.src_dict, left_pad_source=self.cfg.left_pad_source
        )

    def inference_data_split(self, data_dir: Path, split: str) -> LanguagePairDataset:
        """A binarized split of another data directory, checked against our dictionaries."""
        for lang, dictionary in (
            (self.source_lang, self.src_dict),
            (self.target_lang, self.tgt_dict),
        ):
            if Dictionary.load(data_dir / f"dict.{lang}.txt") != dictionary:
                raise DataError(
                    f"data={data_dir}: dict.{lang}.txt differs from the checkpoint's dictionary; "
                    "binarize with srcdict/tgtdict from the training data, or translate raw text"
                )
        self.data_dirs = [data_dir]
        return self.load_dataset(split)

    def describe_source(self, sample: dict[str, Any], row: int) -> tuple[str, str]:
        source_ids = [
            t for t in sample["net_input"]["src_tokens"][row].tolist() if t != self.padding_idx
        ]
        return self.source_encoder.decode(source_ids), self.src_dict.string(source_ids)

    def postprocess(self, tokens: Sequence[int]) -> str:
        return self.target_encoder.decode(list(tokens))

    def encode_target(self, lines: Sequence[str]) -> list[np.ndarray]:
        return self.target_encoder.encode_batch(lines)

    def uses_sentencepiece(self, side: str) -> bool:
        encoder = self.source_encoder if side == "source" else self.target_encoder
        return encoder.uses_sentencepiece

    def compatible_with(self, other: Task) -> Optional[str]:
        if not isinstance(other, TranslationTask) or (other.src_dict, other.tgt_dict) != (
            self.src_dict,
            self.tgt_dict,
        ):
            return "its dictionaries differ"
        return None


class RoundRobinIterator:
    """One EpochBatchIterator per data directory; epoch e reads directory (e-1) % n."""

    def __init__(self, make_iterator: Any, epoch: int) -> None:
        self.make_iterator = make_iterator
        self.current = make_iterator(epoch)

    def next_epoch_itr(self) -> Any:
        if self.current.end_of_epoch():
            self.current = self.make_iterator(self.current.epoch + 1)
        return self.current.next_epoch_itr()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = self.make_iterator(state["epoch"])
        self.current.load_state_dict(state)
