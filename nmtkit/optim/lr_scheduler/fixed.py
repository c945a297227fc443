"""Constant learning rate after an optional linear warmup, optionally annealed per epoch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from nmtkit.optim.base import LRScheduler, Optimizer, register_lr_scheduler
from nmtkit.registry import ComponentConfig


@dataclass(kw_only=True)
class FixedScheduleConfig(ComponentConfig):
    """The optimizer's lr, reached by linear warmup and shrunk per epoch from force_anneal on."""

    warmup_updates: int = 0
    """Update k (1-based) of the first warmup_updates runs at lr * k / warmup_updates."""
    force_anneal: Optional[int] = None
    """From this epoch on, multiply the lr by lr_shrink every epoch (null = never)."""
    lr_shrink: float = 0.1
    """Factor applied per epoch once force_anneal is reached."""

    def validate(self) -> list[str]:
        errors = []
        if self.warmup_updates < 0:
            errors.append(f"warmup_updates={self.warmup_updates}: must be >= 0")
        if self.force_anneal is not None and self.force_anneal < 1:
            errors.append(f"force_anneal={self.force_anneal}: must be an epoch >= 1 or null")
        if not 0.0 < self.lr_shrink <= 1.0:
            errors.append(f"lr_shrink={self.lr_shrink}: must be in (0, 1]")
        return errors


@register_lr_scheduler("fixed", FixedScheduleConfig)
class FixedSchedule(LRScheduler):
    """fairseq's `fixed` schedule with a single lr."""

    cfg: FixedScheduleConfig

    def __init__(
        self,
        cfg: FixedScheduleConfig,
        optimizer: Optimizer,
        base_lr: float,
        *,
        total_updates: Optional[int] = None,
    ) -> None:
        super().__init__(cfg, optimizer, base_lr)
        self.epoch_lr = base_lr
        self.warmup_factor = 1.0 / cfg.warmup_updates if cfg.warmup_updates > 0 else 1.0
        self.optimizer.set_lr(self.warmup_factor * self.epoch_lr)

    def epoch_lr_for(self, epoch: int) -> float:
        if self.cfg.force_anneal is None or epoch < self.cfg.force_anneal:
            return self.base_lr
        return self.base_lr * self.cfg.lr_shrink ** (epoch + 1 - self.cfg.force_anneal)

    def step_begin_epoch(self, epoch: int) -> float:
        self.epoch_lr = self.epoch_lr_for(epoch)
        self.optimizer.set_lr(self.warmup_factor * self.epoch_lr)
        return self.optimizer.get_lr()

    def step_update(self, num_updates: int) -> float:
        if num_updates < self.cfg.warmup_updates:
            # Set after `num_updates` updates, so this is the lr of update num_updates + 1.
            self.warmup_factor = (num_updates + 1) / self.cfg.warmup_updates
        else:
            self.warmup_factor = 1.0
        self.optimizer.set_lr(self.warmup_factor * self.epoch_lr)
        return self.optimizer.get_lr()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_lr": self.epoch_lr, "warmup_factor": self.warmup_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_lr = state["epoch_lr"]
        self.warmup_factor = state["warmup_factor"]
        self.optimizer.set_lr(self.warmup_factor * self.epoch_lr)
