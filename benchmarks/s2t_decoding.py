"""Speech decoding: WER and speed of attention-only vs joint CTC/attention decoding.

Decodes a speech test manifest with one trained checkpoint (it must have a CTC head on the
target, e.g. examples/speech_to_text/asr.yaml) through the Python API, for each beam size and
CTC weight (0: attention only; 1: the CTC head alone, best path at beam 1 and prefix beam
search above), at batch sizes 1 and 32, and prints a markdown table: normalised WER/CER,
utterances/s and real-time factor (decoding seconds per second of audio; audio reading and
fbank extraction included, model loading excluded).

    python benchmarks/s2t_decoding.py --checkpoint asr/checkpoint_best.pt \\
        --manifest ../shared/data/speech/test.tsv --beams 1 5 10 --ctc-weights 0 0.3

Every variant decodes the same utterances in the same process, one after another; on a shared
machine compare the ratios within one run rather than figures across runs.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

import nmtkit
from nmtkit.scoring import score_corpus


def read_manifest(path: Path, limit: int | None) -> tuple[list[str], list[str], float]:
    """Audio paths (resolved against the manifest's folder), transcripts, total seconds."""
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    audio = [str((path.parent / row["audio"]).resolve()) for row in rows]
    seconds = sum(int(row["n_samples"]) for row in rows) / 16000
    return audio, [row["src_text"] for row in rows], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--ctc-weights", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--limit", type=int, default=None, help="first N utterances only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    audio, references, seconds = read_manifest(args.manifest, args.limit)
    model = nmtkit.load(args.checkpoint, device="cpu")
    model.transcribe(audio[:2], beam=1)  # warm-up: first-call allocations and imports
    print(f"{len(audio)} utterances, {seconds / 60:.1f} minutes of audio, {args.threads} threads")
    print("\n| beam | ctc_weight | batch | WER | CER | utt/s | RTF |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch_size in args.batch_sizes:
        for beam in args.beams:
            for ctc_weight in args.ctc_weights:
                started = time.perf_counter()
                hypotheses = model.transcribe(
                    audio, beam=beam, ctc_weight=ctc_weight, batch_size=batch_size
                )
                elapsed = time.perf_counter() - started
                scores = score_corpus(
                    hypotheses, [references], ["wer", "cer"],
                    wer_lowercase=True, wer_remove_punctuation=True,
                )  # fmt: skip
                print(
                    f"| {beam} | {ctc_weight:g} | {batch_size} | {scores['wer'].score:.1f} | "
                    f"{scores['cer'].score:.1f} | {len(audio) / elapsed:.1f} | "
                    f"{elapsed / seconds:.4f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
