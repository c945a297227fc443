"""Speech-to-text Transformer (Wang et al., 2020, fairseq S2T): a convolutional subsampler and
a Transformer encoder over filterbank frames, the text Transformer decoder, and an optional CTC
head on the encoder output.

Inputs are right-padded features `src_tokens` (batch, frames, features) with `src_lengths`
(batch,) real frames; the lengths alone define the padding (a frame has no pad id). Outputs
for the real frames of an utterance do not depend on the batch it is in: padded frames are
zeroed before every convolution (nmtkit.modules.conv_subsampler) and masked in attention.

Global CMVN lives in the model as the persistent buffers `cmvn_mean` and `cmvn_std`, so a
checkpoint, an average of checkpoints and every member of an ensemble normalise their input
with the statistics they were trained with.

CTC: the head projects the encoder output onto the vocabulary that `ctc_head` names; the blank
is index 0, the dictionary's `<s>`, which never occurs inside a target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from nmtkit.models.s2t_transformer.config import S2TTransformerConfig
from nmtkit.modules.attention import IncrementalState
from nmtkit.modules.conv_subsampler import Conv1dSubsampler, lengths_to_padding_mask
from nmtkit.modules.positional_embedding import (
    SinusoidalPositionalEmbedding,
    positions_from_lengths,
)
from nmtkit.modules.transformer_stack import (
    EncoderOut,
    TransformerDecoder,
    build_embedding,
    build_encoder_layers,
)

POSITION_PADDING_IDX = 1
"""Offset of the encoder's sinusoidal positions (the first frame gets position 2), as fairseq's
S2T encoder, whatever the target dictionary's pad index."""


