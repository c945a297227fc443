"""One generic registry: components register under a name with a dataclass config.

Every registry is also a Hydra config group: each entry's config (and each named preset of it,
such as an architecture) becomes an option of the group, so `model=transformer_big` selects
a preset and `model.dropout=0.3` overrides one of its fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nmtkit.errors import RegistryError

T = TypeVar("T")


@dataclass(kw_only=True)
class ComponentConfig:
    """Base of every registered component's config."""

    _name: str = ""
    """Registry name of the component this config builds; filled in when the group option is chosen."""


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    config_class: type


class Registry(Generic[T]):
    """Maps names to (component class, config dataclass); builds components from configs."""

    def __init__(self, group: str, base_class: type[T]) -> None:
        self.group = group
        self.base_class = base_class
        self._entries: dict[str, Entry] = {}
        self._presets: dict[str, tuple[str, Callable[[], ComponentConfig]]] = {}

    def register(self, name: str, config_class: type[ComponentConfig]) -> Callable[[type], type]:
        """Class decorator: `@MODELS.register("transformer", TransformerConfig)`."""

        def decorator(cls: type) -> type:
            self._check_new_name(name)
            if not (isinstance(cls, type) and issubclass(cls, self.base_class)):
                raise RegistryError(
                    f"cannot register {self.group} '{name}': {cls!r} is not a subclass of "
                    f"{self.base_class.__name__}"
                )
            if not (
                dataclasses.is_dataclass(config_class) and issubclass(config_class, ComponentConfig)
            ):
                raise RegistryError(
                    f"cannot register {self.group} '{name}': its config {config_class!r} must be a "
                    "dataclass derived from nmtkit.registry.ComponentConfig"
                )
            self._entries[name] = Entry(name, cls, config_class)
            return cls

        return decorator

    def register_preset(self, name: str, entry_name: str, make_config: Callable[[], Any]) -> None:
        """Registers a named config of an entry (e.g. architecture `transformer_big`)."""
        self._check_new_name(name)
        if entry_name not in self._entries:
            raise RegistryError(f"preset '{name}' refers to unknown {self.group} '{entry_name}'")
        self._presets[name] = (entry_name, make_config)

    def _check_new_name(self, name: str) -> None:
        if name in self._entries or name in self._presets:
            raise RegistryError(f"{self.group} '{name}' is already registered")

    def names(self) -> list[str]:
        """All selectable option names: entries and presets, sorted."""
        return sorted([*self._entries, *self._presets])

    def options(self) -> dict[str, ComponentConfig]:
        """Option name -> default config instance (with `_name` set), for the Hydra group."""
        result: dict[str, ComponentConfig] = {}
        for name, entry in self._entries.items():
            result[name] = entry.config_class(_name=name)
        for name, (entry_name, make_config) in self._presets.items():
            config = make_config()
            config._name = entry_name
            result[name] = config
        return result

    def entry(self, name: str) -> Entry:
        if name in self._presets:
            name = self._presets[name][0]
        if name not in self._entries:
            known = ", ".join(self.names()) or "none"
            raise RegistryError(f"unknown {self.group} '{name}' (known: {known})")
        return self._entries[name]

    def entry_for_config(self, config: Any) -> Entry:
        name = getattr(config, "_name", "")
        if name:
            return self.entry(name)
        for entry in self._entries.values():
            if type(config) is entry.config_class:
                return entry
        raise RegistryError(f"no {self.group} is registered for config {type(config).__name__}")

    def build(self, config: Any, *args: Any, **kwargs: Any) -> T:
        """Builds the component for `config`: `cls(config, *args, **kwargs)`."""
        return self.entry_for_config(config).cls(config, *args, **kwargs)
