"""Decodes with one or several models at once, each with its own encoder output and cache.

Search asks next-token scorers for log-probabilities and reorders their states with the
hypotheses (`NextTokenScorer`); the decoder ensemble is one such scorer. Scorers too costly
for the whole vocabulary (the CTC prefix scorer, nmtkit.generation.ctc_prefix_score) score
only the candidates that the full scorers pre-selected (`CandidateScorer`).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Protocol

import torch
from torch import nn

from nmtkit.models.api import capability


class NextTokenScorer(Protocol):
    """What beam search and sampling need from a source of next-token scores."""

    def start(
        self,
        net_input: dict[str, torch.Tensor],
        rows_per_source: int,
        blocks_stay_together: bool,
    ) -> None:
        """Prepares a batch of sources (net_input without prev_output_tokens); every source
        gets `rows_per_source` consecutive hypothesis rows."""

    def log_probs(self, prev_output_tokens: torch.Tensor) -> torch.Tensor:
        """(rows, vocab) float32 log-probabilities of the next token of each row."""

    def reorder(self, new_order: torch.Tensor, kept_sources: Optional[torch.Tensor]) -> None:
        """Row i becomes old row new_order[i]; `kept_sources` when sources left the batch."""

    def max_decoder_positions(self) -> int:
        """The longest hypothesis this scorer can score."""


class CandidateScorer(Protocol):
    """What beam search needs from a scorer of pre-selected candidate tokens."""

    def start(self, encoder_outs: list[dict[str, Any]], rows_per_source: int) -> torch.Tensor:
        """Prepares a batch from each model's encoder output (one row per source); every source
        gets `rows_per_source` consecutive rows of empty hypotheses. Returns the longest
        hypothesis (tokens before end-of-sentence) it can score per source (sources,)."""
        ...

    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        """(rows, K) float32 score increments of appending candidates (rows, K) to each row;
        -inf for what it rules out."""
        ...

    def advance(
        self, new_order: torch.Tensor, tokens: torch.Tensor, kept_sources: Optional[torch.Tensor]
    ) -> None:
        """Row i becomes old row new_order[i] extended by tokens[i] (a candidate last scored);
        `kept_sources` when sources left the batch."""
        ...


class EnsembleDecoder:
    """Step-by-step next-token log-probabilities of an ensemble, averaged in probability space.

    Each model keeps its own encoder output and incremental state (key/value cache). The rows of
    all of them always describe the same hypotheses: `reorder` selects, repeats and drops rows
    of every model's state together.

    The decoder rows come in blocks of `rows_per_source` consecutive rows reading one source
    sentence (the beams of a sentence). A model whose class sets `decodes_grouped_rows = True`
    keeps one encoder output per source, which its encoder-decoder attention shares across the
    block; any other model gets the encoder output repeated for every row.
    """

    def __init__(self, models: list[nn.Module], temperature: float = 1.0) -> None:
        if not models:
            raise ValueError("EnsembleDecoder needs at least one model")
        self.models = models
        self.temperature = temperature
        self.encoder_outs: list[dict[str, Any]] = []
        self.source_encoder_outs: list[dict[str, Any]] = []
        self.incremental_states: list[dict[str, Any]] = []

    def max_decoder_positions(self) -> int:
        """The longest target every model accepts."""
        return min(int(model.max_decoder_positions()) for model in self.models)

    def start(
        self,
        net_input: dict[str, torch.Tensor],
        rows_per_source: int,
        blocks_stay_together: bool,
    ) -> None:
        """Encodes the batch once per model; rows g*i .. g*i+g-1 read source i (g = rows_per_source).

        net_input: the model's encoder inputs (src_tokens and src_lengths, whatever their
        shape: token ids for text, (batch, frames, features) for speech).

        blocks_stay_together: later reorderings keep each block of g rows inside one old block
        (beam search). Otherwise (sampling, where rows leave one at a time) every row gets its own
        copy of the encoder output and later reorderings are row by row.

        `source_encoder_outs` then holds each model's encoder output with one row per source,
        for scorers that read the encoder too (the CTC prefix scorer); search releases it.
        """
        self.rows_per_source = rows_per_source if blocks_stay_together else 1
        self.encoder_outs = []
        self.source_encoder_outs = []
        self.incremental_states = []
        for model in self.models:
            encoder_out = model.encode(**net_input)
            self.source_encoder_outs.append(encoder_out)
            if rows_per_source > 1 and not self._grouped(model):
                lengths = net_input["src_lengths"]
                row_sources = torch.arange(lengths.size(0), device=lengths.device)
                encoder_out = model.reorder_encoder_out(
                    encoder_out, row_sources.repeat_interleave(rows_per_source)
                )
            self.encoder_outs.append(encoder_out)
            self.incremental_states.append({})

    def _grouped(self, model: nn.Module) -> bool:
        return self.rows_per_source > 1 and capability(model, "decodes_grouped_rows")

    def log_probs(self, prev_output_tokens: torch.Tensor) -> torch.Tensor:
        """(rows, vocab) float32 log-probabilities of the token after `prev_output_tokens` (rows, t)."""
        per_model = []
        for model, encoder_out, state in zip(
            self.models, self.encoder_outs, self.incremental_states, strict=True
        ):
            logits = model.decode(prev_output_tokens, encoder_out, incremental_state=state)
            logits = logits[:, -1, :].float()
            if self.temperature != 1.0:
                logits = logits / self.temperature
            per_model.append(torch.log_softmax(logits, dim=-1))
        if len(per_model) == 1:
            return per_model[0]
        # log of the mean probability, computed without leaving log space.
        return torch.logsumexp(torch.stack(per_model), dim=0) - math.log(len(per_model))

    def reorder(self, new_order: torch.Tensor, kept_sources: Optional[torch.Tensor]) -> None:
        """Row i of every cache becomes old row new_order[i]; `kept_sources` (the sources still
        decoded, as indices into the previous ones) is given when sources were dropped.

        Each block of rows_per_source new rows must come from one old block. Encoder outputs are
        identical across a block, so they only need reordering when sources are dropped, not on
        every beam reshuffle.
        """
        row_sources = None
        if kept_sources is not None and self.rows_per_source > 1:
            offsets = torch.arange(self.rows_per_source, device=kept_sources.device)
            row_sources = (kept_sources.unsqueeze(1) * self.rows_per_source + offsets).view(-1)
        for index, model in enumerate(self.models):
            model.reorder_incremental_state(self.incremental_states[index], new_order)
            if kept_sources is not None:
                self.encoder_outs[index] = model.reorder_encoder_out(
                    self.encoder_outs[index],
                    kept_sources if row_sources is None or self._grouped(model) else row_sources,
                )
