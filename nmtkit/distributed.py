"""The one place that talks to torch.distributed: device choice, process group, and the two
ways of spreading a model over ranks (DDP replicas, FSDP shards) behind one small interface:
wrap the model, switch gradient sync, gather and load full state dicts."""

from __future__ import annotations

import contextlib
import datetime
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

    strategy: str = "ddp"
    """ddp (a full replica per rank) or fsdp (parameters, gradients and optimizer state sharded
    over ranks with PyTorch's fully_shard, for models whose Adam state does not fit one GPU)."""
    backend: str = "auto"
    """Process group backend: auto (nccl on CUDA, gloo on CPU), nccl or gloo."""
    find_unused_parameters: bool = False
    """Passed to DistributedDataParallel; needed only for models with unused branches."""
    timeout_minutes: float = 30.0
    """A collective that waits longer than this (a rank died or hangs) fails every rank with an
    error instead of waiting forever; keep it above the time of the slowest checkpoint write."""

    def validate(self) -> list[str]:
        errors = []
        if self.strategy not in ("ddp", "fsdp"):
            errors.append(f"strategy={self.strategy}: choose ddp or fsdp")
        if self.backend not in ("auto", "nccl", "gloo"):
            errors.append(f"backend={self.backend}: choose auto, nccl or gloo")
        if self.timeout_minutes <= 0:
            errors.append(f"timeout_minutes={self.timeout_minutes}: must be > 0")
        return errors


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
        # NCCL only honours the timeout with async error handling (on by default since torch
        # 2.2; set here so an older environment variable cannot turn it off).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.distributed.init_process_group(
            backend=backend, timeout=datetime.timedelta(minutes=cfg.timeout_minutes)
        )
    return DistributedContext(chosen, rank, world_size, local_rank)


def cleanup() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every rank reaches the end before any tears its process group down: a rank that
        # destroys gloo's connections while another still uses them (rank 0 writing the
        # last checkpoint) could abort at exit ("terminate called without an active
        # exception", seen about once in six 2-process CPU runs).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def wrap_model(
    model: nn.Module, context: DistributedContext, cfg: DistributedConfig, precision: str
) -> nn.Module:
    """The module the training forward runs on. DDP wraps `model`; FSDP shards it in place
    (each layer of every nn.ModuleList, then the rest), so the optimizer must be built after."""
    if not context.is_distributed:
        return model
    if cfg.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # bf16 weights for compute, fp32 for the gradient reduction and the master copy.
        policy = MixedPrecisionPolicy(
            param_dtype=AUTOCAST_DTYPES.get(precision), reduce_dtype=torch.float32
        )
        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for layer in module:
                    fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=cfg.find_unused_parameters
    )


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skips the gradient all-reduce (DDP) or reduce-scatter (FSDP) on the batches accumulated
    before the last one of an update."""
    if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(not skip_sync)  # type: ignore[operator]
        yield
    else:
        yield


def _state_dict_options(full_state_dict: bool = True, rank0_only: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # cpu_offload=True also keeps the full copy on rank 0 only: the other ranks get nothing.
    return StateDictOptions(full_state_dict=full_state_dict, cpu_offload=rank0_only)


def full_model_state_dict(model: nn.Module, rank0_only: bool = True) -> dict[str, Any]:
    """The unsharded state dict; for FSDP a collective every rank must call (with
    rank0_only the result is empty on the other ranks)."""
    model = unwrap_model(model)
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_state_dict_options(rank0_only=rank0_only))


def load_full_model_state_dict(model: nn.Module, state: dict[str, Any]) -> None:
    """Loads an unsharded state dict (any strategy wrote it); raises RuntimeError on mismatch."""
    model = unwrap_model(model)
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_state_dict_options(rank0_only=False))


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """torch's usual optimizer state dict (state keyed by parameter index), whatever the
    strategy, so checkpoints resume across ddp, fsdp and a single process."""
    model = unwrap_model(model)
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=_state_dict_options())
    if "state" not in by_name:  # not rank 0
        return {}
    names = [name for group in by_name["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(names)}
    groups, start = [], 0
    for group in by_name["param_groups"]:
        groups.append({**group, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    return {"state": {index[n]: v for n, v in by_name["state"].items()}, "param_groups": groups}


def load_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    model = unwrap_model(model)
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    # Parameter order is the order the optimizer was built with: model.named_parameters().
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    groups, start = [], 0
    for group in state["param_groups"]:
        count = len(group["params"])
        groups.append({**group, "params": names[start : start + count]})
        start += count
    by_name = {
        "state": {names[int(i)]: v for i, v in state["state"].items()},
        "param_groups": groups,
    }
    set_optimizer_state_dict(
        model, optimizer, by_name, options=_state_dict_options(rank0_only=False)
    )


def total_norm_to_float(norm: torch.Tensor) -> float:
    """clip_grad_norm_ returns a DTensor for sharded gradients: gather it to a number."""
    full_tensor = getattr(norm, "full_tensor", None)
    return float(full_tensor() if full_tensor is not None else norm)


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


def average_gradients(params: list[nn.Parameter], context: DistributedContext) -> None:
    """What DDP does during backward, done after it: one all-reduce per dtype of all gradients
    flattened, divided by the world size. Used when ranks must first agree on the update."""
    if not context.is_distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)  # every rank must send the same layout
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= context.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def release_cached_memory(device: torch.device) -> None:
    """After an out-of-memory batch: give the allocator's cached blocks back."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def any_rank(flags: dict[str, bool], context: DistributedContext) -> dict[str, bool]:
    """Each flag true on every rank when it is true on at least one."""
    if not context.is_distributed:
        return flags
    keys = sorted(flags)
    values = torch.tensor(
        [float(flags[k]) for k in keys], dtype=torch.float64, device=context.device
    )
    summed = all_reduce_sum(values, context).tolist()
    return {k: v > 0 for k, v in zip(keys, summed)}


def all_gather_objects(value: object, context: DistributedContext) -> list[object]:
    if not context.is_distributed:
        return [value]
    gathered: list[object] = [None] * context.world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered
