"""Export of a text translation transformer to a CTranslate2 model directory.

The weights go through `ctranslate2.specs` (a TransformerSpec of a TransformerEncoderSpec and
a TransformerDecoderSpec), filled the way CTranslate2's own fairseq converter fills them: nmtkit
keeps fairseq's layout, so the mapping is one to one. nmtkit's fused projections already have
CTranslate2's shapes: self-attention `qkv_proj` ([q; k; v] rows) is the spec's `linear[0]`,
encoder-decoder attention `q_proj` and `kv_proj` ([k; v] rows) are `linear[0]` and `linear[1]`,
`out_proj` is the last linear of both.

The model config is set as CTranslate2's converters set it for fairseq models, so that a plain
`Translator.translate_batch(pieces)` on SentencePiece pieces translates: `</s>` is appended to
each source (`add_source_eos`) and the decoder starts from `</s>` (`decoder_start_token`), as in
nmtkit and fairseq.

The folder holds model.bin, config.json, the vocabulary (shared_vocabulary.json when source
and target share one dictionary), the SentencePiece model(s), nmtkit.json (what was exported and
the decoding options that match nmtkit-generate's defaults) and a README.md saying how to load it.
It is written under a temporary sibling name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmtkit.checkpoint import state_dict_mismatch
from nmtkit.config.train import restore_train_config
from nmtkit.data.dictionary import Dictionary
from nmtkit.errors import CheckpointError, ConfigError
from nmtkit.models.transformer import TransformerModel
from nmtkit.modules.attention import MultiheadAttention
from nmtkit.modules.transformer_layer import FeedForward
from nmtkit.modules.transformer_stack import EmbeddedLayerStack
from nmtkit.output_files import (
    OutputError,
    current_umask,
    describe_os_error,
    is_user_os_error,
)
from nmtkit.tasks import TASKS
from nmtkit.version import __version__

QUANTIZATIONS = (
    "float32",
    "float16",
    "bfloat16",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
)
"""Weight types the export accepts (CTranslate2's names); int8 variants quantize the linear and
embedding weights and keep the rest in the type after the underscore (float32 for plain int8)."""

TRANSLATE_OPTIONS: dict[str, Any] = {
    "beam_size": 5,
    "length_penalty": 1.0,
    "max_decoding_length": 200,
}
"""`translate_batch` options that match nmtkit-generate's defaults (beam=5, lenpen=1.0,
max_len_a=0, max_len_b=200). CTranslate2's min_decoding_length (1) already matches min_len."""

_ACTIVATIONS = {"relu": "RELU", "gelu": "GELU"}
"""nmtkit activation_fn -> CTranslate2 Activation member (nmtkit's gelu is the exact, erf one)."""


def import_ctranslate2() -> Any:
    """The ctranslate2 module, or a one-line ConfigError saying how to install it."""
    try:
        import ctranslate2
    except ImportError:
        raise ConfigError(
            "format=ctranslate2: the ctranslate2 package is not installed; "
            "pip install 'nmtkit[ctranslate2]' (or pip install 'ctranslate2>=4')"
        ) from None
    return ctranslate2


def check_quantization(quantization: str) -> list[str]:
    """Config errors for a quantization CTranslate2 export does not offer."""
    if quantization in QUANTIZATIONS:
        return []
    return [f"quantization={quantization}: choose one of {', '.join(QUANTIZATIONS)}"]


def check_output_dir(path: str | Path) -> Path:
    """`path` must not exist or be an empty folder, and its parent must be writable."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output={path}: is a file; CTranslate2 export writes a directory")
    if folder.is_dir() and any(folder.iterdir()):
        raise OutputError(
            f"output={path}: directory exists and is not empty; give a new or empty directory"
        )
    parent = folder.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"output={path}: cannot create it ({describe_os_error(error)})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output={path}: cannot write in {parent} (permission denied)")
    return folder


def check_exportable(state: dict[str, Any], path: str | Path) -> None:
    """Refuses, in one line, checkpoints whose model CTranslate2's TransformerSpec cannot hold."""
    config = state["config"]
    task_name = (config.get("task") or {}).get("_name")
    model_name = (config.get("model") or {}).get("_name")
    if task_name != "translation" or model_name != "transformer":
        raise ConfigError(
            f"checkpoint={path}: task {task_name} with model {model_name} cannot be exported "
            "to CTranslate2; format=ctranslate2 supports text translation transformers (task "
            "translation, model transformer), not speech-to-text models"
        )
    model = config["model"]
    if model.get("activation_fn") not in _ACTIVATIONS:
        raise ConfigError(
            f"checkpoint={path}: model.activation_fn={model.get('activation_fn')} has no "
            f"CTranslate2 equivalent (supported: {', '.join(_ACTIVATIONS)})"
        )


