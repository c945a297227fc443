"""Conformer blocks (Gulati et al., 2020) for speech encoders, batch-first.

One block:

    x = x + 1/2 * FeedForward(x)                      macaron half-step
    x = x + Dropout(RelPosSelfAttention(LayerNorm(x)))
    x = x + Convolution(x)
    x = x + 1/2 * FeedForward(x)
    x = LayerNorm(x)

FeedForward:  LayerNorm -> Linear -> swish -> Dropout -> Linear -> Dropout
Convolution:  LayerNorm -> pointwise Conv1d (2 * dim) -> GLU -> [zero the padded frames] ->
              depthwise Conv1d (kernel k, 'same' padding) -> BatchNorm or LayerNorm -> swish ->
              pointwise Conv1d -> Dropout

The layout and the bias-free convolutions follow fairseq's `ConformerEncoderLayer`, with one
change: padded frames are set to zero before the depthwise convolution. fairseq convolves
over them, so the last frames of a short utterance read whatever the longer utterances of its
batch put in its padding (the GLU of the pointwise convolution of padded attention outputs),
and its encoding depends on the batch. Zeroed padding reads exactly like the convolution's
own zero padding, so an utterance's outputs are the same alone or in any batch.

Kernels wider than the utterance: 'same' padding (k // 2 zeros each side, odd k) keeps the
output length equal to the input length for any length >= 1; a frame near an end reads zeros
beyond it, whether the utterance is alone or padded in a batch. No error is needed.

Batch norm: in training its statistics are computed over the real frames only (padded frames
would pull the mean towards zero by an amount that depends on the batch); in evaluation it
applies the running statistics frame by frame.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nmtkit.modules.relative_attention import RelativePositionMultiheadAttention

CONV_NORMS = ("batch_norm", "layer_norm")
"""Normalisations of the convolution module, by config name."""


class ConformerFeedForward(nn.Module):
    """LayerNorm -> Linear -> swish -> dropout -> Linear -> dropout (the block halves it)."""

    def __init__(
        self, embed_dim: int, ffn_dim: int, *, dropout: float, activation_dropout: float
    ) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.dropout = dropout
        self.activation_dropout = activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.fc1(self.layer_norm(x)))
        x = F.dropout(x, p=self.activation_dropout, training=self.training)
        return F.dropout(self.fc2(x), p=self.dropout, training=self.training)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (batch, channels, time) whose training statistics skip padded frames.

    Evaluation (and training without a padding mask) is nn.BatchNorm1d's. Parameter and buffer
    names are nn.BatchNorm1d's, so checkpoints are interchangeable with it. The statistics are
    masked sums in float32 (no boolean indexing, hence no device synchronisation).
    """

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if not self.training or padding_mask is None:
            return super().forward(x)
        real = (~padding_mask).unsqueeze(1).float()  # (batch, 1, time)
        count = real.sum()
        values = x.float()
        mean = (values * real).sum(dim=(0, 2)) / count
        centred = values - mean[:, None]
        var = (centred.square() * real).sum(dim=(0, 2)) / count
        if self.track_running_stats and self.running_mean is not None:
            # nn.BatchNorm's running averages: factor `momentum`, or a cumulative average
            # without one; the running variance is the unbiased estimate.
            assert self.running_var is not None and self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        output = centred * torch.rsqrt(var + self.eps)[:, None]
        if self.affine:
            output = output * self.weight.float()[:, None] + self.bias.float()[:, None]
        return output.to(x.dtype)


class ConformerConvolution(nn.Module):
    """The convolution module (module docstring); returns its output before the residual."""

    def __init__(
        self, embed_dim: int, kernel_size: int, *, dropout: float, conv_norm: str = "batch_norm"
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size}: must be odd for 'same' padding")
        if conv_norm not in CONV_NORMS:
            raise ValueError(f"conv_norm={conv_norm!r}: choose one of {list(CONV_NORMS)}")
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.pointwise_conv1 = nn.Conv1d(embed_dim, 2 * embed_dim, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(
            embed_dim,
            embed_dim,
            kernel_size,
            padding=kernel_size // 2,
            groups=embed_dim,
            bias=False,
        )
        self.norm: nn.Module = (
            MaskedBatchNorm1d(embed_dim) if conv_norm == "batch_norm" else nn.LayerNorm(embed_dim)
        )
        self.pointwise_conv2 = nn.Conv1d(embed_dim, embed_dim, 1, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (batch, T, dim), padding_mask (batch, T) bool, True at padded frames."""
        x = self.layer_norm(x).transpose(1, 2)  # convolutions run over the last dimension: time
        x = F.glu(self.pointwise_conv1(x), dim=1)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(1), 0.0)
        x = self.depthwise_conv(x)
        if isinstance(self.norm, MaskedBatchNorm1d):
            x = self.norm(x, padding_mask)
        else:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.pointwise_conv2(F.silu(x))
        return F.dropout(x.transpose(1, 2), p=self.dropout, training=self.training)


class ConformerEncoderLayer(nn.Module):
    """One Conformer block (module docstring) with relative-position self-attention."""

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        num_heads: int,
        *,
        kernel_size: int = 31,
        conv_norm: str = "batch_norm",
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.ffn1 = ConformerFeedForward(
            embed_dim, ffn_dim, dropout=dropout, activation_dropout=activation_dropout
        )
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.self_attn = RelativePositionMultiheadAttention(
            embed_dim, num_heads, dropout=attention_dropout
        )
        self.conv_module = ConformerConvolution(
            embed_dim, kernel_size, dropout=dropout, conv_norm=conv_norm
        )
        self.ffn2 = ConformerFeedForward(
            embed_dim, ffn_dim, dropout=dropout, activation_dropout=activation_dropout
        )
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x (batch, T, dim); pos_emb (2T - 1, dim) from RelativePositionalEncoding(T);
        padding_mask (batch, T) bool, True at padded frames."""
        x = x + 0.5 * self.ffn1(x)
        attended = self.self_attn(self.self_attn_layer_norm(x), pos_emb, padding_mask)
        x = x + F.dropout(attended, p=self.dropout, training=self.training)
        x = x + self.conv_module(x, padding_mask)
        x = x + 0.5 * self.ffn2(x)
        return self.final_layer_norm(x)
