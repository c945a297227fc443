"""Forbids tokens that would repeat an n-gram already present in a hypothesis, for all rows at once."""

from __future__ import annotations

import math

import torch


def block_repeated_ngrams(lprobs: torch.Tensor, tokens: torch.Tensor, ngram_size: int) -> None:
    """Sets to -inf (in place) every next token that would complete an n-gram seen before.

    `lprobs` is (rows, vocab); `tokens` is (rows, length), each row the hypothesis so far. The
    next n-gram is the last `ngram_size - 1` tokens followed by the candidate; it is banned if an
    earlier window of `ngram_size` tokens starts with the same `ngram_size - 1` tokens.
    """
    rows, length = tokens.shape
    if ngram_size <= 0 or length < ngram_size:
        return
    windows = tokens.unfold(1, ngram_size, 1)  # (rows, length - ngram_size + 1, ngram_size)
    context = tokens[:, length - ngram_size + 1 :]  # (rows, ngram_size - 1)
    same_context = (windows[:, :, :-1] == context.unsqueeze(1)).all(dim=2)
    # A token may close several matching windows, and matching and non-matching windows may
    # name the same token: count matches per token instead of scattering booleans, whose
    # result would depend on the write order.
    matches = torch.zeros(rows, lprobs.size(1), dtype=torch.int32, device=lprobs.device)
    matches.scatter_add_(1, windows[:, :, -1], same_context.to(torch.int32))
    lprobs.masked_fill_(matches > 0, -math.inf)
