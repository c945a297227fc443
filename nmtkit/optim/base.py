"""Base classes of optimizers and learning-rate schedulers, and their registries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import torch

from nmtkit.registry import ComponentConfig, Registry


class Optimizer:
    """Wraps a torch optimizer built from a config; the trainer sets the lr through `set_lr`."""

    def __init__(self, cfg: ComponentConfig, params: Iterable[torch.nn.Parameter]) -> None:
        self.cfg = cfg
        self.optimizer: torch.optim.Optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def get_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


class LRScheduler:
    """Sets the optimizer's learning rate per update and/or per epoch.

    The trainer calls `step_update(num_updates)` after every update, `step_begin_epoch(epoch)`
    at the start of each epoch and `step(epoch, valid_loss)` after each validation.
    """

    def __init__(self, cfg: ComponentConfig, optimizer: Optimizer, base_lr: float) -> None:
        self.cfg = cfg
        self.optimizer = optimizer
        self.base_lr = base_lr

    def step_begin_epoch(self, epoch: int) -> float:
        return self.optimizer.get_lr()

    def step_update(self, num_updates: int) -> float:
        return self.optimizer.get_lr()

    def step(self, epoch: int, valid_loss: Optional[float] = None) -> float:
        return self.optimizer.get_lr()

    def state_dict(self) -> dict[str, Any]:
        """For schedules that are a function of the update count, the current lr is all
        there is to save; schedules with more state override both methods."""
        return {"lr": self.optimizer.get_lr()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = state["lr"]
        self.optimizer.set_lr(self.lr)


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer", Optimizer)
LR_SCHEDULERS: Registry[LRScheduler] = Registry("lr_scheduler", LRScheduler)
register_optimizer = OPTIMIZERS.register
register_lr_scheduler = LR_SCHEDULERS.register
