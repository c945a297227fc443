"""Criterion registry; built-in criterions register through the imports below."""

from __future__ import annotations

from nmtkit.criterions.base import CRITERIONS, Criterion, register_criterion
from nmtkit.criterions.cross_entropy import CrossEntropy, CrossEntropyConfig
from nmtkit.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropy,
    LabelSmoothedCrossEntropyConfig,
)

__all__ = [
    "CRITERIONS",
    "CrossEntropy",
    "CrossEntropyConfig",
    "Criterion",
    "LabelSmoothedCrossEntropy",
    "LabelSmoothedCrossEntropyConfig",
    "register_criterion",
]