def load_translation_model(
    state: dict[str, Any], path: str | Path
) -> tuple[TransformerModel, Dictionary, Dictionary, dict[str, Any]]:
    """The model in float32 on the CPU, its source and target dictionaries, and the task state."""
    config = restore_train_config(state["config"])
    task = TASKS.build(config.task, state=state["task"])
    model = task.build_model(config.model)
    mismatch = state_dict_mismatch(model.state_dict(), state["model"])
    if mismatch is not None:
        raise CheckpointError(f"{path}: weights do not fit the saved config ({mismatch})")
    model.load_state_dict(state["model"])
    model = model.float().eval()
    assert isinstance(model, TransformerModel)
    return model, task.src_dict, task.tgt_dict, state["task"]


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy().copy()


def _set_linear(spec: Any, module: nn.Linear) -> None:
    spec.weight = _array(module.weight)
    if module.bias is not None:
        spec.bias = _array(module.bias)


def _set_layer_norm(spec: Any, module: nn.LayerNorm) -> None:
    spec.gamma = _array(module.weight)
    spec.beta = _array(module.bias)


def _set_attention(spec: Any, attention: MultiheadAttention, layer_norm: nn.LayerNorm) -> None:
    if attention.encoder_decoder:
        _set_linear(spec.linear[0], attention.q_proj)
        _set_linear(spec.linear[1], attention.kv_proj)
    else:
        _set_linear(spec.linear[0], attention.qkv_proj)
    _set_linear(spec.linear[-1], attention.out_proj)
    _set_layer_norm(spec.layer_norm, layer_norm)


def _set_feed_forward(spec: Any, ffn: FeedForward, layer_norm: nn.LayerNorm) -> None:
    _set_linear(spec.linear_0, ffn.fc1)
    _set_linear(spec.linear_1, ffn.fc2)
    _set_layer_norm(spec.layer_norm, layer_norm)


def _position_encodings(stack: EmbeddedLayerStack, max_positions: int) -> np.ndarray:
    """Row i is the embedding nmtkit adds at step i (its position padding_idx + 1 + i); zeros
    when the model has no position embeddings (CTranslate2 would otherwise add its own)."""
    dim = stack.embed_tokens.embedding_dim
    first = stack.padding_idx + 1
    positions = stack.embed_positions
    if positions is None:
        return np.zeros((max_positions, dim), dtype=np.float32)
    table = positions.weight if isinstance(positions, nn.Embedding) else positions.table
    return _array(table[first : first + max_positions])


def _set_stack_inputs(spec: Any, stack: EmbeddedLayerStack, max_positions: int) -> None:
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = _array(stack.embed_tokens.weight)
    spec.scale_embeddings = float(stack.embed_scale)
    spec.position_encodings.encodings = _position_encodings(stack, max_positions)
    if stack.layernorm_embedding is not None:
        _set_layer_norm(spec.layernorm_embedding, stack.layernorm_embedding)
    if stack.layer_norm is not None:
        _set_layer_norm(spec.layer_norm, stack.layer_norm)


def ctranslate2_vocabulary(dictionary: Dictionary) -> list[str]:
    """Dictionary symbols in id order; `<pad>` is CTranslate2's `<blank>`, as its fairseq
    converter writes it."""
    return ["<blank>" if symbol == "<pad>" else symbol for symbol in dictionary.symbols]


