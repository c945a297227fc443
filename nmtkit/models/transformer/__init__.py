"""The transformer encoder-decoder model, its config and named architectures."""

from nmtkit.models.transformer.config import (
    PRESETS,
    TransformerConfig,
    transformer_base,
    transformer_big,
    transformer_iwslt_de_en,
    transformer_small,
    transformer_tiny,
)
from nmtkit.models.transformer.model import TransformerModel

__all__ = [
    "PRESETS",
    "TransformerConfig",
    "TransformerModel",
    "transformer_base",
    "transformer_big",
    "transformer_iwslt_de_en",
    "transformer_small",
    "transformer_tiny",
]
