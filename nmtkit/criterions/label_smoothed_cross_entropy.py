"""Label-smoothed cross-entropy with fairseq's formula, summed in nats over non-padding tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nmtkit.criterions.base import Criterion, register_criterion
from nmtkit.criterions.cross_entropy import (
    check_decoder_model,
    cross_entropy_logging_output,
    reduce_cross_entropy_metrics,
    target_logits,
)
from nmtkit.criterions.fused_loss import smoothed_nll_from_logits
from nmtkit.registry import ComponentConfig


@dataclass(kw_only=True)
class LabelSmoothedCrossEntropyConfig(ComponentConfig):
    """Cross-entropy against a target distribution that spreads `label_smoothing` over the vocabulary."""

    label_smoothing: float = 0.0
    """Probability mass taken from the reference token and spread over the others (0.1 is usual)."""
    ignore_prefix_size: int = 0
    """Leave the first N target positions out of the loss (e.g. a language tag)."""
    report_accuracy: bool = False
    """Also log token accuracy (percent of non-padding positions where argmax == target)."""

    def validate(self) -> list[str]:
        errors = []
        if not 0.0 <= self.label_smoothing < 1.0:
            errors.append(f"label_smoothing={self.label_smoothing}: must be in [0, 1)")
        if self.ignore_prefix_size < 0:
            errors.append(f"ignore_prefix_size={self.ignore_prefix_size}: must be >= 0")
        return errors


@register_criterion("label_smoothed_cross_entropy", LabelSmoothedCrossEntropyConfig)
class LabelSmoothedCrossEntropy(Criterion):
    """Label-smoothed cross-entropy; `nll_loss` (unsmoothed) is logged beside the loss.

    Like `cross_entropy`, `logging_output` holds detached tensors that `reduce_metrics`
    copies to the host once per log interval.
    """

    cfg: LabelSmoothedCrossEntropyConfig

    def check_model(self, model: nn.Module) -> None:
        check_decoder_model(model, "label_smoothed_cross_entropy")

    def forward(
        self, model: nn.Module, sample: dict[str, Any]
    ) -> tuple[torch.Tensor, int, dict[str, Any]]:
        logits, target = target_logits(model, sample, self.padding_idx, self.cfg.ignore_prefix_size)
        loss, nll_loss = smoothed_nll_from_logits(
            logits, target, self.cfg.label_smoothing, self.padding_idx
        )
        # fairseq's convention: gradients are normalised by all target tokens even when a
        # prefix is ignored, so runs with and without ignore_prefix_size stay comparable.
        logging_output = cross_entropy_logging_output(
            loss, nll_loss, sample, logits, target, self.padding_idx, self.cfg.report_accuracy
        )
        return loss, sample["ntokens"], logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: list[dict[str, Any]]) -> dict[str, float]:
        return reduce_cross_entropy_metrics(logging_outputs)