def transformer_spec(
    model: TransformerModel, source_dictionary: Dictionary, target_dictionary: Dictionary
) -> Any:
    """A CTranslate2 TransformerSpec holding `model`'s weights and vocabularies."""
    ctranslate2 = import_ctranslate2()
    specs = ctranslate2.specs
    cfg = model.cfg
    activation = getattr(specs.Activation, _ACTIVATIONS[cfg.activation_fn])
    encoder_spec = specs.TransformerEncoderSpec(
        cfg.encoder_layers,
        cfg.encoder_attention_heads,
        pre_norm=cfg.encoder_normalize_before,
        activation=activation,
        layernorm_embedding=cfg.layernorm_embedding,
    )
    decoder_spec = specs.TransformerDecoderSpec(
        cfg.decoder_layers,
        cfg.decoder_attention_heads,
        pre_norm=cfg.decoder_normalize_before,
        activation=activation,
        layernorm_embedding=cfg.layernorm_embedding,
    )
    encoder, decoder = model.encoder, model.decoder
    _set_stack_inputs(encoder_spec, encoder, cfg.max_source_positions)
    for layer_spec, layer in zip(encoder_spec.layer, encoder.layers):
        _set_attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_layer_norm)
        _set_feed_forward(layer_spec.ffn, layer.ffn, layer.final_layer_norm)
    _set_stack_inputs(decoder_spec, decoder, cfg.max_target_positions)
    for layer_spec, layer in zip(decoder_spec.layer, decoder.layers):
        _set_attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_layer_norm)
        _set_attention(layer_spec.attention, layer.encoder_attn, layer.encoder_attn_layer_norm)
        _set_feed_forward(layer_spec.ffn, layer.ffn, layer.final_layer_norm)
    # Tied weights need no care: CTranslate2 stores equal arrays once (aliases) when it saves.
    _set_linear(decoder_spec.projection, decoder.output_projection)

    spec = specs.TransformerSpec(encoder_spec, decoder_spec)
    spec.register_source_vocabulary(ctranslate2_vocabulary(source_dictionary))
    spec.register_target_vocabulary(ctranslate2_vocabulary(target_dictionary))
    spec.config.unk_token = source_dictionary.symbols[source_dictionary.unk()]
    spec.config.bos_token = target_dictionary.symbols[target_dictionary.bos()]
    spec.config.eos_token = target_dictionary.symbols[target_dictionary.eos()]
    spec.config.decoder_start_token = spec.config.eos_token
    spec.config.add_source_eos = True
    spec.config.layer_norm_epsilon = float(encoder.layers[0].final_layer_norm.eps)
    return spec


def _sentencepiece_files(task_state: dict[str, Any]) -> dict[str, bytes]:
    """File name -> SentencePiece model bytes: one sentencepiece.model for a joined model,
    else sentencepiece.<lang>.model per language that has one."""
    source, target = task_state["source_lang"], task_state["target_lang"]
    models = task_state.get("sentencepiece") or {}
    source_model, target_model = models.get(source), models.get(target)
    if source_model is not None and source_model == target_model:
        return {"sentencepiece.model": bytes(source_model)}
    files = {}
    for lang, proto in ((source, source_model), (target, target_model)):
        if proto is not None:
            files[f"sentencepiece.{lang}.model"] = bytes(proto)
    return files


