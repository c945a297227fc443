"""Loading trained models for inference from checkpoints alone (no data directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmtkit.checkpoint import load_checkpoint
from nmtkit.config.train import TrainConfig, restore_train_config
from nmtkit.errors import CheckpointError
from nmtkit.tasks import TASKS


def load_for_inference(
    paths: list[str], device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[Any, list[nn.Module], TrainConfig]:
    """Task (dictionaries, SentencePiece) from the first checkpoint, one model per path, its
    weights in `dtype`. Ensemble members must share the first member's dictionaries.

    Half-precision inference casts the weights once, as fairseq's `model.half()` does, rather
    than running under autocast, which re-casts every weight at every decoding step (on the
    CPU, bf16 weights made beam search about 1.3x faster than fp32). Generation still takes
    log-softmax and scores in float32.
    """
    task, models, first_config = None, [], None
    for path in paths:
        state = load_checkpoint(path)
        config = restore_train_config(state["config"])
        member_task = TASKS.build(config.task, state=state["task"])
        if task is None:
            task, first_config = member_task, config
        elif (reason := task.compatible_with(member_task)) is not None:
            raise CheckpointError(
                f"{path}: cannot join an ensemble with {paths[0]}: {reason}; an ensemble "
                "needs models trained on the same task and dictionaries"
            )
        model = member_task.build_model(config.model)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise CheckpointError(
                f"{Path(path)}: weights do not fit the saved config ({str(error).splitlines()[0]})"
            ) from None
        models.append(model.to(device=device, dtype=dtype).eval())
    assert task is not None and first_config is not None
    return task, models, first_config
