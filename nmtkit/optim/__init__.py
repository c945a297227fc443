"""Optimizer and learning-rate scheduler registries; built-ins register through the imports below."""

from __future__ import annotations

from nmtkit.optim import lr_scheduler  # registers the built-in schedules
from nmtkit.optim.adam import AdamConfig, AdamOptimizer
from nmtkit.optim.base import (
    LR_SCHEDULERS,
    OPTIMIZERS,
    LRScheduler,
    Optimizer,
    register_lr_scheduler,
    register_optimizer,
)
from nmtkit.optim.sgd import SgdConfig, SgdOptimizer

__all__ = [
    "LR_SCHEDULERS",
    "OPTIMIZERS",
    "AdamConfig",
    "AdamOptimizer",
    "LRScheduler",
    "Optimizer",
    "SgdConfig",
    "SgdOptimizer",
    "lr_scheduler",
    "register_lr_scheduler",
    "register_optimizer",
]