def _readme(folder_name: str, checkpoint: str, quantization: str, spm_files: dict[str, str]) -> str:
    options = ", ".join(f"{key}={value!r}" for key, value in TRANSLATE_OPTIONS.items())
    source_spm, target_spm = spm_files.get("source"), spm_files.get("target")
    if source_spm and target_spm:
        if source_spm == target_spm:
            load = f'spm = sentencepiece.SentencePieceProcessor(model_file="{folder_name}/{source_spm}")'
            source_name = target_name = "spm"
        else:
            load = (
                f'source_spm = sentencepiece.SentencePieceProcessor(model_file="{folder_name}/{source_spm}")\n'
                f'target_spm = sentencepiece.SentencePieceProcessor(model_file="{folder_name}/{target_spm}")'
            )
            source_name, target_name = "source_spm", "target_spm"
        usage = f"""```python
import ctranslate2
import sentencepiece

translator = ctranslate2.Translator("{folder_name}", device="cpu")  # or device="cuda"
{load}
pieces = {source_name}.encode(["Guten Morgen.", "Wie geht es?"], out_type=str)
results = translator.translate_batch(pieces, {options})
print([{target_name}.decode(result.hypotheses[0]) for result in results])
```"""
    else:
        usage = f"""The checkpoint has no SentencePiece model: pass tokens as the training data had
them (whitespace-split), and join the output tokens with spaces.

```python
import ctranslate2

translator = ctranslate2.Translator("{folder_name}", device="cpu")
results = translator.translate_batch([line.split() for line in lines], {options})
print([" ".join(result.hypotheses[0]) for result in results])
```"""
    return f"""# CTranslate2 model exported by nmtkit {__version__}

From `{checkpoint}`, weights stored as `{quantization}`:

    nmtkit-export checkpoint={checkpoint} format=ctranslate2 quantization={quantization} output={folder_name}

Install with `pip install 'ctranslate2>=4' sentencepiece`, then:

{usage}

`translate_batch` takes SentencePiece pieces without `</s>`: the model adds it to each source
and starts decoding from `</s>` (config.json: add_source_eos, decoder_start_token).
The options above are nmtkit-generate's defaults (beam=5 lenpen=1.0 max_len_b=200); with them
CTranslate2 in float32 gives nmtkit's translations. Both stop a hypothesis after 200 tokens,
but nmtkit then appends and scores `</s>`, so beam search may rank hypotheses that never ended
differently. nmtkit never generates `<s>` or `<pad>` (`<blank>` here); a trained model does not
either, and `suppress_sequences=[["<s>"], ["<blank>"]]` rules them out.
`compute_type=` of `Translator` converts the weights at load time (e.g. int8 on the CPU).
"""


def export_ctranslate2(
    state: dict[str, Any],
    output: str | Path,
    quantization: str = "float32",
    checkpoint_name: str = "",
) -> Path:
    """Writes the CTranslate2 model directory `output` from a loaded nmtkit checkpoint `state`.

    `output` must not exist or be empty; the files are written into a temporary sibling folder
    renamed to `output` when complete. `checkpoint_name` is named in the README and nmtkit.json.
    """
    if errors := check_quantization(quantization):
        raise ConfigError(errors[0])
    folder = check_output_dir(output)
    check_exportable(state, checkpoint_name or "state")
    model, source_dictionary, target_dictionary, task_state = load_translation_model(
        state, checkpoint_name or "state"
    )
    spec = transformer_spec(model, source_dictionary, target_dictionary)
    spec.validate()
    spec.optimize(quantization=quantization)

    spm_files = _sentencepiece_files(task_state)
    source, target = task_state["source_lang"], task_state["target_lang"]
    spm_names = {}
    for side, lang in (("source", source), ("target", target)):
        for name in spm_files:
            if name in ("sentencepiece.model", f"sentencepiece.{lang}.model"):
                spm_names[side] = name
    metadata = {
        "nmtkit_version": __version__,
        "checkpoint": checkpoint_name,
        "quantization": quantization,
        "source_lang": source,
        "target_lang": target,
        "sentencepiece": spm_names,
        "translate_options": TRANSLATE_OPTIONS,
    }
    parent = folder.absolute().parent
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
    try:
        spec.save(str(temporary))
        for name, proto in spm_files.items():
            (temporary / name).write_bytes(proto)
        (temporary / "nmtkit.json").write_text(json.dumps(metadata, indent=2) + "\n")
        readme = _readme(folder.name, checkpoint_name, quantization, spm_names)
        (temporary / "README.md").write_text(readme, encoding="utf-8")
        for file in temporary.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        # mkdtemp makes the folder private (0700); the finished one gets the usual mode.
        os.chmod(temporary, 0o777 & ~current_umask())
        # rename(2) replaces an empty directory (checked above) in one step.
        os.rename(temporary, folder)
        descriptor = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError) and is_user_os_error(error):
            raise OutputError(f"output={output}: {describe_os_error(error)}") from None
        raise
    return folder
