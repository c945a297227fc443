"""A tiny synthetic speech corpus that a tiny model learns in a few hundred CPU updates.

Each of six "words" is a 0.3 s tone at its own frequency (with a little noise), words are
separated by short silences, and an utterance says one to three words. A word lasts long
enough for CTC over characters after x4 subsampling ("yellow" needs 8 output frames:
7 characters with the word boundary, plus a blank between the two l). `src_text` is the
English colour names ("red green"), `tgt_text` their German "translation" ("rot grün").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from nmtkit.data.speech_manifest import MANIFEST_COLUMNS

SAMPLE_RATE = 16000
WORDS = ("red", "green", "blue", "black", "white", "yellow")
TRANSLATIONS = {
    "red": "rot",
    "green": "grün",
    "blue": "blau",
    "black": "schwarz",
    "white": "weiß",
    "yellow": "gelb",
}
# Far apart on the mel scale, so each word lights up its own filterbank channels.
FREQUENCIES_HZ = {
    "red": 300.0,
    "green": 550.0,
    "blue": 900.0,
    "black": 1400.0,
    "white": 2200.0,
    "yellow": 3400.0,
}
WORD_SECONDS = 0.3
GAP_SECONDS = 0.05
DEFAULT_SPLITS = {"train": 48, "valid": 8, "test": 8}


def utterance_waveform(words: list[str], rng: np.random.Generator) -> np.ndarray:
    """float32 mono samples in [-1, 1]: silence, then each word's tone followed by silence."""
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float64)
    time = np.arange(int(WORD_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    # Raised-cosine envelope: no clicks at the tone's edges.
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(len(time)) / (len(time) - 1))
    pieces = [gap]
    for word in words:
        amplitude = rng.uniform(0.3, 0.6)
        phase = rng.uniform(0, 2 * np.pi)
        pieces.append(
            amplitude * envelope * np.sin(2 * np.pi * FREQUENCIES_HZ[word] * time + phase)
        )
        pieces.append(gap)
    samples = np.concatenate(pieces)
    samples += rng.normal(0.0, 0.003, size=samples.shape)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def write_speech_corpus(
    folder: Path, splits: dict[str, int] | None = None, seed: int = 0
) -> dict[str, Path]:
    """Writes `folder/audio/<id>.flac` (16 kHz mono, 16-bit) and `folder/<split>.tsv`
    manifests; returns {split: manifest path}."""
    splits = DEFAULT_SPLITS if splits is None else splits
    rng = np.random.default_rng(seed)
    audio_folder = folder / "audio"
    audio_folder.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for split, size in splits.items():
        lines = ["\t".join(MANIFEST_COLUMNS)]
        for number in range(1, size + 1):
            words = [str(word) for word in rng.choice(WORDS, size=rng.integers(1, 4))]
            samples = utterance_waveform(words, rng)
            utterance_id = f"{split}_{number:04d}"
            soundfile.write(
                audio_folder / f"{utterance_id}.flac", samples, SAMPLE_RATE, subtype="PCM_16"
            )
            fields = (
                utterance_id,
                f"audio/{utterance_id}.flac",
                str(len(samples)),
                f"spk{number % 3}",
                " ".join(words),
                " ".join(TRANSLATIONS[word] for word in words),
            )
            lines.append("\t".join(fields))
        manifests[split] = folder / f"{split}.tsv"
        manifests[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifests
