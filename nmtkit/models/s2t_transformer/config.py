"""Configuration of the speech-to-text Transformer and its named architectures.

Field names and defaults are fairseq's (`--arch s2t_transformer`, fairseq/models/speech_to_text/
s2t_transformer.py): 512/2048, 8 heads, 12 encoder and 6 decoder layers, pre-norm, dropout 0.1
everywhere. fairseq derives the decoder sizes and the attention/activation dropout from the
encoder's and from `dropout` when they are not given; here the named architectures set them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nmtkit.modules.transformer_layer import ACTIVATIONS
from nmtkit.registry import ComponentConfig

CTC_HEADS = ("none", "target", "source")
"""What the CTC projection on the encoder output predicts: nothing, the target dictionary
(ASR, or an encoder-only model), or the source transcript's dictionary (speech translation)."""


@dataclass(kw_only=True)
class S2TTransformerConfig(ComponentConfig):
    """Sizes and options of a speech-to-text Transformer (conv subsampler + encoder-decoder)."""

    input_feat_per_channel: int = 80
    """Features per frame and channel (80 log-mel filterbanks)."""
    input_channels: int = 1
    """Input channels; the subsampler reads input_feat_per_channel * input_channels per frame."""
    conv_kernel_sizes: list[int] = field(default_factory=lambda: [5, 5])
    """Kernel of each stride-2 convolution of the subsampler (two layers: 4x fewer frames)."""
    conv_channels: int = 1024
    """Output channels of the inner subsampler convolutions (GLU halves them)."""
    encoder_embed_dim: int = 512
    """Width of the encoder: subsampler output, attention and layer outputs."""
    encoder_ffn_embed_dim: int = 2048
    """Hidden width of the encoder's feed-forward blocks."""
    encoder_layers: int = 12
    """Number of encoder layers."""
    encoder_attention_heads: int = 8
    """Attention heads per encoder layer (encoder_embed_dim must be divisible by it)."""
    encoder_normalize_before: bool = True
    """Pre-norm encoder: LayerNorm before each sublayer and after the last layer."""
    decoder_embed_dim: int = 512
    """Width of the decoder: embeddings, attention and layer outputs."""
    decoder_ffn_embed_dim: int = 2048
    """Hidden width of the decoder's feed-forward blocks."""
    decoder_layers: int = 6
    """Number of decoder layers; 0 builds an encoder-only model trained with CTC (ctc_head=target)."""
    decoder_attention_heads: int = 8
    """Attention heads per decoder layer (decoder_embed_dim must be divisible by it)."""
    decoder_normalize_before: bool = True
    """Pre-norm decoder: LayerNorm before each sublayer and after the last layer."""
    decoder_learned_pos: bool = False
    """Learned decoder position embeddings instead of sinusoidal ones."""
    dropout: float = 0.1
    """Dropout on embeddings and on the output of every sublayer."""
    attention_dropout: float = 0.1
    """Dropout on attention weights."""
    activation_dropout: float = 0.1
    """Dropout after the activation inside feed-forward blocks."""
    activation_fn: str = "relu"
    """Feed-forward activation: relu or gelu."""
    share_decoder_input_output_embed: bool = False
    """Tie the output projection to the decoder's input embedding matrix."""
    no_scale_embedding: bool = False
    """Do not multiply subsampler outputs and token embeddings by sqrt(embed_dim)."""
    max_source_positions: int = 6000
    """Longest source, in feature frames before subsampling, the model accepts (60 s at 10 ms)."""
    max_target_positions: int = 1024
    """Longest target (in tokens) the model accepts and generates."""
    ctc_head: str = "none"
    """CTC projection on the encoder output: none, target (the target dictionary) or source
    (the transcript's dictionary, for speech translation). Its blank is index 0 (`<s>`)."""
    ctc_dropout: float = 0.0
    """Dropout on the encoder output before the CTC projection."""

    def validate(self) -> list[str]:
        return validate_speech_model(self)


