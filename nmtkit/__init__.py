"""nmtkit: neural machine translation and speech-to-text.

`nmtkit.load(checkpoint)` gives a `Translator` (translate / transcribe / score); see
docs/python_api.md. It is imported on first use, so `import nmtkit` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nmtkit.version import __version__

if TYPE_CHECKING:
    from nmtkit.api import Translator, load

__all__ = ["Translator", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name in ("load", "Translator"):
        from nmtkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'nmtkit' has no attribute {name!r}")
