"""`nmtkit-import-fairseq`: a fairseq transformer checkpoint as a self-contained nmtkit one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nmtkit.checkpoint import save_checkpoint
from nmtkit.config.launcher import run_cli
from nmtkit.convert.fairseq_checkpoint import import_fairseq_checkpoint
from nmtkit.output_files import ensure_writable_file


@dataclass(kw_only=True)
class ImportFairseqConfig:
    """Which fairseq checkpoint to import, with its dictionaries, and where to write it."""

    checkpoint: str = ""
    """fairseq checkpoint (fairseq 0.12 `transformer` translation model, any named arch)."""
    data: str = ""
    """The model's fairseq data directory: dict.<src>.txt and dict.<tgt>.txt are read."""
    bpe_model: Optional[str] = None
    """SentencePiece model the data was encoded with; stored in the checkpoint so nmtkit-generate
    reads raw text and writes detokenized text (without it: whitespace-tokenized text)."""
    source_lang: Optional[str] = None
    """Source language (default: the checkpoint's, else the data directory's split names)."""
    target_lang: Optional[str] = None
    """Target language (default: found as source_lang is)."""
    output: str = ""
    """nmtkit checkpoint to write (checked before reading; written under a temporary name)."""

    def validate(self) -> list[str]:
        errors = []
        for key in ("checkpoint", "data", "output"):
            if not getattr(self, key):
                errors.append(f"{key}: required (e.g. {key}={_EXAMPLES[key]})")
        if self.output and self.output == self.checkpoint:
            errors.append(f"output={self.output}: would overwrite the fairseq checkpoint")
        return errors


_EXAMPLES = {"checkpoint": "checkpoint_best.pt", "data": "data-bin", "output": "model.pt"}


def main(cfg: ImportFairseqConfig) -> None:
    """Convert a fairseq transformer checkpoint; the result generates with nmtkit-generate.

    The fairseq file is read without running code from it (docs/fairseq.md).

    Example:
        nmtkit-import-fairseq checkpoint=checkpoints/checkpoint_best.pt data=data-bin \\
            bpe_model=spm.model output=model.pt
        nmtkit-generate checkpoint=model.pt input=test.de beam=5
    """
    ensure_writable_file(cfg.output, "output")
    state = import_fairseq_checkpoint(
        cfg.checkpoint,
        cfg.data,
        bpe_model=cfg.bpe_model,
        source_lang=cfg.source_lang,
        target_lang=cfg.target_lang,
    )
    save_checkpoint(state, cfg.output)
    model, task = state["config"]["model"], state["task"]
    norm = "pre-norm" if model["encoder_normalize_before"] else "post-norm"
    sizes = "/".join(str(len(d["symbols"])) for d in task["dictionaries"].values())
    size = Path(cfg.output).stat().st_size / 2**20
    print(
        f"wrote {cfg.output} ({size:.1f} MiB): fairseq {state['imported_from']['arch']}, "
        f"{model['encoder_layers']}+{model['decoder_layers']} layers, width "
        f"{model['encoder_embed_dim']}, {norm}, {task['source_lang']}->{task['target_lang']} "
        f"dictionaries {sizes}, SentencePiece {'included' if cfg.bpe_model else 'none'}"
    )


def cli_main(argv: Sequence[str] | None = None) -> None:
    run_cli(
        main, config_name="nmtkit_import_fairseq", config_class=ImportFairseqConfig, groups={},
        top_level={"nmtkit_import_fairseq": ImportFairseqConfig}, argv=argv,
        program="nmtkit-import-fairseq",
    )  # fmt: skip


if __name__ == "__main__":
    cli_main()
