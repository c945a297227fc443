from __future__ import annotations

from dataclasses import dataclass

import pytest

from nmtkit.errors import RegistryError
from nmtkit.registry import ComponentConfig, Registry


class Base:
    def __init__(self, cfg: ComponentConfig) -> None:
        self.cfg = cfg


@dataclass(kw_only=True)
class SmallConfig(ComponentConfig):
    size: int = 3
    """A size."""


def make_registry() -> Registry[Base]:
    registry: Registry[Base] = Registry("thing", Base)

    @registry.register("small", SmallConfig)
    class Small(Base):
        pass

    registry.register_preset("small_big", "small", lambda: SmallConfig(size=99))
    return registry


def test_register_build_and_list() -> None:
    registry = make_registry()
    assert registry.names() == ["small", "small_big"]
    built = registry.build(SmallConfig(size=5))
    assert type(built).__name__ == "Small" and built.cfg.size == 5
    options = registry.options()
    assert options["small"]._name == "small"
    assert options["small_big"]._name == "small" and options["small_big"].size == 99


def test_duplicate_name_refused() -> None:
    registry = make_registry()
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("small", SmallConfig)(type("Other", (Base,), {}))
    with pytest.raises(RegistryError, match="already registered"):
        registry.register_preset("small_big", "small", SmallConfig)


def test_wrong_base_class_and_config_refused() -> None:
    registry = make_registry()
    with pytest.raises(RegistryError, match="not a subclass of Base"):
        registry.register("stranger", SmallConfig)(object)

    @dataclass
    class NotAComponentConfig:
        x: int = 1

    with pytest.raises(RegistryError, match="ComponentConfig"):
        registry.register("plain", NotAComponentConfig)(type("P", (Base,), {}))  # type: ignore[arg-type]


def test_unknown_name_lists_known() -> None:
    registry = make_registry()
    with pytest.raises(RegistryError, match="unknown thing 'nope' .*small, small_big"):
        registry.entry("nope")
