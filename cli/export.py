"""`nmtkit-export`: a small self-contained inference file from a training checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nmtkit.checkpoint import load_checkpoint, save_checkpoint, strip_training_state
from nmtkit.config.launcher import run_cli


@dataclass(kw_only=True)
class ExportConfig:
    """What to export and where."""

    checkpoint: str = ""
    """Training checkpoint to export."""
    output: str = ""
    """File to write (weights, config, dictionaries, SentencePiece; no optimizer state)."""
    dtype: str = "keep"
    """Store floating-point weights as keep (as trained), fp16 or bf16 (halves the file)."""

    def validate(self) -> list[str]:
        errors = []
        if not self.checkpoint:
            errors.append("checkpoint: required (checkpoint=ckpt/checkpoint_best.pt)")
        if not self.output:
            errors.append("output: required (output=model.pt)")
        if self.dtype not in ("keep", "fp16", "bf16"):
            errors.append(f"dtype={self.dtype}: choose keep, fp16 or bf16")
        return errors


def main(cfg: ExportConfig) -> None:
    """Strip training state from a checkpoint; the result generates identically.

    Example:
        nmtkit-export checkpoint=ckpt/checkpoint_best.pt output=model.pt
    """
    state = strip_training_state(load_checkpoint(cfg.checkpoint))
    if cfg.dtype != "keep":
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.dtype]
        state["model"] = {
            k: v.to(dtype) if v.is_floating_point() else v for k, v in state["model"].items()
        }
    save_checkpoint(state, cfg.output)
    size = Path(cfg.output).stat().st_size / 2**20
    print(f"wrote {cfg.output} ({size:.1f} MiB)")


def cli_main(argv: Sequence[str] | None = None) -> None:
    run_cli(
        main, config_name="nmtkit_export", config_class=ExportConfig, groups={},
        top_level={"nmtkit_export": ExportConfig}, argv=argv, program="nmtkit-export",
    )  # fmt: skip


if __name__ == "__main__":
    cli_main()
