"""Reading audio with soundfile (mono, resampled, checked) and Kaldi filterbanks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from nmtkit.data.audio import (
    EMPTY_AUDIO,
    MISSING_AUDIO,
    NON_FINITE_AUDIO,
    UNREADABLE_AUDIO,
    WRONG_SAMPLE_RATE,
    AudioError,
    FeatureConfig,
    compute_fbank,
    load_audio,
    num_frames,
    read_audio,
)


def tone(samples: int, rate: int = 16000, frequency: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(samples) / rate)).astype(np.float32)


def test_reads_mono_16bit_exactly_as_soundfile(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    soundfile.write(path, tone(1600), 16000, subtype="PCM_16")
    waveform = read_audio(path)
    expected, _ = soundfile.read(path, dtype="float32")
    assert waveform.dtype == torch.float32
    assert torch.equal(waveform, torch.from_numpy(expected))


def test_channels_are_averaged(tmp_path: Path) -> None:
    left, right = tone(800), tone(800, frequency=1000.0)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    loaded = load_audio(path)
    assert loaded.channels == 2
    torch.testing.assert_close(loaded.waveform, torch.from_numpy((left + right) / 2))


def test_other_rates_are_resampled_unless_resample_is_off(tmp_path: Path) -> None:
    samples = tone(800, rate=8000)
    path = tmp_path / "8k.flac"
    soundfile.write(path, samples, 8000, subtype="PCM_24")
    loaded = load_audio(path, 16000)
    stored, _ = soundfile.read(path, dtype="float32")
    expected = torchaudio.functional.resample(torch.from_numpy(stored), 8000, 16000)
    assert loaded.file_samples == 800 and loaded.file_sample_rate == 8000
    assert torch.equal(loaded.waveform, expected) and len(loaded.waveform) == 1600
    with pytest.raises(
        AudioError, match=r"8k\.flac: sample rate 8000 Hz, expected 16000 Hz"
    ) as info:
        read_audio(path, 16000, resample=False)
    assert info.value.reason == WRONG_SAMPLE_RATE


def test_unusable_files_are_one_line_errors(tmp_path: Path) -> None:
    cases = []
    cases.append((tmp_path / "missing.flac", MISSING_AUDIO, "audio file not found"))
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"definitely not audio" * 10)
    cases.append((corrupt, UNREADABLE_AUDIO, r"cannot read audio \(.+\)"))
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    cases.append((empty, EMPTY_AUDIO, "zero-length audio"))
    nan = tmp_path / "nan.wav"
    samples = tone(400)
    samples[7] = np.nan
    soundfile.write(nan, samples, 16000, subtype="FLOAT")
    cases.append((nan, NON_FINITE_AUDIO, "audio contains NaN or infinite samples"))
    for path, reason, message in cases:
        with pytest.raises(AudioError, match=f"^{re.escape(str(path))}: {message}") as info:
            read_audio(path)
        assert info.value.reason == reason
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("samples", [400, 401, 560, 1600, 4321])
def test_fbank_shape_matches_num_frames_and_torchaudio(samples: int) -> None:
    cfg = FeatureConfig(num_mel_bins=16)
    waveform = torch.from_numpy(tone(samples))
    features = compute_fbank(waveform, cfg)
    assert features.dtype == torch.float32
    assert features.shape == (num_frames(samples, cfg), 16)
    expected = torchaudio.compliance.kaldi.fbank(
        waveform.unsqueeze(0) * 32768, num_mel_bins=16, dither=0.0, sample_frequency=16000
    )
    assert torch.equal(features, expected)


def test_num_frames_snips_edges() -> None:
    cfg = FeatureConfig()
    assert [num_frames(n, cfg) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]
