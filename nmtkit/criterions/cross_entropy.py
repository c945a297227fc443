"""Cross-entropy of the reference tokens, summed in nats, with padding positions ignored.

Also holds what the cross-entropy family shares: running the model to float32
log-probabilities, counting correct tokens and `reduce_metrics`, which turns summed nats into
per-token base-2 figures (fairseq's display convention).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from nmtkit.criterions.base import Criterion, register_criterion
from nmtkit.criterions.fused_loss import smoothed_nll_from_logits
from nmtkit.distributed import unwrap_model
from nmtkit.errors import ConfigError
from nmtkit.models.api import capability
from nmtkit.registry import ComponentConfig

LoggingValue = Union[int, float, torch.Tensor]


@dataclass(kw_only=True)
class CrossEntropyConfig(ComponentConfig):
    """Negative log-likelihood of the reference tokens."""

    report_accuracy: bool = False
    """Also log token accuracy (percent of non-padding positions where argmax == target)."""


def counted_positions(
    sample: dict[str, Any], padding_idx: int, ignore_prefix_size: int = 0
) -> torch.Tensor:
    """Flat indices into batch * tgt_len of the target positions that count in the loss.

    The non-padding positions come with the sample (the collater finds them on the CPU, which
    spares a GPU synchronisation) or are found here; the first `ignore_prefix_size` positions
    of every row are left out.
    """
    positions = sample.get("target_positions")
    if positions is None or ignore_prefix_size > 0:
        counted = sample["target"].ne(padding_idx)
        counted[:, :ignore_prefix_size] = False
        positions = counted.view(-1).nonzero().squeeze(1)
    return positions


def run_with_output_positions(
    model: nn.Module, sample: dict[str, Any], positions: torch.Tensor, **forward_kwargs: Any
) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor]]:
    """Runs model(**net_input, **forward_kwargs), asking for the logits of `positions` only
    when the model declares `supports_output_positions` (nmtkit.models.api).

    Returns the model's output and a function that turns its logits into those of
    `positions` (N, V): the identity when the model computed them alone, a selection from the
    full (batch, tgt_len, V) logits otherwise.
    """
    if capability(model, "supports_output_positions"):
        output = model(**sample["net_input"], output_positions=positions, **forward_kwargs)
        return output, lambda logits: logits

    def select(logits: torch.Tensor) -> torch.Tensor:
        return logits.reshape(-1, logits.size(-1)).index_select(0, positions)

    return model(**sample["net_input"], **forward_kwargs), select


def target_logits(
    model: nn.Module, sample: dict[str, Any], padding_idx: int, ignore_prefix_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the model and returns logits (N, V) and targets (N,) of the positions that count.

    Padding, and the first `ignore_prefix_size` target positions, are left out before the
    output projection when the model supports `output_positions` (nmtkit.models.api), so no
    projection, softmax or memory is spent on them; other models give full logits, selected
    afterwards.
    """
    positions = counted_positions(sample, padding_idx, ignore_prefix_size)
    logits, select = run_with_output_positions(model, sample, positions)
    return select(logits), sample["target"].reshape(-1).index_select(0, positions)


def check_decoder_model(model: nn.Module, criterion_name: str) -> None:
    """ConfigError unless the model has a decoder and no CTC head left untrained (an unused
    head would also stop DDP, which expects a gradient for every parameter)."""
    if capability(model, "is_encoder_only"):
        raise ConfigError(
            f"criterion={criterion_name} needs a decoder, but the model is encoder-only "
            "(model.decoder_layers=0): train it with criterion=ctc"
        )
    if capability(model, "supports_ctc"):
        raise ConfigError(
            f"criterion={criterion_name} does not train the model's CTC head "
            f"(model.ctc_head={getattr(unwrap_model(model), 'ctc_head', '?')}): use "
            "criterion=label_smoothed_cross_entropy_with_ctc or set model.ctc_head=none"
        )


