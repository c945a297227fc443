"""Speech recognition and speech translation: filterbank features in, target text out.

The data directory comes from `nmtkit-preprocess task=speech_to_text` (docs/preprocess.md):
float16 features, binarized targets, the target SentencePiece model and dictionary, global
CMVN statistics. A checkpoint carries the feature settings, dictionaries and SentencePiece
models (and the CMVN statistics as model buffers), so it transcribes raw audio alone: features
are computed on the fly exactly as preprocessing computed them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from nmtkit.data.audio import FeatureConfig, compute_fbank, read_audio
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import (
    MMapIndexedDataset,
    data_file,
    dataset_exists,
    index_file,
    split_names,
)
from nmtkit.data.input_lines import read_line_chunks
from nmtkit.data.spec_augment import SpecAugment, resolve_spec_augment
from nmtkit.data.speech_dataset import InMemoryArrays, SpeechDataset
from nmtkit.data.speech_manifest import MANIFEST_COLUMNS, read_manifest
from nmtkit.data.text_encoder import PREPROCESS_JSON, TextEncoder
from nmtkit.errors import ConfigError, DataError
from nmtkit.models import MODELS
from nmtkit.registry import ComponentConfig
from nmtkit.tasks.base import Task, register_task


@dataclass(kw_only=True)
class SpeechToTextConfig(ComponentConfig):
    """Where the speech data is and how training features are augmented."""

    data: str = ""
    """Data directory from `nmtkit-preprocess task=speech_to_text`."""
    spec_augment: str = "none"
    """SpecAugment policy for training: none, LB, LD (Park et al.) or custom (set all below)."""
    freq_mask_param: Optional[int] = None
    """Widest frequency mask in feature bins (overrides the policy's)."""
    num_freq_masks: Optional[int] = None
    """Frequency masks per utterance (overrides the policy's)."""
    time_mask_param: Optional[int] = None
    """Widest time mask in frames (overrides the policy's)."""
    num_time_masks: Optional[int] = None
    """Time masks per utterance (overrides the policy's)."""
    time_mask_max_ratio: Optional[float] = None
    """A time mask covers at most this fraction of its utterance (overrides the policy's)."""

    def validate(self) -> list[str]:
        try:
            self.spec_augment_settings()
        except ConfigError as error:
            return [str(error).removeprefix("task.")]
        return []

    def spec_augment_settings(self) -> Any:
        return resolve_spec_augment(
            self.spec_augment,
            {
                "freq_mask_param": self.freq_mask_param,
                "num_freq_masks": self.num_freq_masks,
                "time_mask_param": self.time_mask_param,
                "num_time_masks": self.num_time_masks,
                "time_mask_max_ratio": self.time_mask_max_ratio,
            },
        )


@dataclass
class AudioInput:
    """One utterance to decode: how outputs name it, where its audio is."""

    name: str
    path: Path
    line: int
    """Line of the input file it comes from (a manifest's header is line 1)."""
    waveform: Optional[torch.Tensor] = None
    """The audio itself (mono float32 at the model's sample rate), given from Python
    (nmtkit.load(...).transcribe); None: read from `path`."""


@register_task("speech_to_text", SpeechToTextConfig)
class SpeechToTextTask(Task):
    """Builds speech datasets, S2T models and decodes audio into text."""

    cfg: SpeechToTextConfig
    source_unit = "frames"

    def __init__(self, cfg: SpeechToTextConfig, state: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, state)
        self.data_dir = Path(cfg.data) if cfg.data else None
        self.cmvn: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.manifest: dict[str, Any] = {}
        if state is not None:
            self._restore(state)
        else:
            self._load_from_data_dir()
        self.target_encoder = TextEncoder(self.tgt_dict, self.spm_models["target"])

    # --- dictionaries, SentencePiece, features ------------------------------------------------
    def _load_from_data_dir(self) -> None:
        if self.data_dir is None:
            raise ConfigError("task.data: set the data directory, e.g. task.data=data-bin")
        manifest_path = self.data_dir / PREPROCESS_JSON
        if not manifest_path.is_file():
            raise DataError(
                f"task.data={self.data_dir}: no {PREPROCESS_JSON}; make the directory with "
                "nmtkit-preprocess task=speech_to_text"
            )
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if self.manifest.get("task") != "speech_to_text":
            raise DataError(
                f"task.data={self.data_dir}: made for task "
                f"{self.manifest.get('task', 'translation')}, not speech_to_text; set "
                "task=translation or preprocess with task=speech_to_text"
            )
        self.target_column = self.manifest["target"]
        self.features = FeatureConfig(**self.manifest["features"])
        self.tgt_dict = Dictionary.load(self.data_dir / self.manifest["target_dict"])
        self.spm_models: dict[str, bytes | None] = {
            "target": (self.data_dir / self.manifest["target_spm"]).read_bytes()
        }
        self.src_dict: Optional[Dictionary] = None
        ctc_source = self.manifest.get("ctc_source")
        if ctc_source:
            self.src_dict = Dictionary.load(self.data_dir / ctc_source["dict"])
            self.spm_models["source"] = (self.data_dir / ctc_source["spm"]).read_bytes()
        with np.load(self.data_dir / self.manifest["cmvn"]) as cmvn:
            self.cmvn = (
                torch.from_numpy(cmvn["mean"]).float(),
                torch.from_numpy(cmvn["std"]).float(),
            )

    def _restore(self, state: dict[str, Any]) -> None:
        self.target_column = state["target"]
        self.features = FeatureConfig(**state["features"])
        self.tgt_dict = Dictionary.from_state_dict(state["dictionaries"]["target"])
        source = state["dictionaries"].get("source")
        self.src_dict = Dictionary.from_state_dict(source) if source is not None else None
        self.spm_models = dict(state["sentencepiece"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": "speech_to_text",
            "target": self.target_column,
            "features": dataclasses.asdict(self.features),
            "dictionaries": {
                "target": self.tgt_dict.state_dict(),
                "source": self.src_dict.state_dict() if self.src_dict is not None else None,
            },
            "sentencepiece": dict(self.spm_models),
        }

    def data_fingerprint(self) -> dict[str, Any]:
        return {
            "data": [str(self.data_dir)] if self.data_dir else [],
            "fingerprint": self.manifest.get("fingerprint"),
            "target": self.target_column,
        }

    @property
    def target_dictionary(self) -> Dictionary:
        return self.tgt_dict

    # --- building ------------------------------------------------------------------------------
    def build_model(self, model_cfg: ComponentConfig) -> nn.Module:
        feature_dim = getattr(model_cfg, "input_feat_per_channel", None)
        if feature_dim is None:
            raise ConfigError(
                f"model={model_cfg._name}: task speech_to_text needs a speech model "
                "(model=s2t_transformer or one of its sizes, e.g. model=s2t_transformer_s)"
            )
        if feature_dim != self.features.num_mel_bins:
            raise ConfigError(
                f"model.input_feat_per_channel={feature_dim}: the data has "
                f"{self.features.num_mel_bins} filterbank features per frame"
            )
        ctc_head = getattr(model_cfg, "ctc_head", "none")
        ctc_vocab_size = None
        if ctc_head == "target":
            ctc_vocab_size = len(self.tgt_dict)
        elif ctc_head == "source":
            if self.src_dict is None:
                raise ConfigError(
                    "model.ctc_head=source needs transcripts in the data: preprocess with "
                    "ctc_source=src_text"
                )
            ctc_vocab_size = len(self.src_dict)
        model = MODELS.build(
            model_cfg,
            tgt_vocab_size=len(self.tgt_dict),
            padding_idx=self.padding_idx,
            ctc_vocab_size=ctc_vocab_size,
        )
        if self.cmvn is not None:
            model.set_cmvn(*self.cmvn)
        return model

    # --- data ------------------------------------------------------------------------------------
    def load_dataset(
        self, split: str, epoch: int = 1, training: bool = False, seed: int = 1
    ) -> SpeechDataset:
        """`dataset.max_tokens` counts this dataset's source frames; `seed` (the run's) also
        seeds SpecAugment."""
        if self.data_dir is None:
            raise ConfigError("task.data: this needs the data directory")
        return self._load_split(self.data_dir, split, training=training, seed=seed)

    def _load_split(
        self, data_dir: Path, split: str, training: bool, seed: int = 1
    ) -> SpeechDataset:
        features_prefix, target_prefix = data_dir / f"{split}.fbank", data_dir / f"{split}.target"
        missing = [
            path.name
            for prefix in (features_prefix, target_prefix)
            for path in (data_file(prefix), index_file(prefix))
            if not path.is_file()
        ]
        if missing:
            present = split_names(data_dir, ".fbank")
            raise DataError(
                f"{data_dir}: no split '{split}' (missing {', '.join(missing)}); "
                f"splits present: {', '.join(present) or 'none'}"
            )
        features = MMapIndexedDataset(features_prefix)
        dim = self.features.num_mel_bins
        if len(features) and np.any(features.sizes % dim):
            raise DataError(
                f"{features_prefix}.idx: item sizes are not multiples of {dim} features per "
                f"frame (num_mel_bins in {PREPROCESS_JSON}); the file is corrupt"
            )
        targets = MMapIndexedDataset(target_prefix)
        # An id beyond the dictionary would fail much later, in the model's embedding.
        targets.check_token_ids(len(self.tgt_dict), data_dir / "dict.target.txt")
        source_text = None
        source_prefix = data_dir / f"{split}.source"
        if self.src_dict is not None and dataset_exists(source_prefix):
            source_text = MMapIndexedDataset(source_prefix)
            source_text.check_token_ids(len(self.src_dict), data_dir / "dict.source.txt")
        for prefix, dataset in ((target_prefix, targets), (source_prefix, source_text)):
            if dataset is not None and len(dataset) != len(features):
                raise DataError(
                    f"{features_prefix}.idx has {len(features)} utterances but {prefix}.idx "
                    f"has {len(dataset)}; both must come from one nmtkit-preprocess run"
                )
        spec_augment = None
        settings = self.cfg.spec_augment_settings() if training else None
        if settings is not None:
            assert self.cmvn is not None
            spec_augment = SpecAugment(settings, fill=self.cmvn[0])
        ids_file = data_dir / f"{split}.ids.txt"
        names = ids_file.read_text(encoding="utf-8").splitlines() if ids_file.is_file() else None
        return SpeechDataset(
            features,
            dim,
            self.tgt_dict,
            targets,
            source_text,
            spec_augment=spec_augment,
            seed=seed,
            names=names,
            name=str(features_prefix),
        )

    # --- inference -------------------------------------------------------------------------------
    def read_inference_inputs(self, path: str | None, buffer_size: int) -> Iterator[list[Any]]:
        """An audio manifest (TSV with the header `id audio n_samples ...`: outputs follow its
        order and jsonl names the ids), or one audio path per line (a file or stdin)."""
        if path and path != "-" and _starts_with_manifest_header(Path(path)):
            utterances = read_manifest(path)
            inputs = [AudioInput(u.id, u.audio, u.line) for u in utterances]
            for start in range(0, len(inputs), buffer_size):
                yield inputs[start : start + buffer_size]
            return
        done = 0
        for lines in read_line_chunks(path, buffer_size):
            yield [
                AudioInput(line.strip(), Path(line.strip()), done + number)
                for number, line in enumerate(lines, start=1)
            ]
            done += len(lines)

    def is_empty_input(self, item: AudioInput) -> bool:
        return not item.name

    def input_name(self, item: AudioInput, index: int) -> Any:
        return item.name

    def input_location(self, item: AudioInput, index: int) -> str:
        return f"line {item.line} ({item.name})"

    def inference_dataset(
        self, inputs: Sequence[AudioInput], max_source_positions: Optional[int] = None
    ) -> SpeechDataset:
        """Reads and featurises audio exactly as preprocessing did (float16 storage included);
        an utterance longer than `max_source_positions` frames keeps its first frames."""
        arrays = []
        for item in inputs:
            waveform = item.waveform
            if waveform is None:
                waveform = read_audio(item.path, self.features.sample_rate, resample=True)
            features = compute_fbank(waveform, self.features)[:max_source_positions]
            arrays.append(features.to(torch.float16).numpy().reshape(-1))
        return SpeechDataset(
            InMemoryArrays(arrays),
            self.features.num_mel_bins,
            self.tgt_dict,
            names=[str(item.path) for item in inputs],
        )

    def inference_data_split(self, data_dir: Path, split: str) -> SpeechDataset:
        manifest_path = data_dir / PREPROCESS_JSON
        if not manifest_path.is_file():
            raise DataError(f"data={data_dir}: no {PREPROCESS_JSON}; not a speech data directory")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if (
            manifest.get("task") != "speech_to_text"
            or Dictionary.load(data_dir / manifest["target_dict"]) != self.tgt_dict
            or FeatureConfig(**manifest["features"]) != self.features
        ):
            raise DataError(
                f"data={data_dir}: its features or target dictionary differ from the "
                "checkpoint's; decode the raw audio manifest instead (input=test.tsv)"
            )
        return self._load_split(data_dir, split, training=False)

    def describe_source(self, sample: dict[str, Any], row: int) -> tuple[str, str]:
        frames = int(sample["net_input"]["src_lengths"][row])
        names = sample.get("source_names")
        name = names[row] if names else f"utterance {int(sample['id'][row])}"
        return name, f"{frames} frames"

    def postprocess(self, tokens: Sequence[int]) -> str:
        return self.target_encoder.decode(list(tokens))

    def encode_target(self, lines: Sequence[str]) -> list[np.ndarray]:
        return self.target_encoder.encode_batch(lines)

    def uses_sentencepiece(self, side: str) -> bool:
        # The source is audio: S- lines name the utterance.
        return side == "target" and self.target_encoder.uses_sentencepiece

    def compatible_with(self, other: Task) -> Optional[str]:
        if not isinstance(other, SpeechToTextTask):
            return "it is not a speech_to_text model"
        if other.tgt_dict != self.tgt_dict:
            return "its target dictionary differs"
        if other.features != self.features:
            return "its audio features differ"
        return None


def _starts_with_manifest_header(path: Path) -> bool:
    if not path.is_file():
        raise DataError(f"input={path}: file not found")
    with open(path, "rb") as file:
        first = file.readline().decode("utf-8", errors="replace").rstrip("\r\n")
    return tuple(first.split("\t")[:2]) == MANIFEST_COLUMNS[:2]
