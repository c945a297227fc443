"""Stochastic gradient descent with optional (Nesterov) momentum (torch.optim.SGD)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from nmtkit.optim.base import Optimizer, register_optimizer
from nmtkit.registry import ComponentConfig


@dataclass(kw_only=True)
class SgdConfig(ComponentConfig):
    """Plain SGD with optional momentum."""

    lr: float = 0.1
    """Peak learning rate; the lr_scheduler moves the actual rate relative to it."""
    momentum: float = 0.0
    """Momentum factor (0 = none)."""
    weight_decay: float = 0.0
    """L2 penalty added to the gradient (coupled, as torch.optim.SGD does)."""
    nesterov: bool = False
    """Use Nesterov momentum (needs momentum > 0)."""

    def validate(self) -> list[str]:
        errors = []
        if not self.lr > 0:
            errors.append(f"lr={self.lr}: must be > 0")
        if not 0.0 <= self.momentum < 1.0:
            errors.append(f"momentum={self.momentum}: must be in [0, 1)")
        if self.weight_decay < 0:
            errors.append(f"weight_decay={self.weight_decay}: must be >= 0")
        if self.nesterov and self.momentum == 0.0:
            errors.append("nesterov=true: needs momentum > 0 (e.g. optimizer.momentum=0.9)")
        return errors


@register_optimizer("sgd", SgdConfig)
class SgdOptimizer(Optimizer):
    """torch.optim.SGD built from an SgdConfig."""

    cfg: SgdConfig

    def __init__(self, cfg: SgdConfig, params: Iterable[torch.nn.Parameter]) -> None:
        super().__init__(cfg, params)
        self.optimizer = torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
