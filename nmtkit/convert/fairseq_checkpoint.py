"""fairseq 0.12 `transformer` checkpoints -> self-contained nmtkit checkpoints.

Reading goes through nmtkit.convert.restricted_unpickler (no code from the file runs). The
model options come from the checkpoint's `cfg.model` (fairseq >= 0.10) or `args` (older), are
checked against what nmtkit's transformer implements, and map key by key onto
TransformerConfig, whose field names are fairseq's. Weights map by name, except attention:
fairseq projects queries, keys and values with three matrices, nmtkit with one fused
`qkv_proj` (self-attention) or `q_proj` + `kv_proj` (encoder attention), rows in q, k, v order.
Dictionaries come from the data directory's `dict.<lang>.txt`, as fairseq reads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from nmtkit.checkpoint import state_dict_mismatch
from nmtkit.config.launcher import config_to_dict
from nmtkit.config.train import TRAIN_DEFAULTS, TRAIN_GROUPS, TrainConfig, restore_train_config
from nmtkit.convert.restricted_unpickler import load_restricted, to_plain
from nmtkit.data.dictionary import Dictionary
from nmtkit.data.text_encoder import load_sentencepiece
from nmtkit.errors import CheckpointError, DataError
from nmtkit.models.transformer.config import (
    TransformerConfig,
    transformer_base,
    transformer_big,
    transformer_iwslt_de_en,
)
from nmtkit.modules.transformer_layer import ACTIVATIONS
from nmtkit.tasks import TASKS
from nmtkit.tasks.translation import TranslationConfig


def fairseq_transformer_tiny() -> TransformerConfig:
    """fairseq's transformer_tiny: 64/64, 2 heads, 2+2 layers (not nmtkit's transformer_tiny)."""
    config = transformer_base()
    config.encoder_embed_dim = config.decoder_embed_dim = 64
    config.encoder_ffn_embed_dim = config.decoder_ffn_embed_dim = 64
    config.encoder_layers = config.decoder_layers = 2
    config.encoder_attention_heads = config.decoder_attention_heads = 2
    return config


def fairseq_transformer_wmt_en_de_big() -> TransformerConfig:
    """fairseq's transformer_wmt_en_de_big: the big model with attention dropout 0.1."""
    config = transformer_big()
    config.attention_dropout = 0.1
    return config


def fairseq_transformer_vaswani_wmt_en_fr_big() -> TransformerConfig:
    """fairseq's transformer_vaswani_wmt_en_fr_big: the big model with dropout 0.1."""
    config = transformer_big()
    config.dropout = 0.1
    return config


def fairseq_transformer_wmt_en_de_big_t2t() -> TransformerConfig:
    """fairseq's transformer_wmt_en_de_big_t2t: the big model, pre-norm, tensor2tensor dropouts."""
    config = fairseq_transformer_wmt_en_de_big()
    config.encoder_normalize_before = config.decoder_normalize_before = True
    config.activation_dropout = 0.1
    return config


FAIRSEQ_TRANSFORMER_ARCHS: dict[str, Callable[[], TransformerConfig]] = {
    "transformer": transformer_base,
    "transformer_wmt_en_de": transformer_base,
    "transformer_tiny": fairseq_transformer_tiny,
    "transformer_iwslt_de_en": transformer_iwslt_de_en,
    "transformer_vaswani_wmt_en_de_big": transformer_big,
    "transformer_wmt_en_de_big": fairseq_transformer_wmt_en_de_big,
    "transformer_vaswani_wmt_en_fr_big": fairseq_transformer_vaswani_wmt_en_fr_big,
    "transformer_wmt_en_de_big_t2t": fairseq_transformer_wmt_en_de_big_t2t,
}
"""fairseq's named architectures of model `transformer` -> their defaults as an nmtkit config.
Saved options override these; the defaults only matter for options a checkpoint lacks."""


def _truthy(value: Any) -> bool:
    return bool(value) and value not in ("False", "false", "0", "None")


def _given(value: Any) -> bool:
    return value not in (None, "", [], "None")


