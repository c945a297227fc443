"""Feature extraction for one shard of utterances, run in worker processes.

A shard holds copies of its utterances: one per speed factor (speed perturbation; a
single 1.0 copy without it), utterance by utterance, the factors in the job's order, so an
audio file is read once for all its copies. A shard file (`.npz`, written to a temporary
name and renamed, so it is either complete or absent) holds the float16 features of the
usable copies back to back, their frame counts, per-copy float64 sums and sums of squares
of the stored values (for global CMVN) and a JSON `meta` entry per copy: id (see
`speed_copy_id`), speed, audio path, the file's size and modification time (a shard is
reused only while they match), skip reason and message, samples after resampling and
speed change, whether it was down-mixed or resampled.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from nmtkit.data.audio import (
    AudioError,
    FeatureConfig,
    LoadedAudio,
    change_speed,
    compute_fbank,
    load_audio,
)
from nmtkit.data.speech_manifest import Utterance

FEATURE_DTYPE = np.float16
# Skip reasons decided here (the file-level ones come from nmtkit.data.audio).
N_SAMPLES_MISMATCH = "n_samples_mismatch"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"


def speed_copy_id(utterance_id: str, speed: float) -> str:
    """The id of an utterance's copy at `speed`: `<id>_sp0.9`; the 1.0 copy keeps `<id>`."""
    return utterance_id if speed == 1.0 else f"{utterance_id}_sp{speed}"


@dataclass
class ShardJob:
    """The utterances of one shard and where its file goes."""

    path: Path
    manifest: Path
    utterances: list[Utterance]
    problems: list[Optional[tuple[str, str]]]
    """Per utterance: (reason, message) when it is already known to be bad (empty text)."""
    speeds: tuple[float, ...] = (1.0,)
    """Speed factors: each utterance is stored once per factor, in this order."""

    def copy_ids(self) -> list[str]:
        """Ids of the shard's copies, in the order they are stored."""
        return [speed_copy_id(u.id, speed) for u in self.utterances for speed in self.speeds]


@dataclass(frozen=True)
class ExtractionSettings:
    features: FeatureConfig
    resample: bool
    min_duration_ms: float
    max_source_positions: int


