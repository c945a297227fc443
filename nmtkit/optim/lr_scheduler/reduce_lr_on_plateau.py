"""Shrink the learning rate when the validation loss stops improving."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from nmtkit.optim.base import LRScheduler, Optimizer, register_lr_scheduler
from nmtkit.registry import ComponentConfig

# The parts of torch's ReduceLROnPlateau that change while training; its settings come from
# the config, so a resumed run may change lr_shrink or lr_patience.
PLATEAU_STATE_KEYS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")


@dataclass(kw_only=True)
class ReduceLROnPlateauScheduleConfig(ComponentConfig):
    """Optional linear warmup, then lr *= lr_shrink after lr_patience validations without improvement."""

    lr_shrink: float = 0.1
    """Factor applied to the lr when the validation loss has not improved."""
    lr_patience: int = 0
    """Validations without improvement tolerated before shrinking."""
    lr_threshold: float = 1e-4
    """Relative improvement that counts: new < best * (1 - lr_threshold)."""
    warmup_updates: int = 0
    """Updates of linear warmup from warmup_init_lr to the optimizer's lr; no shrinking before it ends."""
    warmup_init_lr: float = -1.0
    """lr at the start of warmup (negative = 0)."""
    min_lr: float = 0.0
    """The lr is never shrunk below this."""

    def validate(self) -> list[str]:
        errors = []
        if not 0.0 < self.lr_shrink < 1.0:
            errors.append(f"lr_shrink={self.lr_shrink}: must be in (0, 1)")
        if self.lr_patience < 0:
            errors.append(f"lr_patience={self.lr_patience}: must be >= 0")
        if self.lr_threshold < 0:
            errors.append(f"lr_threshold={self.lr_threshold}: must be >= 0")
        if self.warmup_updates < 0:
            errors.append(f"warmup_updates={self.warmup_updates}: must be >= 0")
        if self.min_lr < 0:
            errors.append(f"min_lr={self.min_lr}: must be >= 0")
        return errors


@register_lr_scheduler("reduce_lr_on_plateau", ReduceLROnPlateauScheduleConfig)
class ReduceLROnPlateauSchedule(LRScheduler):
    """torch.optim.lr_scheduler.ReduceLROnPlateau (mode min) behind an optional linear warmup."""

    cfg: ReduceLROnPlateauScheduleConfig

    def __init__(
        self,
        cfg: ReduceLROnPlateauScheduleConfig,
        optimizer: Optimizer,
        base_lr: float,
        *,
        total_updates: Optional[int] = None,
    ) -> None:
        super().__init__(cfg, optimizer, base_lr)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer.optimizer,
            mode="min",
            factor=cfg.lr_shrink,
            patience=cfg.lr_patience,
            threshold=cfg.lr_threshold,
            min_lr=cfg.min_lr,
        )
        self.warmup_init_lr = max(cfg.warmup_init_lr, 0.0)
        self.warmup_done = cfg.warmup_updates == 0
        self.optimizer.set_lr(base_lr if self.warmup_done else self.warmup_init_lr)

    def step_update(self, num_updates: int) -> float:
        warmup = self.cfg.warmup_updates
        if not self.warmup_done:
            if num_updates < warmup:
                progress = num_updates / warmup
                self.optimizer.set_lr(
                    self.warmup_init_lr + progress * (self.base_lr - self.warmup_init_lr)
                )
            else:
                self.warmup_done = True
                self.optimizer.set_lr(self.base_lr)
        return self.optimizer.get_lr()

    def step(self, epoch: int, valid_loss: Optional[float] = None) -> float:
        if valid_loss is not None and self.warmup_done:
            self.plateau.step(valid_loss)
        return self.optimizer.get_lr()

    def state_dict(self) -> dict[str, Any]:
        state = {key: getattr(self.plateau, key) for key in PLATEAU_STATE_KEYS}
        state["warmup_done"] = self.warmup_done
        state["lr"] = self.optimizer.get_lr()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in PLATEAU_STATE_KEYS:
            setattr(self.plateau, key, state[key])
        self.warmup_done = state["warmup_done"]
        self.optimizer.set_lr(state["lr"])