UNSUPPORTED_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "adaptive_softmax_cutoff": (_given, "adaptive softmax output layer"),
    "adaptive_input": (_truthy, "adaptive input embeddings"),
    "tie_adaptive_weights": (_truthy, "adaptive input/softmax weight tying"),
    "cross_self_attention": (_truthy, "cross+self-attention"),
    "no_cross_attention": (_truthy, "decoder without encoder attention"),
    "merge_src_tgt_embed": (_truthy, "source and target dictionaries merged at load time"),
    "encoder_layers_to_keep": (_given, "encoder layers pruned at load time"),
    "decoder_layers_to_keep": (_given, "decoder layers pruned at load time"),
    "base_layers": (lambda value: _given(value) and int(value) > 0, "BASE layers"),
    "char_inputs": (_truthy, "character inputs"),
    "scale_attn": (_truthy, "NormFormer attention LayerNorm"),
    "scale_fc": (_truthy, "NormFormer feed-forward LayerNorm"),
    "scale_heads": (_truthy, "NormFormer head scaling"),
    "scale_resids": (_truthy, "NormFormer residual scaling"),
    "encoder_xformers_att_config": (_given, "xFormers attention"),
    "decoder_xformers_att_config": (_given, "xFormers attention"),
}
"""fairseq model options that change what the model computes at inference and that nmtkit's
transformer does not implement: a checkpoint using one is refused, naming it. Options that act
only in training (dropouts, layerdrop, quant_noise_*, checkpoint_activations, embed_path,
min_params_to_wrap) are not in this list; they are accepted and documented in docs/fairseq.md."""

_SKIPPED_WEIGHTS = re.compile(r"(encoder|decoder)\.(version|embed_positions\._float_tensor)")
"""fairseq bookkeeping buffers with no weights in them."""
_ATTENTION_PART = re.compile(
    r"(?P<layer>(encoder|decoder)\.layers\.\d+)\.(?P<module>self_attn|encoder_attn)\."
    r"(?P<part>[qkv]_proj|in_proj)[._](?P<kind>weight|bias)"
)
_FEED_FORWARD = re.compile(r"(?P<layer>(encoder|decoder)\.layers\.\d+)\.(?P<fc>fc1|fc2)\.")


@dataclass
class FairseqCheckpoint:
    """What an nmtkit import needs from a fairseq checkpoint, as plain data."""

    path: Path
    """The file it was read from."""
    arch: str
    """fairseq architecture name (`--arch`)."""
    model_options: dict[str, Any]
    """Model options with fairseq's flat legacy names (encoder_embed_dim, ...)."""
    task_options: dict[str, Any]
    """Task options (`_name`, source_lang, target_lang, left_pad_source, ...)."""
    weights: dict[str, torch.Tensor]
    """The model state dict as fairseq saved it."""


