"""The run directory's records (config.yaml, env.json, train_log.jsonl, TensorBoard) and the
console output of training: a progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from nmtkit.config.launcher import config_to_yaml
from nmtkit.output_files import write_atomically
from nmtkit.version import __version__


def git_revision(folder: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def environment_record() -> dict[str, Any]:
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "nmtkit_version": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "devices": devices or ["cpu"],
        "nmtkit_git_revision": git_revision(Path(__file__).resolve().parent),
        "command": sys.argv,
    }


# Settings that say where a run writes or how it reports, not what it computes: two runs that
# differ only in these are the same experiment.
NOT_IDENTIFYING = (
    "checkpoint.save_dir",
    "checkpoint.restore_file",
    "checkpoint.refuse_duplicate",
    "common.log_format",
    "common.log_interval",
    "common.tensorboard_logdir",
    "common.device",
    "common.user_dir",
    "common.plot",
    "task.data",
    "distributed.",
    "dataset.num_workers",
)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 5e-4}} -> {"optimizer.lr": 5e-4}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def experiment_id(config: dict[str, Any], data_fingerprint: dict[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the resolved config without paths, logging and device
    keys, the data's fingerprint (not its location) and the nmtkit version."""
    settings = {
        key: value
        for key, value in flatten_config(config).items()
        if key != "defaults" and not key.startswith(NOT_IDENTIFYING)
    }
    data = {key: value for key, value in data_fingerprint.items() if key != "data"}
    content = {"config": settings, "data": data, "nmtkit_version": __version__}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def finished_duplicates(save_dir: Path, identity: str) -> list[Path]:
    """Finished runs of the same experiment in the folders beside `save_dir`."""
    parent = save_dir.resolve().parent
    found = []
    for env_file in sorted(parent.glob("*/env.json")):
        other = env_file.parent
        if other == save_dir.resolve():
            continue
        try:
            same = json.loads(env_file.read_text()).get("experiment_id") == identity
            status = json.loads((other / RUN_STATUS).read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            continue
        if same and status == "finished":
            found.append(other)
    return found


def write_run_files(
    save_dir: Path, config: Any, data_fingerprint: dict[str, Any], identity: str
) -> None:
    """config.yaml (resolved) and env.json (versions, host, devices, data fingerprint,
    experiment id); a run_status.json of an earlier attempt is removed: the run goes on."""
    save_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(config_to_yaml(config).encode(), save_dir / "config.yaml")
    record = {
        **environment_record(),
        "experiment_id": identity,
        "data": data_fingerprint,
        "started": time.time(),
    }
    write_atomically((json.dumps(record, indent=2) + "\n").encode(), save_dir / "env.json")
    (save_dir / RUN_STATUS).unlink(missing_ok=True)


RUN_STATUS = "run_status.json"


def write_run_status(save_dir: Path, status: str, reason: str, updates: int, epoch: int) -> None:
    """How the run ended: finished (a stopping criterion) or stopped (signal, error), and why;
    `nmtkit-runs` reads it."""
    record = {
        "status": status,
        "reason": reason,
        "updates": updates,
        "epoch": epoch,
        "ended": time.time(),
    }
    write_atomically((json.dumps(record, indent=2) + "\n").encode(), save_dir / RUN_STATUS)


def format_stats(stats: dict[str, float]) -> str:
    parts = []
    for key, value in stats.items():
        if isinstance(value, float):
            shown = f"{value:.3g}" if key in ("lr",) else f"{value:.3f}".rstrip("0").rstrip(".")
        else:
            shown = str(value)
        parts.append(f"{key} {shown}")
    return " | ".join(parts)


class RunLogger:
    """Writes each record to train_log.jsonl, TensorBoard and the console (main process only)."""

    def __init__(
        self,
        save_dir: Path,
        log_format: str,
        tensorboard_logdir: str | None,
        enabled: bool,
    ) -> None:
        self.enabled = enabled
        if log_format == "auto":
            log_format = "tqdm" if sys.stderr.isatty() else "simple"
        self.log_format = log_format
        self.jsonl = open(save_dir / "train_log.jsonl", "a", encoding="utf-8") if enabled else None
        self.tensorboard = None
        if enabled and tensorboard_logdir:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(tensorboard_logdir)
        self.progress_bar: Any = None
        self.epoch = 0
        self.last_train_stats: dict[str, Any] | None = None

    def info(self, message: str) -> None:
        if not self.enabled or self.log_format == "none":
            return
        if self.progress_bar is not None:
            self.progress_bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int, total_batches: int, start: int) -> None:
        self.epoch, self.last_train_stats = epoch, None
        if self.enabled and self.log_format == "tqdm":
            from tqdm import tqdm

            self.progress_bar = tqdm(
                total=total_batches, initial=start, desc=f"epoch {epoch:03d}", leave=False
            )

    def advance(self, batches: int, stats: dict[str, float] | None = None) -> None:
        if self.progress_bar is not None:
            self.progress_bar.update(batches)
            if stats:
                self.progress_bar.set_postfix(
                    {k: stats[k] for k in ("loss", "lr", "wps") if k in stats}, refresh=False
                )

    def end_epoch(self) -> None:
        """The bar of the epoch disappears; a summary line of its last statistics stays."""
        if self.progress_bar is not None:
            self.progress_bar.close()
            self.progress_bar = None
            if self.last_train_stats:
                self.info(f"epoch {self.epoch:03d} | {format_stats(self.last_train_stats)}")
        self.last_train_stats = None

    def record(self, kind: str, stats: dict[str, Any], step: int) -> None:
        """One JSON line per training log interval or validation; the same numbers go to
        TensorBoard and (in plain mode, or for validations) to the console."""
        if not self.enabled:
            return
        assert self.jsonl is not None
        if kind == "train":
            self.last_train_stats = stats
        self.jsonl.write(json.dumps({"kind": kind, **stats}) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            for key, value in stats.items():
                if isinstance(value, (int, float)) and key not in ("update", "epoch"):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)
            self.tensorboard.flush()
        if kind != "train" or self.log_format == "simple":
            self.info(f"{kind} | {format_stats(stats)}")

    def close(self) -> None:
        self.end_epoch()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
