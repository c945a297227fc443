"""What criterions and generation may ask of a model: the encoder-decoder API as a Protocol,
and capability flags that a model declares instead of having its signature probed.

Every registered model implements `EncoderDecoderModel`. `net_input` (what the task's collater
puts in a batch) is passed to `forward` and `encode` as keyword arguments, whatever its shape:
text models get `src_tokens` (batch, src_len) token ids; speech models get `src_tokens`
(batch, frames, features) float features. In both, `src_lengths` (batch,) counts the real
source positions. For speech it is authoritative: the padding mask comes from the lengths,
because a feature frame has no pad id. The text transformer still reads its mask from pad ids
(sources are left-padded), which gives the same mask.

Capability flags are class (or instance) attributes; a model that does not declare one is read
as not having it (see `capability`):

  supports_output_positions  forward(..., output_positions=idx) computes logits only for the
                             flat positions idx of batch * tgt_len, returned as (len(idx), V);
                             criterions pass the non-padding target positions.
  decodes_grouped_rows       decode() accepts g * batch rows for an encoder output of batch
                             sources (rows g*i .. g*i+g-1 read source i) and
                             reorder_incremental_state handles such rows; beam search then keeps
                             one encoder output per sentence instead of one per beam.
  supports_ctc               the model has a CTC head: ctc_log_probs(encoder_out), and
                             forward(..., with_ctc=True) (see `CtcModel`).
  is_encoder_only            no decoder: decode() cannot be used; generation decodes the CTC
                             head greedily (such a model also declares supports_ctc).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Union

import torch

from nmtkit.distributed import unwrap_model
from nmtkit.modules.attention import IncrementalState

EncoderOut = dict[str, torch.Tensor]
"""Encoder output: at least {"encoder_out": (batch, src_len, dim), "encoder_padding_mask":
(batch, src_len) bool, True at padding}; speech models add "encoder_lengths" (batch,).
reorder_encoder_out must reorder every entry."""

CTC_BLANK = 0
"""Index of the CTC blank in the vocabulary a CTC head predicts: the dictionary's `<s>`, which
never occurs inside a target, so the blank needs no symbol of its own."""

CAPABILITIES = (
    "supports_output_positions",
    "decodes_grouped_rows",
    "supports_ctc",
    "is_encoder_only",
)
"""The capability flags a model may declare (module docstring)."""


class EncoderDecoderModel(Protocol):
    """The members criterions and generation use (an `nn.Module` provides `__call__`)."""

    supports_output_positions: bool
    decodes_grouped_rows: bool
    supports_ctc: bool
    is_encoder_only: bool

    def forward(
        self,
        src_tokens: torch.Tensor,
        src_lengths: torch.Tensor,
        prev_output_tokens: torch.Tensor,
        output_positions: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (batch, tgt_len, vocab) in the compute dtype; with
        output_positions (if supports_output_positions), (len(output_positions), vocab)."""
        ...

    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOut:
        """The encoder output for a batch of sources (`net_input` without targets)."""
        ...

    def decode(
        self,
        prev_output_tokens: torch.Tensor,
        encoder_out: EncoderOut,
        incremental_state: Optional[IncrementalState] = None,
    ) -> torch.Tensor:
        """Logits (batch, tgt_len, vocab); with incremental_state (one fresh dict per batch,
        passed on every step with the whole prefix), (batch, 1, vocab) for the last position."""
        ...

    def reorder_encoder_out(self, encoder_out: EncoderOut, new_order: torch.Tensor) -> EncoderOut:
        """Every entry of the encoder output with its batch rows selected by new_order."""
        ...

    def reorder_incremental_state(
        self, incremental_state: IncrementalState, new_order: torch.Tensor
    ) -> None:
        """Applies a beam reordering to every cached tensor, in place."""
        ...

    def max_decoder_positions(self) -> int:
        """Longest target the decoder accepts (generation stops there)."""
        ...


class CtcModel(EncoderDecoderModel, Protocol):
    """A model with a CTC head (supports_ctc); its blank is CTC_BLANK."""

    ctc_head: str
    """Which dictionary the CTC head predicts: "target" or "source" ("none" without a head)."""

    def forward(  # type: ignore[override]
        self,
        src_tokens: torch.Tensor,
        src_lengths: torch.Tensor,
        prev_output_tokens: Optional[torch.Tensor] = None,
        output_positions: Optional[torch.Tensor] = None,
        with_ctc: bool = False,
    ) -> Union[torch.Tensor, tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]]:
        """Logits as in EncoderDecoderModel when with_ctc is False. With with_ctc, one pass
        gives (logits or None, ctc_log_probs (batch, frames, V) float32, ctc_lengths (batch,));
        logits are None for an encoder-only model or without prev_output_tokens. Criterions
        go through forward so that DDP sees every parameter used."""
        ...

    def ctc_log_probs(self, encoder_out: EncoderOut) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities (batch, frames, V) in float32, valid frames per row (batch,))."""
        ...


def capability(model: Any, name: str) -> bool:
    """Whether `model` (inside any DDP wrapper) declares capability `name`; undeclared = False."""
    if name not in CAPABILITIES:
        raise ValueError(f"unknown model capability {name!r}; known: {', '.join(CAPABILITIES)}")
    return bool(getattr(unwrap_model(model), name, False))
