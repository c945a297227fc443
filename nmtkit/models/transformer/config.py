"""Configuration of the transformer encoder-decoder and its named architectures.

Field names and defaults are fairseq's (`--arch transformer`, i.e. Vaswani et al.'s base
model), so a fairseq command line translates key by key.
"""

from __future__ import annotations

from dataclasses import dataclass

from nmtkit.modules.transformer_layer import ACTIVATIONS
from nmtkit.registry import ComponentConfig


@dataclass(kw_only=True)
class TransformerConfig(ComponentConfig):
    """Sizes and options of a transformer encoder-decoder."""

    encoder_embed_dim: int = 512
    """Width of the encoder: embeddings, attention and layer outputs."""
    encoder_ffn_embed_dim: int = 2048
    """Hidden width of the encoder's feed-forward blocks."""
    encoder_layers: int = 6
    """Number of encoder layers."""
    encoder_attention_heads: int = 8
    """Attention heads per encoder layer (encoder_embed_dim must be divisible by it)."""
    encoder_normalize_before: bool = False
    """Pre-norm encoder: LayerNorm before each sublayer and after the last layer."""
    encoder_learned_pos: bool = False
    """Learned encoder position embeddings instead of sinusoidal ones."""
    decoder_embed_dim: int = 512
    """Width of the decoder: embeddings, attention and layer outputs."""
    decoder_ffn_embed_dim: int = 2048
    """Hidden width of the decoder's feed-forward blocks."""
    decoder_layers: int = 6
    """Number of decoder layers."""
    decoder_attention_heads: int = 8
    """Attention heads per decoder layer (decoder_embed_dim must be divisible by it)."""
    decoder_normalize_before: bool = False
    """Pre-norm decoder: LayerNorm before each sublayer and after the last layer."""
    decoder_learned_pos: bool = False
    """Learned decoder position embeddings instead of sinusoidal ones."""
    dropout: float = 0.1
    """Dropout on embeddings and on the output of every sublayer."""
    attention_dropout: float = 0.0
    """Dropout on attention weights."""
    activation_dropout: float = 0.0
    """Dropout after the activation inside feed-forward blocks."""
    activation_fn: str = "relu"
    """Feed-forward activation: relu or gelu."""
    share_all_embeddings: bool = False
    """One embedding matrix for source, target and output (needs a joined dictionary)."""
    share_decoder_input_output_embed: bool = False
    """Tie the output projection to the decoder's input embedding matrix."""
    no_scale_embedding: bool = False
    """Do not multiply token embeddings by sqrt(embed_dim)."""
    layernorm_embedding: bool = False
    """LayerNorm after adding position embeddings, in encoder and decoder."""
    no_token_positional_embeddings: bool = False
    """Use no position embeddings at all."""
    max_source_positions: int = 1024
    """Longest source (in tokens) the model accepts."""
    max_target_positions: int = 1024
    """Longest target (in tokens) the model accepts and generates."""

    def validate(self) -> list[str]:
        errors = []
        for side in ("encoder", "decoder"):
            embed_dim = getattr(self, f"{side}_embed_dim")
            heads = getattr(self, f"{side}_attention_heads")
            for name in ("embed_dim", "ffn_embed_dim", "layers", "attention_heads"):
                value = getattr(self, f"{side}_{name}")
                if value < 1:
                    errors.append(f"{side}_{name}={value}: must be >= 1")
            if heads >= 1 and embed_dim % heads != 0:
                errors.append(
                    f"{side}_embed_dim={embed_dim}: must be divisible by "
                    f"{side}_attention_heads={heads}"
                )
        if self.share_all_embeddings and self.encoder_embed_dim != self.decoder_embed_dim:
            errors.append(
                f"share_all_embeddings=true: needs encoder_embed_dim={self.encoder_embed_dim} "
                f"equal to decoder_embed_dim={self.decoder_embed_dim}"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                errors.append(f"{name}={value}: must be in [0, 1)")
        if self.activation_fn not in ACTIVATIONS:
            errors.append(
                f"activation_fn={self.activation_fn}: choose one of {', '.join(ACTIVATIONS)}"
            )
        for name in ("max_source_positions", "max_target_positions"):
            value = getattr(self, name)
            if value < 1:
                errors.append(f"{name}={value}: must be >= 1")
        return errors


def transformer_base() -> TransformerConfig:
    """Vaswani et al. (2017) base: 512/2048, 8 heads, 6+6 layers, post-norm (fairseq's default)."""
    return TransformerConfig()


def transformer_tiny() -> TransformerConfig:
    """For tests: width 16, feed-forward 32, 2 heads, one encoder and one decoder layer."""
    config = transformer_base()
    config.encoder_embed_dim = 16
    config.encoder_ffn_embed_dim = 32
    config.encoder_layers = 1
    config.encoder_attention_heads = 2
    config.decoder_embed_dim = 16
    config.decoder_ffn_embed_dim = 32
    config.decoder_layers = 1
    config.decoder_attention_heads = 2
    return config


def transformer_small() -> TransformerConfig:
    """256/1024, 4 heads, 3+3 layers: the size of the de-en development benchmark."""
    config = transformer_base()
    config.encoder_embed_dim = 256
    config.encoder_ffn_embed_dim = 1024
    config.encoder_layers = 3
    config.encoder_attention_heads = 4
    config.decoder_embed_dim = 256
    config.decoder_ffn_embed_dim = 1024
    config.decoder_layers = 3
    config.decoder_attention_heads = 4
    return config


def transformer_iwslt_de_en() -> TransformerConfig:
    """fairseq's transformer_iwslt_de_en: 512/1024, 4 heads, 6+6 layers."""
    config = transformer_base()
    config.encoder_ffn_embed_dim = 1024
    config.decoder_ffn_embed_dim = 1024
    config.encoder_attention_heads = 4
    config.decoder_attention_heads = 4
    return config


def transformer_big() -> TransformerConfig:
    """Vaswani et al. big (fairseq's transformer_vaswani_wmt_en_de_big): 1024/4096, 16 heads, dropout 0.3."""
    config = transformer_base()
    config.encoder_embed_dim = 1024
    config.encoder_ffn_embed_dim = 4096
    config.encoder_attention_heads = 16
    config.decoder_embed_dim = 1024
    config.decoder_ffn_embed_dim = 4096
    config.decoder_attention_heads = 16
    config.dropout = 0.3
    return config


PRESETS = {
    "transformer_tiny": transformer_tiny,
    "transformer_small": transformer_small,
    "transformer_iwslt_de_en": transformer_iwslt_de_en,
    "transformer_base": transformer_base,
    "transformer_big": transformer_big,
}
"""Named architectures: preset name -> function returning its config."""
