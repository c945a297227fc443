"""Model registry. Model files import torch and their config only; they are registered here.

Every model implements the encoder-decoder API used by the criterions and by generation:
    forward(src_tokens, src_lengths, prev_output_tokens) -> logits (batch, tgt_len, vocab)
    encode(src_tokens, src_lengths) -> encoder output (dict of tensors)
    decode(prev_output_tokens, encoder_out, incremental_state=None) -> logits
    reorder_encoder_out(encoder_out, new_order), reorder_incremental_state(state, new_order)
    max_decoder_positions() -> int
"""

from __future__ import annotations

from torch import nn

from nmtkit.registry import Registry

MODELS: Registry[nn.Module] = Registry("model", nn.Module)
register_model = MODELS.register
