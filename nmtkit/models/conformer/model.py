"""Speech-to-text Conformer (Gulati et al., 2020; fairseq's `s2t_conformer` with ESPnet's
relative-position attention): the S2T Transformer's convolutional subsampler, Conformer blocks
(nmtkit.modules.conformer_layer), the shared Transformer decoder and an optional CTC head.

Encoder: subsampled frames * sqrt(dim) (unless no_scale_embedding) -> Linear -> dropout ->
Conformer blocks, which take the relative sinusoidal position embeddings of the batch's width;
there is no absolute position and no final LayerNorm after the stack (each block ends with
one), as in fairseq.

Inputs are right-padded features `src_tokens` (batch, frames, features) with `src_lengths`
(batch,) real frames; the lengths alone define the padding. Outputs for the real frames of an
utterance do not depend on the batch it is in: padded frames are zeroed before every
convolution (subsampler and depthwise), masked as attention keys, left out of batch-norm
statistics, and relative positions do not depend on the padded width. A depthwise kernel
longer than an utterance is well-defined ('same' padding reads zeros beyond its ends), down to
a single subsampled frame.

Global CMVN lives in the model as the persistent float32 buffers `cmvn_mean` and `cmvn_std`;
the CTC head's blank is index 0, the dictionary's `<s>`. Both as in s2t_transformer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nmtkit.models.conformer.config import S2TConformerConfig
from nmtkit.models.s2t_transformer.model import S2TTransformerModel
from nmtkit.modules.conformer_layer import ConformerEncoderLayer
from nmtkit.modules.conv_subsampler import (
    Conv1dSubsampler,
    lengths_to_padding_mask,
    subsampled_lengths,
)
from nmtkit.modules.relative_attention import RelativePositionalEncoding
from nmtkit.modules.transformer_stack import EncoderOut


class S2TConformerEncoder(nn.Module):
    """Subsampler, scaled and projected outputs, dropout, Conformer blocks (module docstring)."""

    def __init__(self, cfg: S2TConformerConfig) -> None:
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
        # fairseq's `linear`: mixes the subsampler's GLU outputs before the first block.
        self.input_projection = nn.Linear(embed_dim, embed_dim)
        self.embed_positions = RelativePositionalEncoding(
            embed_dim, subsampled_lengths(cfg.max_source_positions, cfg.conv_kernel_sizes)
        )
        self.layers = nn.ModuleList(
            ConformerEncoderLayer(
                embed_dim,
                cfg.encoder_ffn_embed_dim,
                cfg.encoder_attention_heads,
                kernel_size=cfg.depthwise_conv_kernel_size,
                conv_norm=cfg.conv_norm,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
            )
            for _ in range(cfg.encoder_layers)
        )

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> EncoderOut:
        """features (batch, frames, in_dim) normalised, lengths (batch,) -> encoder output."""
        x, lengths = self.subsample(features, lengths)
        frames = x.size(1)
        padding_mask = lengths_to_padding_mask(lengths, frames)
        x = self.input_projection(self.embed_scale * x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        pos_emb = self.embed_positions(frames)
        for layer in self.layers:
            x = layer(x, pos_emb, padding_mask)
        return {"encoder_out": x, "encoder_padding_mask": padding_mask, "encoder_lengths": lengths}


class S2TConformerModel(S2TTransformerModel):
    """Speech-to-text Conformer implementing nmtkit's model API (nmtkit.models.api): the
    S2T Transformer model (CMVN, shared decoder, CTC head) around a Conformer encoder.

    tgt_vocab_size: size of the target dictionary (decoder embeddings and output).
    ctc_vocab_size: size of the dictionary `cfg.ctc_head` names; None when ctc_head=none.
    """

    name = "s2t_conformer"
    encoder_class = S2TConformerEncoder
