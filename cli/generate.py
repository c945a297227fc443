"""`nmtkit-generate`: translate or transcribe raw input (text lines, an audio manifest or audio
paths; a file or stdin, streaming) or a binarized split."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

import torch

from nmtkit.config.launcher import run_cli
from nmtkit.data.iterators import EpochBatchIterator
from nmtkit.distributed import AUTOCAST_DTYPES, choose_device
from nmtkit.generation.config import SearchConfig
from nmtkit.generation.translate import TranslationResult, translate_batches
from nmtkit.inference import load_for_inference


@dataclass(kw_only=True)
class GenerateConfig(SearchConfig):
    """What to translate, with which model(s), and how to write the output."""

    checkpoint: Any = ""
    """Checkpoint file, or a list of them for an ensemble: checkpoint=[a.pt,b.pt]."""
    input: Optional[str] = None
    """Raw input: a text file (translation), or an audio manifest (TSV with the header id audio
    n_samples ...) or a file of audio paths (speech); '-' or unset = stdin, as lines arrive."""
    data: Optional[str] = None
    """Translate a binarized split of this data directory instead (references included)."""
    subset: str = "test"
    """Split of `data` to translate."""
    output: Optional[str] = None
    """Output file (default stdout)."""
    format: str = "text"
    """text (one detokenized hypothesis per line), fairseq (S-/T-/H-/D-/P- lines) or jsonl."""
    batch_size: Optional[int] = 64
    """Sentences per batch."""
    max_tokens: Optional[int] = None
    """Largest padded source batch in tokens (with or instead of batch_size)."""
    buffer_size: int = 2000
    """Raw input is read and batched in chunks of up to this many lines (sorted by length)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    precision: str = "fp32"
    """fp32, bf16 or fp16: the dtype of the model weights (log-probabilities and scores stay
    float32). bf16 is faster on GPUs and on CPUs with AVX-512 BF16; translations may differ
    slightly from fp32."""
    seed: int = 1
    """Seed for sampling."""
    user_dir: Optional[str] = None
    """Folder or .py file with the custom components the checkpoint needs (a plugin)."""

    def validate(self) -> list[str]:
        errors = super().validate()
        paths = self.checkpoint if isinstance(self.checkpoint, list) else [self.checkpoint]
        if not all(isinstance(p, str) and p for p in paths) or not paths:
            errors.append("checkpoint: required (checkpoint=model.pt or checkpoint=[a.pt,b.pt])")
        if self.format not in ("text", "fairseq", "jsonl"):
            errors.append(f"format={self.format}: choose text, fairseq or jsonl")
        if self.precision not in ("fp32", "bf16", "fp16"):
            errors.append(f"precision={self.precision}: choose fp32, bf16 or fp16")
        if self.batch_size is None and self.max_tokens is None:
            errors.append("batch_size/max_tokens: set at least one")
        if self.buffer_size < 1:
            errors.append(f"buffer_size={self.buffer_size}: must be >= 1")
        if self.data and self.input:
            errors.append("input/data: give one of them")
        if self.prefix_size > 0 and not self.data:
            errors.append(
                f"prefix_size={self.prefix_size}: forced prefixes come from the references, "
                "so it needs data=DIR (a binarized split with targets)"
            )
        return errors


def main(cfg: GenerateConfig) -> None:
    """Translate with a trained checkpoint; it carries its dictionaries and SentencePiece model.

    Examples:
        nmtkit-generate checkpoint=ckpt/checkpoint_best.pt input=test.de output=hyp.en beam=5
        echo "Guten Morgen" | nmtkit-generate checkpoint=model.pt
        nmtkit-generate checkpoint=model.pt data=data-bin subset=test format=fairseq
        nmtkit-generate 'checkpoint=[a.pt,b.pt]' input=test.de   # ensemble
        nmtkit-generate checkpoint=asr/checkpoint_best.pt input=test.tsv output=hyp.txt  # speech
    """
    device = choose_device(cfg.device)
    paths = cfg.checkpoint if isinstance(cfg.checkpoint, list) else [cfg.checkpoint]
    dtype = AUTOCAST_DTYPES.get(cfg.precision, torch.float32)
    task, models, _ = load_for_inference([str(p) for p in paths], device, dtype)
    out = open(cfg.output, "w", encoding="utf-8") if cfg.output else sys.stdout
    try:
        if cfg.data:
            translate_binarized(cfg, task, models, device, out)
        else:
            done = 0
            for inputs in task.read_inference_inputs(cfg.input, cfg.buffer_size):
                translate_inputs(cfg, task, models, device, inputs, done, out)
                done += len(inputs)
    finally:
        if out is not sys.stdout:
            out.close()


