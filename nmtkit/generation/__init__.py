"""Hypothesis search for translation: beam search, sampling, ensembles, forced prefixes."""

from __future__ import annotations

from nmtkit.generation.config import SearchConfig
from nmtkit.generation.ensemble import EnsembleDecoder
from nmtkit.generation.search import Hypothesis, SequenceGenerator

__all__ = ["EnsembleDecoder", "Hypothesis", "SearchConfig", "SequenceGenerator"]
