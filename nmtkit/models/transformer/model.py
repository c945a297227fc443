"""Transformer encoder-decoder (Vaswani et al., 2017) in fairseq's variant.

Sources are expected with `padding_idx` pads anywhere (left-padded by default); targets
(`prev_output_tokens`) right-padded, so the causal mask alone keeps pads out of every real
position's view and decoder self-attention runs without a padding mask (flash kernels).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nmtkit.models.transformer.config import TransformerConfig
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


class EmbeddedLayerStack(nn.Module):
    """What encoder and decoder share: scaled token embeddings plus positions (optionally
    layer-normed, then dropout) in front of a layer stack, and the final pre-norm LayerNorm."""

    def __init__(
        self,
        cfg: TransformerConfig,
        embed_tokens: nn.Embedding,
        padding_idx: int,
        *,
        max_positions: int,
        learned_positions: bool,
        normalize_before: bool,
    ) -> None:
        super().__init__()
        embed_dim = embed_tokens.embedding_dim
        self.padding_idx = padding_idx
        self.dropout = cfg.dropout
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if cfg.no_scale_embedding else math.sqrt(embed_dim)
        self.embed_positions = (
            None
            if cfg.no_token_positional_embeddings
            else build_positional_embedding(
                embed_dim, padding_idx, max_positions, learned_positions
            )
        )
        self.layernorm_embedding = nn.LayerNorm(embed_dim) if cfg.layernorm_embedding else None
        self.layer_norm = nn.LayerNorm(embed_dim) if normalize_before else None

    def embed(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.embed_positions is not None:
            x = x + self.embed_positions(tokens, positions)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return F.dropout(x, p=self.dropout, training=self.training)


class TransformerEncoder(EmbeddedLayerStack):
    """Token + position embeddings, then a stack of self-attention layers."""

    def __init__(
        self, cfg: TransformerConfig, embed_tokens: nn.Embedding, padding_idx: int
    ) -> None:
        super().__init__(
            cfg,
            embed_tokens,
            padding_idx,
            max_positions=cfg.max_source_positions,
            learned_positions=cfg.encoder_learned_pos,
            normalize_before=cfg.encoder_normalize_before,
        )
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                cfg.encoder_embed_dim,
                cfg.encoder_ffn_embed_dim,
                cfg.encoder_attention_heads,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
                activation_fn=cfg.activation_fn,
                normalize_before=cfg.encoder_normalize_before,
            )
            for _ in range(cfg.encoder_layers)
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
    projection to vocabulary logits."""

    def __init__(
        self,
        cfg: TransformerConfig,
        embed_tokens: nn.Embedding,
        padding_idx: int,
        tie_output_to_embedding: bool,
    ) -> None:
        super().__init__(
            cfg,
            embed_tokens,
            padding_idx,
            max_positions=cfg.max_target_positions,
            learned_positions=cfg.decoder_learned_pos,
            normalize_before=cfg.decoder_normalize_before,
        )
        embed_dim = cfg.decoder_embed_dim
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(
                embed_dim,
                cfg.decoder_ffn_embed_dim,
                cfg.decoder_attention_heads,
                encoder_embed_dim=cfg.encoder_embed_dim,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
                activation_fn=cfg.activation_fn,
                normalize_before=cfg.decoder_normalize_before,
                cache_prefix=f"decoder.layers.{index}",
            )
            for index in range(cfg.decoder_layers)
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


class TransformerModel(nn.Module):
    """Encoder-decoder transformer implementing nmtkit's model API (see nmtkit.models)."""

    # decode() accepts g rows per encoder output (the beams of a sentence share their source's
    # keys and values in encoder-decoder attention), see nmtkit.modules.attention.
    decodes_grouped_rows = True

    def __init__(
        self,
        cfg: TransformerConfig,
        src_vocab_size: int,
        tgt_vocab_size: int,
        padding_idx: int = 1,
    ) -> None:
        super().__init__()
        errors = cfg.validate()
        if errors:
            raise ValueError("invalid transformer config: " + "; ".join(errors))
        self.cfg = cfg
        self.padding_idx = padding_idx
        encoder_embed = build_embedding(src_vocab_size, cfg.encoder_embed_dim, padding_idx)
        if cfg.share_all_embeddings:
            if src_vocab_size != tgt_vocab_size:
                raise ValueError(
                    f"share_all_embeddings needs one joined dictionary, but the source has "
                    f"{src_vocab_size} symbols and the target {tgt_vocab_size} "
                    "(preprocess with joined_dictionary=true)"
                )
            decoder_embed = encoder_embed
        else:
            decoder_embed = build_embedding(tgt_vocab_size, cfg.decoder_embed_dim, padding_idx)
        self.encoder = TransformerEncoder(cfg, encoder_embed, padding_idx)
        self.decoder = TransformerDecoder(
            cfg,
            decoder_embed,
            padding_idx,
            tie_output_to_embedding=cfg.share_all_embeddings
            or cfg.share_decoder_input_output_embed,
        )

    def forward(
        self,
        src_tokens: torch.Tensor,
        src_lengths: torch.Tensor,
        prev_output_tokens: torch.Tensor,
        output_positions: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (batch, tgt_len, tgt_vocab) in the compute dtype.

        output_positions: flat indices into batch * tgt_len; only their logits are computed,
            returned as (len(output_positions), tgt_vocab). Training passes the non-padding
            target positions.
        """
        encoder_out = self.encode(src_tokens, src_lengths)
        return self.decoder(prev_output_tokens, encoder_out, output_positions=output_positions)

    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOut:
        """{"encoder_out": (batch, src_len, dim), "encoder_padding_mask": (batch, src_len)}.

        Padding is read from the tokens, so `src_lengths` is accepted for the API only.
        """
        return self.encoder(src_tokens)

    def decode(
        self,
        prev_output_tokens: torch.Tensor,
        encoder_out: EncoderOut,
        incremental_state: Optional[IncrementalState] = None,
    ) -> torch.Tensor:
        """Logits (batch, tgt_len, vocab); with `incremental_state`, (batch, 1, vocab).

        Incremental decoding: create an empty dict per batch (and per model of an ensemble)
        and pass it on every step with the whole prefix so far; only the positions the
        cache does not hold yet are computed and the last one's logits returned.
        """
        return self.decoder(prev_output_tokens, encoder_out, incremental_state)

    def reorder_encoder_out(self, encoder_out: EncoderOut, new_order: torch.Tensor) -> EncoderOut:
        """The encoder output with its batch entries selected/permuted by `new_order`."""
        return {name: tensor.index_select(0, new_order) for name, tensor in encoder_out.items()}

    def reorder_incremental_state(
        self, incremental_state: IncrementalState, new_order: torch.Tensor
    ) -> None:
        """Selects/permutes every cached key/value (self and encoder attention) in place."""
        for layer in self.decoder.layers:
            layer.reorder_incremental_state(incremental_state, new_order)

    def max_decoder_positions(self) -> int:
        return self.cfg.max_target_positions
