"""The one place that talks to torch.distributed: device choice, process group, DDP helpers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nmtkit.errors import ConfigError


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


@dataclass
class DistributedContext:
    """Where this process runs and which part of the world it is."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def choose_device(device: str) -> torch.device:
    """`auto` picks CUDA when available and falls back to CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"common.device={device}: CUDA is not available on this machine")
    return torch.device(device)


def setup(cfg: DistributedConfig, device: str) -> DistributedContext:
    """Joins the process group when launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK set)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=choose_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = choose_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    backend = (
        cfg.backend if cfg.backend != "auto" else ("nccl" if chosen.type == "cuda" else "gloo")
    )
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return DistributedContext(chosen, rank, world_size, local_rank)


def cleanup() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every rank reaches the end before any tears its process group down: a rank that
        # destroys gloo's connections while another still uses them (rank 0 writing the
        # last checkpoint) could abort at exit ("terminate called without an active
        # exception", seen about once in six 2-process CPU runs).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def wrap_model(model: nn.Module, context: DistributedContext, cfg: DistributedConfig) -> nn.Module:
    if not context.is_distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=cfg.find_unused_parameters
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skips DDP's gradient all-reduce on the batches accumulated before the last one."""
    if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed-precision context for `precision` (fp32: a disabled autocast)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def move_to_device(sample: Any, device: torch.device) -> Any:
    """Moves the tensors of a (nested) sample dict to `device`."""
    if isinstance(sample, torch.Tensor):
        return sample.to(device, non_blocking=True)
    if isinstance(sample, dict):
        return {key: move_to_device(value, device) for key, value in sample.items()}
    return sample


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sums a tensor of statistics over all ranks (one collective for many numbers)."""
    if context.is_distributed:
        torch.distributed.all_reduce(values)
    return values


def all_gather_objects(value: object, context: DistributedContext) -> list[object]:
    if not context.is_distributed:
        return [value]
    gathered: list[object] = [None] * context.world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered
