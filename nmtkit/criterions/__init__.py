"""Criterion registry; built-in criterions register through the imports below."""

from __future__ import annotations

from nmtkit.criterions.base import CRITERIONS, Criterion, register_criterion
from nmtkit.criterions.cross_entropy import CrossEntropy, CrossEntropyConfig
from nmtkit.criterions.ctc import Ctc, CtcConfig
from nmtkit.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropy,
    LabelSmoothedCrossEntropyConfig,
)
from nmtkit.criterions.label_smoothed_cross_entropy_with_ctc import (
    LabelSmoothedCrossEntropyWithCtc,
    LabelSmoothedCrossEntropyWithCtcConfig,
)

__all__ = [
    "CRITERIONS",
    "CrossEntropy",
    "CrossEntropyConfig",
    "Criterion",
    "Ctc",
    "CtcConfig",
    "LabelSmoothedCrossEntropy",
    "LabelSmoothedCrossEntropyConfig",
    "LabelSmoothedCrossEntropyWithCtc",
    "LabelSmoothedCrossEntropyWithCtcConfig",
    "register_criterion",
]
