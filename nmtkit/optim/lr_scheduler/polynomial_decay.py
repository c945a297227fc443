"""Linear warmup, then polynomial decay from the optimizer's lr to end_learning_rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nmtkit.errors import ConfigError
from nmtkit.optim.base import LRScheduler, Optimizer, register_lr_scheduler
from nmtkit.registry import ComponentConfig


@dataclass(kw_only=True)
class PolynomialDecayScheduleConfig(ComponentConfig):
    """fairseq's polynomial_decay: warmup, then (lr - end) * remaining**power + end."""

    warmup_updates: int = 0
    """Updates of linear warmup from 0 to the optimizer's lr."""
    end_learning_rate: float = 0.0
    """lr reached at total_num_update and kept afterwards."""
    power: float = 1.0
    """Exponent of the decay (1 = linear)."""
    total_num_update: int = -1
    """Update at which the decay ends (-1 = optimization.max_update)."""

    def validate(self) -> list[str]:
        errors = []
        if self.warmup_updates < 0:
            errors.append(f"warmup_updates={self.warmup_updates}: must be >= 0")
        if self.end_learning_rate < 0:
            errors.append(f"end_learning_rate={self.end_learning_rate}: must be >= 0")
        if not self.power > 0:
            errors.append(f"power={self.power}: must be > 0")
        if self.total_num_update != -1 and self.total_num_update <= self.warmup_updates:
            errors.append(
                f"total_num_update={self.total_num_update}: must exceed "
                f"warmup_updates={self.warmup_updates}, or be -1 for max_update"
            )
        return errors


@register_lr_scheduler("polynomial_decay", PolynomialDecayScheduleConfig)
class PolynomialDecaySchedule(LRScheduler):
    """lr(n) = lr * n / warmup for n <= warmup, then
    (lr - end) * (1 - (n - warmup) / (total - warmup))**power + end, and end from total on.
    """

    cfg: PolynomialDecayScheduleConfig

    def __init__(
        self,
        cfg: PolynomialDecayScheduleConfig,
        optimizer: Optimizer,
        base_lr: float,
        *,
        total_updates: Optional[int] = None,
    ) -> None:
        super().__init__(cfg, optimizer, base_lr)
        if cfg.end_learning_rate > base_lr:
            raise ConfigError(
                f"lr_scheduler.end_learning_rate={cfg.end_learning_rate}: must not exceed "
                f"optimizer.lr={base_lr}"
            )
        self.total_num_update = cfg.total_num_update
        if self.total_num_update == -1:
            if not total_updates or total_updates <= cfg.warmup_updates:
                raise ConfigError(
                    f"lr_scheduler.total_num_update=-1 needs optimization.max_update > "
                    f"warmup_updates={cfg.warmup_updates} (got {total_updates}); set one of them"
                )
            self.total_num_update = total_updates
        # fairseq starts warmup at lr / warmup_updates, so the first update is not wasted.
        warmup_factor = 1.0 / cfg.warmup_updates if cfg.warmup_updates > 0 else 1.0
        self.lr = warmup_factor * base_lr
        self.optimizer.set_lr(self.lr)

    def step_update(self, num_updates: int) -> float:
        warmup = self.cfg.warmup_updates
        end_lr = self.cfg.end_learning_rate
        if warmup > 0 and num_updates <= warmup:
            self.lr = self.base_lr * num_updates / warmup
        elif num_updates >= self.total_num_update:
            self.lr = end_lr
        else:
            remaining = 1.0 - (num_updates - warmup) / (self.total_num_update - warmup)
            self.lr = (self.base_lr - end_lr) * remaining**self.cfg.power + end_lr
        self.optimizer.set_lr(self.lr)
        return self.lr
