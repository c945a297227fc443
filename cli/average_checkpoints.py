"""`nmtkit-average-checkpoints`: average the weights of several checkpoints into one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from nmtkit.checkpoint import (
    average_checkpoints,
    load_checkpoint,
    numbered_checkpoints,
    save_checkpoint,
    state_dict_mismatch,
)
from nmtkit.config.launcher import run_cli
from nmtkit.errors import CheckpointError, ConfigError
from nmtkit.output_files import ensure_writable_file


@dataclass(kw_only=True)
class AverageConfig:
    """Which checkpoints to average and where to write the result."""

    inputs: List[str] = field(default_factory=list)
    """Checkpoint files to average (or use save_dir + last_n)."""
    save_dir: Optional[str] = None
    """Run directory whose newest numbered checkpoints are averaged."""
    last_n: int = 5
    """How many of the newest checkpoint_<epoch>_<update>.pt files to average."""
    output: str = ""
    """File to write: a self-contained inference checkpoint (checked before any checkpoint is
    read; written under a temporary name and renamed when complete)."""

    def validate(self) -> list[str]:
        errors = []
        if not self.inputs and not self.save_dir:
            errors.append("inputs/save_dir: give inputs=[a.pt,b.pt] or save_dir=DIR last_n=N")
        if self.inputs and self.save_dir:
            errors.append("inputs/save_dir: give one of them, not both")
        if self.last_n < 1:
            errors.append(f"last_n={self.last_n}: must be >= 1")
        if not self.output:
            errors.append("output: required (output=averaged.pt)")
        return errors


def main(cfg: AverageConfig) -> None:
    """Average model weights; config, dictionaries and SentencePiece come from the newest.

    Examples:
        nmtkit-average-checkpoints save_dir=ckpt last_n=5 output=ckpt/averaged.pt
        nmtkit-average-checkpoints 'inputs=[a.pt,b.pt]' output=averaged.pt
    """
    paths = [Path(p) for p in cfg.inputs]
    if cfg.save_dir:
        found = numbered_checkpoints(cfg.save_dir)
        if len(found) < cfg.last_n:
            raise ConfigError(
                f"save_dir={cfg.save_dir}: has {len(found)} numbered checkpoints, last_n={cfg.last_n}"
            )
        paths = found[-cfg.last_n :]
    ensure_writable_file(cfg.output, "output")
    states = [load_checkpoint(path) for path in paths]
    for path, state in zip(paths[1:], states[1:]):
        reason = task_difference(states[0]["task"], state["task"]) or state_dict_mismatch(
            states[0]["model"], state["model"], str(paths[0]), str(path)
        )
        if reason is not None:
            raise CheckpointError(f"{path}: cannot be averaged with {paths[0]}: {reason}")
    save_checkpoint(average_checkpoints(states), cfg.output)
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {cfg.output}")


def task_difference(first: dict[str, Any], other: dict[str, Any]) -> Optional[str]:
    """Why two checkpoints' saved tasks (`state["task"]`) cannot share averaged weights: the
    same weights mean different tokens under different dictionaries. The saved states are
    compared rather than rebuilt tasks, so checkpoints of plugin components need no import."""
    if first.get("name") != other.get("name"):
        return f"task {other.get('name')} differs from {first.get('name')}"
    first_dicts, other_dicts = first.get("dictionaries") or {}, other.get("dictionaries") or {}
    for side in sorted(set(first_dicts) | set(other_dicts), key=str):
        symbols = [(d.get(side) or {}).get("symbols") for d in (first_dicts, other_dicts)]
        if symbols[0] != symbols[1]:
            return f"its {side} dictionary differs"
    return None


def cli_main(argv: Sequence[str] | None = None) -> None:
    run_cli(
        main, config_name="nmtkit_average", config_class=AverageConfig, groups={},
        top_level={"nmtkit_average": AverageConfig}, argv=argv,
        program="nmtkit-average-checkpoints",
    )  # fmt: skip


if __name__ == "__main__":
    cli_main()
