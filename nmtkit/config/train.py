"""The composed configs of `nmtkit-train`; component configs live beside their components."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nmtkit.checkpoint import CheckpointConfig
from nmtkit.config.launcher import one_line
from nmtkit.criterions import CRITERIONS
from nmtkit.data.batching import DatasetConfig
from nmtkit.distributed import DistributedConfig
from nmtkit.errors import CheckpointError, RegistryError
from nmtkit.generation.config import ValidationGenerationConfig
from nmtkit.models import MODELS
from nmtkit.optim import LR_SCHEDULERS, OPTIMIZERS
from nmtkit.registry import Registry
from nmtkit.tasks import TASKS
from nmtkit.trainer_config import CommonConfig, OptimizationConfig

TRAIN_DEFAULTS = [
    "_self_",
    {"task": "translation"},
    {"model": "transformer"},
    {"criterion": "cross_entropy"},
    {"optimizer": "adam"},
    {"lr_scheduler": "fixed"},
]


@dataclass
class TrainConfig:
    """Everything `nmtkit-train` reads; saved resolved as `config.yaml` and in checkpoints."""

    defaults: List[Any] = field(default_factory=lambda: list(TRAIN_DEFAULTS))
    common: CommonConfig = field(default_factory=CommonConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    task: Any = MISSING
    model: Any = MISSING
    criterion: Any = MISSING
    optimizer: Any = MISSING
    lr_scheduler: Any = MISSING
    generation: ValidationGenerationConfig = field(default_factory=ValidationGenerationConfig)


TRAIN_GROUPS: dict[str, Registry[Any]] = {
    "task": TASKS,
    "model": MODELS,
    "criterion": CRITERIONS,
    "optimizer": OPTIMIZERS,
    "lr_scheduler": LR_SCHEDULERS,
}


def restore_train_config(saved: dict[str, Any]) -> TrainConfig:
    """Rebuilds the typed config saved in a checkpoint: each group's `_name` picks its schema."""
    schema = OmegaConf.structured(TrainConfig)
    for group, registry in TRAIN_GROUPS.items():
        name = (saved.get(group) or {}).get("_name")
        if not name:
            raise CheckpointError(f"saved config has no '{group}._name'")
        try:
            entry = registry.entry(name)
        except RegistryError as error:
            raise CheckpointError(
                f"checkpoint needs {group} '{name}', which is not registered ({error}); "
                "pass common.user_dir or install the plugin that provides it"
            ) from None
        schema[group] = OmegaConf.structured(entry.config_class)
    try:
        merged = OmegaConf.merge(schema, {k: v for k, v in saved.items() if k != "defaults"})
    except OmegaConfBaseException as error:
        raise CheckpointError(
            f"saved config does not fit this nmtkit: {one_line(str(error))}"
        ) from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
