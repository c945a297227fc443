"""Batches in, detokenized hypotheses out: the one path shared by `nmtkit-generate` and BLEU
validation during training, so the BLEU a run logs is the BLEU nmtkit-generate reproduces."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nmtkit.distributed import autocast, move_to_device
from nmtkit.generation.config import SearchConfig
from nmtkit.generation.search import SequenceGenerator


@dataclass
class Hypothesis:
    tokens: list[int]
    pieces: str
    text: str
    score: float
    positional_scores: list[float]


@dataclass
class TranslationResult:
    id: int
    source: str
    source_pieces: str
    reference: str | None
    hypotheses: list[Hypothesis]


def build_generator(task: Any, models: list[nn.Module], search: SearchConfig) -> SequenceGenerator:
    target = task.tgt_dict
    return SequenceGenerator(
        models, search, pad=target.pad(), eos=target.eos(), unk=target.unk(),
        bos=target.bos(), vocab_size=len(target),
    )  # fmt: skip


def strip_padding(row: torch.Tensor, pad: int) -> list[int]:
    return [token for token in row.tolist() if token != pad]


def translate_batches(
    task: Any,
    models: list[nn.Module],
    search: SearchConfig,
    batches: Iterable[dict[str, Any]],
    *,
    device: torch.device,
    precision: str = "fp32",
    seed: int | None = None,
) -> Iterator[TranslationResult]:
    """Translates collated samples; yields one result per sentence, in batch order."""
    for model in models:
        model.eval()
    generator = build_generator(task, models, search)
    pad = task.tgt_dict.pad()
    for batch_number, sample in enumerate(batches):
        sample = move_to_device(sample, device)
        net_input = sample["net_input"]
        target = sample.get("target")
        prefix = None
        if search.prefix_size > 0 and target is not None:
            prefix = target[:, : search.prefix_size]
        with (
            torch.inference_mode(),
            autocast(device, precision),
        ):
            outputs = generator.generate(
                net_input["src_tokens"],
                net_input["src_lengths"],
                prefix_tokens=prefix,
                seed=None if seed is None else seed + batch_number,
            )
        for row, (sentence_id, hypotheses) in enumerate(zip(sample["id"].tolist(), outputs)):
            source_ids = strip_padding(net_input["src_tokens"][row], pad)
            reference = None
            if target is not None:
                reference = task.target_encoder.decode(strip_padding(target[row], pad))
            yield TranslationResult(
                id=sentence_id,
                source=task.source_encoder.decode(source_ids),
                source_pieces=task.src_dict.string(source_ids),
                reference=reference,
                hypotheses=[
                    Hypothesis(
                        tokens=hypothesis["tokens"].tolist(),
                        pieces=task.tgt_dict.string(hypothesis["tokens"]),
                        text=task.target_encoder.decode(hypothesis["tokens"].tolist()),
                        score=float(hypothesis["score"]),
                        positional_scores=hypothesis["positional_scores"].float().tolist(),
                    )
                    for hypothesis in hypotheses
                ],
            )
