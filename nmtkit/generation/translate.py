"""Batches in, detokenized hypotheses out: the one path shared by `nmtkit-generate` and the
validation metrics during training (BLEU, WER, ...), so the figures a run logs are the ones
nmtkit-generate + nmtkit-score reproduce.

Encoder-decoder models are searched with beam search or sampling (nmtkit.generation.search);
encoder-only CTC models (`is_encoder_only`) are decoded greedily frame by frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nmtkit.distributed import autocast, move_to_device
from nmtkit.errors import ConfigError
from nmtkit.generation.config import SearchConfig
from nmtkit.generation.search import Hypothesis, SequenceGenerator
from nmtkit.models.api import capability

CTC_BLANK = 0
"""CTC's blank symbol is the dictionary's <s> (index 0), which never occurs in targets."""


@dataclass
class TranslationResult:
    id: int
    source: str
    source_pieces: str
    reference: str | None
    hypotheses: list[Hypothesis]


def build_generator(task: Any, models: list[nn.Module], search: SearchConfig) -> SequenceGenerator:
    target = task.target_dictionary
    return SequenceGenerator(
        models, search, pad=target.pad(), eos=target.eos(), unk=target.unk(),
        bos=target.bos(), vocab_size=len(target),
    )  # fmt: skip


def strip_padding(row: torch.Tensor, pad: int) -> list[int]:
    return [token for token in row.tolist() if token != pad]


def encoder_input(net_input: dict[str, Any]) -> dict[str, Any]:
    """What `encode()` takes: the network input without the teacher-forced target."""
    return {key: value for key, value in net_input.items() if key != "prev_output_tokens"}


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
    """Decodes collated samples; yields one result per input, in batch order."""
    for model in models:
        model.eval()
    encoder_only = [capability(model, "is_encoder_only") for model in models]
    if any(encoder_only) and not all(encoder_only):
        raise ConfigError(
            "checkpoint: an ensemble cannot mix encoder-only CTC models with encoder-decoder ones"
        )
    generator = None if all(encoder_only) else build_generator(task, models, search)
    pad = task.target_dictionary.pad()
    for batch_number, sample in enumerate(batches):
        sample = move_to_device(sample, device)
        inputs = encoder_input(sample["net_input"])
        target = sample.get("target")
        with torch.inference_mode(), autocast(device, precision):
            if generator is None:
                outputs = ctc_greedy_decode(models, inputs, eos=task.target_dictionary.eos())
            else:
                prefix = None
                if search.prefix_size > 0 and target is not None:
                    prefix = target[:, : search.prefix_size]
                outputs = generator.generate(
                    inputs,
                    prefix_tokens=prefix,
                    seed=None if seed is None else seed + batch_number,
                )
        for row, (sentence_id, hypotheses) in enumerate(zip(sample["id"].tolist(), outputs)):
            reference = None
            if target is not None:
                reference = task.postprocess(strip_padding(target[row], pad))
            source, source_pieces = task.describe_source(sample, row)
            for hypothesis in hypotheses:
                token_ids = hypothesis.tokens.tolist()
                hypothesis.pieces = task.target_pieces(token_ids)
                hypothesis.text = task.postprocess(token_ids)
            yield TranslationResult(
                id=sentence_id,
                source=source,
                source_pieces=source_pieces,
                reference=reference,
                hypotheses=hypotheses,
            )


def ctc_greedy_decode(
    models: list[nn.Module], net_input: dict[str, torch.Tensor], *, eos: int
) -> list[list[Hypothesis]]:
    """Best path of CTC models: the most likely symbol per encoder frame (an ensemble averages
    the frame probabilities), repeats merged, blanks removed, eos appended as search does.

    score: the best path's log-probability per output token (eos counted), like beam search's
    length-normalised scores; positional_scores: the best log-probability of the frame where
    each token was emitted.
    """
    per_model, lengths = [], None
    for model in models:
        log_probs, model_lengths = model.ctc_log_probs(model.encode(**net_input))
        if lengths is not None and not torch.equal(lengths, model_lengths):
            raise ConfigError("checkpoint: CTC ensemble members subsample the audio differently")
        per_model.append(log_probs.float())
        lengths = model_lengths
    assert lengths is not None
    if len(per_model) == 1:
        log_probs = per_model[0]
    else:
        log_probs = torch.logsumexp(torch.stack(per_model), dim=0) - math.log(len(per_model))
    best_scores, best = log_probs.max(dim=-1)
    results = []
    for row in range(best.size(0)):
        frames = int(lengths[row])
        path, path_scores = best[row, :frames].tolist(), best_scores[row, :frames]
        tokens, scores, previous = [], [], CTC_BLANK
        for frame, symbol in enumerate(path):
            if symbol != previous and symbol != CTC_BLANK:
                tokens.append(symbol)
                scores.append(float(path_scores[frame]))
            previous = symbol
        total = float(path_scores.sum())
        results.append(
            [
                Hypothesis(
                    tokens=torch.tensor([*tokens, eos], dtype=torch.long),
                    score=total / (len(tokens) + 1),
                    positional_scores=torch.tensor([*scores, 0.0]),
                )
            ]
        )
    return results