def translate_binarized(
    cfg: GenerateConfig, task: Any, models: list, device: torch.device, out: IO[str]
) -> None:
    dataset = task.inference_data_split(Path(cfg.data), cfg.subset)
    iterator = EpochBatchIterator(
        dataset, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
        shuffle=False, required_batch_size_multiple=1,
    )  # fmt: skip
    results = translate_batches(
        task, models, cfg, iterator.next_epoch_itr(), device=device,
        seed=cfg.seed if cfg.sampling else None,  # the weights carry the precision
    )  # fmt: skip
    for result in sorted(results, key=lambda r: r.id):
        write_result(cfg, result, out, result.id)


def translate_inputs(
    cfg: GenerateConfig,
    task: Any,
    models: list,
    device: torch.device,
    inputs: list[Any],
    first_index: int,
    out: IO[str],
) -> None:
    """Decodes one chunk of inputs (text lines, utterances), writing results in input order;
    empty inputs give empty outputs (they are not sent to the model)."""
    nonempty = [i for i, item in enumerate(inputs) if not task.is_empty_input(item)]
    results: dict[int, TranslationResult] = {}
    if nonempty:
        dataset = task.inference_dataset([inputs[i] for i in nonempty])
        iterator = EpochBatchIterator(
            dataset, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
            shuffle=False, required_batch_size_multiple=1,
        )  # fmt: skip
        for result in translate_batches(
            task, models, cfg, iterator.next_epoch_itr(), device=device,
            seed=cfg.seed if cfg.sampling else None,  # the weights carry the precision
        ):  # fmt: skip
            result.id = nonempty[result.id]
            results[result.id] = result
    for i, item in enumerate(inputs):
        name = task.input_name(item, first_index + i)
        if i in results:
            write_result(cfg, results[i], out, name)
        else:
            write_empty(cfg, name, str(item), out)
    out.flush()


def write_result(cfg: GenerateConfig, result: TranslationResult, out: IO[str], name: Any) -> None:
    hypotheses = result.hypotheses[: cfg.nbest]
    if cfg.format == "text":
        for hypothesis in hypotheses:
            out.write(hypothesis.text + "\n")
    elif cfg.format == "jsonl":
        record = {
            "id": name,
            "source": result.source,
            **({"reference": result.reference} if result.reference is not None else {}),
            "hypotheses": [
                {
                    "text": h.text,
                    "tokens": h.pieces.split(),
                    "score": h.score,
                    "token_log_probs": h.positional_scores.float().tolist(),
                }
                for h in hypotheses
            ],
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:  # fairseq's layout, so existing post-processing scripts keep working
        out.write(f"S-{name}\t{result.source}\n")
        if result.reference is not None:
            out.write(f"T-{name}\t{result.reference}\n")
        for h in hypotheses:
            out.write(f"H-{name}\t{h.score:.6f}\t{h.pieces}\n")
            out.write(f"D-{name}\t{h.score:.6f}\t{h.text}\n")
            out.write(f"P-{name}\t{' '.join(f'{s:.4f}' for s in h.positional_scores.tolist())}\n")


def write_empty(cfg: GenerateConfig, name: Any, line: str, out: IO[str]) -> None:
    if cfg.format == "text":
        out.write("\n" * cfg.nbest)
    elif cfg.format == "jsonl":
        out.write(json.dumps({"id": name, "source": line, "hypotheses": []}) + "\n")
    else:
        out.write(f"S-{name}\t{line}\n")


def cli_main(argv: Sequence[str] | None = None) -> None:
    run_cli(
        main, config_name="nmtkit_generate", config_class=GenerateConfig, groups={},
        top_level={"nmtkit_generate": GenerateConfig}, argv=argv, program="nmtkit-generate",
    )  # fmt: skip


if __name__ == "__main__":
    cli_main()
