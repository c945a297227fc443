"""Batching options (the `dataset` config group) and length-bucketed batch construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(kw_only=True)
class DatasetConfig:
    """How training and validation data are read and batched."""

    max_tokens: Optional[int] = None
    """Largest padded batch: batch size x longest item (source or target) <= max_tokens."""
    batch_size: Optional[int] = None
    """Largest number of sentences per batch (combine with max_tokens or use alone)."""
    required_batch_size_multiple: int = 1
    """Batch sizes are rounded down to a multiple of this (8 suits tensor cores)."""
    max_tokens_valid: Optional[int] = None
    """max_tokens for validation batches (defaults to max_tokens)."""
    batch_size_valid: Optional[int] = None
    """batch_size for validation batches (defaults to batch_size)."""
    num_workers: int = 0
    """DataLoader worker processes that collate batches (0 = in the main process)."""
    skip_invalid_size_inputs: bool = False
    """Drop (and count) pairs longer than the model's max positions instead of failing."""
    train_subset: str = "train"
    """Split used for training."""
    valid_subset: str = "valid"
    """Split used for validation (comma-separated for several)."""
    validate_interval: int = 1
    """Validate every N epochs (0 = never at epoch ends)."""
    validate_interval_updates: int = 0
    """Also validate every N updates (0 = only at epoch ends)."""
    disable_validation: bool = False
    """Skip validation entirely."""

    def validate(self) -> list[str]:
        errors = []
        if self.max_tokens is None and self.batch_size is None:
            errors.append("max_tokens/batch_size: set at least one (e.g. dataset.max_tokens=4096)")
        for name in ("max_tokens", "batch_size", "max_tokens_valid", "batch_size_valid"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                errors.append(f"{name}={value}: must be positive")
        if self.required_batch_size_multiple < 1:
            errors.append("required_batch_size_multiple: must be >= 1")
        if self.num_workers < 0:
            errors.append("num_workers: must be >= 0")
        return errors
