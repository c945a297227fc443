"""Optimizer and learning-rate scheduler registries; built-ins register through the imports below."""

from __future__ import annotations

from nmtkit.optim.base import (
    LR_SCHEDULERS,
    OPTIMIZERS,
    LRScheduler,
    Optimizer,
    register_lr_scheduler,
    register_optimizer,
)

__all__ = [
    "LR_SCHEDULERS",
    "OPTIMIZERS",
    "LRScheduler",
    "Optimizer",
    "register_lr_scheduler",
    "register_optimizer",
]
