"""Transformer encoder and decoder stacks shared by the models (text and speech).

They take explicit sizes rather than a model config, so any model can build them. The
parameter names (`embed_tokens`, `embed_positions`, `layernorm_embedding`, `layers.N`,
`layer_norm`, `output_projection`) are part of the checkpoint format: do not rename them.

The decoder expects right-padded `prev_output_tokens`: the causal mask alone keeps pads out of
every real position's view, so its self-attention runs without a padding mask (flash kernels).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nmtkit.modules.attention import IncrementalState
from nmtkit.modules.positional_embedding import build_positional_embedding, make_positions
from nmtkit.modules.transformer_layer import TransformerDecoderLayer, TransformerEncoderLayer

EncoderOut = dict[str, torch.Tensor]
"""{"encoder_out": (batch, src_len, dim), "encoder_padding_mask": (batch, src_len) bool}."""


def build_embedding(vocab_size: int, embed_dim: int, padding_idx: int) -> nn.Embedding:
    """Token embeddings initialised like fairseq: normal(0, dim**-0.5), pad row zero."""
    embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
    nn.init.normal_(embedding.weight, mean=0.0, std=embed_dim**-0.5)
    with torch.no_grad():
        embedding.weight[padding_idx].zero_()
    return embedding


def build_encoder_layers(
    num_layers: int,
    embed_dim: int,
    ffn_dim: int,
    num_heads: int,
    *,
    dropout: float,
    attention_dropout: float,
    activation_dropout: float,
    activation_fn: str,
    normalize_before: bool,
) -> nn.ModuleList:
    """`num_layers` self-attention + feed-forward layers of one width."""
    return nn.ModuleList(
        TransformerEncoderLayer(
            embed_dim,
            ffn_dim,
            num_heads,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            activation_fn=activation_fn,
            normalize_before=normalize_before,
        )
        for _ in range(num_layers)
    )


class EmbeddedLayerStack(nn.Module):
    """What encoder and decoder share: scaled token embeddings plus positions (optionally
    layer-normed, then dropout) in front of a layer stack, and the final pre-norm LayerNorm."""

    def __init__(
        self,
        embed_tokens: nn.Embedding,
        padding_idx: int,
        *,
        dropout: float,
        max_positions: int,
        learned_positions: bool = False,
        positional_embeddings: bool = True,
        scale_embedding: bool = True,
        layernorm_embedding: bool = False,
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        embed_dim = embed_tokens.embedding_dim
        self.padding_idx = padding_idx
        self.dropout = dropout
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(embed_dim) if scale_embedding else 1.0
        self.embed_positions = (
            build_positional_embedding(embed_dim, padding_idx, max_positions, learned_positions)
            if positional_embeddings
            else None
        )
        self.layernorm_embedding = nn.LayerNorm(embed_dim) if layernorm_embedding else None
        self.layer_norm = nn.LayerNorm(embed_dim) if normalize_before else None

    def embed(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.embed_positions is not None:
            x = x + self.embed_positions(tokens, positions)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return F.dropout(x, p=self.dropout, training=self.training)


class TransformerEncoder(EmbeddedLayerStack):
    """Token + position embeddings, then a stack of self-attention layers.

    The padding mask is read from pad ids, which lets left-padded sources get the positions
    they would have alone (see nmtkit.modules.positional_embedding).
    """

    def __init__(
        self,
        embed_tokens: nn.Embedding,
        padding_idx: int,
        *,
        num_layers: int,
        ffn_dim: int,
        num_heads: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        activation_fn: str,
        normalize_before: bool,
        max_positions: int,
        learned_positions: bool = False,
        positional_embeddings: bool = True,
        scale_embedding: bool = True,
        layernorm_embedding: bool = False,
    ) -> None:
        super().__init__(
            embed_tokens,
            padding_idx,
            dropout=dropout,
            max_positions=max_positions,
            learned_positions=learned_positions,
            positional_embeddings=positional_embeddings,
            scale_embedding=scale_embedding,
            layernorm_embedding=layernorm_embedding,
            normalize_before=normalize_before,
        )
        self.layers = build_encoder_layers(
            num_layers,
            embed_tokens.embedding_dim,
            ffn_dim,
            num_heads,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            activation_fn=activation_fn,
            normalize_before=normalize_before,
        )

    def forward(self, src_tokens: torch.Tensor) -> EncoderOut:
        padding_mask = src_tokens.eq(self.padding_idx)
        x = self.embed(src_tokens)
        # Pads start as zero vectors (as in fairseq), whatever the embeddings added to them.
        x = x * (~padding_mask).unsqueeze(-1).type_as(x)
        for layer in self.layers:
            x = layer(x, padding_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {"encoder_out": x, "encoder_padding_mask": padding_mask}


class TransformerDecoder(EmbeddedLayerStack):
    """Token + position embeddings, causal self-attention / encoder attention layers, output
    projection to vocabulary logits.

    Accepts grouped rows (nmtkit.models.api, `decodes_grouped_rows`): g * batch query rows
    against an encoder output of batch sources.
    """

    def __init__(
        self,
        embed_tokens: nn.Embedding,
        padding_idx: int,
        *,
        num_layers: int,
        ffn_dim: int,
        num_heads: int,
        encoder_embed_dim: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        activation_fn: str,
        normalize_before: bool,
        max_positions: int,
        learned_positions: bool = False,
        positional_embeddings: bool = True,
        scale_embedding: bool = True,
        layernorm_embedding: bool = False,
        tie_output_to_embedding: bool = False,
    ) -> None:
        super().__init__(
            embed_tokens,
            padding_idx,
            dropout=dropout,
            max_positions=max_positions,
            learned_positions=learned_positions,
            positional_embeddings=positional_embeddings,
            scale_embedding=scale_embedding,
            layernorm_embedding=layernorm_embedding,
            normalize_before=normalize_before,
        )
        embed_dim = embed_tokens.embedding_dim
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(
                embed_dim,
                ffn_dim,
                num_heads,
                encoder_embed_dim=encoder_embed_dim,
                dropout=dropout,
                attention_dropout=attention_dropout,
                activation_dropout=activation_dropout,
                activation_fn=activation_fn,
                normalize_before=normalize_before,
            )
            for _ in range(num_layers)
        )
        vocab_size = embed_tokens.num_embeddings
        self.output_projection = nn.Linear(embed_dim, vocab_size, bias=False)
        if tie_output_to_embedding:
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=embed_dim**-0.5)

    def forward(
        self,
        prev_output_tokens: torch.Tensor,
        encoder_out: EncoderOut,
        incremental_state: Optional[IncrementalState] = None,
        output_positions: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits (batch, tgt_len, vocab); incremental: (batch, 1, vocab) of the last position;
        with output_positions (flat indices into batch * tgt_len): (len(output_positions), vocab).
        """
        tokens = prev_output_tokens
        positions = None
        if self.embed_positions is not None:
            positions = make_positions(prev_output_tokens, self.padding_idx)
        if incremental_state is not None:
            # Only the positions not yet in the cache are computed (normally the last one).
            cached_steps = self.layers[0].self_attn.cached_length(incremental_state)
            if cached_steps >= prev_output_tokens.size(1):
                raise ValueError(
                    f"incremental_state already holds {cached_steps} steps but "
                    f"prev_output_tokens has {prev_output_tokens.size(1)}: pass the whole "
                    "prefix including the new token, and a fresh dict for each new batch"
                )
            tokens = tokens[:, cached_steps:]
            if positions is not None:
                positions = positions[:, cached_steps:]

        x = self.embed(tokens, positions)
        for layer in self.layers:
            x = layer(
                x,
                encoder_out["encoder_out"],
                encoder_out["encoder_padding_mask"],
                incremental_state=incremental_state,
            )
        if incremental_state is not None:
            x = x[:, -1:]
        if output_positions is not None:
            # The vocabulary projection is the costliest layer: skip the positions not asked for.
            x = x.reshape(-1, x.size(-1)).index_select(0, output_positions)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.output_projection(x)

    def reorder_incremental_state(
        self, incremental_state: IncrementalState, new_order: torch.Tensor
    ) -> None:
        """Selects/permutes every cached key/value (self and encoder attention) in place."""
        for layer in self.layers:
            layer.reorder_incremental_state(incremental_state, new_order)
