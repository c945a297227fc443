"""Checkpoint files: atomic save, safe load (`weights_only=True`), format upgrades, averaging.

A checkpoint is one file holding plain containers and tensors only:
    format_version, nmtkit_version, checksum (of everything else: a flipped byte is detected
    on load), config (resolved, plain dict), model (state dict),
    task (dictionaries, SentencePiece model bytes: enough to generate without the data dir),
    data_fingerprint, and for resumable checkpoints `training_state` (optimizer, scheduler,
    loss scaler, RNG states, data-iterator position, counters, meters).
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from nmtkit.errors import CheckpointError
from nmtkit.output_files import write_atomically
from nmtkit.version import __version__

FORMAT_VERSION = 1

# format_version N -> function turning a version-N checkpoint dict into version N+1.
# Never edit an entry once released: old checkpoints must keep loading.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(kw_only=True)
class CheckpointConfig:
    """Where and when checkpoints are written, which one is best, and how to resume."""

    save_dir: str = "checkpoints"
    """Run directory: checkpoints, config.yaml, env.json, train_log.jsonl."""
    save_interval: int = 1
    """Save checkpoint_<epoch>_<update>.pt every N epochs."""
    save_interval_updates: int = 0
    """Also save every N updates (0 = only at epoch ends)."""
    keep_last_n: int = -1
    """Keep only the newest N numbered checkpoints (-1 = keep all)."""
    no_epoch_checkpoints: bool = False
    """Write only checkpoint_last.pt and checkpoint_best.pt."""
    no_save: bool = False
    """Write no checkpoints at all (config and logs are still written)."""
    best_checkpoint_metric: str = "loss"
    """Validation metric that selects checkpoint_best.pt: loss, nll_loss, ppl, bleu, ..."""
    maximize_best_checkpoint_metric: bool = False
    """Higher is better for the metric (set true for bleu)."""
    patience: int = -1
    """Stop after this many validations without improvement (-1 = never)."""
    restore_file: str = "checkpoint_last.pt"
    """Checkpoint to resume from, relative to save_dir (or an absolute path)."""
    reset_optimizer: bool = False
    """On resume, start the optimizer state afresh."""
    reset_lr_scheduler: bool = False
    """On resume, start the learning-rate scheduler afresh."""
    reset_dataloader: bool = False
    """On resume, start the data at the beginning of an epoch."""
    reset_meters: bool = False
    """On resume, reset running statistics (timers, averages)."""
    finetune_from_model: Optional[str] = None
    """Start from these model weights only (fresh optimizer, scheduler, data, counters);
    ignored when save_dir already holds a checkpoint to resume from."""
    refuse_duplicate: bool = False
    """Refuse to start when a finished run of the same experiment (same experiment id: config
    without paths/logging/device keys, data fingerprint, nmtkit version) sits beside save_dir;
    by default that run is named in a warning."""
    init_encoder_from: Optional[str] = None
    """Start the encoder (and the feature normalisation, CMVN) from this checkpoint's, e.g. an
    ASR model's for speech translation; everything else starts fresh. Ignored when save_dir
    already holds a checkpoint to resume from."""

    def validate(self) -> list[str]:
        errors = []
        if self.finetune_from_model and self.init_encoder_from:
            errors.append(
                "finetune_from_model/init_encoder_from: give one of them (the first loads all "
                "weights, the second only the encoder's)"
            )
        if self.keep_last_n == 0 or self.keep_last_n < -1:
            errors.append(f"keep_last_n={self.keep_last_n}: use -1 (keep all) or a positive count")
        if self.save_interval < 1 or self.save_interval_updates < 0:
            errors.append("save_interval must be >= 1 and save_interval_updates >= 0")
        return errors


def save_checkpoint(state: dict[str, Any], *paths: str | Path) -> None:
    """Serialises once and writes each path atomically: a temp file in the same folder, fsync,
    then rename. A crash mid-write leaves the previous checkpoint intact, never a truncated one."""
    state = {"format_version": FORMAT_VERSION, "nmtkit_version": __version__, **state}
    state.pop("checksum", None)
    state["checksum"] = content_checksum(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in map(Path, paths):
        write_atomically(buffer.getbuffer(), path)


def content_checksum(state: Any) -> str:
    """CRC-32 over every tensor's bytes and every other value's repr, in a fixed order.
    torch.load does not verify the zip's CRCs, so without this a flipped byte in a weight
    would load silently and be trained on. (Checkpoints written before it have none.)"""
    checksum = 0

    def visit(value: Any) -> None:
        nonlocal checksum
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            header = f"tensor {tensor.dtype} {tuple(tensor.shape)};"
            checksum = zlib.crc32(header.encode(), checksum)
            if tensor.numel():
                raw = tensor.reshape(-1).view(torch.uint8).numpy()
                checksum = zlib.crc32(raw.data, checksum)
        elif isinstance(value, dict):
            checksum = zlib.crc32(f"dict {len(value)};".encode(), checksum)
            for key in sorted(value, key=repr):
                checksum = zlib.crc32(repr(key).encode(), checksum)
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            checksum = zlib.crc32(f"list {len(value)};".encode(), checksum)
            for item in value:
                visit(item)
        else:
            checksum = zlib.crc32(repr(value).encode(), checksum)

    visit({key: value for key, value in state.items() if key != "checksum"})
    return f"crc32:{checksum:08x}"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads with `weights_only=True` (no arbitrary unpickling) and upgrades old formats."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        message = str(error).strip()
        if "Weights only load failed" in message:
            # torch's own text goes on to suggest weights_only=False: never for a user's file.
            reason = (
                "it holds Python objects besides tensors and plain containers, which nmtkit "
                "does not unpickle because that could run arbitrary code"
            )
        else:
            reason = message.splitlines()[0] if message else type(error).__name__
        raise CheckpointError(f"{path}: not a readable nmtkit checkpoint ({reason})") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not an nmtkit checkpoint (no format_version)")
    version = state["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer nmtkit ({state.get('nmtkit_version', '?')}, checkpoint "
            f"format {version}); this nmtkit {__version__} reads formats up to "
            f"{FORMAT_VERSION}: upgrade nmtkit"
        )
    saved_checksum = state.get("checksum")
    if saved_checksum is not None and saved_checksum != content_checksum(state):
        raise CheckpointError(
            f"{path}: checksum mismatch: the file is corrupt (changed after it was written); "
            "use another checkpoint"
        )
    while state["format_version"] < FORMAT_VERSION:
        state = UPGRADES[state["format_version"]](state)
    for key in ("config", "model", "task"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry (corrupt?)")
    return state


# Weights that belong to the encoder: its parameters and the feature normalisation it was
# trained with.
ENCODER_PREFIXES = ("encoder.", "cmvn_")


def state_dict_mismatch(
    expected: dict[str, torch.Tensor],
    saved: dict[str, torch.Tensor],
    expected_name: str = "the model",
    saved_name: str = "the checkpoint",
) -> Optional[str]:
    """Which tensor keeps `saved` from loading where `expected` fits, in one sentence (torch's
    own message puts the tensor names on later lines), or None when names and shapes match."""
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors of {expected_name} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors not in {expected_name}, e.g. {unexpected[0]}")
        return "; ".join(parts)
    for key, tensor in expected.items():
        if tuple(saved[key].shape) != tuple(tensor.shape):
            return (
                f"tensor {key} has shape {list(saved[key].shape)} in {saved_name}, "
                f"{list(tensor.shape)} in {expected_name}"
            )
    return None


def load_encoder_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Copies the encoder weights of the checkpoint at `path` into `model`; returns the names
    loaded. Names and shapes must agree: the first tensor that differs is named."""
    saved = {
        name: tensor
        for name, tensor in load_checkpoint(path)["model"].items()
        if name.startswith(ENCODER_PREFIXES)
    }
    if not saved:
        raise CheckpointError(f"checkpoint.init_encoder_from={path}: has no encoder weights")
    own = {
        name: tensor
        for name, tensor in model.state_dict().items()
        if name.startswith(ENCODER_PREFIXES)
    }
    mismatch = state_dict_mismatch(own, saved, "the configured model's encoder", str(path))
    if mismatch:
        raise CheckpointError(
            f"checkpoint.init_encoder_from={path}: {mismatch}; use the same encoder settings "
            "(model, layers, dimensions) as that model"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            own[name].copy_(tensor)
    return list(saved)


def strip_training_state(state: dict[str, Any]) -> dict[str, Any]:
    """The self-contained inference artifact: weights, config, dictionaries, SentencePiece."""
    return {key: value for key, value in state.items() if key != "training_state"}


def average_checkpoints(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Averages model weights (in float64, cast back); config and task come from the last."""
    if not states:
        raise CheckpointError("no checkpoints to average")
    reference = states[-1]
    keys = list(reference["model"].keys())
    for state in states:
        if list(state["model"].keys()) != keys:
            raise CheckpointError("checkpoints to average have different model parameters")
    averaged: dict[str, torch.Tensor] = {}
    for key in keys:
        tensors = [state["model"][key] for state in states]
        if tensors[0].is_floating_point():
            total = torch.stack([t.double() for t in tensors]).mean(dim=0)
            averaged[key] = total.to(tensors[0].dtype)
        else:
            averaged[key] = tensors[-1].clone()
    result = strip_training_state(reference)
    result["model"] = averaged
    return result


_NUMBERED = re.compile(r"checkpoint_(\d+)_(\d+)\.pt$")


def numbered_checkpoints(save_dir: str | Path) -> list[Path]:
    """`checkpoint_<epoch>_<update>.pt` files, oldest first."""
    found = []
    for path in Path(save_dir).glob("checkpoint_*_*.pt"):
        match = _NUMBERED.search(path.name)
        if match:
            found.append(((int(match.group(2)), int(match.group(1))), path))
    return [path for _, path in sorted(found)]
