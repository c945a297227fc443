"""Converting models of other toolkits into nmtkit checkpoints (fairseq transformers)."""

from __future__ import annotations

from nmtkit.convert.fairseq_checkpoint import (
    FairseqCheckpoint,
    import_fairseq_checkpoint,
    read_fairseq_checkpoint,
)
from nmtkit.convert.restricted_unpickler import load_restricted

__all__ = [
    "FairseqCheckpoint",
    "import_fairseq_checkpoint",
    "load_restricted",
    "read_fairseq_checkpoint",
]
