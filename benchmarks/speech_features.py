"""Speed and disk use of `nmtkit-preprocess task=speech_to_text` on a speech corpus.

    .venv/bin/python benchmarks/speech_features.py ../shared/data/speech --workers 2

Prints the extraction speed as real time per core (seconds of audio / (wall seconds x
workers)), for the extraction phase alone (reading + resampling + fbank + writing shards)
and for the whole command (SentencePiece, merging, CMVN and targets included), and the
megabytes on disk per hour of audio (features alone, and the whole data directory).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from nmtkit.preprocess import SpeechPreprocessConfig, preprocess_speech, speech


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with train.tsv, valid.tsv, test.tsv")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target", default="src_text", choices=("src_text", "tgt_text"))
    parser.add_argument("--destdir", type=Path, help="keep the output here (default: a temp dir)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="speech_features_"))
    destdir = args.destdir or scratch / "data"
    cfg = SpeechPreprocessConfig(
        train=str(args.data / "train.tsv"),
        valid=str(args.data / "valid.tsv"),
        test=str(args.data / "test.tsv"),
        target=args.target,
        destdir=str(destdir),
        workers=args.workers,
    )
    # Time the extraction phase on its own by wrapping it (it is one function call).
    extract = speech._extract_features
    phase: dict[str, float] = {}

    def timed_extract(*a, **k):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return extract(*a, **k)
        finally:
            phase["extract"] = time.perf_counter() - started

    speech._extract_features = timed_extract  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        preprocess_speech(cfg)
        total = time.perf_counter() - started
    finally:
        speech._extract_features = extract  # type: ignore[assignment]

    info = json.loads((destdir / "preprocess.json").read_text(encoding="utf-8"))
    hours = sum(entry["hours"] for entry in info["splits"].values())
    seconds = hours * 3600
    feature_bytes = sum(path.stat().st_size for path in destdir.glob("*.fbank.*") if path.is_file())
    all_bytes = sum(path.stat().st_size for path in destdir.iterdir() if path.is_file())
    utterances = sum(entry["utterances"] for entry in info["splits"].values())
    print(f"corpus: {args.data} ({utterances} utterances, {hours:.3f} h of audio)")
    print(f"workers: {args.workers}")
    print(
        f"extraction: {phase['extract']:.2f} s wall = "
        f"{seconds / (phase['extract'] * args.workers):.0f}x real time per core"
    )
    print(
        f"whole command: {total:.2f} s wall = "
        f"{seconds / (total * args.workers):.0f}x real time per core"
    )
    print(
        f"disk: {feature_bytes / 1e6 / hours:.1f} MB per hour of audio for the features, "
        f"{all_bytes / 1e6 / hours:.1f} MB per hour for the whole data directory"
    )
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
