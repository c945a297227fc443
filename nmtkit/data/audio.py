"""Audio files -> mono 16 kHz waveforms -> Kaldi-compatible log-mel filterbanks.

The one path shared by `nmtkit-preprocess task=speech_to_text` and on-the-fly features at
generation. Files are read with soundfile (FLAC/WAV/OGG): torchaudio's own loaders
(`load`, `info`, `sox_effects`, `io`) are removed or need TorchCodec in torchaudio >= 2.9.
Features follow fairseq's speech-to-text recipe exactly (waveform scaled to 16-bit range,
no dither), so its checkpoints can be imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from nmtkit.errors import DataError

# Reasons a file is not usable; preprocess.json counts skipped utterances under these names.
MISSING_AUDIO = "missing_audio"
UNREADABLE_AUDIO = "unreadable_audio"
WRONG_SAMPLE_RATE = "wrong_sample_rate"
EMPTY_AUDIO = "empty_audio"
NON_FINITE_AUDIO = "non_finite_audio"


@dataclass(kw_only=True)
class FeatureConfig:
    """How waveforms become features; stored in preprocess.json and in checkpoints."""

    num_mel_bins: int = 80
    """Mel filterbank channels, i.e. the feature dimension."""
    sample_rate: int = 16000
    """Sample rate (Hz) the audio is resampled to before the filterbank."""
    frame_length_ms: float = 25.0
    """Analysis window length in milliseconds."""
    frame_shift_ms: float = 10.0
    """Hop between frames in milliseconds."""
    dither: float = 0.0
    """Kaldi dither amount; 0 keeps features deterministic (fairseq's recipe)."""
    waveform_scale: float = 32768.0
    """Samples in [-1, 1] are multiplied by this (2**15, the 16-bit range Kaldi expects)."""


class AudioError(DataError):
    """An audio file that cannot be used; `reason` is a short name counted in preprocess.json."""

    def __init__(self, message: str, reason: str = UNREADABLE_AUDIO) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class LoadedAudio:
    """A decoded file: the mono waveform at the requested rate and what the file held."""

    waveform: torch.Tensor
    """float32 (samples,) at the requested sample rate."""
    file_samples: int
    """Sample frames in the file, before resampling (what a manifest's n_samples counts)."""
    file_sample_rate: int
    channels: int


def load_audio(path: str | Path, sample_rate: int = 16000, resample: bool = True) -> LoadedAudio:
    """Reads, checks, down-mixes and resamples one file; AudioError (one line) when unusable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found", MISSING_AUDIO)
    try:
        data, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        reason = getattr(error, "error_string", None) or str(error)
        raise AudioError(f"{path}: cannot read audio ({_one_line(reason)})") from None
    file_samples, channels = data.shape
    if file_samples == 0:
        raise AudioError(f"{path}: zero-length audio", EMPTY_AUDIO)
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples", NON_FINITE_AUDIO)
    # Down-mix: the mean of the channels (what a mono recording of the scene would be).
    mono = data[:, 0] if channels == 1 else data.mean(axis=1, dtype=np.float32)
    waveform = torch.from_numpy(np.ascontiguousarray(mono))
    if file_rate != sample_rate:
        if not resample:
            raise AudioError(
                f"{path}: sample rate {file_rate} Hz, expected {sample_rate} Hz (resample=false)",
                WRONG_SAMPLE_RATE,
            )
        waveform = torchaudio.functional.resample(waveform, file_rate, sample_rate)
    return LoadedAudio(
        waveform=waveform, file_samples=file_samples, file_sample_rate=file_rate, channels=channels
    )


def read_audio(path: str | Path, sample_rate: int = 16000, resample: bool = True) -> torch.Tensor:
    """Mono float32 waveform of `path` at `sample_rate` (channels averaged, resampled when
    the file's rate differs; `resample=False` makes a different rate an AudioError)."""
    return load_audio(path, sample_rate, resample).waveform


def change_speed(waveform: torch.Tensor, factor: float, sample_rate: int) -> torch.Tensor:
    """Kaldi/ESPnet speed perturbation: `waveform` played `factor` times as fast, tempo and
    pitch together, still at `sample_rate` (ceil(samples / factor) samples).

    The samples are taken as recorded at round(sample_rate * factor) Hz and resampled to
    `sample_rate` (sox's `speed` effect, which Kaldi's speed perturbation runs, does the same).
    Deterministic: the same waveform and factor give the same samples.
    """
    if factor == 1.0:
        return waveform
    # An integer source rate: resampling works on integer rates, and round() rather than
    # int() keeps e.g. 0.58 * 16000 = 9279.999... at 9280 Hz.
    return torchaudio.functional.resample(waveform, round(sample_rate * factor), sample_rate)


def compute_fbank(waveform: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """(frames, num_mel_bins) float32 log-mel filterbanks of a mono waveform in [-1, 1]."""
    return torchaudio.compliance.kaldi.fbank(
        waveform.unsqueeze(0) * cfg.waveform_scale,
        num_mel_bins=cfg.num_mel_bins,
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
        dither=cfg.dither,
        sample_frequency=cfg.sample_rate,
    )


def num_frames(num_samples: int, cfg: FeatureConfig) -> int:
    """Frames compute_fbank gives for `num_samples` samples (Kaldi's snip_edges=True)."""
    # The same expressions as torchaudio.compliance.kaldi, so the rounding agrees.
    window_size = int(cfg.sample_rate * cfg.frame_length_ms * 0.001)
    window_shift = int(cfg.sample_rate * cfg.frame_shift_ms * 0.001)
    if num_samples < window_size:
        return 0
    return 1 + (num_samples - window_size) // window_shift


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
