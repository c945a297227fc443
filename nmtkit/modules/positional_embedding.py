"""Sinusoidal and learned positional embeddings in fairseq's layout.

Position numbers start at `padding_idx + 1` and are counted over non-pad tokens only, so a
left-padded sentence gets the same positions (and the same embeddings) as the sentence alone;
pad tokens get position `padding_idx`, whose embedding is the zero vector.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_positions(tokens: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """Position of every token: padding_idx + 1, + 2, ... over non-pad tokens; padding_idx at pads."""
    not_pad = tokens.ne(padding_idx).int()
    return (torch.cumsum(not_pad, dim=1).type_as(not_pad) * not_pad).long() + padding_idx


def positions_from_lengths(
    lengths: torch.Tensor, max_length: int, padding_idx: int
) -> torch.Tensor:
    """(batch, max_length) positions of right-padded sequences with `lengths` real steps:
    padding_idx + 1, + 2, ... on the real steps and padding_idx after them (as make_positions
    gives for tokens), for inputs that have no pad id, such as speech frames."""
    steps = torch.arange(max_length, device=lengths.device).unsqueeze(0)
    real = steps < lengths.unsqueeze(1)
    return torch.where(real, steps + padding_idx + 1, padding_idx)


def sinusoidal_table(num_positions: int, embedding_dim: int, padding_idx: int) -> torch.Tensor:
    """(num_positions, embedding_dim) table: sines in the first half, cosines in the second.

    The row of `padding_idx` is zero; an odd dimension gets a zero last column.
    """
    half_dim = embedding_dim // 2
    frequency_step = math.log(10000) / max(half_dim - 1, 1)
    frequencies = torch.exp(torch.arange(half_dim, dtype=torch.float) * -frequency_step)
    angles = torch.arange(num_positions, dtype=torch.float).unsqueeze(1) * frequencies.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[padding_idx, :] = 0
    return table


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal embeddings (no parameters, nothing in the state dict).

    The table grows on demand, so inputs longer than `max_positions` still work; the model's
    `max_source_positions`/`max_target_positions` are enforced by the batching, not here.
    """

    def __init__(self, embedding_dim: int, padding_idx: int, max_positions: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.max_positions = max_positions
        table = sinusoidal_table(max_positions + padding_idx + 1, embedding_dim, padding_idx)
        self.register_buffer("table", table, persistent=False)

    def forward(
        self, tokens: torch.Tensor | None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(batch, len) tokens -> (batch, len, dim); `positions` overrides make_positions(tokens).

        `tokens` may be None when `positions` number whole sequences (positions_from_lengths).
        """
        if positions is None:
            if tokens is None:
                raise ValueError("positional embedding needs tokens or positions")
            positions = make_positions(tokens, self.padding_idx)
        # The largest position is at most padding_idx + len, known without reading the tensor
        # (no device synchronisation).
        length = tokens.size(1) if tokens is not None else positions.size(1)
        needed_rows = self.padding_idx + length + 1
        if needed_rows > self.table.size(0):
            table = sinusoidal_table(needed_rows, self.embedding_dim, self.padding_idx)
            self.table = table.to(device=self.table.device, dtype=self.table.dtype)
        return self.table[positions]


class LearnedPositionalEmbedding(nn.Embedding):
    """Trained position embeddings, initialised like fairseq: normal(0, dim**-0.5), pad row 0."""

    def __init__(self, embedding_dim: int, padding_idx: int, max_positions: int) -> None:
        super().__init__(max_positions + padding_idx + 1, embedding_dim, padding_idx=padding_idx)
        self.max_positions = max_positions
        nn.init.normal_(self.weight, mean=0.0, std=embedding_dim**-0.5)
        with torch.no_grad():
            self.weight[padding_idx].zero_()

    def forward(
        self, tokens: torch.Tensor | None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(batch, len) tokens -> (batch, len, dim); `positions` overrides make_positions(tokens)."""
        if positions is None:
            if tokens is None:
                raise ValueError("positional embedding needs tokens or positions")
            positions = make_positions(tokens, self.padding_idx)
        return super().forward(positions)


def build_positional_embedding(
    embedding_dim: int, padding_idx: int, max_positions: int, learned: bool
) -> SinusoidalPositionalEmbedding | LearnedPositionalEmbedding:
    """The learned or sinusoidal variant, with room for `max_positions` tokens."""
    if learned:
        return LearnedPositionalEmbedding(embedding_dim, padding_idx, max_positions)
    return SinusoidalPositionalEmbedding(embedding_dim, padding_idx, max_positions)
