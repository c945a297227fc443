"""Speech manifests -> features and binarized targets (`nmtkit-preprocess task=speech_to_text`).

Steps:
  1. read and check the manifests and hash them; the fingerprint (inputs + settings) names a
     hidden staging folder beside `destdir`, `.NAME.partial-<fingerprint[:12]>`;
  2. train SentencePiece on the training targets (or reuse a model) and build the dictionary
     (the same again for `ctc_source`), so vocabulary mistakes fail before the long part;
  3. extract features in shards of `shard_size` utterances (manifest order) with `workers`
     processes; each shard file is written atomically into the staging folder, so a rerun
     after an interruption (Ctrl-C, a bad file, even kill -9) extracts only what is missing;
     with speed_perturb, each training utterance is stored once per factor (`<id>_sp0.9`);
  4. merge the shards in manifest order into the indexed datasets, binarize the targets,
     compute global CMVN over the stored training features, check CTC feasibility;
  5. write preprocess.json, move the output into place and remove the staging folder.
Every utterance's features depend on that utterance alone and the shards are merged in
manifest order, so the output is byte-identical for any worker count and shard size, and
after any number of interruptions.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from nmtkit.data.audio import FeatureConfig
from nmtkit.data.binarizer import ordered_parallel_map, sha256_file
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import IndexedDatasetBuilder, best_token_dtype
from nmtkit.data.speech_manifest import TEXT_COLUMNS, Utterance, read_manifest
from nmtkit.data.text_encoder import PREPROCESS_JSON, TextEncoder, load_sentencepiece
from nmtkit.errors import ConfigError, DataError
from nmtkit.preprocess import feature_shards
from nmtkit.preprocess import staging as staging_folder
from nmtkit.preprocess.feature_shards import FEATURE_DTYPE, ShardJob, speed_copy_id
from nmtkit.preprocess.subwords import build_dictionary, train_sentencepiece
from nmtkit.version import __version__

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TASK = "speech_to_text"
SPLITS = ("train", "valid", "test")
BPE_TYPES = ("sentencepiece", "char")
# fairseq's global CMVN floor: std = sqrt(max(var, 1e-8)), so a mel channel that never
# varies in training (e.g. digital silence) is not divided by ~0 on other data.
VARIANCE_FLOOR = 1e-8
# Skip reason decided here (the audio ones: nmtkit.data.audio and feature_shards).
EMPTY_TEXT = "empty_text"
# Speed factors are refused outside (0, MAX_SPEED]: beyond twice the speed a 25 ms window
# holds a 50 ms stretch of the original and the speech is hardly speech any more.
MAX_SPEED = 2.0
# The split that speed_perturb multiplies; validation and test data stay as recorded.
PERTURBED_SPLIT = "train"
# Settings that do not change what is written (paths are replaced by their files' hashes;
# skip_bad_audio only decides whether bad input ends the run, and a rerun with it reuses
# the shards already extracted).
_NOT_FINGERPRINTED = (
    "destdir",
    "overwrite",
    "workers",
    "train",
    "valid",
    "test",
    "bpe_model",
    "shard_size",
    "skip_bad_audio",
    "speed_perturb",  # fingerprinted as its sorted factors, and only when it changes anything
)


@dataclass(kw_only=True)
class SpeechPreprocessConfig:
    """Settings of `nmtkit-preprocess task=speech_to_text`: audio manifests in, features out."""

    task: str = TASK
    """What to prepare: `speech_to_text` (a TSV manifest of audio files with transcripts)."""
    train: Optional[str] = None
    """Training manifest (TSV: id audio n_samples speaker src_text tgt_text)."""
    valid: Optional[str] = None
    """Validation manifest (optional)."""
    test: Optional[str] = None
    """Test manifest (optional)."""
    target: Optional[str] = None
    """Column to predict: `src_text` (speech recognition) or `tgt_text` (speech translation)."""
    destdir: str = "data-bin"
    """Output data directory (created; refused when it already holds data, see overwrite)."""
    workers: int = 1
    """Processes that read audio and compute features in parallel."""
    bpe: str = "sentencepiece"
    """Target segmentation: `sentencepiece` (unigram pieces) or `char` (one piece per character)."""
    bpe_vocab_size: int = 1000
    """Pieces in the SentencePiece model trained with bpe=sentencepiece."""
    bpe_model: Optional[str] = None
    """An existing SentencePiece .model for the target instead of training one."""
    ctc_source: Optional[str] = None
    """Also binarize this column (`src_text`) with its own model, for source-side CTC in ST."""
    num_mel_bins: int = 80
    """Log-mel filterbank channels (the feature dimension)."""
    sample_rate: int = 16000
    """Sample rate (Hz) the audio is brought to before the filterbank."""
    resample: bool = True
    """Resample files at another rate; false makes such a file bad input."""
    skip_bad_audio: bool = False
    """Skip (and count in preprocess.json) unusable utterances instead of stopping."""
    max_source_positions: int = 6000
    """Utterances with more feature frames (10 ms each) are bad input."""
    min_duration_ms: float = 25.0
    """Utterances shorter than this (one 25 ms analysis window) are bad input."""
    speed_perturb: Optional[list[float]] = None
    """Speed factors, e.g. [0.9,1.0,1.1]: one training copy per factor (`<id>_sp0.9`); null: none."""
    shard_size: int = 200
    """Utterances per extraction shard, the unit of parallel work and of resuming."""
    overwrite: bool = False
    """Replace an existing destdir (only one holding data-directory files)."""
    seed: int = 1
    """Seed of SentencePiece training."""

    def validate(self) -> list[str]:
        errors = []
        if self.task != TASK:
            errors.append(f"task={self.task}: this preprocessor prepares {TASK}")
        if not self.train:
            errors.append("train: required (the training manifest, e.g. train=SPEECH/train.tsv)")
        if self.target not in TEXT_COLUMNS:
            key = "target" if self.target is None else f"target={self.target}"
            errors.append(
                f"{key}: must be src_text (speech recognition) or tgt_text (speech translation)"
            )
        if self.ctc_source is not None:
            if self.ctc_source not in TEXT_COLUMNS:
                errors.append(f"ctc_source={self.ctc_source}: must be null or src_text")
            elif self.ctc_source == self.target:
                errors.append(
                    f"ctc_source={self.ctc_source}: already the target; CTC on the target "
                    "needs no second copy (leave ctc_source=null)"
                )
        if self.bpe not in BPE_TYPES:
            errors.append(f"bpe={self.bpe}: must be one of {', '.join(BPE_TYPES)}")
        if self.bpe_model and self.bpe != "sentencepiece":
            errors.append(f"bpe_model={self.bpe_model}: only used with bpe=sentencepiece")
        if self.bpe_vocab_size < 1:
            errors.append(f"bpe_vocab_size={self.bpe_vocab_size}: must be positive")
        for key in ("workers", "num_mel_bins", "sample_rate", "max_source_positions", "shard_size"):
            if getattr(self, key) < 1:
                errors.append(f"{key}={getattr(self, key)}: must be >= 1")
        if self.min_duration_ms < 0:
            errors.append(f"min_duration_ms={self.min_duration_ms}: must be >= 0")
        errors.extend(self._speed_perturb_errors())
        if not self.destdir:
            errors.append("destdir: required")
        return errors

    def _speed_perturb_errors(self) -> list[str]:
        if self.speed_perturb is None:
            return []
        shown = "speed_perturb=[" + ",".join(str(factor) for factor in self.speed_perturb) + "]"
        if not self.speed_perturb:
            return [f"{shown}: give at least one factor, e.g. [0.9,1.0,1.1] (or null for none)"]
        errors = []
        for factor in dict.fromkeys(self.speed_perturb):
            if not 0.0 < factor <= MAX_SPEED:  # NaN included
                errors.append(f"{shown}: factor {factor} is not in (0, {MAX_SPEED:g}]")
            elif self.speed_perturb.count(factor) > 1:
                errors.append(f"{shown}: factor {factor} is given twice")
        return errors

    def speed_factors(self) -> tuple[float, ...]:
        """The training split's speed factors, ascending; (1.0,) without speed_perturb."""
        if not self.speed_perturb:
            return (1.0,)
        return tuple(sorted(float(factor) for factor in self.speed_perturb))

    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(num_mel_bins=self.num_mel_bins, sample_rate=self.sample_rate)

    def manifests(self) -> dict[str, str]:
        """Split name -> manifest path, for the splits that are set."""
        return {split: path for split in SPLITS if (path := getattr(self, split))}


