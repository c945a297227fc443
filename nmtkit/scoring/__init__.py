"""Corpus scoring: BLEU, chrF and TER through sacrebleu, WER and CER through jiwer."""

from __future__ import annotations

from nmtkit.scoring.metrics import (
    KNOWN_METRICS,
    NORMALISED_SUFFIX,
    MetricResult,
    normalise_transcript,
    score_corpus,
    score_with_normalised_variants,
)

__all__ = [
    "KNOWN_METRICS",
    "NORMALISED_SUFFIX",
    "MetricResult",
    "normalise_transcript",
    "score_corpus",
    "score_with_normalised_variants",
]
