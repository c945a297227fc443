"""Reading other toolkits' pickled checkpoints without running their code.

fairseq checkpoints are `torch.save` pickles of plain containers, tensors, `argparse.Namespace`
and (in some versions) omegaconf `DictConfig` objects that may refer to fairseq's config classes
and enums. A pickle can name any importable callable, and unpickling calls it: that is how a
malicious file runs code. Here every name a pickle asks for goes through `find_class`, which
answers from an explicit allow-list only:

- harmless real objects: builtin containers and scalars, `collections.OrderedDict`,
  `argparse.Namespace`, torch's tensor-rebuilding functions, `torch.Size` and dtypes; bytes
  (pickled as `_codecs.encode(text, "latin1")`) and `collections.defaultdict` (read as a plain
  dict) through small functions of ours;
- inert stand-ins (`InertObject`) for omegaconf's containers, nodes and metadata, fairseq's own
  config classes and enums, `typing` names and numpy scalars: nmtkit never imports those
  classes, it records what the pickle says about them (`to_plain` turns configs into dicts);
- anything else stops the reading with `RefusedGlobalError` naming it, before it is called.

Storages are resolved by torch's own loader before `find_class` is consulted.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from nmtkit.errors import CheckpointError

_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
     "bytearray", "bool", "object", "slice", "range", "NoneType"}
)  # fmt: skip
"""Builtin types a checkpoint may name (as values, or as omegaconf's element/key types)."""

_REAL_OBJECTS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}
if hasattr(torch._utils, "_rebuild_tensor_v3"):
    _REAL_OBJECTS[("torch._utils", "_rebuild_tensor_v3")] = torch._utils._rebuild_tensor_v3

_INERT_NAMES = frozenset(
    {
        "omegaconf.dictconfig.DictConfig",
        "omegaconf.listconfig.ListConfig",
        "omegaconf.base.Metadata",
        "omegaconf.base.ContainerMetadata",
        "omegaconf.nodes.AnyNode",
        "omegaconf.nodes.StringNode",
        "omegaconf.nodes.IntegerNode",
        "omegaconf.nodes.FloatNode",
        "omegaconf.nodes.BooleanNode",
        "omegaconf.nodes.EnumNode",
        "omegaconf.nodes.BytesNode",
        "omegaconf.nodes.PathNode",
        "omegaconf.nodes.ValueNode",
        "omegaconf.nodes.InterpolationResultNode",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
    }
)
"""Classes read as inert records (see InertObject)."""

_INERT_MODULES = ("fairseq.", "typing.")
"""Modules whose every name is read as an inert record: fairseq's config dataclasses and enums
(omegaconf metadata refers to them), and typing's generic names (omegaconf's ref_type)."""

_PYTHON2_NAMES = {("__builtin__", "long"): ("builtins", "int"),
                  ("__builtin__", "unicode"): ("builtins", "str")}  # fmt: skip
"""Protocol-2 pickles keep Python 2 spellings (pickle's fix_imports maps them the same way)."""

_OMEGACONF_CONTAINERS = {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"}
_OMEGACONF_VALUE_NODES = {name for name in _INERT_NAMES if name.startswith("omegaconf.nodes.")}


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle names a callable outside the allow-list; nothing of it was called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class InertObject:
    """Stands for an instance of a class nmtkit does not import: keeps what the pickle gives it
    (constructor arguments, state, items) and does nothing else."""

    qualified_name = ""
    args: tuple[Any, ...]
    """Arguments of the pickled call (an enum member's value, a numpy scalar's bytes, ...)."""
    state: Any
    """What the pickle's BUILD gave (omegaconf objects: their __dict__), or None."""
    items: dict[Any, Any]
    """Items the pickle set or appended (list positions as keys)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        instance = super().__new__(cls)
        instance.args = args
        instance.state = None
        instance.items = {}
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


_inert_classes: dict[str, type[InertObject]] = {}


def _inert_class(qualified_name: str) -> type[InertObject]:
    """One InertObject subclass per pickled class name, so an instance knows what it stands for."""
    if qualified_name not in _inert_classes:
        _inert_classes[qualified_name] = type(
            qualified_name.rsplit(".", 1)[-1], (InertObject,), {"qualified_name": qualified_name}
        )
    return _inert_classes[qualified_name]


def _plain_dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    """`collections.defaultdict` read as a plain dict: its default factory is never kept."""
    return {}


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes objects: (text, "latin1") only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode used with {encoding!r}, not for bytes")
    return text.encode("latin1")


def _subscripted_type(*args: Any) -> InertObject:
    """`operator.getitem` as pickles of `typing.Optional[int]` use it: an inert record."""
    return _inert_class("typing.subscripted")(*args)


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose `find_class` answers from the allow-list above, else refuses."""

    def find_class(self, module: str, name: str) -> Any:
        module, name = _PYTHON2_NAMES.get((module, name), (module, name))
        if module == "__builtin__":
            module = "builtins"
        qualified = f"{module}.{name}"
        if module == "builtins" and name in _BUILTINS:
            return type(None) if name == "NoneType" else getattr(builtins, name)
        if (module, name) in _REAL_OBJECTS:
            return _REAL_OBJECTS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) == ("collections", "defaultdict"):
            return _plain_dict
        if (module, name) == ("operator", "getitem"):
            return _subscripted_type
        if qualified in _INERT_NAMES or qualified.startswith(_INERT_MODULES):
            return _inert_class(qualified)
        raise RefusedGlobalError(module, name)


def _load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


restricted_pickle_module = types.ModuleType("nmtkit_restricted_pickle")
"""A module-like object for `torch.load(pickle_module=...)`: its Unpickler is the restricted one."""
restricted_pickle_module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle_module.load = _load  # type: ignore[attr-defined]


def load_restricted(path: str | Path) -> Any:
    """`torch.load` of `path` through the restricted unpickler, on the CPU.

    CheckpointError (one line) when the file is missing or unreadable, or names a class outside
    the allow-list; in that case nothing the file names has been called.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # weights_only=False only lets torch use our pickle module; RestrictedUnpickler, not
        # torch's weights-only unpickler, is what refuses foreign code here.
        return torch.load(
            path, map_location="cpu", pickle_module=restricted_pickle_module, weights_only=False
        )
    except RefusedGlobalError as error:
        raise CheckpointError(
            f"{path}: refusing to read: the pickle names {error.qualified_name}, which is not "
            "among the classes fairseq checkpoints contain, and unpickling it could run code "
            "(nothing of it was run)"
        ) from None
    except Exception as error:  # torch raises many types for corrupt or foreign files
        message = str(error).strip()
        reason = message.splitlines()[0] if message else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None


def to_plain(value: Any) -> Any:
    """Configs as plain data: Namespace and DictConfig -> dict, ListConfig -> list, omegaconf
    value nodes -> their value, enum members -> their value; tensors and other values as they
    are. Interpolations (`${task.x}`) stay strings; missing values (`???`) become None."""
    if isinstance(value, argparse.Namespace):
        return {key: to_plain(item) for key, item in vars(value).items()}
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, InertObject):
        state = value.state if isinstance(value.state, dict) else {}
        if value.qualified_name in _OMEGACONF_CONTAINERS:
            content = state.get("_content")
            return None if content == "???" else to_plain(content)
        if value.qualified_name in _OMEGACONF_VALUE_NODES:
            content = state.get("_val")
            return None if content == "???" else to_plain(content)
        if len(value.args) == 1 and value.state is None and not value.items:
            # An enum member pickles as a call of its class with its value.
            return to_plain(value.args[0])
    return value
