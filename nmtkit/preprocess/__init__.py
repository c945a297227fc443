"""`nmtkit-preprocess`: raw data -> data directory, one preprocessor per task.

A preprocessor is a config dataclass (its settings are the command's top-level keys), a
function that builds the data directory, and a summary of what it wrote. They are looked
up by `task=` before the settings are parsed (the task decides which settings exist), so
they live in this small table rather than in a Hydra config group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmtkit.errors import ConfigError, RegistryError
from nmtkit.preprocess import speech, text
from nmtkit.preprocess.speech import SpeechPreprocessConfig, preprocess_speech
from nmtkit.preprocess.text import PreprocessConfig, preprocess

DEFAULT_TASK = "translation"


@dataclass(frozen=True)
class Preprocessor:
    """What `nmtkit-preprocess task=NAME` runs."""

    task: str
    config_class: type
    run: Callable[[Any], Path]
    """Builds the data directory from a config; returns its path."""
    summary: Callable[[dict[str, Any], float], str]
    """A few lines on preprocess.json (and the seconds it took), printed at the end."""


_PREPROCESSORS: dict[str, Preprocessor] = {}


def register_preprocessor(preprocessor: Preprocessor) -> None:
    """Adds a task's preprocessor; a task name can be registered once."""
    if preprocessor.task in _PREPROCESSORS:
        raise RegistryError(f"preprocessor '{preprocessor.task}' is already registered")
    _PREPROCESSORS[preprocessor.task] = preprocessor


def preprocessor_names() -> list[str]:
    return sorted(_PREPROCESSORS)


def get_preprocessor(task: str) -> Preprocessor:
    """The preprocessor of `task`; ConfigError naming the known tasks otherwise."""
    if task not in _PREPROCESSORS:
        raise ConfigError(
            f"task={task}: unknown preprocessing task (known: {', '.join(preprocessor_names())})"
        )
    return _PREPROCESSORS[task]


register_preprocessor(Preprocessor("translation", PreprocessConfig, preprocess, text.summary))
register_preprocessor(
    Preprocessor("speech_to_text", SpeechPreprocessConfig, preprocess_speech, speech.summary)
)

__all__ = [
    "DEFAULT_TASK",
    "PreprocessConfig",
    "Preprocessor",
    "SpeechPreprocessConfig",
    "get_preprocessor",
    "preprocess",
    "preprocess_speech",
    "preprocessor_names",
    "register_preprocessor",
]