@dataclass
class SplitInput:
    """A split's manifest, its checksum and utterances, and the ones bad for their text."""

    path: Path
    sha256: str
    utterances: list[Utterance]
    text_problems: dict[int, tuple[str, str]]
    """Utterance index -> (reason, one-line message) for empty text columns."""
    speeds: tuple[float, ...] = (1.0,)
    """Speed factors: each utterance is stored once per factor, in this order."""

    @property
    def perturbed(self) -> bool:
        return self.speeds != (1.0,)

    def copies(self) -> list[tuple[Utterance, str, float]]:
        """(utterance, stored id, speed) of every copy, in the order they are stored."""
        return [
            (utterance, speed_copy_id(utterance.id, speed), speed)
            for utterance in self.utterances
            for speed in self.speeds
        ]


@dataclass
class Side:
    """A binarized text column: its SentencePiece model, dictionary and file names."""

    column: str
    name: str
    """`target` or `source`: the datasets' and files' suffix."""
    model: bytes
    dictionary: Dictionary

    @property
    def encoder(self) -> TextEncoder:
        return TextEncoder(self.dictionary, self.model)


def preprocess_speech(cfg: SpeechPreprocessConfig) -> Path:
    """Builds the data directory `cfg.destdir` and returns its path."""
    errors = cfg.validate()
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
    assert cfg.target is not None
    destdir = Path(cfg.destdir)
    location = staging_folder.check_output_location(destdir)
    inputs = _read_inputs(cfg)
    reused = {}
    if cfg.bpe_model:
        if not Path(cfg.bpe_model).is_file():
            raise DataError(f"bpe_model={cfg.bpe_model}: file not found")
        reused["bpe_model"] = sha256_file(Path(cfg.bpe_model))
    fingerprint = _fingerprint(cfg, inputs, reused)
    staging_folder.check_destination(destdir, fingerprint, cfg.overwrite)
    work = location.with_name(f".{location.name}.partial-{fingerprint[:12]}")
    shards = work / "shards"
    output = work / "output"
    shards.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(output, ignore_errors=True)  # only shards are reused; the rest is cheap
    output.mkdir()
    try:
        with staging_folder.output_disk_errors(destdir, work, location):
            _stop_on_text_problems(cfg, inputs)
            sides = [_build_side(cfg, inputs["train"], cfg.target, "target", output)]
            if cfg.ctc_source:
                sides.append(_build_side(cfg, inputs["train"], cfg.ctc_source, "source", output))
            shard_files = _extract_features(cfg, inputs, shards)
            splits, statistics = {}, {}
            for split in inputs:
                splits[split], statistics[split] = _write_split(
                    cfg, split, inputs[split], shard_files[split], sides, output
                )
            cmvn_frames = _write_cmvn(output / "global_cmvn.npz", statistics["train"])
            manifest = _preprocess_json(cfg, fingerprint, inputs, sides, splits, cmvn_frames)
            (output / PREPROCESS_JSON).write_text(
                json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
    except BaseException:
        # Ctrl-C and SIGTERM (see nmtkit/preprocess/termination.py) included: finished
        # shards are kept on purpose, so the same command resumes.
        finished = len(list(shards.glob("*.npz")))
        if finished:
            logger.warning(
                "stopped; %d finished feature shard(s) kept in %s: run the same command again "
                "to resume (delete that folder to start over)",
                finished,
                work,
            )
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise
    staging_folder.move_into_place(output, location)
    shutil.rmtree(work)
    return destdir


# ---- inputs --------------------------------------------------------------------------------
def _read_inputs(cfg: SpeechPreprocessConfig) -> dict[str, SplitInput]:
    inputs = {}
    columns = [cfg.target] + ([cfg.ctc_source] if cfg.ctc_source else [])
    for split, value in cfg.manifests().items():
        path = Path(value)
        if not path.is_file():
            raise DataError(f"{split}={value}: manifest not found")
        utterances = read_manifest(path)
        if not utterances:
            raise DataError(f"{split}={value}: the manifest lists no utterance")
        problems = {}
        for index, utterance in enumerate(utterances):
            for column in columns:
                assert column is not None
                if not utterance.text(column):
                    problems[index] = (
                        EMPTY_TEXT,
                        f"{path}:{utterance.line}: column {column}: empty text "
                        f"(utterance {utterance.id}, file {utterance.audio})",
                    )
                    break
        speeds = cfg.speed_factors() if split == PERTURBED_SPLIT else (1.0,)
        inputs[split] = SplitInput(path, sha256_file(path), utterances, problems, speeds)
        _check_copy_ids(inputs[split])
    return inputs


def _check_copy_ids(entry: SplitInput) -> None:
    """DataError when a speed-perturbed copy's id is already an utterance's id."""
    if not entry.perturbed:
        return
    lines = {utterance.id: utterance.line for utterance in entry.utterances}
    for utterance, copy_id, speed in entry.copies():
        if copy_id != utterance.id and copy_id in lines:
            raise DataError(
                f"{entry.path}:{lines[copy_id]}: column id: '{copy_id}' is also the id of the "
                f"speed {speed} copy of '{utterance.id}' (line {utterance.line}) that "
                "speed_perturb adds; rename the utterance"
            )


def _fingerprint(
    cfg: SpeechPreprocessConfig, inputs: dict[str, SplitInput], reused: dict[str, str]
) -> str:
    """sha256 over the manifests' and reused model's sha256s and the output-shaping settings.

    Audio files are not hashed (reading them twice would double the cost); a shard is
    reused only while its files keep their size and modification time.
    """
    settings = {
        key: value
        for key, value in dataclasses.asdict(cfg).items()
        if key not in _NOT_FINGERPRINTED
    }
    # Without effect ([1.0] or null) it is left out, so older data directories keep theirs.
    if cfg.speed_factors() != (1.0,):
        settings["speed_perturb"] = list(cfg.speed_factors())
    hashes = {split: entry.sha256 for split, entry in inputs.items()}
    return staging_folder.fingerprint(
        {
            "format_version": FORMAT_VERSION,
            "task": TASK,
            "inputs": hashes,
            "reused": reused,
            "settings": settings,
            "features": dataclasses.asdict(cfg.feature_config()),
        }
    )


def _stop_on_text_problems(cfg: SpeechPreprocessConfig, inputs: dict[str, SplitInput]) -> None:
    if cfg.skip_bad_audio:
        return
    for entry in inputs.values():
        if entry.text_problems:
            _, message = entry.text_problems[min(entry.text_problems)]
            raise DataError(message + _SKIP_HINT)


_SKIP_HINT = "; fix it or pass skip_bad_audio=true to skip such utterances"


# ---- SentencePiece and dictionaries --------------------------------------------------------
def _build_side(
    cfg: SpeechPreprocessConfig, train: SplitInput, column: str, name: str, output: Path
) -> Side:
    """Trains (or reuses) the column's SentencePiece model and builds its dictionary."""
    texts = [
        utterance.text(column)
        for index, utterance in enumerate(train.utterances)
        if index not in train.text_problems
    ]
    described = f"{train.path} column {column}"
    if not texts:
        raise DataError(f"{described}: no non-empty text to train SentencePiece on")
    model_path = output / f"spm_{name}.model"
    if cfg.bpe_model and name == "target":
        model = Path(cfg.bpe_model).read_bytes()
        load_sentencepiece(model)
        model_path.write_bytes(model)
    else:
        model_type = "char" if cfg.bpe == "char" else "unigram"
        logger.info(
            "training SentencePiece (%s, %s pieces) on %d lines of %s",
            model_type,
            "all characters" if cfg.bpe == "char" else cfg.bpe_vocab_size,
            len(texts),
            described,
        )
        model = train_sentencepiece(
            texts,
            model_path,
            vocab_size=cfg.bpe_vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            seed=cfg.seed,
            described=described,
            coverage_setting=None,
        )
    processor = load_sentencepiece(model)
    counts: Counter[str] = Counter()
    for pieces in processor.encode(texts, out_type=str):
        counts.update(pieces)
    dictionary = build_dictionary(counts, model)
    dictionary.save(output / f"dict.{name}.txt")
    return Side(column=column, name=name, model=model, dictionary=dictionary)


# ---- feature extraction in resumable shards ------------------------------------------------


def _extract_features(
    cfg: SpeechPreprocessConfig, inputs: dict[str, SplitInput], shards: Path
) -> dict[str, list[Path]]:
    """Extracts every shard not already finished; returns each split's shard files in order."""
    feature_shards.remove_temporaries(shards)
    jobs: dict[str, list[ShardJob]] = {}
    for split, entry in inputs.items():
        jobs[split] = []
        for start in range(0, len(entry.utterances), cfg.shard_size):
            stop = min(start + cfg.shard_size, len(entry.utterances))
            jobs[split].append(
                ShardJob(
                    path=shards / f"{split}.{start:09d}-{stop:09d}.npz",
                    manifest=entry.path,
                    utterances=entry.utterances[start:stop],
                    problems=[entry.text_problems.get(i) for i in range(start, stop)],
                    speeds=entry.speeds,
                )
            )
    all_jobs = [job for split_jobs in jobs.values() for job in split_jobs]
    is_finished = {id(job): feature_shards.is_finished(job) for job in all_jobs}
    finished = [job for job in all_jobs if is_finished[id(job)]]
    todo = [job for job in all_jobs if not is_finished[id(job)]]
    # Counted in stored copies (speed-perturbed ones included), as the progress bar is.
    done_utterances = sum(_copies(job) for job in finished)
    seconds = 0.0
    for job in finished:
        seconds += _check_shard(cfg, job)
    total = sum(_copies(job) for job in all_jobs)
    logger.info(
        "extracting features of %d utterances in %d shard(s) with %d worker(s)%s",
        total - done_utterances,
        len(todo),
        cfg.workers,
        f" ({len(finished)} shard(s) already done)" if finished else "",
    )
    settings = feature_shards.ExtractionSettings(
        features=cfg.feature_config(),
        resample=cfg.resample,
        min_duration_ms=cfg.min_duration_ms,
        max_source_positions=cfg.max_source_positions,
    )
    threads = torch.get_num_threads()
    bar = tqdm(
        total=total,
        initial=done_utterances,
        desc="extracting features",
        unit=" utt",
        leave=False,
        disable=not sys.stderr.isatty(),
    )
    try:
        with bar:
            bar.set_postfix_str(f"{seconds / 3600:.2f} h audio")
            results = ordered_parallel_map(
                feature_shards.extract_shard,
                todo,
                workers=min(cfg.workers, max(len(todo), 1)),
                initializer=feature_shards.start_worker,
                initargs=(settings,),
            )
            for job, _ in zip(todo, results):
                seconds += _check_shard(cfg, job)
                bar.update(_copies(job))
                bar.set_postfix_str(f"{seconds / 3600:.2f} h audio")
    finally:
        torch.set_num_threads(threads)  # one worker runs in this process
    return {split: [job.path for job in split_jobs] for split, split_jobs in jobs.items()}


def _copies(job: ShardJob) -> int:
    return len(job.utterances) * len(job.speeds)


def _check_shard(cfg: SpeechPreprocessConfig, job: ShardJob) -> float:
    """Seconds of usable audio in a finished shard; DataError on its first bad utterance
    unless skip_bad_audio."""
    meta = feature_shards.read_shard_meta(job.path)
    if not cfg.skip_bad_audio:
        for entry in meta["utterances"]:
            if entry["reason"] is not None:
                raise DataError(entry["message"] + _SKIP_HINT)
    samples = sum(entry["samples"] for entry in meta["utterances"] if entry["reason"] is None)
    return samples / cfg.sample_rate


# ---- output --------------------------------------------------------------------------------
def _write_split(
    cfg: SpeechPreprocessConfig,
    split: str,
    split_input: SplitInput,
    shard_files: list[Path],
    sides: list[Side],
    output: Path,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, int]]:
    """Merges the split's shards into `<split>.fbank`, binarizes its text columns, writes
    `<split>.ids.txt` (and `<split>.speed.txt` when speed-perturbed); returns its
    preprocess.json entry and its CMVN sums (sum, sum of squares, frames).

    Every stored copy of an utterance (one per speed factor) counts as an utterance here.
    """
    dim = cfg.num_mel_bins
    fbank = IndexedDatasetBuilder(output / f"{split}.fbank", FEATURE_DTYPE)
    copies = split_input.copies()
    kept: list[Utterance] = []
    kept_ids: list[str] = []
    kept_speeds: list[float] = []
    kept_frames: list[np.ndarray] = []
    sums, squares = [], []
    skipped: Counter[str] = Counter()
    skipped_ids: list[str] = []
    samples = downmixed = resampled = 0
    samples_by_speed: Counter[float] = Counter()
    offset = 0
    for path in shard_files:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))["utterances"]
            frames = data["frames"]
            keep = np.array([entry["reason"] is None for entry in meta], dtype=bool)
            fbank.add_items(data["features"].reshape(-1), frames[keep] * dim)
            sums.append(data["sums"][keep])
            squares.append(data["squares"][keep])
        kept_frames.append(frames[keep])
        for index, entry in enumerate(meta):
            utterance, copy_id, speed = copies[offset + index]
            if entry["reason"] is None:
                kept.append(utterance)
                kept_ids.append(copy_id)
                kept_speeds.append(speed)
                samples += entry["samples"]
                samples_by_speed[speed] += entry["samples"]
                downmixed += entry["downmixed"]
                resampled += entry["resampled"]
            else:
                skipped[entry["reason"]] += 1
                skipped_ids.append(copy_id)
        offset += len(meta)
    fbank.finalize()
    if not kept:
        raise DataError(
            f"{split}={cfg.manifests()[split]}: no usable utterance left "
            f"(skipped: {', '.join(f'{reason} {count}' for reason, count in sorted(skipped.items()))})"
        )
    frames_per_utterance = np.concatenate(kept_frames)
    (output / f"{split}.ids.txt").write_text(
        "".join(copy_id + "\n" for copy_id in kept_ids), encoding="utf-8"
    )
    if split_input.perturbed:
        (output / f"{split}.speed.txt").write_text(
            "".join(f"{speed}\n" for speed in kept_speeds), encoding="utf-8"
        )
    entry: dict[str, Any] = {
        "utterances": len(kept),
        "hours": round(samples / cfg.sample_rate / 3600, 6),
        "frames": int(frames_per_utterance.sum()),
        "skipped": dict(sorted(skipped.items())),
        "skipped_ids": skipped_ids,
        "downmixed": downmixed,
        "resampled": resampled,
    }
    if split_input.perturbed:
        entry["speed_perturb"] = {
            str(speed): {
                "utterances": kept_speeds.count(speed),
                "hours": round(samples_by_speed[speed] / cfg.sample_rate / 3600, 6),
            }
            for speed in split_input.speeds
        }
    for side in sides:
        texts = [utterance.text(side.column) for utterance in kept]
        flat, sizes = side.encoder.encode_batch_flat(texts)
        builder = IndexedDatasetBuilder(
            output / f"{split}.{side.name}", best_token_dtype(len(side.dictionary))
        )
        builder.add_items(flat, sizes)
        builder.finalize()
        infeasible = _ctc_infeasible(flat, sizes, frames_per_utterance)
        prefix = "ctc" if side.name == "target" else "ctc_source"
        entry[f"{side.name}_tokens"] = int(sizes.sum())
        entry[f"{side.name}_unk"] = int(np.count_nonzero(flat == side.dictionary.unk()))
        entry[f"{prefix}_infeasible"] = int(infeasible.sum())
        entry[f"{prefix}_infeasible_ids"] = [kept_ids[i] for i in np.flatnonzero(infeasible)]
    # Summed over per-utterance sums in manifest order: the same numbers for any shard size.
    statistics = (
        np.concatenate(sums).sum(axis=0),
        np.concatenate(squares).sum(axis=0),
        int(frames_per_utterance.sum()),
    )
    return entry, statistics


