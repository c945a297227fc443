"""Configuration of the speech-to-text Conformer and its named architectures.

Field names and defaults are fairseq's `--arch s2t_conformer` (fairseq/models/speech_to_text/
s2t_conformer.py) with `--attn-type espnet --pos-enc-type rel_pos`, the setting of its
Conformer recipes: the S2T Transformer's conv subsampler, 16 Conformer blocks of width 256
with 4 heads, feed-forward 2048 and depthwise kernel 31, and a 6-layer pre-norm Transformer
decoder of width 256 with 8 heads (fairseq's S2T base derives the decoder width and
feed-forward from the encoder's, and keeps 8 decoder heads), dropout 0.1 everywhere.
fairseq registers no other Conformer size; `s2t_conformer_tiny` is for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nmtkit.models.s2t_transformer.config import CTC_HEADS as CTC_HEADS  # re-exported
from nmtkit.models.s2t_transformer.config import validate_speech_model
from nmtkit.modules.conformer_layer import CONV_NORMS
from nmtkit.registry import ComponentConfig


@dataclass(kw_only=True)
class S2TConformerConfig(ComponentConfig):
    """Sizes and options of a speech-to-text Conformer (conv subsampler, Conformer encoder,
    Transformer decoder)."""

    input_feat_per_channel: int = 80
    """Features per frame and channel (80 log-mel filterbanks)."""
    input_channels: int = 1
    """Input channels; the subsampler reads input_feat_per_channel * input_channels per frame."""
    conv_kernel_sizes: list[int] = field(default_factory=lambda: [5, 5])
    """Kernel of each stride-2 convolution of the subsampler (two layers: 4x fewer frames)."""
    conv_channels: int = 1024
    """Output channels of the inner subsampler convolutions (GLU halves them)."""
    encoder_embed_dim: int = 256
    """Width of the encoder: subsampler output, attention, convolution and layer outputs."""
    encoder_ffn_embed_dim: int = 2048
    """Hidden width of the two feed-forward modules of each Conformer block."""
    encoder_layers: int = 16
    """Number of Conformer blocks."""
    encoder_attention_heads: int = 4
    """Attention heads per Conformer block (encoder_embed_dim must be divisible by it)."""
    depthwise_conv_kernel_size: int = 31
    """Kernel of the depthwise convolution in each block; odd, for 'same' padding. It may be
    longer than an utterance: the frames beyond its ends read as zeros."""
    conv_norm: str = "batch_norm"
    """Normalisation after the depthwise convolution: batch_norm (fairseq's and the paper's;
    training statistics over real frames only) or layer_norm."""
    decoder_embed_dim: int = 256
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
    """Dropout on the subsampler output and on the output of every sublayer."""
    attention_dropout: float = 0.1
    """Dropout on attention weights (encoder and decoder)."""
    activation_dropout: float = 0.1
    """Dropout after the activation inside feed-forward blocks (encoder and decoder)."""
    activation_fn: str = "relu"
    """Activation of the decoder's feed-forward blocks: relu or gelu (Conformer blocks use swish)."""
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
        errors = validate_speech_model(self)
        kernel = self.depthwise_conv_kernel_size
        if kernel < 1 or kernel % 2 == 0:
            errors.append(
                f"depthwise_conv_kernel_size={kernel}: must be odd and >= 1 ('same' padding "
                "of kernel // 2 frames on each side), e.g. 31 or 15"
            )
        if self.conv_norm not in CONV_NORMS:
            errors.append(f"conv_norm={self.conv_norm}: choose one of {', '.join(CONV_NORMS)}")
        return errors


def s2t_conformer_base() -> S2TConformerConfig:
    """fairseq's s2t_conformer: 256/2048, 4 heads, 16 blocks, kernel 31, decoder 256/2048 with
    8 heads and 6 layers, dropout 0.1 (module docstring)."""
    return S2TConformerConfig()


def s2t_conformer_tiny() -> S2TConformerConfig:
    """For tests: width 16, feed-forward 32, 2 heads, 2+1 layers, kernel 5, subsampler
    channels 16, no dropout."""
    config = s2t_conformer_base()
    config.conv_channels = 16
    config.encoder_embed_dim = 16
    config.encoder_ffn_embed_dim = 32
    config.encoder_layers = 2
    config.encoder_attention_heads = 2
    config.depthwise_conv_kernel_size = 5
    config.decoder_embed_dim = 16
    config.decoder_ffn_embed_dim = 32
    config.decoder_layers = 1
    config.decoder_attention_heads = 2
    config.dropout = 0.0
    config.attention_dropout = 0.0
    config.activation_dropout = 0.0
    return config


PRESETS = {
    "s2t_conformer_tiny": s2t_conformer_tiny,
}
"""Named architectures beyond the registered default (`s2t_conformer`, fairseq's base):
preset name -> function returning its config."""
