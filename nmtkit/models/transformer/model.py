"""Transformer encoder-decoder (Vaswani et al., 2017) in fairseq's variant.

Sources are expected with `padding_idx` pads anywhere (left-padded by default); targets
(`prev_output_tokens`) right-padded, so the causal mask alone keeps pads out of every real
position's view and decoder self-attention runs without a padding mask (flash kernels).
The stacks themselves live in nmtkit.modules.transformer_stack.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nmtkit.models.transformer.config import TransformerConfig
from nmtkit.modules.attention import IncrementalState
from nmtkit.modules.transformer_stack import (
    EncoderOut,
    TransformerDecoder,
    TransformerEncoder,
    build_embedding,
)


class TransformerModel(nn.Module):
    """Encoder-decoder transformer implementing nmtkit's model API (nmtkit.models.api)."""

    supports_output_positions = True
    # decode() accepts g rows per encoder output (the beams of a sentence share their source's
    # keys and values in encoder-decoder attention), see nmtkit.modules.attention.
    decodes_grouped_rows = True
    supports_ctc = False
    is_encoder_only = False

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
        shared = {
            "dropout": cfg.dropout,
            "attention_dropout": cfg.attention_dropout,
            "activation_dropout": cfg.activation_dropout,
            "activation_fn": cfg.activation_fn,
            "positional_embeddings": not cfg.no_token_positional_embeddings,
            "scale_embedding": not cfg.no_scale_embedding,
            "layernorm_embedding": cfg.layernorm_embedding,
        }
        self.encoder = TransformerEncoder(
            encoder_embed,
            padding_idx,
            num_layers=cfg.encoder_layers,
            ffn_dim=cfg.encoder_ffn_embed_dim,
            num_heads=cfg.encoder_attention_heads,
            normalize_before=cfg.encoder_normalize_before,
            max_positions=cfg.max_source_positions,
            learned_positions=cfg.encoder_learned_pos,
            **shared,
        )
        self.decoder = TransformerDecoder(
            decoder_embed,
            padding_idx,
            num_layers=cfg.decoder_layers,
            ffn_dim=cfg.decoder_ffn_embed_dim,
            num_heads=cfg.decoder_attention_heads,
            encoder_embed_dim=cfg.encoder_embed_dim,
            normalize_before=cfg.decoder_normalize_before,
            max_positions=cfg.max_target_positions,
            learned_positions=cfg.decoder_learned_pos,
            tie_output_to_embedding=cfg.share_all_embeddings
            or cfg.share_decoder_input_output_embed,
            **shared,
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

        Padding is read from the pad ids (sources are left-padded), which gives the mask
        `src_lengths` describes; `src_lengths` is accepted for the API.
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
        self.decoder.reorder_incremental_state(incremental_state, new_order)

    def max_decoder_positions(self) -> int:
        return self.cfg.max_target_positions
