"""Linear warmup, then one half-cosine from the optimizer's lr down to min_lr."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from nmtkit.errors import ConfigError
from nmtkit.optim.base import LRScheduler, Optimizer, register_lr_scheduler
from nmtkit.registry import ComponentConfig


@dataclass(kw_only=True)
class CosineScheduleConfig(ComponentConfig):
    """Warmup to the optimizer's lr, cosine decay to min_lr over period_updates, then min_lr."""

    warmup_updates: int = 0
    """Updates of linear warmup from warmup_init_lr to the optimizer's lr."""
    warmup_init_lr: float = -1.0
    """lr at the start of warmup (negative = min_lr)."""
    min_lr: float = 0.0
    """lr at the end of the decay, kept afterwards."""
    period_updates: int = -1
    """Length of the cosine decay in updates, after warmup (-1 = optimization.max_update - warmup_updates)."""

    def validate(self) -> list[str]:
        errors = []
        if self.warmup_updates < 0:
            errors.append(f"warmup_updates={self.warmup_updates}: must be >= 0")
        if self.min_lr < 0:
            errors.append(f"min_lr={self.min_lr}: must be >= 0")
        if self.period_updates != -1 and self.period_updates < 1:
            errors.append(
                f"period_updates={self.period_updates}: must be >= 1, or -1 for max_update"
            )
        return errors


@register_lr_scheduler("cosine", CosineScheduleConfig)
class CosineSchedule(LRScheduler):
    """lr(n) = min_lr + (lr - min_lr) * (1 + cos(pi * (n - warmup) / period)) / 2 after warmup.

    Unlike fairseq's cosine there are no warm restarts: after the period the lr stays at
    min_lr, which is what a run longer than its schedule expects.
    """

    cfg: CosineScheduleConfig

    def __init__(
        self,
        cfg: CosineScheduleConfig,
        optimizer: Optimizer,
        base_lr: float,
        *,
        total_updates: Optional[int] = None,
    ) -> None:
        super().__init__(cfg, optimizer, base_lr)
        if cfg.min_lr > base_lr:
            raise ConfigError(
                f"lr_scheduler.min_lr={cfg.min_lr}: must not exceed optimizer.lr={base_lr}"
            )
        if cfg.period_updates > 0:
            self.period = cfg.period_updates
        elif total_updates and total_updates > cfg.warmup_updates:
            self.period = total_updates - cfg.warmup_updates
        else:
            raise ConfigError(
                f"lr_scheduler.period_updates=-1 needs optimization.max_update > "
                f"warmup_updates={cfg.warmup_updates} (got {total_updates}); set one of them"
            )
        self.warmup_init_lr = cfg.warmup_init_lr if cfg.warmup_init_lr >= 0 else cfg.min_lr
        self.lr = self.warmup_init_lr if cfg.warmup_updates > 0 else base_lr
        self.optimizer.set_lr(self.lr)

    def step_update(self, num_updates: int) -> float:
        warmup = self.cfg.warmup_updates
        if num_updates < warmup:
            self.lr = (
                self.warmup_init_lr + num_updates * (self.base_lr - self.warmup_init_lr) / warmup
            )
        else:
            progress = min((num_updates - warmup) / self.period, 1.0)
            amplitude = self.base_lr - self.cfg.min_lr
            self.lr = self.cfg.min_lr + 0.5 * amplitude * (1.0 + math.cos(math.pi * progress))
        self.optimizer.set_lr(self.lr)
        return self.lr