def subsampled_length(frames: np.ndarray | int) -> np.ndarray | int:
    """Encoder frames after the S2T conv subsampler (two stride-2, kernel-5, padding-2 convs)."""
    for _ in range(2):
        frames = (frames - 1) // 2 + 1
    return frames


def _ctc_infeasible(flat: np.ndarray, sizes: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Per utterance: True when CTC cannot align its tokens (without `</s>`) to the
    subsampled frames, i.e. frames < tokens + adjacent repeats (each needs a blank between)."""
    ends = np.cumsum(sizes)
    starts = ends - sizes
    needed = np.empty(len(sizes), dtype=np.int64)
    for i, (start, end) in enumerate(zip(starts, ends)):
        tokens = flat[start : end - 1]  # drop </s>
        needed[i] = len(tokens) + int(np.count_nonzero(tokens[1:] == tokens[:-1]))
    return subsampled_length(frames.astype(np.int64)) < needed


def _write_cmvn(path: Path, statistics: tuple[np.ndarray, np.ndarray, int]) -> int:
    """mean/std (float64) over every stored training frame; returns the frame count."""
    sums, squares, frames = statistics
    mean = sums / frames
    variance = np.maximum(squares / frames - mean * mean, VARIANCE_FLOOR)
    write_npz(
        path,
        {"mean": mean, "std": np.sqrt(variance), "frames": np.array(frames, dtype=np.int64)},
    )
    return frames


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez without its per-file timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            archive.writestr(
                zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue()
            )


def _preprocess_json(
    cfg: SpeechPreprocessConfig,
    fingerprint: str,
    inputs: dict[str, SplitInput],
    sides: list[Side],
    splits: dict[str, dict[str, Any]],
    cmvn_frames: int,
) -> dict[str, Any]:
    target, *source = sides
    pieces = load_sentencepiece(target.model).get_piece_size()
    return {
        "task": TASK,
        "format_version": FORMAT_VERSION,
        "nmtkit_version": __version__,
        "fingerprint": fingerprint,
        "target": cfg.target,
        "features": dataclasses.asdict(cfg.feature_config()),
        "feature_dtype": np.dtype(FEATURE_DTYPE).name,
        "cmvn": "global_cmvn.npz",
        "cmvn_frames": cmvn_frames,
        "speed_perturb": (list(cfg.speed_factors()) if inputs[PERTURBED_SPLIT].perturbed else None),
        "target_spm": "spm_target.model",
        "target_dict": "dict.target.txt",
        "target_vocab_size": len(target.dictionary),
        "target_dtype": best_token_dtype(len(target.dictionary)).name,
        "bpe": {
            "type": cfg.bpe,
            "pieces": pieces,
            "reused_model": str(Path(cfg.bpe_model).resolve()) if cfg.bpe_model else None,
        },
        "ctc_source": (
            {
                "column": source[0].column,
                "spm": "spm_source.model",
                "dict": "dict.source.txt",
                "vocab_size": len(source[0].dictionary),
                "dtype": best_token_dtype(len(source[0].dictionary)).name,
            }
            if source
            else None
        ),
        "config": dataclasses.asdict(cfg),
        "inputs": {
            split: {"path": str(entry.path.resolve()), "sha256": entry.sha256}
            for split, entry in inputs.items()
        },
        "splits": splits,
    }


def summary(manifest: dict[str, Any], elapsed_seconds: float) -> str:
    """A few lines on what preprocess.json records: utterances, hours, skips per split."""
    lines = [
        f"wrote {manifest['config']['destdir']} in {elapsed_seconds:.1f} s",
        f"  target {manifest['target']}: {manifest['target_vocab_size']} dictionary entries "
        f"({manifest['bpe']['type']}, {manifest['bpe']['pieces']} pieces)",
    ]
    for split, entry in manifest["splits"].items():
        skipped = sum(entry["skipped"].values())
        lines.append(
            f"  {split}: {entry['utterances']} utterances, {entry['hours']:.2f} h, "
            f"{entry['frames']} frames ({skipped} skipped, {entry['ctc_infeasible']} too short "
            "for CTC)"
        )
        if "speed_perturb" in entry:
            hours = ", ".join(
                f"{speed}: {by_speed['hours']:.2f} h"
                for speed, by_speed in entry["speed_perturb"].items()
            )
            lines[-1] += f"; speed perturbation ({hours})"
    return "\n".join(lines)