class S2TTransformerEncoder(nn.Module):
    """Subsampler, scaled outputs plus sinusoidal positions, dropout, Transformer encoder layers
    and (pre-norm) a final LayerNorm."""

    def __init__(self, cfg: S2TTransformerConfig) -> None:
        super().__init__()
        embed_dim = cfg.encoder_embed_dim
        self.dropout = cfg.dropout
        self.embed_scale = 1.0 if cfg.no_scale_embedding else math.sqrt(embed_dim)
        self.subsample = Conv1dSubsampler(
            cfg.input_feat_per_channel * cfg.input_channels,
            cfg.conv_channels,
            embed_dim,
            cfg.conv_kernel_sizes,
        )
        self.embed_positions = SinusoidalPositionalEmbedding(
            embed_dim, POSITION_PADDING_IDX, cfg.max_source_positions
        )
        self.layers = build_encoder_layers(
            cfg.encoder_layers,
            embed_dim,
            cfg.encoder_ffn_embed_dim,
            cfg.encoder_attention_heads,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout,
            activation_fn=cfg.activation_fn,
            normalize_before=cfg.encoder_normalize_before,
        )
        self.layer_norm = nn.LayerNorm(embed_dim) if cfg.encoder_normalize_before else None

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> EncoderOut:
        """features (batch, frames, in_dim) normalised, lengths (batch,) -> encoder output."""
        x, lengths = self.subsample(features, lengths)
        frames = x.size(1)
        padding_mask = lengths_to_padding_mask(lengths, frames)
        positions = positions_from_lengths(lengths, frames, POSITION_PADDING_IDX)
        x = self.embed_scale * x + self.embed_positions(None, positions)
        x = F.dropout(x, p=self.dropout, training=self.training)
        for layer in self.layers:
            x = layer(x, padding_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {"encoder_out": x, "encoder_padding_mask": padding_mask, "encoder_lengths": lengths}


class S2TTransformerModel(nn.Module):
    """Speech-to-text Transformer implementing nmtkit's model API (nmtkit.models.api).

    tgt_vocab_size: size of the target dictionary (decoder embeddings and output).
    ctc_vocab_size: size of the dictionary `cfg.ctc_head` names; None when ctc_head=none.
    """

    supports_output_positions = True
    # The shared decoder accepts g rows per encoder output (beams of one utterance).
    decodes_grouped_rows = True
    # What a subclass with another encoder (s2t_conformer) changes: everything around the
    # encoder (CMVN, decoder, CTC head, the model API) is shared.
    name = "s2t_transformer"
    encoder_class: type[nn.Module] = S2TTransformerEncoder

    def __init__(
        self,
        cfg: S2TTransformerConfig,
        tgt_vocab_size: int,
        padding_idx: int = 1,
        ctc_vocab_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        errors = cfg.validate()
        if errors:
            raise ValueError(f"invalid {self.name} config: " + "; ".join(errors))
        self.cfg = cfg
        self.padding_idx = padding_idx
        self.feature_dim = cfg.input_feat_per_channel * cfg.input_channels
        # Capability flags (nmtkit.models.api) that depend on the config.
        self.ctc_head = cfg.ctc_head
        self.supports_ctc = cfg.ctc_head != "none"
        self.is_encoder_only = cfg.decoder_layers == 0

        self.register_buffer("cmvn_mean", torch.zeros(self.feature_dim, dtype=torch.float32))
        self.register_buffer("cmvn_std", torch.ones(self.feature_dim, dtype=torch.float32))
        self.encoder = self.encoder_class(cfg)
        self.decoder: Optional[TransformerDecoder] = None
        if not self.is_encoder_only:
            self.decoder = TransformerDecoder(
                build_embedding(tgt_vocab_size, cfg.decoder_embed_dim, padding_idx),
                padding_idx,
                num_layers=cfg.decoder_layers,
                ffn_dim=cfg.decoder_ffn_embed_dim,
                num_heads=cfg.decoder_attention_heads,
                encoder_embed_dim=cfg.encoder_embed_dim,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
                activation_fn=cfg.activation_fn,
                normalize_before=cfg.decoder_normalize_before,
                max_positions=cfg.max_target_positions,
                learned_positions=cfg.decoder_learned_pos,
                scale_embedding=not cfg.no_scale_embedding,
                tie_output_to_embedding=cfg.share_decoder_input_output_embed,
            )
        self.ctc_projection: Optional[nn.Linear] = None
        if self.supports_ctc:
            if ctc_vocab_size is None:
                raise ValueError(f"ctc_head={cfg.ctc_head} needs ctc_vocab_size")
            self.ctc_projection = nn.Linear(cfg.encoder_embed_dim, ctc_vocab_size)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        # model.to(dtype=torch.bfloat16) (half-precision inference) would round the CMVN
        # statistics, and with them every input feature: keep them float32, only move them.
        statistics = {name: self._buffers[name] for name in ("cmvn_mean", "cmvn_std")}
        super()._apply(fn, recurse)
        for name, tensor in statistics.items():
            moved = self._buffers[name]
            if moved is not None and moved.dtype != torch.float32:
                self._buffers[name] = tensor.to(device=moved.device, dtype=torch.float32)
        return self

    def set_cmvn(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Copies global CMVN statistics (feature_dim,) into the model's buffers."""
        for name, value in (("mean", mean), ("std", std)):
            if tuple(value.shape) != (self.feature_dim,):
                raise ValueError(
                    f"CMVN {name} has shape {tuple(value.shape)}; the model reads "
                    f"{self.feature_dim} features per frame"
                )
        if not bool((std > 0).all()):
            raise ValueError("CMVN std must be positive everywhere")
        with torch.no_grad():
            self.cmvn_mean.copy_(mean.to(torch.float32))
            self.cmvn_std.copy_(std.to(torch.float32))

    def forward(
        self,
        src_tokens: torch.Tensor,
        src_lengths: torch.Tensor,
        prev_output_tokens: Optional[torch.Tensor] = None,
        output_positions: Optional[torch.Tensor] = None,
        with_ctc: bool = False,
    ) -> Union[torch.Tensor, tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]]:
        """Teacher-forced logits (batch, tgt_len, tgt_vocab) in the compute dtype, or with
        output_positions (flat indices into batch * tgt_len) (len(output_positions), tgt_vocab).

        with_ctc: return (logits or None, ctc_log_probs (batch, frames', ctc_vocab) float32,
            ctc_lengths (batch,)) from one encoder pass; logits are None for an encoder-only
            model or without prev_output_tokens.
        """
        encoder_out = self.encode(src_tokens, src_lengths)
        logits = None
        if self.decoder is not None and prev_output_tokens is not None:
            logits = self.decoder(
                prev_output_tokens, encoder_out, output_positions=output_positions
            )
        if not with_ctc:
            if logits is None:
                raise ValueError(
                    "forward without with_ctc needs a decoder and prev_output_tokens "
                    f"(decoder_layers={self.cfg.decoder_layers})"
                )
            return logits
        ctc_log_probs, ctc_lengths = self.ctc_log_probs(encoder_out)
        return logits, ctc_log_probs, ctc_lengths

    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOut:
        """{"encoder_out": (batch, frames', dim), "encoder_padding_mask": (batch, frames') bool,
        "encoder_lengths": (batch,)} for features (batch, frames, feature_dim).

        Features are normalised in float32, then cast to the weights' dtype.
        """
        if src_tokens.dim() != 3 or src_tokens.size(-1) != self.feature_dim:
            raise ValueError(
                f"expected features (batch, frames, {self.feature_dim}), got "
                f"{tuple(src_tokens.shape)}"
            )
        features = (src_tokens.float() - self.cmvn_mean) / self.cmvn_std
        weight_dtype = self.encoder.subsample.conv_layers[0].weight.dtype
        return self.encoder(features.to(weight_dtype), src_lengths)

    def ctc_log_probs(self, encoder_out: EncoderOut) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities (batch, frames', ctc_vocab) in float32, valid frames (batch,)).

        float32 because the CTC loss has no bfloat16 kernel on the CPU, and its sums over
        alignments need the range. The blank is index 0 (nmtkit.models.api.CTC_BLANK).
        """
        if self.ctc_projection is None:
            raise ValueError("this model has no CTC head (ctc_head=none)")
        x = F.dropout(encoder_out["encoder_out"], p=self.cfg.ctc_dropout, training=self.training)
        logits = self.ctc_projection(x)
        return F.log_softmax(logits.float(), dim=-1), encoder_out["encoder_lengths"]

    def decode(
        self,
        prev_output_tokens: torch.Tensor,
        encoder_out: EncoderOut,
        incremental_state: Optional[IncrementalState] = None,
    ) -> torch.Tensor:
        """Logits (batch, tgt_len, vocab); with `incremental_state`, (batch, 1, vocab).

        Incremental decoding: an empty dict per batch, passed on every step with the whole
        prefix so far. Grouped rows are accepted (nmtkit.models.api).
        """
        if self.decoder is None:
            raise ValueError("an encoder-only model has no decoder: decode its CTC head")
        return self.decoder(prev_output_tokens, encoder_out, incremental_state)

    def reorder_encoder_out(self, encoder_out: EncoderOut, new_order: torch.Tensor) -> EncoderOut:
        """Every entry (output, padding mask, lengths) with its batch rows selected by new_order."""
        return {name: tensor.index_select(0, new_order) for name, tensor in encoder_out.items()}

    def reorder_incremental_state(
        self, incremental_state: IncrementalState, new_order: torch.Tensor
    ) -> None:
        """Selects/permutes every cached key/value (self and encoder attention) in place."""
        if self.decoder is not None:
            self.decoder.reorder_incremental_state(incremental_state, new_order)

    def max_decoder_positions(self) -> int:
        return self.cfg.max_target_positions
