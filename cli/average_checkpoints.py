"""`nmtkit-average-checkpoints`: average the weights of several checkpoints into one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from nmtkit.checkpoint import (
    average_checkpoints,
    load_checkpoint,
    numbered_checkpoints,
    save_checkpoint,
)
from nmtkit.config.launcher import run_cli
from nmtkit.errors import ConfigError


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
    """File to write: a self-contained inference checkpoint."""

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
    states = [load_checkpoint(path) for path in paths]
    save_checkpoint(average_checkpoints(states), cfg.output)
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {cfg.output}")


def cli_main(argv: Sequence[str] | None = None) -> None:
    run_cli(
        main, config_name="nmtkit_average", config_class=AverageConfig, groups={},
        top_level={"nmtkit_average": AverageConfig}, argv=argv,
        program="nmtkit-average-checkpoints",
    )  # fmt: skip


if __name__ == "__main__":
    cli_main()
