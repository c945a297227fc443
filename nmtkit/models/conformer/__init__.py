"""The speech-to-text Conformer, its config and named architectures."""

from nmtkit.models.conformer.config import (
    CTC_HEADS,
    PRESETS,
    S2TConformerConfig,
    s2t_conformer_base,
    s2t_conformer_tiny,
)
from nmtkit.models.conformer.model import S2TConformerModel

__all__ = [
    "CTC_HEADS",
    "PRESETS",
    "S2TConformerConfig",
    "S2TConformerModel",
    "s2t_conformer_base",
    "s2t_conformer_tiny",
]