def _resolve_interpolations(options: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Replaces omegaconf interpolations such as `${task.max_source_positions}` by the value
    they name (unresolved DictConfig pickles keep them as strings)."""

    def lookup(value: Any, depth: int = 0) -> Any:
        match = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
        if match is None or depth > 10:
            return value
        node: Any = root
        for part in match.group(1).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return lookup(node, depth + 1)

    return {key: lookup(value) for key, value in options.items()}


def _flatten_model_options(options: dict[str, Any]) -> dict[str, Any]:
    """Structured configs nest `encoder: {embed_dim: ...}`; fairseq's legacy names are flat
    (`encoder_embed_dim`), which is what TransformerConfig.from_namespace also accepts."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if key in ("encoder", "decoder", "quant_noise") and isinstance(value, dict):
            flat.update({f"{key}_{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def read_fairseq_checkpoint(path: str | Path) -> FairseqCheckpoint:
    """Reads a fairseq checkpoint without running code from it; CheckpointError when it is not a
    fairseq `transformer` translation checkpoint."""
    path = Path(path)
    raw = load_restricted(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    if "format_version" in raw and "nmtkit_version" in raw:
        raise CheckpointError(f"{path}: already an nmtkit checkpoint; nmtkit-generate reads it")
    cfg = to_plain(raw.get("cfg")) or {}
    args = to_plain(raw.get("args")) or {}
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model, task = cfg["model"], cfg.get("task") or {}
    elif isinstance(args, dict) and args:
        model, task, cfg = args, args, {}
    else:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (neither cfg.model nor args)")
    model = _flatten_model_options(_resolve_interpolations(model, cfg))
    task = _resolve_interpolations(task, cfg) if isinstance(task, dict) else {}
    arch = str(model.get("arch") or model.get("_name") or "")
    if arch not in FAIRSEQ_TRANSFORMER_ARCHS:
        raise CheckpointError(
            f"{path}: fairseq arch '{arch or '?'}' is not one of fairseq's transformer "
            f"translation architectures ({', '.join(FAIRSEQ_TRANSFORMER_ARCHS)}); nmtkit imports "
            "only those"
        )
    task_name = str(task.get("_name") or task.get("task") or "")
    if task_name != "translation":
        raise CheckpointError(
            f"{path}: fairseq task '{task_name or '?'}' is not 'translation'; nmtkit imports "
            "transformer models of fairseq's translation task only"
        )
    weights = {key: value for key, value in raw["model"].items() if torch.is_tensor(value)}
    return FairseqCheckpoint(
        path=path, arch=arch, model_options=model, task_options=task, weights=weights
    )


def transformer_config_from_fairseq(checkpoint: FairseqCheckpoint) -> TransformerConfig:
    """The nmtkit TransformerConfig of a fairseq transformer; CheckpointError naming every
    option that nmtkit's transformer does not implement."""
    options = checkpoint.model_options
    refused = [
        f"{key}={options[key]} ({what})"
        for key, (in_use, what) in UNSUPPORTED_OPTIONS.items()
        if key in options and in_use(options[key])
    ]
    decoder_dim = options.get("decoder_embed_dim")
    for key in ("decoder_input_dim", "decoder_output_dim"):
        if _given(options.get(key)) and _given(decoder_dim) and options[key] != decoder_dim:
            refused.append(
                f"{key}={options[key]} (differs from decoder_embed_dim={decoder_dim}: an extra "
                "projection)"
            )
    if _truthy(options.get("no_decoder_final_norm")) and _truthy(
        options.get("decoder_normalize_before")
    ):
        refused.append("no_decoder_final_norm=True (pre-norm decoder without its final LayerNorm)")
    activation = options.get("activation_fn") or "relu"
    if activation not in ACTIVATIONS:
        refused.append(f"activation_fn={activation} (nmtkit has {', '.join(ACTIVATIONS)})")
    if refused:
        raise CheckpointError(
            f"{checkpoint.path}: the fairseq model uses options nmtkit's transformer does not "
            f"implement: {'; '.join(refused)}"
        )

    config = FAIRSEQ_TRANSFORMER_ARCHS[checkpoint.arch]()
    config._name = "transformer"
    for field in dataclasses.fields(TransformerConfig):
        value = options.get(field.name)
        if field.name.startswith("_") or value is None:
            continue
        default = getattr(config, field.name)
        setattr(
            config,
            field.name,
            _truthy(value) if isinstance(default, bool) else type(default)(value),
        )
    # fairseq reads the old name relu_dropout when activation_dropout is 0.
    if not config.activation_dropout and options.get("relu_dropout"):
        config.activation_dropout = float(options["relu_dropout"])
    if config.share_all_embeddings:
        config.share_decoder_input_output_embed = True
    errors = config.validate()
    if errors:
        raise CheckpointError(f"{checkpoint.path}: model options do not fit: {'; '.join(errors)}")
    return config


def convert_weights(checkpoint: FairseqCheckpoint) -> dict[str, torch.Tensor]:
    """fairseq parameter names -> nmtkit's, attention projections fused, in float32 (the dtype
    fairseq-generate computes in unless told --fp16)."""
    converted: dict[str, torch.Tensor] = {}
    attention: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in checkpoint.weights.items():
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        if _SKIPPED_WEIGHTS.fullmatch(key):
            continue
        match = _ATTENTION_PART.fullmatch(key)
        if match:
            group = (match["layer"], match["module"], match["kind"])
            if match["part"] == "in_proj":  # fairseq < 0.9: q, k and v rows already stacked
                attention.setdefault(group, {}).update(zip(("q", "k", "v"), tensor.chunk(3, dim=0)))
            else:
                attention.setdefault(group, {})[match["part"][0]] = tensor
            continue
        if key == "decoder.embed_out":  # fairseq < 0.10's name of the output projection
            key = "decoder.output_projection.weight"
        converted[_FEED_FORWARD.sub(r"\g<layer>.ffn.\g<fc>.", key)] = tensor
    for (layer, module, kind), parts in attention.items():
        missing = [part for part in "qkv" if part not in parts]
        if missing:
            raise CheckpointError(
                f"{checkpoint.path}: {layer}.{module} has no {missing[0]}_proj.{kind}"
            )
        if module == "self_attn":
            converted[f"{layer}.{module}.qkv_proj.{kind}"] = torch.cat([parts[p] for p in "qkv"])
        else:
            converted[f"{layer}.{module}.q_proj.{kind}"] = parts["q"]
            converted[f"{layer}.{module}.kv_proj.{kind}"] = torch.cat([parts["k"], parts["v"]])
    return converted


def _languages(
    checkpoint: FairseqCheckpoint,
    data: Path,
    source_lang: Optional[str],
    target_lang: Optional[str],
) -> tuple[str, str]:
    """Explicit choice, else the checkpoint's task options, else the data directory's
    `<split>.<src>-<tgt>.<lang>.idx` names."""
    source = source_lang or checkpoint.task_options.get("source_lang")
    target = target_lang or checkpoint.task_options.get("target_lang")
    if not (source and target):
        for index in sorted(data.glob("*.*-*.*.idx")):
            found_source, _, found_target = index.name.split(".")[1].partition("-")
            source, target = source or found_source, target or found_target
            break
    if not (source and target):
        raise DataError(
            f"data={data}: cannot tell the language pair (the checkpoint does not name it and "
            "there are no binarized splits); set source_lang= and target_lang="
        )
    return str(source), str(target)


def _check_vocabulary_sizes(
    checkpoint: FairseqCheckpoint, dictionaries: dict[str, tuple[Path, Dictionary]]
) -> None:
    """Each embedding has one row per dictionary symbol, as fairseq builds them."""
    for key, side in (
        ("encoder.embed_tokens.weight", "source"),
        ("decoder.embed_tokens.weight", "target"),
        ("decoder.output_projection.weight", "target"),
        ("decoder.embed_out", "target"),
    ):
        tensor = checkpoint.weights.get(key)
        path, dictionary = dictionaries[side]
        if tensor is not None and tensor.size(0) != len(dictionary):
            raise CheckpointError(
                f"{checkpoint.path}: {key} has {tensor.size(0)} rows but {path} gives "
                f"{len(dictionary)} symbols (4 special + {len(dictionary) - 4} in the file); "
                "give data= the folder of the dictionaries the model was trained with"
            )


def _check_sentencepiece(
    path: Path, model: bytes, dictionaries: list[tuple[Path, Dictionary]]
) -> None:
    """The SentencePiece model must be the one the data was encoded with: most dictionary
    symbols are then its pieces."""
    try:
        processor = load_sentencepiece(model)
    except DataError as error:
        raise DataError(f"bpe_model={path}: {error}") from None
    pieces = {processor.id_to_piece(i) for i in range(processor.get_piece_size())}
    for dictionary_path, dictionary in dictionaries:
        symbols = [
            symbol for symbol in dictionary.symbols[dictionary.num_special :]
            if not symbol.startswith("madeupword")
        ]  # fmt: skip
        known = sum(symbol in pieces for symbol in symbols)
        if symbols and known < 0.5 * len(symbols):
            raise DataError(
                f"bpe_model={path}: only {known} of the {len(symbols)} symbols of "
                f"{dictionary_path} are pieces of this SentencePiece model; give the model the "
                "training data was encoded with"
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_fairseq_checkpoint(
    checkpoint_path: str | Path,
    data: str | Path,
    *,
    bpe_model: str | Path | None = None,
    source_lang: Optional[str] = None,
    target_lang: Optional[str] = None,
) -> dict[str, Any]:
    """An nmtkit checkpoint state (for nmtkit.checkpoint.save_checkpoint) holding the fairseq
    model's weights, its config, the dictionaries of `data` and the SentencePiece model."""
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"data={data}: no such directory")
    checkpoint = read_fairseq_checkpoint(checkpoint_path)
    model_config = transformer_config_from_fairseq(checkpoint)
    source, target = _languages(checkpoint, data, source_lang, target_lang)
    dictionaries = {
        side: (data / f"dict.{lang}.txt", Dictionary.load(data / f"dict.{lang}.txt"))
        for side, lang in (("source", source), ("target", target))
    }
    _check_vocabulary_sizes(checkpoint, dictionaries)
    if model_config.share_all_embeddings and dictionaries["source"][1] != dictionaries["target"][1]:
        raise DataError(
            f"data={data}: the model shares all embeddings (fairseq --share-all-embeddings) but "
            f"dict.{source}.txt and dict.{target}.txt differ; the model needs its joined dictionary"
        )
    spm_bytes = None
    if bpe_model is not None:
        bpe_path = Path(bpe_model)
        if not bpe_path.is_file():
            raise DataError(f"bpe_model={bpe_model}: no such file")
        spm_bytes = bpe_path.read_bytes()
        _check_sentencepiece(bpe_path, spm_bytes, list(dictionaries.values()))

    task_config = TranslationConfig(
        _name="translation",
        data=str(data),
        source_lang=source,
        target_lang=target,
        left_pad_source=_truthy(checkpoint.task_options.get("left_pad_source", True)),
        left_pad_target=_truthy(checkpoint.task_options.get("left_pad_target", False)),
    )
    task_state = {
        "name": "translation",
        "source_lang": source,
        "target_lang": target,
        "dictionaries": {
            source: dictionaries["source"][1].state_dict(),
            target: dictionaries["target"][1].state_dict(),
        },
        # One bytes object for both languages, as nmtkit stores a joined model.
        "sentencepiece": {source: spm_bytes, target: spm_bytes},
    }
    task = TASKS.build(task_config, state=task_state)
    model = task.build_model(model_config)
    weights = convert_weights(checkpoint)
    expected = model.state_dict()
    unexpected = [key for key in weights if key not in expected]
    if unexpected:
        raise CheckpointError(
            f"{checkpoint.path}: fairseq parameter {unexpected[0]} has no counterpart in nmtkit's "
            f"transformer ({len(unexpected)} such); the model uses a variant nmtkit does not "
            "implement"
        )
    mismatch = state_dict_mismatch(expected, weights, "nmtkit's transformer", "the fairseq model")
    if mismatch is not None:
        raise CheckpointError(f"{checkpoint.path}: weights do not fit its options ({mismatch})")
    model.load_state_dict(weights)

    defaults = {
        group: option for entry in TRAIN_DEFAULTS if isinstance(entry, dict)
        for group, option in entry.items()
    }  # fmt: skip
    train_config = TrainConfig(
        task=task_config,
        model=model_config,
        **{
            group: TRAIN_GROUPS[group].options()[defaults[group]]
            for group in ("criterion", "optimizer", "lr_scheduler")
        },
    )
    config = config_to_dict(train_config)
    restore_train_config(config)  # what nmtkit-generate will do: fail here rather than there
    return {
        "config": config,
        "model": model.state_dict(),
        "task": task.state_dict(),
        "imported_from": {
            "toolkit": "fairseq",
            "checkpoint": str(checkpoint.path),
            "sha256": _sha256(checkpoint.path),
            "arch": checkpoint.arch,
        },
    }
