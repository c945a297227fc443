"""Linear warmup, then decay proportional to the inverse square root of the update number."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from nmtkit.optim.base import LRScheduler, Optimizer, register_lr_scheduler
from nmtkit.registry import ComponentConfig


@dataclass(kw_only=True)
class InverseSqrtScheduleConfig(ComponentConfig):
    """fairseq's inverse_sqrt: warmup to the optimizer's lr, then lr * sqrt(warmup / update)."""

    warmup_updates: int = 4000
    """Updates of linear warmup from warmup_init_lr to the optimizer's lr."""
    warmup_init_lr: float = -1.0
    """lr at the start of warmup (negative = 0)."""

    def validate(self) -> list[str]:
        if self.warmup_updates < 1:
            return [
                f"warmup_updates={self.warmup_updates}: inverse_sqrt needs >= 1 (the decay is "
                "lr * sqrt(warmup_updates / update)); use lr_scheduler=fixed for a constant lr"
            ]
        return []


@register_lr_scheduler("inverse_sqrt", InverseSqrtScheduleConfig)
class InverseSqrtSchedule(LRScheduler):
    """lr(n) = init + n * (lr - init) / warmup for n < warmup, else lr * sqrt(warmup / n).

    n is the number of updates done; the lr set after n updates is used by update n + 1, so
    the first update runs at warmup_init_lr, exactly as in fairseq.
    """

    cfg: InverseSqrtScheduleConfig

    def __init__(
        self,
        cfg: InverseSqrtScheduleConfig,
        optimizer: Optimizer,
        base_lr: float,
        *,
        total_updates: Optional[int] = None,
    ) -> None:
        super().__init__(cfg, optimizer, base_lr)
        self.warmup_init_lr = max(cfg.warmup_init_lr, 0.0)
        self.lr_step = (base_lr - self.warmup_init_lr) / cfg.warmup_updates
        self.decay_factor = base_lr * math.sqrt(cfg.warmup_updates)
        self.lr = self.warmup_init_lr
        self.optimizer.set_lr(self.lr)

    def step_update(self, num_updates: int) -> float:
        if num_updates < self.cfg.warmup_updates:
            self.lr = self.warmup_init_lr + num_updates * self.lr_step
        else:
            self.lr = self.decay_factor / math.sqrt(num_updates)
        self.optimizer.set_lr(self.lr)
        return self.lr
