"""What every criterion provides to the task and the trainer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nmtkit.registry import ComponentConfig, Registry


class Criterion(nn.Module):
    """Computes a summed loss over a batch, its normaliser and statistics to log.

    `forward(model, sample)` returns `(loss, sample_size, logging_output)`: `loss` is summed
    over the batch in nats, `sample_size` is what the trainer divides gradients by (the number
    of target tokens), and `logging_output` holds plain-number sums that `reduce_metrics`
    turns into per-token figures after summing over batches and ranks.
    """

    def __init__(self, cfg: ComponentConfig, padding_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.padding_idx = padding_idx

    def check_model(self, model: nn.Module) -> None:
        """Raises ConfigError when `model` lacks what this criterion needs (e.g. a CTC head).

        Tasks call it once after building model and criterion, so that a mismatch fails
        before any data is read; criterions that need something also check on first use.
        """

    def forward(
        self, model: nn.Module, sample: dict[str, Any]
    ) -> tuple[torch.Tensor, int, dict[str, float]]:
        raise NotImplementedError

    @staticmethod
    def reduce_metrics(logging_outputs: list[dict[str, float]]) -> dict[str, float]:
        raise NotImplementedError


CRITERIONS: Registry[Criterion] = Registry("criterion", Criterion)
register_criterion = CRITERIONS.register
