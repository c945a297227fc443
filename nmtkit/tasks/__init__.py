"""Task registry; built-in tasks register through the imports below."""

from __future__ import annotations

from nmtkit.tasks import (
    speech_to_text,  # noqa: F401  (registers "speech_to_text")
    translation,  # noqa: F401  (registers "translation")
)
from nmtkit.tasks.base import TASKS, Task, register_task

__all__ = ["TASKS", "Task", "register_task"]
