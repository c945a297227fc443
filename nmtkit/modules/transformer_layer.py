"""Transformer encoder and decoder layers (batch-first), pre- or post-norm, as in fairseq.

Post-norm (Vaswani et al.):  x = LayerNorm(x + Dropout(Sublayer(x)))
Pre-norm:                    x = x + Dropout(Sublayer(LayerNorm(x)))
A pre-norm stack needs a final LayerNorm after its last layer; the model adds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nmtkit.modules.attention import IncrementalState, MultiheadAttention

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu}
"""Activation functions of the feed-forward block, by config name."""


class FeedForward(nn.Module):
    """Linear -> activation -> dropout -> Linear (nn.Linear's default init, as fairseq)."""

    def __init__(
        self, embed_dim: int, ffn_dim: int, activation_fn: str, activation_dropout: float
    ) -> None:
        super().__init__()
        if activation_fn not in ACTIVATIONS:
            raise ValueError(f"activation_fn={activation_fn!r}: choose one of {list(ACTIVATIONS)}")
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.activation = ACTIVATIONS[activation_fn]
        self.activation_dropout = activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.fc1(x))
        x = F.dropout(x, p=self.activation_dropout, training=self.training)
        return self.fc2(x)


class _ResidualBlock(nn.Module):
    """Shared residual/normalisation wiring of the layers below."""

    normalize_before: bool
    dropout: float

    def _residual(
        self,
        x: torch.Tensor,
        layer_norm: nn.LayerNorm,
        sublayer: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        if self.normalize_before:
            return x + F.dropout(sublayer(layer_norm(x)), p=self.dropout, training=self.training)
        return layer_norm(x + F.dropout(sublayer(x), p=self.dropout, training=self.training))


class TransformerEncoderLayer(_ResidualBlock):
    """Self-attention over the source, then a feed-forward block."""

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        activation_fn: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.normalize_before = normalize_before
        self.dropout = dropout
        self.self_attn = MultiheadAttention(embed_dim, num_heads, dropout=attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, ffn_dim, activation_fn, activation_dropout)
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (batch, src_len, dim); padding_mask: (batch, src_len) bool, True at pads."""
        x = self._residual(
            x,
            self.self_attn_layer_norm,
            lambda h: self.self_attn(h, key_padding_mask=padding_mask),
        )
        return self._residual(x, self.final_layer_norm, self.ffn)


class TransformerDecoderLayer(_ResidualBlock):
    """Causal self-attention, attention over the encoder output, then a feed-forward block.

    Each attention module keeps its own entry in the incremental-decoding dict, under a key
    unique to the module instance (nmtkit.modules.attention).
    """

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        num_heads: int,
        *,
        encoder_embed_dim: Optional[int] = None,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        activation_fn: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.normalize_before = normalize_before
        self.dropout = dropout
        self.self_attn = MultiheadAttention(embed_dim, num_heads, dropout=attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.encoder_attn = MultiheadAttention(
            embed_dim,
            num_heads,
            dropout=attention_dropout,
            encoder_decoder=True,
            key_value_dim=encoder_embed_dim or embed_dim,
        )
        self.encoder_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, ffn_dim, activation_fn, activation_dropout)
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        encoder_out: Optional[torch.Tensor],
        encoder_padding_mask: Optional[torch.Tensor] = None,
        self_attn_padding_mask: Optional[torch.Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
    ) -> torch.Tensor:
        """x: (batch, tgt_len, dim) -> (batch, tgt_len, dim).

        encoder_out: (batch, src_len, encoder_dim); may be None on incremental steps after the
            first (its keys/values are cached).
        self_attn_padding_mask: (batch, tgt_len) True at pads; unnecessary for right-padded
            targets, which the causal mask already hides from every real position.
        """
        x = self._residual(
            x,
            self.self_attn_layer_norm,
            lambda h: self.self_attn(
                h,
                key_padding_mask=self_attn_padding_mask,
                causal=True,
                incremental_state=incremental_state,
            ),
        )
        x = self._residual(
            x,
            self.encoder_attn_layer_norm,
            lambda h: self.encoder_attn(
                h,
                encoder_out,
                key_padding_mask=encoder_padding_mask,
                incremental_state=incremental_state,
            ),
        )
        return self._residual(x, self.final_layer_norm, self.ffn)

    def reorder_incremental_state(
        self, incremental_state: IncrementalState, new_order: torch.Tensor
    ) -> None:
        """Applies a beam reordering to this layer's cached keys/values."""
        self.self_attn.reorder_cache(incremental_state, new_order)
        self.encoder_attn.reorder_cache(incremental_state, new_order)