def count_correct(
    logits: torch.Tensor, target: torch.Tensor, padding_idx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(number of non-padding positions whose argmax is the target, number of such positions)."""
    not_padding = target.ne(padding_idx)
    n_correct = (logits.detach().argmax(dim=-1).eq(target) & not_padding).sum()
    return n_correct.detach(), not_padding.sum()


def sum_logging_outputs(logging_outputs: Sequence[dict[str, LoggingValue]]) -> dict[str, float]:
    """Sums every key over batches.

    Tensor values stay on their device while being summed and come to the host in one copy,
    so reducing a whole log interval costs a single device synchronisation.
    """
    keys = list(dict.fromkeys(key for output in logging_outputs for key in output))
    totals: dict[str, float] = {}
    tensor_keys: list[str] = []
    tensor_sums: list[torch.Tensor] = []
    for key in keys:
        values = [output[key] for output in logging_outputs if key in output]
        tensors = [value for value in values if isinstance(value, torch.Tensor)]
        totals[key] = sum(value for value in values if not isinstance(value, torch.Tensor))
        if tensors:
            device = tensors[0].device
            # float64 so that thousands of batch sums add up exactly enough; MPS has no float64.
            dtype = torch.float32 if device.type == "mps" else torch.float64
            stacked = torch.stack([t.detach().reshape(()).to(device, dtype) for t in tensors])
            tensor_keys.append(key)
            tensor_sums.append(stacked.sum())
    if tensor_sums:
        device = tensor_sums[0].device
        host_values = torch.stack([value.to(device) for value in tensor_sums]).tolist()
        for key, value in zip(tensor_keys, host_values):
            totals[key] += value
    return totals


def base2_perplexity(nll_loss_base2: float) -> float:
    try:
        return 2.0**nll_loss_base2
    except OverflowError:
        return math.inf


def reduce_cross_entropy_metrics(
    logging_outputs: Sequence[dict[str, LoggingValue]],
) -> dict[str, float]:
    """Per-token loss and nll_loss in base 2, ppl = 2**nll_loss, accuracy in percent, counts."""
    sums = sum_logging_outputs(logging_outputs)
    sample_size = sums.get("sample_size", 0)
    ntokens = sums.get("ntokens", 0)
    loss = sums.get("loss", 0.0) / sample_size / math.log(2) if sample_size else 0.0
    nll_loss = sums.get("nll_loss", 0.0) / ntokens / math.log(2) if ntokens else 0.0
    metrics = {
        "loss": loss,
        "nll_loss": nll_loss,
        "ppl": base2_perplexity(nll_loss),
        "ntokens": ntokens,
        "nsentences": sums.get("nsentences", 0),
        "sample_size": sample_size,
    }
    if sums.get("total", 0) > 0:
        metrics["accuracy"] = 100.0 * sums["n_correct"] / sums["total"]
    return metrics


def cross_entropy_logging_output(
    loss: torch.Tensor,
    nll_loss: torch.Tensor,
    sample: dict[str, Any],
    logits: torch.Tensor,
    target: torch.Tensor,
    padding_idx: int,
    report_accuracy: bool,
) -> dict[str, Any]:
    """The sums both cross-entropy criterions log (tensors stay on the device)."""
    logging_output: dict[str, Any] = {
        "loss": loss.detach(),
        "nll_loss": nll_loss.detach(),
        "ntokens": sample["ntokens"],
        "nsentences": sample["nsentences"],
        "sample_size": sample["ntokens"],
    }
    if report_accuracy:
        logging_output["n_correct"], logging_output["total"] = count_correct(
            logits, target, padding_idx
        )
    return logging_output


@register_criterion("cross_entropy", CrossEntropyConfig)
class CrossEntropy(Criterion):
    """Summed negative log-likelihood of the non-padding target tokens, in nats.

    `logging_output` holds detached tensors (loss, nll_loss, n_correct, total) rather than
    Python floats: calling `.item()` per batch would stall the GPU every step, whereas
    `reduce_metrics` copies everything to the host once per log interval.
    """

    cfg: CrossEntropyConfig

    def check_model(self, model: nn.Module) -> None:
        check_decoder_model(model, "cross_entropy")

    def forward(
        self, model: nn.Module, sample: dict[str, Any]
    ) -> tuple[torch.Tensor, int, dict[str, Any]]:
        logits, target = target_logits(model, sample, self.padding_idx)
        loss, _ = smoothed_nll_from_logits(logits, target, 0.0, self.padding_idx)
        logging_output = cross_entropy_logging_output(
            loss, loss, sample, logits, target, self.padding_idx, self.cfg.report_accuracy
        )
        return loss, sample["ntokens"], logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: list[dict[str, Any]]) -> dict[str, float]:
        return reduce_cross_entropy_metrics(logging_outputs)
