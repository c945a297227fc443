"""Tiny parallel data (a reversal task on a 12-word vocabulary) preprocessed once per session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nmtkit_cli.preprocess import cli_main as preprocess_cli

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def write_reversal_corpus(folder: Path, split: str, pairs: int, seed: int) -> None:
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(pairs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        sources.append(" ".join(words))
        targets.append(" ".join(reversed(words)).upper())
    (folder / f"{split}.src").write_text("\n".join(sources) + "\n")
    (folder / f"{split}.tgt").write_text("\n".join(targets) + "\n")


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    write_reversal_corpus(folder, "train", 400, seed=1)
    write_reversal_corpus(folder, "valid", 24, seed=2)
    write_reversal_corpus(folder, "test", 24, seed=3)
    return folder


@pytest.fixture(scope="session")
def data_dir(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SentencePiece-encoded, joined dictionary: exercises the full raw-text path."""
    destination = tmp_path_factory.mktemp("bin") / "data-bin"
    preprocess_cli(
        [
            "source_lang=src",
            "target_lang=tgt",
            f"trainpref={raw_dir / 'train'}",
            f"validpref={raw_dir / 'valid'}",
            f"testpref={raw_dir / 'test'}",
            f"destdir={destination}",
            "bpe=sentencepiece",
            "bpe_vocab_size=64",
            "joined_dictionary=true",
        ]
    )
    return destination
