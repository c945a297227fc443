"""Model registry. Model files import torch, nmtkit.modules and their own config only; they are
registered here.

What criterions and generation may call on a model, and the capability flags a model declares
(`supports_output_positions`, `decodes_grouped_rows`, `supports_ctc`, `is_encoder_only`), are
written as code in nmtkit.models.api: the `EncoderDecoderModel` and `CtcModel` protocols and
`capability(model, name)`.
"""

from __future__ import annotations

from torch import nn

from nmtkit.registry import Registry

MODELS: Registry[nn.Module] = Registry("model", nn.Module)
register_model = MODELS.register

from nmtkit.models.conformer import (  # noqa: E402  (registration needs MODELS above)
    PRESETS as S2T_CONFORMER_PRESETS,
)
from nmtkit.models.conformer import (  # noqa: E402
    S2TConformerConfig,
    S2TConformerModel,
)
from nmtkit.models.s2t_transformer import (  # noqa: E402
    PRESETS as S2T_TRANSFORMER_PRESETS,
)
from nmtkit.models.s2t_transformer import (  # noqa: E402
    S2TTransformerConfig,
    S2TTransformerModel,
)
from nmtkit.models.transformer import (  # noqa: E402
    PRESETS as TRANSFORMER_PRESETS,
)
from nmtkit.models.transformer import (  # noqa: E402
    TransformerConfig,
    TransformerModel,
)

MODELS.register("transformer", TransformerConfig)(TransformerModel)
for _name, _make_config in TRANSFORMER_PRESETS.items():
    MODELS.register_preset(_name, "transformer", _make_config)

MODELS.register("s2t_transformer", S2TTransformerConfig)(S2TTransformerModel)
for _name, _make_config in S2T_TRANSFORMER_PRESETS.items():
    MODELS.register_preset(_name, "s2t_transformer", _make_config)

MODELS.register("s2t_conformer", S2TConformerConfig)(S2TConformerModel)
for _name, _make_config in S2T_CONFORMER_PRESETS.items():
    MODELS.register_preset(_name, "s2t_conformer", _make_config)
