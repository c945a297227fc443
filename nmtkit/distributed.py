"""The one place that talks to torch.distributed: device choice, process group, DDP helpers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class DistributedConfig:
    """Multi-GPU / multi-node settings; under torchrun these are read from the environment."""

    backend: str = "auto"
    """Process group backend: auto (nccl on CUDA, gloo on CPU), nccl or gloo."""
    find_unused_parameters: bool = False
    """Passed to DistributedDataParallel; needed only for models with unused branches."""

    def validate(self) -> list[str]:
        if self.backend not in ("auto", "nccl", "gloo"):
            return [f"backend={self.backend}: choose auto, nccl or gloo"]
        return []
