"""`nmtkit-export`: a small self-contained inference file from a training checkpoint, or a
CTranslate2 model directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from nmtkit.checkpoint import load_checkpoint, save_checkpoint, strip_training_state
from nmtkit.config.launcher import run_cli
from nmtkit.ctranslate2_export import (
    check_output_dir,
    check_quantization,
    export_ctranslate2,
    import_ctranslate2,
)
from nmtkit.output_files import ensure_writable_file


@dataclass(kw_only=True)
class ExportConfig:
    """What to export, in which format, and where."""

    checkpoint: str = ""
    """Training checkpoint to export."""
    output: str = ""
    """format=nmtkit: the file to write; format=ctranslate2: a new (or empty) directory.
    Checked before the checkpoint is read and written under a temporary name."""
    format: str = "nmtkit"
    """nmtkit (a checkpoint without training state: weights, config, dictionaries,
    SentencePiece) or ctranslate2 (a CTranslate2 model directory; needs
    pip install 'nmtkit[ctranslate2]')."""
    dtype: str = "keep"
    """format=nmtkit: store floating-point weights as keep (as trained), fp16 or bf16."""
    quantization: Optional[str] = None
    """format=ctranslate2: weight type float32 (default), float16, bfloat16, int8,
    int8_float32, int8_float16 or int8_bfloat16."""

    def validate(self) -> list[str]:
        errors = []
        if not self.checkpoint:
            errors.append("checkpoint: required (checkpoint=ckpt/checkpoint_best.pt)")
        if not self.output:
            example = "model.pt" if self.format == "nmtkit" else "model-ct2"
            errors.append(f"output: required (output={example})")
        if self.format not in ("nmtkit", "ctranslate2"):
            errors.append(f"format={self.format}: choose nmtkit or ctranslate2")
        if self.dtype not in ("keep", "fp16", "bf16"):
            errors.append(f"dtype={self.dtype}: choose keep, fp16 or bf16")
        if self.format == "nmtkit" and self.quantization is not None:
            errors.append(
                f"quantization={self.quantization}: applies to format=ctranslate2; "
                "format=nmtkit takes dtype=keep|fp16|bf16"
            )
        if self.format == "ctranslate2":
            if self.dtype != "keep":
                errors.append(
                    f"dtype={self.dtype}: applies to format=nmtkit; format=ctranslate2 takes "
                    "quantization="
                )
            errors += check_quantization(self.quantization or "float32")
        return errors


def main(cfg: ExportConfig) -> None:
    """Strip training state from a checkpoint (it generates identically), or convert it to a
    CTranslate2 model directory.

    Examples:
        nmtkit-export checkpoint=ckpt/checkpoint_best.pt output=model.pt
        nmtkit-export checkpoint=ckpt/checkpoint_best.pt format=ctranslate2 \\
            quantization=int8 output=model-ct2
    """
    if cfg.format == "ctranslate2":
        check_output_dir(cfg.output)
        import_ctranslate2()
        state = load_checkpoint(cfg.checkpoint)
        quantization = cfg.quantization or "float32"
        folder = export_ctranslate2(state, cfg.output, quantization, cfg.checkpoint)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20
        print(f"wrote {folder}/ (CTranslate2, {quantization}, {size:.1f} MiB)")
        return
    ensure_writable_file(cfg.output, "output")
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
