"""Decodes with one or several models at once, each with its own encoder output and cache."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn


class EnsembleDecoder:
    """Step-by-step next-token log-probabilities of an ensemble, averaged in probability space.

    Each model keeps its own encoder output and incremental state (key/value cache). The rows of
    all of them always describe the same hypotheses: `reorder` selects, repeats and drops rows
    of every model's state together.
    """

    def __init__(self, models: list[nn.Module], temperature: float = 1.0) -> None:
        if not models:
            raise ValueError("EnsembleDecoder needs at least one model")
        self.models = models
        self.temperature = temperature
        self.encoder_outs: list[dict[str, Any]] = []
        self.incremental_states: list[dict[str, Any]] = []

    def max_decoder_positions(self) -> int:
        """The longest target every model accepts."""
        return min(int(model.max_decoder_positions()) for model in self.models)

    def start(
        self, src_tokens: torch.Tensor, src_lengths: torch.Tensor, row_sources: torch.Tensor
    ) -> None:
        """Encodes the batch once per model; row i of the decoder state reads source row_sources[i]."""
        self.encoder_outs = []
        self.incremental_states = []
        for model in self.models:
            encoder_out = model.encode(src_tokens, src_lengths)
            self.encoder_outs.append(model.reorder_encoder_out(encoder_out, row_sources))
            self.incremental_states.append({})

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

    def reorder(self, new_order: torch.Tensor, encoder_order: Optional[torch.Tensor]) -> None:
        """Row i of every cache becomes old row new_order[i]; encoder outputs follow encoder_order.

        Encoder outputs are identical across a sentence's beams, so they only need reordering when
        rows are dropped (encoder_order given), not on every beam reshuffle.
        """
        for index, model in enumerate(self.models):
            model.reorder_incremental_state(self.incremental_states[index], new_order)
            if encoder_order is not None:
                self.encoder_outs[index] = model.reorder_encoder_out(
                    self.encoder_outs[index], encoder_order
                )