def validate_speech_model(config: Any) -> list[str]:
    """The checks every speech model config shares (s2t_transformer, s2t_conformer): sizes,
    head divisibility, the subsampler's kernels, dropouts, activation and the CTC head."""
    errors = []
    positive = [
        "input_feat_per_channel",
        "input_channels",
        "conv_channels",
        "encoder_embed_dim",
        "encoder_ffn_embed_dim",
        "encoder_layers",
        "encoder_attention_heads",
        "max_source_positions",
        "max_target_positions",
    ]
    if config.decoder_layers != 0:
        positive += ["decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_attention_heads"]
    for name in positive:
        value = getattr(config, name)
        if value < 1:
            errors.append(f"{name}={value}: must be >= 1")
    if config.decoder_layers < 0:
        errors.append(f"decoder_layers={config.decoder_layers}: must be >= 0")
    sides = ["encoder"] + (["decoder"] if config.decoder_layers > 0 else [])
    for side in sides:
        embed_dim = getattr(config, f"{side}_embed_dim")
        heads = getattr(config, f"{side}_attention_heads")
        if heads >= 1 and embed_dim % heads != 0:
            errors.append(
                f"{side}_embed_dim={embed_dim}: must be divisible by {side}_attention_heads={heads}"
            )
    if not config.conv_kernel_sizes or any(k < 1 for k in config.conv_kernel_sizes):
        errors.append(
            f"conv_kernel_sizes={list(config.conv_kernel_sizes)}: needs at least one kernel "
            "size, each >= 1"
        )
    elif len(config.conv_kernel_sizes) > 1 and config.conv_channels % 2 != 0:
        errors.append(f"conv_channels={config.conv_channels}: must be even (GLU halves it)")
    for name in ("dropout", "attention_dropout", "activation_dropout", "ctc_dropout"):
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            errors.append(f"{name}={value}: must be in [0, 1)")
    if config.activation_fn not in ACTIVATIONS:
        errors.append(
            f"activation_fn={config.activation_fn}: choose one of {', '.join(ACTIVATIONS)}"
        )
    if config.ctc_head not in CTC_HEADS:
        errors.append(f"ctc_head={config.ctc_head}: choose one of {', '.join(CTC_HEADS)}")
    elif config.decoder_layers == 0 and config.ctc_head != "target":
        errors.append(
            f"decoder_layers=0 with ctc_head={config.ctc_head}: an encoder-only model "
            "predicts the target through its CTC head, set ctc_head=target"
        )
    return errors


def s2t_transformer_base() -> S2TTransformerConfig:
    """fairseq's s2t_transformer: 512/2048, 8 heads, 12+6 layers, pre-norm, dropout 0.1."""
    return S2TTransformerConfig()


def s2t_transformer_s() -> S2TTransformerConfig:
    """fairseq's s2t_transformer_s: 256/2048, 4 heads, 12+6 layers, dropout 0.1."""
    config = s2t_transformer_base()
    config.encoder_embed_dim = 256
    config.encoder_ffn_embed_dim = 2048
    config.encoder_attention_heads = 4
    config.decoder_embed_dim = 256
    config.decoder_ffn_embed_dim = 2048
    config.decoder_attention_heads = 4
    return config


def s2t_transformer_xs() -> S2TTransformerConfig:
    """fairseq's s2t_transformer_xs: s with 6+3 layers, feed-forward 1024, dropout 0.3."""
    config = s2t_transformer_s()
    config.encoder_layers = 6
    config.decoder_layers = 3
    config.encoder_ffn_embed_dim = 1024
    config.decoder_ffn_embed_dim = 1024
    config.dropout = 0.3
    config.attention_dropout = 0.3
    config.activation_dropout = 0.3
    return config


def s2t_transformer_m() -> S2TTransformerConfig:
    """fairseq's s2t_transformer_m: 512/2048, 8 heads, 12+6 layers, dropout 0.15."""
    config = s2t_transformer_base()
    config.dropout = 0.15
    config.attention_dropout = 0.15
    config.activation_dropout = 0.15
    return config


def s2t_transformer_tiny() -> S2TTransformerConfig:
    """For tests: width 16, feed-forward 32, 2 heads, 2+1 layers, subsampler channels 16."""
    config = s2t_transformer_base()
    config.conv_channels = 16
    config.encoder_embed_dim = 16
    config.encoder_ffn_embed_dim = 32
    config.encoder_layers = 2
    config.encoder_attention_heads = 2
    config.decoder_embed_dim = 16
    config.decoder_ffn_embed_dim = 32
    config.decoder_layers = 1
    config.decoder_attention_heads = 2
    config.dropout = 0.0
    config.attention_dropout = 0.0
    config.activation_dropout = 0.0
    return config


PRESETS = {
    "s2t_transformer_tiny": s2t_transformer_tiny,
    "s2t_transformer_xs": s2t_transformer_xs,
    "s2t_transformer_s": s2t_transformer_s,
    "s2t_transformer_m": s2t_transformer_m,
}
"""Named architectures: preset name -> function returning its config."""
