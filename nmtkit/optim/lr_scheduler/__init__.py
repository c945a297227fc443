"""Built-in learning-rate schedules; each module registers one in LR_SCHEDULERS.

Every schedule is built as `cls(cfg, optimizer, base_lr, total_updates=None)`: `base_lr` is
the optimizer's configured (peak) lr and `total_updates` is optimization.max_update (None or
0 when training is not limited by updates). The constructor sets the lr of the first update.
"""

from __future__ import annotations

from nmtkit.optim.lr_scheduler.cosine import CosineSchedule, CosineScheduleConfig
from nmtkit.optim.lr_scheduler.fixed import FixedSchedule, FixedScheduleConfig
from nmtkit.optim.lr_scheduler.inverse_sqrt import InverseSqrtSchedule, InverseSqrtScheduleConfig
from nmtkit.optim.lr_scheduler.polynomial_decay import (
    PolynomialDecaySchedule,
    PolynomialDecayScheduleConfig,
)
from nmtkit.optim.lr_scheduler.reduce_lr_on_plateau import (
    ReduceLROnPlateauSchedule,
    ReduceLROnPlateauScheduleConfig,
)

__all__ = [
    "CosineSchedule",
    "CosineScheduleConfig",
    "FixedSchedule",
    "FixedScheduleConfig",
    "InverseSqrtSchedule",
    "InverseSqrtScheduleConfig",
    "PolynomialDecaySchedule",
    "PolynomialDecayScheduleConfig",
    "ReduceLROnPlateauSchedule",
    "ReduceLROnPlateauScheduleConfig",
]
