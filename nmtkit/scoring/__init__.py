"""Corpus scoring: BLEU, chrF and TER through sacrebleu, WER through jiwer."""

from __future__ import annotations

from nmtkit.scoring.metrics import KNOWN_METRICS, MetricResult, score_corpus

__all__ = ["KNOWN_METRICS", "MetricResult", "score_corpus"]