class _BadUtterance(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# Per-process settings, set by the worker initializer.
_extraction: dict[str, ExtractionSettings] = {}


def start_worker(settings: ExtractionSettings) -> None:
    # One thread per worker: `workers` processes already use the cores, and an utterance's
    # fbank is too small for intra-op threads to pay off (they make it several times slower).
    torch.set_num_threads(1)
    _extraction["settings"] = settings


def extract_shard(job: ShardJob) -> Path:
    """Computes the shard's features and writes its file atomically (temp file + rename)."""
    settings = _extraction["settings"]
    dim = settings.features.num_mel_bins
    copies = len(job.utterances) * len(job.speeds)
    entries, blocks = [], []
    frames = np.zeros(copies, dtype=np.int64)
    sums = np.zeros((copies, dim), dtype=np.float64)
    squares = np.zeros((copies, dim), dtype=np.float64)
    index = 0
    for utterance, problem in zip(job.utterances, job.problems):
        stat = audio_stat(utterance.audio)
        audio: LoadedAudio | None = None
        if problem is None:
            try:
                audio = _load(utterance, job.manifest, settings)
            except _BadUtterance as bad:
                problem = (bad.reason, bad.message)  # then every copy is bad for this reason
        for speed in job.speeds:
            entry: dict[str, Any] = {
                "id": speed_copy_id(utterance.id, speed),
                "speed": speed,
                "audio": str(utterance.audio),
                "stat": stat,
                "reason": None,
                "message": None,
                "samples": 0,
                "downmixed": False,
                "resampled": False,
            }
            features = None
            if audio is None:
                assert problem is not None
                entry.update(reason=problem[0], message=problem[1])
            else:
                try:
                    features = _copy_features(
                        utterance, job.manifest, settings, audio, speed, entry
                    )
                except _BadUtterance as bad:
                    entry.update(reason=bad.reason, message=bad.message)
            if features is not None:
                blocks.append(features)
                frames[index] = len(features)
                # CMVN statistics of the float16 values actually stored, in float64.
                wide = features.astype(np.float64)
                sums[index] = wide.sum(axis=0)
                squares[index] = np.square(wide).sum(axis=0)
            entries.append(entry)
            index += 1
    features = np.concatenate(blocks) if blocks else np.zeros((0, dim), dtype=FEATURE_DTYPE)
    temporary = job.path.with_name(f"{job.path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as file:
        np.savez(
            file,
            features=features,
            frames=frames,
            sums=sums,
            squares=squares,
            meta=np.array(json.dumps({"utterances": entries})),
        )
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, job.path)
    return job.path


def _load(utterance: Utterance, manifest: Path, settings: ExtractionSettings) -> LoadedAudio:
    """The utterance's checked waveform; _BadUtterance when the file is unusable."""
    where = f"{manifest}:{utterance.line}"
    try:
        audio = load_audio(utterance.audio, settings.features.sample_rate, settings.resample)
    except AudioError as error:
        raise _BadUtterance(error.reason, f"{where}: column audio: {error}") from None
    if audio.file_samples != utterance.n_samples:
        raise _BadUtterance(
            N_SAMPLES_MISMATCH,
            f"{where}: column n_samples: {utterance.n_samples}, but {utterance.audio} has "
            f"{audio.file_samples} samples",
        )
    return audio


def _copy_features(
    utterance: Utterance,
    manifest: Path,
    settings: ExtractionSettings,
    audio: LoadedAudio,
    speed: float,
    entry: dict[str, Any],
) -> np.ndarray:
    """(frames, num_mel_bins) float16 features of the copy at `speed`; _BadUtterance when
    it is too short or too long."""
    features_cfg = settings.features
    # A perturbed copy can be too short or too long where the original is not: say which.
    where = f"{manifest}:{utterance.line}: column audio: {utterance.audio}" + (
        f" at speed {speed}" if speed != 1.0 else ""
    )
    waveform = change_speed(audio.waveform, speed, features_cfg.sample_rate)
    samples = len(waveform)
    milliseconds = 1000.0 * samples / features_cfg.sample_rate
    if milliseconds < settings.min_duration_ms:
        raise _BadUtterance(
            TOO_SHORT,
            f"{where}: {milliseconds:.1f} ms of audio, "
            f"shorter than min_duration_ms={settings.min_duration_ms:g}",
        )
    features = compute_fbank(waveform, features_cfg).numpy().astype(FEATURE_DTYPE)
    if len(features) == 0:
        raise _BadUtterance(
            TOO_SHORT,
            f"{where}: {milliseconds:.1f} ms of audio, "
            f"shorter than one {features_cfg.frame_length_ms:g} ms analysis window",
        )
    if len(features) > settings.max_source_positions:
        raise _BadUtterance(
            TOO_LONG,
            f"{where}: {len(features)} frames ({milliseconds / 1000:.1f} s), more than "
            f"max_source_positions={settings.max_source_positions}",
        )
    entry.update(
        samples=samples,
        downmixed=audio.channels > 1,
        resampled=audio.file_sample_rate != features_cfg.sample_rate,
    )
    return features


def audio_stat(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def read_shard_meta(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        return json.loads(str(data["meta"]))


def is_finished(job: ShardJob) -> bool:
    """A shard file from an earlier run of the same fingerprint, with its audio unchanged."""
    if not job.path.is_file():
        return False
    try:
        entries = read_shard_meta(job.path)["utterances"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return False  # unreadable: extract it again
    # The ids name the speed of each copy (`<id>_sp0.9`), so they check the factors too.
    if [entry["id"] for entry in entries] != job.copy_ids():
        return False
    copies = [utterance for utterance in job.utterances for _ in job.speeds]
    return all(
        entry["audio"] == str(utterance.audio) and entry["stat"] == audio_stat(utterance.audio)
        for entry, utterance in zip(entries, copies)
    )


def remove_temporaries(folder: Path) -> None:
    """Deletes half-written shard files that a killed run left behind."""
    for stale in folder.glob("*.tmp-*"):
        stale.unlink(missing_ok=True)
