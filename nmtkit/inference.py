"""Loading trained models for inference from checkpoints alone (no data directory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from nmtkit.checkpoint import load_checkpoint, state_dict_mismatch
from nmtkit.config.train import TrainConfig, restore_train_config
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.text_encoder import load_sentencepiece
from nmtkit.errors import CheckpointError, ConfigError, DataError
from nmtkit.tasks import TASKS


@dataclass
class Ensemble:
    """Models loaded for inference, with the task and configs generation consults."""

    task: Any
    """The first checkpoint's task (dictionaries, SentencePiece); every member shares them."""
    models: list[nn.Module]
    """One model per checkpoint, in eval mode, on the requested device and dtype."""
    configs: list[TrainConfig]
    """Each member's training config, in the order of `models`."""

    def max_source_positions(self) -> Optional[int]:
        """The longest source (tokens, or feature frames for speech) that every member
        accepts; None when no member declares a limit."""
        limits = []
        for config in self.configs:
            positions = self.task.max_positions(config.model)
            if positions is not None and positions[0] is not None:
                limits.append(int(positions[0]))
        return min(limits) if limits else None


def load_ensemble(
    paths: list[str],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    bpe_model: Optional[str | Path] = None,
) -> Ensemble:
    """Task (dictionaries, SentencePiece) from the first checkpoint, one model per path, its
    weights in `dtype`. Ensemble members must share the first member's dictionaries.

    `bpe_model`: a SentencePiece model file for checkpoints that carry none (trained on a
    fairseq data-bin whose text was encoded outside nmtkit): raw input is then cut into its
    pieces and hypotheses are detokenized with it (see `attach_sentencepiece`).

    Half-precision inference casts the weights once, as fairseq's `model.half()` does, rather
    than running under autocast, which re-casts every weight at every decoding step (on the
    CPU, bf16 weights made beam search about 1.3x faster than fp32). Generation still takes
    log-softmax and scores in float32.
    """
    proto = None if bpe_model is None else read_sentencepiece_model(bpe_model)
    task, models, configs = None, [], []
    for path in paths:
        state = load_checkpoint(path)
        config = restore_train_config(state["config"])
        if proto is not None:
            attach_sentencepiece(state["task"], proto, f"bpe_model={bpe_model}", path)
        member_task = TASKS.build(config.task, state=state["task"])
        if task is None:
            task = member_task
        elif (reason := task.compatible_with(member_task)) is not None:
            raise CheckpointError(
                f"{path}: cannot join an ensemble with {paths[0]}: {reason}; an ensemble "
                "needs models trained on the same task and dictionaries"
            )
        model = member_task.build_model(config.model)
        mismatch = state_dict_mismatch(model.state_dict(), state["model"])
        if mismatch is not None:
            raise CheckpointError(f"{Path(path)}: weights do not fit the saved config ({mismatch})")
        model.load_state_dict(state["model"])
        models.append(model.to(device=device, dtype=dtype).eval())
        configs.append(config)
    assert task is not None
    if proto is not None:
        check_sentencepiece_fits(task.target_dictionary, proto, f"bpe_model={bpe_model}")
    return Ensemble(task=task, models=models, configs=configs)


def read_sentencepiece_model(path: str | Path) -> bytes:
    """The bytes of a SentencePiece model file, checked to be one."""
    if not Path(path).is_file():
        raise ConfigError(f"bpe_model={path}: file not found")
    proto = Path(path).read_bytes()
    try:
        load_sentencepiece(proto)
    except DataError as error:
        raise DataError(f"bpe_model={path}: {error}") from None
    return proto


def attach_sentencepiece(task_state: dict[str, Any], proto: bytes, key: str, path: str) -> None:
    """Gives a checkpoint's task state the SentencePiece model `proto` where it has none.

    Tasks keep their models in `task_state["sentencepiece"]` ({side: model bytes or None}).
    Every side gets `proto` when no side has a model; a checkpoint with its own model keeps
    it, and a different `proto` is refused rather than silently ignored.
    """
    models = task_state.get("sentencepiece")
    if not isinstance(models, dict) or not models:
        raise ConfigError(
            f"{key}: the task of {path} ({task_state.get('name', 'unknown')}) takes no "
            "SentencePiece model"
        )
    present = [model for model in models.values() if model is not None]
    if not present:
        task_state["sentencepiece"] = dict.fromkeys(models, proto)
    elif any(model != proto for model in present):
        raise ConfigError(
            f"{key}: {path} carries its own SentencePiece model, which differs from this one; "
            "leave bpe_model out"
        )


def check_sentencepiece_fits(dictionary: Dictionary, proto: bytes, key: str) -> None:
    """Refuses a SentencePiece model that did not make the dictionary: with the wrong model
    most pieces would map to <unk> and the translations would be silently poor."""
    processor = load_sentencepiece(proto)
    pieces = {processor.id_to_piece(i) for i in range(processor.get_piece_size())}
    # fairseq pads dictionaries to a multiple of 8 with madeupwordNNNN symbols.
    symbols = [
        symbol
        for symbol in dictionary.symbols[dictionary.num_special :]
        if not symbol.startswith("madeupword")
    ]
    known = sum(symbol in pieces for symbol in symbols)
    if symbols and known < len(symbols) / 2:
        raise DataError(
            f"{key}: only {known} of the {len(symbols)} symbols of the checkpoint's target "
            "dictionary are pieces of this SentencePiece model; give the model the training "
            "data was encoded with"
        )


def load_for_inference(
    paths: list[str], device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[Any, list[nn.Module], TrainConfig]:
    """`load_ensemble` as a (task, models, first member's config) tuple."""
    ensemble = load_ensemble(paths, device, dtype)
    return ensemble.task, ensemble.models, ensemble.configs[0]
