"""Batches in, detokenized hypotheses out: the one path shared by `nmtkit-generate` and the
validation metrics during training (BLEU, WER, ...), so the figures a run logs are the ones
nmtkit-generate + nmtkit-score reproduce.

Encoder-decoder models are searched with beam search or sampling (nmtkit.generation.search),
jointly with their CTC head when `ctc_weight` > 0; encoder-only CTC models (`is_encoder_only`),
and any model at `ctc_weight=1`, are decoded with the CTC head alone: greedily frame by frame at
beam=1 and with CTC prefix beam search at beam > 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nmtkit.distributed import autocast, move_to_device
from nmtkit.errors import ConfigError
from nmtkit.generation.config import SearchConfig
from nmtkit.generation.ctc_prefix_score import (
    check_ctc_models,
    ctc_prefix_beam_search,
    ensemble_ctc_log_probs,
)
from nmtkit.generation.search import Hypothesis, SequenceGenerator
from nmtkit.models.api import CTC_BLANK, capability


@dataclass
class TranslationResult:
    """One decoded input: its hypotheses (best first) and how to show its source/reference."""

    id: int
    """The input's index in its dataset (sample["id"])."""
    source: str
    """The source as a user reads it (detokenized text, or the utterance's name)."""
    source_pieces: str
    """The source's model-side form (space-separated symbols; "N frames" for speech)."""
    reference: str | None
    """The detokenized reference, when the data has one."""
    hypotheses: list[Hypothesis]
    reference_pieces: str | None = None
    """The reference as space-separated target symbols (fairseq's T- lines)."""


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
    model_names: Sequence[str] | None = None,
) -> Iterator[TranslationResult]:
    """Decodes collated samples; yields one result per input, in batch order.

    `model_names` says where each model comes from (its checkpoint path) in messages.
    Encoder-only CTC models ignore `ctc_weight`: CTC is all they have.
    """
    for model in models:
        model.eval()
    encoder_only = [capability(model, "is_encoder_only") for model in models]
    if any(encoder_only) and not all(encoder_only):
        raise ConfigError(
            "checkpoint: an ensemble cannot mix encoder-only CTC models with encoder-decoder ones"
        )
    if model_names is None:
        model_names = [f"checkpoint {index + 1}" for index in range(len(models))]
    ctc_alone = all(encoder_only) or search.ctc_weight == 1.0
    if ctc_alone:
        check_ctc_alone_settings(search, all(encoder_only))
    if not all(encoder_only):
        check_ctc_models(models, search.ctc_weight, model_names)
    generator = None if ctc_alone else build_generator(task, models, search)
    pad = task.target_dictionary.pad()
    for batch_number, sample in enumerate(batches):
        sample = move_to_device(sample, device)
        inputs = encoder_input(sample["net_input"])
        target = sample.get("target")
        with torch.inference_mode(), autocast(device, precision):
            if ctc_alone and search.beam == 1:
                outputs = ctc_greedy_decode(models, inputs, eos=task.target_dictionary.eos())
            elif ctc_alone:
                outputs = ctc_beam_decode(
                    models, inputs, eos=task.target_dictionary.eos(), beam=search.beam,
                    nbest=search.nbest,
                )  # fmt: skip
            else:
                prefix = None
                if search.prefix_size > 0 and target is not None:
                    prefix = target[:, : search.prefix_size]
                assert generator is not None
                outputs = generator.generate(
                    inputs,
                    prefix_tokens=prefix,
                    seed=None if seed is None else seed + batch_number,
                )
        for row, (sentence_id, hypotheses) in enumerate(zip(sample["id"].tolist(), outputs)):
            reference = reference_pieces = None
            if target is not None:
                reference_ids = strip_padding(target[row], pad)
                reference = task.postprocess(reference_ids)
                reference_pieces = task.target_pieces(reference_ids)
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
                reference_pieces=reference_pieces,
            )


def check_ctc_alone_settings(search: SearchConfig, encoder_only: bool) -> None:
    """Refuses search settings that decoding with the CTC head alone cannot honour, rather
    than ignoring them (length settings do not apply: the encoder frames bound a labelling)."""
    if encoder_only:
        why, advice = "an encoder-only CTC model is decoded by its CTC head alone", ""
    else:
        why, advice = "ctc_weight=1 decodes with the CTC head alone", " or set ctc_weight below 1"
    unsupported = {
        "sampling": search.sampling,
        "prefix_size": search.prefix_size > 0,
        "no_repeat_ngram_size": search.no_repeat_ngram_size > 0,
    }
    for key, is_set in unsupported.items():
        if is_set:
            raise ConfigError(
                f"{key}={getattr(search, key)}: {why}, which cannot honour it; unset {key}{advice}"
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
    log_probs, lengths = ensemble_ctc_log_probs(
        models, [model.encode(**net_input) for model in models]
    )
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


def ctc_beam_decode(
    models: list[nn.Module],
    net_input: dict[str, torch.Tensor],
    *,
    eos: int,
    beam: int,
    nbest: int,
) -> list[list[Hypothesis]]:
    """CTC prefix beam search of CTC models (an ensemble averages the frame probabilities):
    each utterance's `nbest` labellings, most probable first, eos appended as search does.

    Labellings are ranked by their probability (all alignments), without length penalty: CTC
    scores every labelling over the same frames. score: that log-probability per output token
    (eos counted), as greedy decoding reports; positional_scores: the increments of the prefix
    probability at each token, then to the whole labelling's at eos (they add up to it).
    """
    log_probs, lengths = ensemble_ctc_log_probs(
        models, [model.encode(**net_input) for model in models]
    )
    found = ctc_prefix_beam_search(log_probs, lengths, beam=beam, nbest=nbest)
    return [
        [
            Hypothesis(
                tokens=torch.tensor([*labelling.labels, eos], dtype=torch.long),
                score=labelling.log_prob / (len(labelling.labels) + 1),
                positional_scores=labelling.positional_scores,
            )
            for labelling in labellings
        ]
        for labellings in found
    ]


def forced_log_probs(
    models: list[nn.Module],
    net_input: dict[str, Any],
    target: torch.Tensor,
    *,
    eos: int,
    pad: int,
) -> torch.Tensor:
    """(batch, target length) float32 log-probability of each target token given the source
    and the tokens before it (teacher forcing); 0 at padding.

    `target` (batch, length) holds token ids ending with eos, right-padded. The decoder reads
    eos followed by the target shifted right, as in training and search. An ensemble averages
    probabilities as search does (`EnsembleDecoder`), so a hypothesis scored here gets the
    positional scores search gave it (temperature 1, no unkpen).
    """
    prev_output_tokens = torch.cat([torch.full_like(target[:, :1], eos), target[:, :-1]], dim=1)
    per_model = []
    with torch.inference_mode():
        for model in models:
            logits = model.decode(prev_output_tokens, model.encode(**net_input))
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            per_model.append(log_probs.gather(2, target.unsqueeze(2)).squeeze(2))
        if len(per_model) == 1:
            token_log_probs = per_model[0]
        else:
            # Gathered values only: log of the mean probability of each chosen token.
            token_log_probs = torch.logsumexp(torch.stack(per_model), dim=0) - math.log(
                len(per_model)
            )
        return token_log_probs.masked_fill(target == pad, 0.0)
