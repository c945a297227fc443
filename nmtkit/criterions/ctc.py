"""Connectionist temporal classification (Graves et al., 2006) on a model's CTC head.

CTC targets are the reference tokens without the final `</s>` (and without an ignored prefix):
the blank (index 0, the dictionary's `<s>`) separates them, and an end-of-sentence symbol has
no frame of its own to align to. An utterance can only be aligned when its encoder has at
least as many frames as the target has tokens plus adjacent repeats (a repeated token needs a
blank between its copies). Utterances that cannot be aligned are left out of the loss and
counted in `ctc_infeasible`, instead of being zeroed silently as `zero_infinity=True` does;
the ones left out are computed with an empty target, whose loss is finite, so that nothing
infinite or NaN enters the backward pass, and then multiplied by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nmtkit.criterions.base import Criterion, register_criterion
from nmtkit.criterions.cross_entropy import LoggingValue, sum_logging_outputs
from nmtkit.distributed import unwrap_model
from nmtkit.errors import ConfigError
from nmtkit.models.api import CTC_BLANK, capability
from nmtkit.registry import ComponentConfig

CTC_TARGETS = ("target", "source")
"""What a CTC head is trained on: the target text or, for speech translation, the transcript."""


@dataclass(kw_only=True)
class CtcConfig(ComponentConfig):
    """CTC loss of the model's CTC head (an encoder-only model, or any model with a CTC head)."""

    ctc_target: str = "target"
    """Sequence the CTC head predicts: target (the batch's target) or source (its transcript,
    `source_text`, for speech translation); must equal model.ctc_head."""

    def validate(self) -> list[str]:
        if self.ctc_target not in CTC_TARGETS:
            return [f"ctc_target={self.ctc_target}: choose one of {', '.join(CTC_TARGETS)}"]
        return []


class CtcLoss(NamedTuple):
    """CTC loss of a batch, summed over the utterances that can be aligned."""

    loss: torch.Tensor
    """Summed negative log-likelihood in nats (a scalar with gradient)."""
    ntokens: torch.Tensor
    """Number of CTC target tokens of the utterances counted."""
    infeasible: torch.Tensor
    """Number of utterances left out because they cannot be aligned."""


def ctc_reference(
    sample: dict[str, Any], ctc_target: str, ignore_prefix_size: int = 0
) -> torch.Tensor:
    """(batch, length) reference for the CTC head: right-padded, each row ending with `</s>`."""
    if ctc_target == "target":
        return sample["target"][:, ignore_prefix_size:]
    if sample.get("source_text") is None:
        raise ConfigError(
            "criterion.ctc_target=source: the batches carry no source transcript "
            "(source_text); preprocess with ctc_source=src_text"
        )
    return sample["source_text"]


def ctc_loss(
    log_probs: torch.Tensor,
    input_lengths: torch.Tensor,
    reference: torch.Tensor,
    padding_idx: int,
) -> CtcLoss:
    """CTC loss of log_probs (batch, frames, V) float32 against `reference` (batch, length)
    right-padded with padding_idx, each row ending with `</s>` (dropped here)."""
    target_lengths = reference.ne(padding_idx).sum(dim=1) - 1
    in_target = torch.arange(reference.size(1), device=reference.device) < target_lengths[:, None]
    repeats = ((reference[:, 1:] == reference[:, :-1]) & in_target[:, 1:]).sum(dim=1)
    feasible = target_lengths + repeats <= input_lengths
    per_utterance = F.ctc_loss(
        log_probs.transpose(0, 1),  # (frames, batch, V), as F.ctc_loss takes it
        reference,
        input_lengths,
        torch.where(feasible, target_lengths, 0),
        blank=CTC_BLANK,
        reduction="none",
        zero_infinity=False,
    )
    return CtcLoss(
        loss=(per_utterance * feasible).sum(),
        ntokens=(target_lengths * feasible).sum(),
        infeasible=(~feasible).sum(),
    )


def model_ctc_head(model: nn.Module) -> str:
    """The dictionary the model's CTC head predicts ("none" without one)."""
    if not capability(model, "supports_ctc"):
        return "none"
    return str(getattr(unwrap_model(model), "ctc_head", "target"))


def reduce_ctc_metrics(sums: dict[str, float], loss_key: str, ntokens_key: str) -> dict[str, float]:
    """Per-token CTC loss in bits, and the count of utterances left out."""
    ntokens = sums.get(ntokens_key, 0)
    return {
        loss_key: sums.get(loss_key, 0.0) / ntokens / math.log(2) if ntokens else 0.0,
        "ctc_infeasible": sums.get("ctc_infeasible", 0),
    }


@register_criterion("ctc", CtcConfig)
class Ctc(Criterion):
    """CTC loss summed in nats over the utterances that can be aligned; the gradient is
    normalised by their CTC target tokens (`sample_size`).

    The model runs once through forward(..., with_ctc=True) without prev_output_tokens, so a
    model with a decoder does not run it; train encoder-only models (decoder_layers=0) with
    this criterion, and models with a decoder with label_smoothed_cross_entropy_with_ctc.
    """

    cfg: CtcConfig

    def __init__(self, cfg: CtcConfig, padding_idx: int) -> None:
        super().__init__(cfg, padding_idx)
        self._model_checked = False

    def check_model(self, model: nn.Module) -> None:
        head = model_ctc_head(model)
        if head == "none":
            raise ConfigError(
                "criterion=ctc needs a model with a CTC head: set model.ctc_head="
                f"{self.cfg.ctc_target}"
            )
        if head != self.cfg.ctc_target:
            raise ConfigError(
                f"criterion.ctc_target={self.cfg.ctc_target} but model.ctc_head={head}: "
                "they must name the same dictionary"
            )

    def forward(
        self, model: nn.Module, sample: dict[str, Any]
    ) -> tuple[torch.Tensor, int, dict[str, Any]]:
        if not self._model_checked:
            self.check_model(model)
            self._model_checked = True
        net_input = {
            name: value
            for name, value in sample["net_input"].items()
            if name != "prev_output_tokens"
        }
        _, log_probs, lengths = model(**net_input, with_ctc=True)
        result = ctc_loss(
            log_probs, lengths, ctc_reference(sample, self.cfg.ctc_target), self.padding_idx
        )
        # The trainer divides gradients by a host number: one synchronisation per batch.
        sample_size = int(result.ntokens)
        logging_output: dict[str, Any] = {
            "loss": result.loss.detach(),
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
            "ctc_infeasible": result.infeasible,
        }
        return result.loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: list[dict[str, LoggingValue]]) -> dict[str, float]:
        """Loss in bits per CTC target token, counts, and `ctc_infeasible` utterances."""
        sums = sum_logging_outputs(logging_outputs)
        metrics = reduce_ctc_metrics(sums, "loss", "sample_size")
        metrics.update(
            ntokens=sums.get("ntokens", 0),
            nsentences=sums.get("nsentences", 0),
            sample_size=sums.get("sample_size", 0),
        )
        return metrics
