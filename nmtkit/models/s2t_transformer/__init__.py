"""The speech-to-text Transformer, its config and named architectures."""

from nmtkit.models.s2t_transformer.config import (
    CTC_HEADS,
    PRESETS,
    S2TTransformerConfig,
    s2t_transformer_base,
    s2t_transformer_m,
    s2t_transformer_s,
    s2t_transformer_tiny,
    s2t_transformer_xs,
)
from nmtkit.models.s2t_transformer.model import S2TTransformerModel

__all__ = [
    "CTC_HEADS",
    "PRESETS",
    "S2TTransformerConfig",
    "S2TTransformerModel",
    "s2t_transformer_base",
    "s2t_transformer_m",
    "s2t_transformer_s",
    "s2t_transformer_tiny",
    "s2t_transformer_xs",
]
