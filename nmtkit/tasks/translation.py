"""Translation: parallel binarized text in, a sequence-to-sequence model out.

The data directory is nmtkit's (with preprocess.json and SentencePiece models) or a plain
fairseq `data-bin` directory (dictionaries + .bin/.idx, text already tokenized).
Several directories separated by `:` are visited round-robin, one per epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from nmtkit import distributed
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import MMapIndexedDataset, dataset_exists
from nmtkit.data.iterators import EpochBatchIterator
from nmtkit.data.language_pair_dataset import LanguagePairDataset
from nmtkit.data.text_encoder import TextEncoder
from nmtkit.errors import ConfigError, DataError
from nmtkit.generation.translate import translate_batches
from nmtkit.models import MODELS
from nmtkit.registry import ComponentConfig
from nmtkit.scoring import score_corpus
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

    def load_dataset(self, split: str, epoch: int = 1) -> LanguagePairDataset:
        """Split `split` of the data directory for this epoch (round-robin over dirs)."""
        if not self.data_dirs:
            raise ConfigError("task.data: this needs the data directory")
        data_dir = self.data_dirs[(epoch - 1) % len(self.data_dirs)]
        pair = f"{self.source_lang}-{self.target_lang}"
        prefix = data_dir / f"{split}.{pair}"
        for lang in (self.source_lang, self.target_lang):
            if not dataset_exists(f"{prefix}.{lang}"):
                raise DataError(
                    f"{prefix}.{lang}.bin/.idx: split '{split}' not found in {data_dir}"
                )
        return LanguagePairDataset(
            MMapIndexedDataset(f"{prefix}.{self.source_lang}"),
            self.src_dict,
            MMapIndexedDataset(f"{prefix}.{self.target_lang}"),
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
        """Batches of `split`, length-bucketed, filtered to the model's maximum positions."""
        max_positions = (
            getattr(model_cfg, "max_source_positions", None),
            getattr(model_cfg, "max_target_positions", None),
        )

        def make_iterator(split_epoch: int) -> EpochBatchIterator:
            return EpochBatchIterator(
                self.load_dataset(split, split_epoch),
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
                max_positions=None if None in max_positions else max_positions,
                skip_invalid_size_inputs=dataset_cfg.skip_invalid_size_inputs,
                epoch=split_epoch,
            )  # fmt: skip

        if training and len(self.data_dirs) > 1:
            return RoundRobinIterator(make_iterator, epoch)
        return make_iterator(epoch)

    # --- validation ----------------------------------------------------------------------------
    def validate(
        self, model: nn.Module, criterion: nn.Module, cfg: Any, context: Any, logger: Any
    ) -> dict[str, float]:
        """Validation loss on the first valid subset; BLEU too when generation.eval_bleu."""
        split = cfg.dataset.valid_subset.split(",")[0]
        iterator = self.batch_iterator(
            split, cfg.dataset, model_cfg=cfg.model, epoch=1, seed=cfg.common.seed,
            num_shards=context.world_size, shard_id=context.rank, training=False,
        )  # fmt: skip
        device = context.device
        sums: dict[str, float] = {}
        # Dummy batches only keep DDP ranks in step; counting them would count sentences twice.
        batches = [b for b in iterator.next_epoch_itr() if not b.get("is_dummy")]
        for sample in batches:
            sample = distributed.move_to_device(sample, device)
            with distributed.autocast(device, cfg.common.precision):
                _, _, logging_output = self.valid_step(model, criterion, sample)
            for key, value in logging_output.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        keys = sorted(sums)
        totals = distributed.all_reduce_sum(
            torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device), context
        )
        stats = {
            k: float(v)
            for k, v in criterion.reduce_metrics([dict(zip(keys, totals.tolist()))]).items()
        }
        if cfg.generation.eval_bleu:
            stats["bleu"] = self._validation_bleu(model, batches, cfg, context, logger)
        return stats

    def _validation_bleu(
        self, model: nn.Module, batches: list[dict], cfg: Any, context: Any, logger: Any
    ) -> float:
        """BLEU through the same translate/decode/score path as nmtkit-generate + nmtkit-score."""
        results = translate_batches(
            self, [distributed.unwrap_model(model)], cfg.generation, batches,
            device=context.device, precision=cfg.common.precision,
        )  # fmt: skip
        pairs = [(r.id, r.hypotheses[0].text, r.reference) for r in results]
        gathered = [p for part in distributed.all_gather_objects(pairs, context) for p in part]  # type: ignore[union-attr]
        gathered.sort(key=lambda item: item[0])
        hypotheses = [h for _, h, _ in gathered]
        references = [r for _, _, r in gathered]
        for _, hypothesis, reference in gathered[: cfg.generation.eval_bleu_print_samples]:
            logger.info(f"  H: {hypothesis}\n  R: {reference}")
        return score_corpus(hypotheses, [references], ["bleu"])["bleu"].score

    # --- inference -------------------------------------------------------------------------------
    def inference_dataset(self, lines: list[str]) -> LanguagePairDataset:
        """Raw source lines -> a source-only dataset, encoded with the model's SentencePiece."""
        sequences = [
            np.asarray(ids, dtype=np.int64) for ids in self.source_encoder.encode_batch(lines)
        ]
        return LanguagePairDataset(
            TokenArrays(sequences), self.src_dict, left_pad_source=self.cfg.left_pad_source
        )


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
