"""Configs of the training loop (`common`, `optimization` groups), kept apart from trainer.py
so the loop file stays about the loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(kw_only=True)
class CommonConfig:
    """Run-wide settings."""

    seed: int = 1
    """Seed for python, numpy and torch (data order, dropout, initialisation)."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    precision: str = "fp32"
    """fp32, bf16 (autocast) or fp16 (autocast + dynamic loss scaling)."""
    log_interval: int = 100
    """Log training statistics every N updates."""
    log_format: str = "auto"
    """auto (progress bar on a terminal, plain lines otherwise), tqdm, simple or none."""
    tensorboard_logdir: Optional[str] = None
    """Write TensorBoard events here."""
    user_dir: Optional[str] = None
    """Folder or .py file with custom components to import before the config is composed."""
    on_nonfinite_loss: str = "halt"
    """What to do when the loss or gradient norm is NaN/inf (fp32/bf16): halt or skip the update."""
    fp16_init_scale: float = 128.0
    """Initial loss scale for fp16."""
    fp16_scale_window: int = 2000
    """Updates without overflow before the loss scale grows."""
    plot: bool = False
    """At the end of training draw training.png in save_dir (loss, learning rate, BLEU/WER
    against updates); needs matplotlib (pip install nmtkit[plot])."""
    min_loss_scale: float = 1e-4
    """Stop with an explanation when the fp16 loss scale falls below this."""

    def validate(self) -> list[str]:
        errors = []
        if self.precision not in ("fp32", "bf16", "fp16"):
            errors.append(f"precision={self.precision}: choose fp32, bf16 or fp16")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            errors.append(f"device={self.device}: choose auto, cpu, cuda or cuda:N")
        if self.log_format not in ("auto", "tqdm", "simple", "none"):
            errors.append(f"log_format={self.log_format}: choose auto, tqdm, simple or none")
        if self.on_nonfinite_loss not in ("halt", "skip"):
            errors.append(f"on_nonfinite_loss={self.on_nonfinite_loss}: choose halt or skip")
        if self.log_interval < 1:
            errors.append(f"log_interval={self.log_interval}: must be >= 1")
        return errors


@dataclass(kw_only=True)
class OptimizationConfig:
    """When to stop and how each update is made."""

    max_update: int = 0
    """Stop after this many updates (0 = no limit)."""
    max_epoch: int = 0
    """Stop after this many epochs (0 = no limit)."""
    stop_time_hours: float = 0.0
    """Stop (with a checkpoint) after this much wall-clock time (0 = no limit)."""
    update_freq: int = 1
    """Accumulate gradients over N batches per update (simulates N x the batch size)."""
    clip_norm: float = 0.0
    """Clip the gradient norm to this value (0 = no clipping; the norm is still logged)."""
    stop_min_lr: float = -1.0
    """Stop when the learning rate falls to or below this (-1 = never)."""
    skip_oom_batches: bool = False
    """Skip an update whose batch runs out of GPU memory (with a warning and a count) instead
    of stopping; with several ranks all of them skip it (gradients then sync after backward)."""

    def validate(self) -> list[str]:
        errors = []
        if self.update_freq < 1:
            errors.append(f"update_freq={self.update_freq}: must be >= 1")
        if self.clip_norm < 0:
            errors.append(f"clip_norm={self.clip_norm}: must be >= 0")
        if self.max_update < 0 or self.max_epoch < 0 or self.stop_time_hours < 0:
            errors.append("max_update/max_epoch/stop_time_hours: must be >= 0")
        if self.max_update == 0 and self.max_epoch == 0 and self.stop_time_hours == 0:
            errors.append(
                "max_update/max_epoch/stop_time_hours: set at least one stopping criterion "
                "(e.g. optimization.max_update=10000)"
            )
        return errors
