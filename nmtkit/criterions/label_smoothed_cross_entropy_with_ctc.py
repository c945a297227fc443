"""Label-smoothed cross-entropy of the decoder interpolated with the CTC loss of the encoder's
CTC head (joint CTC-attention training, Kim et al., 2017):

    loss = (1 - ctc_weight) * attention_loss + ctc_weight * ctc_loss

both summed in nats over the batch, as ESPnet interpolates them. fairseq's criterion of the
same name instead adds `ctc_weight * ctc_loss` to the whole attention loss (its default weight
is 1.0), so its ctc_weight=w equals ours at w / (1 + w) with the loss scaled by 1 + w (fairseq
0.3 ~ ours 0.23, fairseq 1.0 = ours 0.5); it also zeroes unalignable utterances silently
(zero_infinity). The CTC part follows nmtkit.criterions.ctc: no `</s>` in its targets,
utterances that cannot be aligned left out and counted in `ctc_infeasible`. Gradients are normalised by the number of
target tokens, as for the attention loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nmtkit.criterions.base import Criterion, register_criterion
from nmtkit.criterions.cross_entropy import (
    LoggingValue,
    count_correct,
    counted_positions,
    reduce_cross_entropy_metrics,
    run_with_output_positions,
    sum_logging_outputs,
)
from nmtkit.criterions.ctc import (
    CTC_TARGETS,
    ctc_loss,
    ctc_reference,
    model_ctc_head,
    reduce_ctc_metrics,
)
from nmtkit.criterions.fused_loss import smoothed_nll_from_logits
from nmtkit.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyConfig
from nmtkit.errors import ConfigError
from nmtkit.models.api import capability


@dataclass(kw_only=True)
class LabelSmoothedCrossEntropyWithCtcConfig(LabelSmoothedCrossEntropyConfig):
    """Label-smoothed cross-entropy interpolated with a CTC loss on the encoder output."""

    ctc_weight: float = 0.3
    """Weight of the CTC loss: (1 - w) * attention + w * CTC (ESPnet's interpolation)."""
    ctc_target: str = "target"
    """Sequence the CTC head predicts: target, or source (the transcript, `source_text`, for
    speech translation); must equal model.ctc_head."""

    def validate(self) -> list[str]:
        errors = super().validate()
        if not 0.0 <= self.ctc_weight <= 1.0:
            errors.append(f"ctc_weight={self.ctc_weight}: must be in [0, 1]")
        if self.ctc_target not in CTC_TARGETS:
            errors.append(f"ctc_target={self.ctc_target}: choose one of {', '.join(CTC_TARGETS)}")
        return errors


@register_criterion("label_smoothed_cross_entropy_with_ctc", LabelSmoothedCrossEntropyWithCtcConfig)
class LabelSmoothedCrossEntropyWithCtc(Criterion):
    """Joint attention/CTC loss from one forward pass (DDP sees every parameter used).

    A model with a CTC head always runs it, even at ctc_weight=0 (its loss is then logged
    only). Logs loss, nll_loss, ctc_loss (bits per CTC token) and ctc_infeasible.
    """

    cfg: LabelSmoothedCrossEntropyWithCtcConfig

    def __init__(self, cfg: LabelSmoothedCrossEntropyWithCtcConfig, padding_idx: int) -> None:
        super().__init__(cfg, padding_idx)
        self._model_checked = False

    def check_model(self, model: nn.Module) -> None:
        if capability(model, "is_encoder_only"):
            raise ConfigError(
                "criterion=label_smoothed_cross_entropy_with_ctc needs a decoder, but the model "
                "is encoder-only (model.decoder_layers=0): train it with criterion=ctc"
            )
        head = model_ctc_head(model)
        if head == "none":
            if self.cfg.ctc_weight > 0:
                raise ConfigError(
                    f"criterion.ctc_weight={self.cfg.ctc_weight} needs a model with a CTC head: "
                    f"set model.ctc_head={self.cfg.ctc_target}, or criterion.ctc_weight=0"
                )
        elif head != self.cfg.ctc_target:
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
        cfg = self.cfg
        with_ctc = model_ctc_head(model) != "none"
        positions = counted_positions(sample, self.padding_idx, cfg.ignore_prefix_size)
        if with_ctc:
            (logits, log_probs, lengths), select = run_with_output_positions(
                model, sample, positions, with_ctc=True
            )
        else:
            logits, select = run_with_output_positions(model, sample, positions)
        logits = select(logits)
        target = sample["target"].reshape(-1).index_select(0, positions)
        loss, nll_loss = smoothed_nll_from_logits(
            logits, target, cfg.label_smoothing, self.padding_idx
        )
        logging_output: dict[str, Any] = {
            "nll_loss": nll_loss.detach(),
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample["ntokens"],
        }
        if with_ctc:
            reference = ctc_reference(sample, cfg.ctc_target, cfg.ignore_prefix_size)
            ctc = ctc_loss(log_probs, lengths, reference, self.padding_idx)
            loss = (1.0 - cfg.ctc_weight) * loss + cfg.ctc_weight * ctc.loss
            logging_output.update(
                ctc_loss=ctc.loss.detach(), ctc_ntokens=ctc.ntokens, ctc_infeasible=ctc.infeasible
            )
        logging_output["loss"] = loss.detach()
        if cfg.report_accuracy:
            logging_output["n_correct"], logging_output["total"] = count_correct(
                logits, target, self.padding_idx
            )
        return loss, sample["ntokens"], logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: list[dict[str, LoggingValue]]) -> dict[str, float]:
        metrics = reduce_cross_entropy_metrics(logging_outputs)
        sums = sum_logging_outputs(logging_outputs)
        if "ctc_ntokens" in sums:
            metrics.update(reduce_ctc_metrics(sums, "ctc_loss", "ctc_ntokens"))
        return metrics
