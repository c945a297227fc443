"""Convolutional subsampling of speech features in front of a Transformer encoder.

A stack of 1-D convolutions over time, each with stride 2 and padding kernel // 2, followed by
a gated linear unit over channels (Synnaeve et al., 2019; fairseq's `Conv1dSubsampler`): two
layers of kernel 5 shorten the sequence about 4x and map the features to the encoder width.

Unlike fairseq, the frames past each utterance's length are set to zero before every
convolution. A convolution near the end of an utterance otherwise reads the padding that its
batch neighbours imposed (after the first layer that padding is no longer zero: it is the GLU
of the bias), so the encoder output of an utterance depended on the batch it was in (fairseq
issue 3078). With the zeroing, an utterance's outputs are the same alone or in any batch,
because its padding reads exactly like the convolution's own zero padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

Lengths = TypeVar("Lengths", int, torch.Tensor)


def conv_output_length(length: Lengths, kernel_size: int, stride: int = 2) -> Lengths:
    """Frames out of a convolution with padding kernel_size // 2: the convolution formula."""
    return (length + 2 * (kernel_size // 2) - kernel_size) // stride + 1


def subsampled_lengths(lengths: Lengths, kernel_sizes: Sequence[int]) -> Lengths:
    """Frames after the whole subsampler (an int or a tensor of lengths), e.g. to check that
    an utterance has at least as many encoder frames as its CTC target needs."""
    for kernel_size in kernel_sizes:
        lengths = conv_output_length(lengths, kernel_size)
    return lengths


def lengths_to_padding_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(batch, max_length) bool, True at the steps t >= length of each row."""
    steps = torch.arange(max_length, device=lengths.device)
    return steps.unsqueeze(0) >= lengths.unsqueeze(1)


class Conv1dSubsampler(nn.Module):
    """(batch, frames, in_channels) features -> (batch, frames', out_channels), frames' from
    `subsampled_lengths`.

    Layer i maps to `mid_channels` (GLU halves them for the next layer) and the last one to
    2 * out_channels (GLU leaves out_channels). Parameter names are fairseq's
    (`conv_layers.N.weight`), so its weights load unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel_sizes: Sequence[int] = (5, 5),
    ) -> None:
        super().__init__()
        if not kernel_sizes:
            raise ValueError("Conv1dSubsampler needs at least one kernel size")
        if len(kernel_sizes) > 1 and mid_channels % 2 != 0:
            raise ValueError(f"mid_channels={mid_channels}: must be even (GLU halves it)")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        last = len(self.kernel_sizes) - 1
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(
                in_channels if index == 0 else mid_channels // 2,
                mid_channels if index < last else 2 * out_channels,
                kernel_size,
                stride=2,
                padding=kernel_size // 2,
            )
            for index, kernel_size in enumerate(self.kernel_sizes)
        )

    def output_lengths(self, lengths: Lengths) -> Lengths:
        return subsampled_lengths(lengths, self.kernel_sizes)

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (batch, frames, in_channels), lengths (batch,) -> (output, output lengths)."""
        x = features.transpose(1, 2)  # convolutions run over the last dimension: time
        for conv, kernel_size in zip(self.conv_layers, self.kernel_sizes):
            padding = lengths_to_padding_mask(lengths, x.size(2))
            x = x.masked_fill(padding.unsqueeze(1), 0.0)
            x = F.glu(conv(x), dim=1)
            lengths = conv_output_length(lengths, kernel_size)
        return x.transpose(1, 2), lengths
