"""Speech recognition quality in detail: WER and CER (raw and normalised) of a hypothesis file
against a test manifest, and the error on reference words seen vs never seen in training.

    .venv/bin/python benchmarks/speech_quality.py --hyp work/asr.test.hyp \\
        --test ../shared/data/speech/test.tsv --train ../shared/data/speech/train.tsv

Words are compared after `normalise_transcript` (lower-cased, punctuation removed), the
normalisation of the normalised WER. A reference word counts as recognised when the WER
alignment (jiwer) matches it with an identical hypothesis word; the "miss rate" of a class is
the share of its reference words that were substituted or deleted (insertions belong to no
reference word, so the two miss rates do not add up to the WER).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jiwer

from nmtkit.data.speech_manifest import read_manifest
from nmtkit.scoring import normalise_transcript, score_with_normalised_variants


def miss_rates(
    hypotheses: list[str], references: list[str], known_words: set[str]
) -> dict[str, dict[str, float]]:
    """Per class (seen / unseen in training): reference words, missed words, miss rate."""
    output = jiwer.process_words(references, hypotheses)
    counts = {"seen": [0, 0], "unseen": [0, 0]}
    for reference_words, alignment in zip(output.references, output.alignments):
        recognised = [False] * len(reference_words)
        for chunk in alignment:
            if chunk.type == "equal":
                for index in range(chunk.ref_start_idx, chunk.ref_end_idx):
                    recognised[index] = True
        for word, hit in zip(reference_words, recognised):
            entry = counts["seen" if word in known_words else "unseen"]
            entry[0] += 1
            entry[1] += 0 if hit else 1
    return {
        name: {"words": total, "missed": missed, "miss_rate": 100.0 * missed / max(total, 1)}
        for name, (total, missed) in counts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hyp", type=Path, required=True, help="one hypothesis per test utterance")
    parser.add_argument("--test", type=Path, required=True, help="test manifest (TSV)")
    parser.add_argument("--train", type=Path, required=True, help="training manifest (TSV)")
    parser.add_argument("--column", default="src_text", help="reference column")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()

    references = [u.text(args.column) for u in read_manifest(args.test)]
    hypotheses = args.hyp.read_text(encoding="utf-8").splitlines()
    if len(hypotheses) != len(references):
        raise SystemExit(f"{args.hyp}: {len(hypotheses)} lines for {len(references)} utterances")
    known = {
        word
        for utterance in read_manifest(args.train)
        for word in normalise_transcript(utterance.text(args.column)).split()
    }
    scores = score_with_normalised_variants(hypotheses, [references], ["wer", "cer"])
    split = miss_rates(
        [normalise_transcript(h) for h in hypotheses],
        [normalise_transcript(r) for r in references],
        known,
    )
    if args.json:
        print(json.dumps({**{k: v.score for k, v in scores.items()}, **split}, indent=2))
        return
    for result in scores.values():
        print(result.format_line())
    total = sum(entry["words"] for entry in split.values())
    for name, entry in split.items():
        print(
            f"{name} words: {entry['words']} ({100.0 * entry['words'] / max(total, 1):.1f}% of "
            f"the test words), missed {entry['missed']} = {entry['miss_rate']:.1f}%"
        )


if __name__ == "__main__":
    main()
