"""Model registry. Model files import torch and their config only; they are registered here.

Every model implements the encoder-decoder API used by the criterions and by generation:
    forward(src_tokens, src_lengths, prev_output_tokens, output_positions=None)
        -> logits (batch, tgt_len, vocab); with output_positions (flat indices into
        batch * tgt_len), logits (len(output_positions), vocab) for those positions only.
        The criterions pass the non-padding positions, so no output projection is spent on
        padding; a model whose forward lacks the argument still works (full logits).
    encode(src_tokens, src_lengths) -> encoder output (dict of tensors)
    decode(prev_output_tokens, encoder_out, incremental_state=None) -> logits
    reorder_encoder_out(encoder_out, new_order), reorder_incremental_state(state, new_order)
    max_decoder_positions() -> int
Optional: a class attribute `decodes_grouped_rows = True` declares that decode() accepts
g * batch rows for an encoder output of batch sources (rows g*i .. g*i+g-1 read source i) and
that reorder_incremental_state handles such rows; beam search then keeps one encoder output per
sentence instead of one per beam. Without it, generation repeats the encoder output per row.
"""

from __future__ import annotations

from torch import nn

from nmtkit.registry import Registry

MODELS: Registry[nn.Module] = Registry("model", nn.Module)
register_model = MODELS.register

from nmtkit.models.transformer import (  # noqa: E402  (registration needs MODELS above)
    TransformerConfig,
    TransformerModel,
    transformer_base,
    transformer_big,
    transformer_iwslt_de_en,
    transformer_small,
    transformer_tiny,
)

MODELS.register("transformer", TransformerConfig)(TransformerModel)
MODELS.register_preset("transformer_tiny", "transformer", transformer_tiny)
MODELS.register_preset("transformer_small", "transformer", transformer_small)
MODELS.register_preset("transformer_iwslt_de_en", "transformer", transformer_iwslt_de_en)
MODELS.register_preset("transformer_base", "transformer", transformer_base)
MODELS.register_preset("transformer_big", "transformer", transformer_big)
