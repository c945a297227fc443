"""What every task provides: data, model and criterion building, and the train/valid steps.

The trainer knows nothing about text or audio: it asks the task for batches and calls
`train_step`/`valid_step`, which return `(loss, sample_size, logging_output)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nmtkit.criterions import CRITERIONS, Criterion
from nmtkit.registry import ComponentConfig, Registry


class Task:
    """Base class; see nmtkit/tasks/translation.py for the reference implementation."""

    def __init__(self, cfg: ComponentConfig, state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg

    # --- building -------------------------------------------------------------------------
    def build_model(self, model_cfg: ComponentConfig) -> nn.Module:
        raise NotImplementedError

    def build_criterion(self, criterion_cfg: ComponentConfig) -> Criterion:
        return CRITERIONS.build(criterion_cfg, padding_idx=self.padding_idx)

    @property
    def padding_idx(self) -> int:
        raise NotImplementedError

    # --- the two steps the trainer calls ----------------------------------------------------
    def train_step(
        self, model: nn.Module, criterion: Criterion, sample: dict[str, Any]
    ) -> tuple[torch.Tensor, int, dict[str, Any]]:
        model.train()
        criterion.train()
        return criterion(model, sample)

    @torch.no_grad()
    def valid_step(
        self, model: nn.Module, criterion: Criterion, sample: dict[str, Any]
    ) -> tuple[torch.Tensor, int, dict[str, Any]]:
        model.eval()
        criterion.eval()
        return criterion(model, sample)

    # --- what a checkpoint needs to rebuild this task without the data directory --------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def data_fingerprint(self) -> dict[str, Any]:
        return {}


TASKS: Registry[Task] = Registry("task", Task)
register_task = TASKS.register
