from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from nmtkit.models import MODELS
from nmtkit.models.api import capability
from nmtkit.models.conformer import (
    PRESETS,
    S2TConformerConfig,
    S2TConformerModel,
    s2t_conformer_base,
)
from nmtkit.models.conformer import s2t_conformer_tiny as make_tiny
from nmtkit.modules.conformer_layer import ConformerConvolution, MaskedBatchNorm1d
from nmtkit.modules.relative_attention import (
    RelativePositionalEncoding,
    RelativePositionMultiheadAttention,
    rel_shift,
    relative_sinusoidal_table,
)
from tests.unit.test_s2t_transformer import pad_features

PAD, EOS = 1, 2
VOCAB = 11
FEATURES = 6


@pytest.fixture(autouse=True)
def seed() -> None:
    """Each test starts from the same random state (tests/conftest.py sets one thread)."""
    torch.manual_seed(0)


def tiny_config(**changes: object) -> S2TConformerConfig:
    config = make_tiny()
    config.input_feat_per_channel = FEATURES
    config.conv_channels = 8
    return dataclasses.replace(config, **changes)


def tiny_model(ctc_head: str = "target", **changes: object) -> S2TConformerModel:
    config = tiny_config(ctc_head=ctc_head, **changes)
    ctc_vocab = None if ctc_head == "none" else VOCAB
    return S2TConformerModel(config, VOCAB, padding_idx=PAD, ctc_vocab_size=ctc_vocab).eval()


def give_batch_norms_statistics(model: S2TConformerModel) -> None:
    """Eval-mode batch norm with its initial statistics (0, 1) is almost the identity; random
    running statistics make the tests see what it does."""
    for module in model.modules():
        if isinstance(module, MaskedBatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)


def sinusoid(distance: int, dim: int) -> torch.Tensor:
    """The relative embedding of one distance, from the formula (sin at even features)."""
    embedding = torch.zeros(dim)
    for i in range(0, dim, 2):
        angle = distance * math.exp(-i * math.log(10000.0) / dim)
        embedding[i] = math.sin(angle)
        if i + 1 < dim:
            embedding[i + 1] = math.cos(angle)
    return embedding


def test_rel_shift_puts_distance_i_minus_j_in_column_j() -> None:
    for length in (1, 2, 5):
        scores = torch.randn(2, 3, length, 2 * length - 1)
        shifted = rel_shift(scores)
        assert shifted.shape == (2, 3, length, length)
        for i in range(length):
            for j in range(length):
                # Column r of the input holds distance length - 1 - r.
                assert torch.equal(shifted[..., i, j], scores[..., i, length - 1 - (i - j)])
    with pytest.raises(ValueError, match="2T - 1"):
        rel_shift(torch.zeros(4, 6))


def test_relative_table_rows_are_the_distances_sinusoids() -> None:
    dim = 6
    table = relative_sinusoidal_table(4, dim)
    assert table.shape == (7, dim)
    for row in range(7):
        torch.testing.assert_close(table[row], sinusoid(3 - row, dim))
    encoding = RelativePositionalEncoding(dim, max_length=2)
    torch.testing.assert_close(encoding(1), table[3:4])
    torch.testing.assert_close(encoding(4), table)  # grows on demand
    torch.testing.assert_close(encoding(2), table[2:5])
    assert relative_sinusoidal_table(2, 5).shape == (3, 5)  # odd width


def test_relative_attention_equals_explicit_quadratic_computation() -> None:
    """Scores ((q_i + u).k_j + (q_i + v).W r(i - j)) / sqrt(d), each pair computed on its own."""
    dim, heads, length = 8, 2, 5
    head_dim = dim // heads
    attention = RelativePositionMultiheadAttention(dim, heads).eval()
    x = torch.randn(2, length, dim)
    key_padding_mask = torch.tensor([[False] * 5, [False, False, False, True, True]])
    pos_emb = RelativePositionalEncoding(dim, length)(length)
    with torch.no_grad():
        output = attention(x, pos_emb, key_padding_mask)
        q, k, v = attention.qkv_proj(x).view(2, length, 3, heads, head_dim).unbind(2)
        expected = torch.zeros(2, length, heads, head_dim)
        for b in range(2):
            for h in range(heads):
                u, bias_v = attention.pos_bias_u[h], attention.pos_bias_v[h]
                w_pos = attention.linear_pos.weight[h * head_dim : (h + 1) * head_dim]
                for i in range(length):
                    scores = torch.full((length,), -math.inf)
                    for j in range(length):
                        if key_padding_mask[b, j]:
                            continue
                        r = w_pos @ sinusoid(i - j, dim)
                        content = (q[b, i, h] + u) @ k[b, j, h]
                        position = (q[b, i, h] + bias_v) @ r
                        scores[j] = (content + position) / math.sqrt(head_dim)
                    expected[b, i, h] = torch.softmax(scores, 0) @ v[b, :, h]
        expected = attention.out_proj(expected.reshape(2, length, dim))
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv_norm", ["batch_norm", "layer_norm"])
def test_utterance_gives_the_same_outputs_alone_and_batched(conv_norm: str) -> None:
    """Padding zeroed before the depthwise convolution: an utterance batched with a longer one
    reads the same zeros beyond its end as alone (fails if that masking is removed)."""
    model = tiny_model(conv_norm=conv_norm)
    give_batch_norms_statistics(model)
    # With CMVN the zero padding of the batch becomes non-zero features: the model must not
    # rely on the collater's zeros.
    model.set_cmvn(torch.randn(FEATURES), torch.rand(FEATURES) + 0.5)
    short, long = torch.randn(13, FEATURES), torch.randn(40, FEATURES)
    prev = torch.tensor([[EOS, 4, 5, 6]])
    with torch.no_grad():
        alone = model.encode(*pad_features([short]))
        features, lengths = pad_features([short, long])
        batched = model.encode(features, lengths)
        valid = int(alone["encoder_lengths"][0])
        assert alone["encoder_out"].size(1) == valid == 4 and batched["encoder_out"].size(1) == 10
        assert batched["encoder_padding_mask"][0].tolist() == [False] * valid + [True] * 6
        torch.testing.assert_close(
            batched["encoder_out"][0, :valid], alone["encoder_out"][0], atol=1e-5, rtol=0
        )
        logits_alone = model(*pad_features([short]), prev)
        logits_batched = model(features, lengths, torch.cat([prev, prev]))
        torch.testing.assert_close(logits_batched[0], logits_alone[0], atol=1e-5, rtol=0)
        _, ctc_alone, _ = model(*pad_features([short]), with_ctc=True)
        _, ctc_batched, _ = model(features, lengths, with_ctc=True)
        torch.testing.assert_close(ctc_batched[0, :valid], ctc_alone[0], atol=1e-5, rtol=0)


def test_kernel_longer_than_the_utterance_pads_with_zeros() -> None:
    """Depthwise kernel 31 over a 1-frame utterance: 'same' padding, alone or batched."""
    model = tiny_model(depthwise_conv_kernel_size=31)
    give_batch_norms_statistics(model)
    one_frame, long = torch.randn(3, FEATURES), torch.randn(60, FEATURES)
    with torch.no_grad():
        alone = model.encode(*pad_features([one_frame]))
        batched = model.encode(*pad_features([long, one_frame]))
    assert alone["encoder_out"].shape == (1, 1, 16)
    assert batched["encoder_lengths"].tolist() == [15, 1]
    assert torch.isfinite(alone["encoder_out"]).all()
    torch.testing.assert_close(
        batched["encoder_out"][1, :1], alone["encoder_out"][0], atol=1e-5, rtol=0
    )


def test_masked_batch_norm_trains_on_the_real_frames_only() -> None:
    norm = MaskedBatchNorm1d(3, momentum=0.5).train()
    x = torch.randn(2, 3, 7)
    padding_mask = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    x[1, :, 4:] = 100.0  # padded frames: must not move the statistics
    output = norm(x, padding_mask)
    real = torch.cat([x[0], x[1, :, :4]], dim=1)  # (channels, 11 real frames)
    reference = torch.nn.BatchNorm1d(3, momentum=0.5).train()
    expected = reference(real.unsqueeze(0))[0]
    torch.testing.assert_close(torch.cat([output[0], output[1, :, :4]], dim=1), expected)
    torch.testing.assert_close(norm.running_mean, reference.running_mean)
    torch.testing.assert_close(norm.running_var, reference.running_var)
    assert int(norm.num_batches_tracked) == 1
    # Evaluation applies the running statistics frame by frame.
    norm.eval()
    reference.eval()
    torch.testing.assert_close(norm(x, padding_mask)[0], reference(x[:1])[0])


def test_convolution_module_rejects_even_kernels() -> None:
    with pytest.raises(ValueError, match="odd"):
        ConformerConvolution(8, 4, dropout=0.0)


def test_forward_backward_shapes_and_ctc_head() -> None:
    model = tiny_model(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1).train()
    features, lengths = pad_features([torch.randn(17, FEATURES), torch.randn(9, FEATURES)])
    prev = torch.tensor([[EOS, 4, 5], [EOS, 6, PAD]])
    logits, log_probs, ctc_lengths = model(features, lengths, prev, with_ctc=True)
    assert logits.shape == (2, 3, VOCAB)
    assert log_probs.shape == (2, 5, VOCAB) and log_probs.dtype == torch.float32
    assert ctc_lengths.tolist() == [5, 3]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 5))
    (logits.sum() + log_probs.sum()).backward()
    layer = model.encoder.layers[0]
    for parameter in (
        layer.self_attn.pos_bias_u,
        layer.self_attn.pos_bias_v,
        layer.self_attn.linear_pos.weight,
        layer.conv_module.depthwise_conv.weight,
        layer.conv_module.norm.weight,
        model.encoder.input_projection.weight,
        model.ctc_projection.weight,
    ):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
    model.eval()
    positions = torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        logits = model(features, lengths, prev)
        selected = model(features, lengths, prev, output_positions=positions)
    torch.testing.assert_close(selected, logits.reshape(-1, VOCAB)[positions])
    assert capability(model, "supports_ctc") and capability(model, "supports_output_positions")
    assert capability(model, "decodes_grouped_rows") and model.ctc_head == "target"
    assert not capability(model, "is_encoder_only")
    assert not capability(tiny_model("none"), "supports_ctc")


def test_bf16_autocast_forward_and_backward() -> None:
    model = tiny_model().train()
    features, lengths = pad_features([torch.randn(12, FEATURES), torch.randn(7, FEATURES)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, log_probs, _ = model(
            features, lengths, torch.tensor([[EOS, 4], [EOS, 5]]), with_ctc=True
        )
    assert logits.dtype == torch.bfloat16 and log_probs.dtype == torch.float32
    (logits.float().sum() + log_probs.sum()).backward()
    assert torch.isfinite(model.encoder.layers[0].self_attn.pos_bias_u.grad).all()


def test_encoder_only_model_has_no_decoder() -> None:
    model = tiny_model(decoder_layers=0)
    assert model.decoder is None and capability(model, "is_encoder_only")
    assert not any(name.startswith("decoder.") for name in model.state_dict())
    features, lengths = pad_features([torch.randn(9, FEATURES)])
    logits, log_probs, _ = model(features, lengths, torch.tensor([[EOS]]), with_ctc=True)
    assert logits is None and log_probs.shape == (1, 3, VOCAB)
    with pytest.raises(ValueError, match="decoder"):
        model(features, lengths, torch.tensor([[EOS]]))
    with pytest.raises(ValueError, match="encoder-only"):
        model.decode(torch.tensor([[EOS]]), model.encode(features, lengths))


def test_incremental_decoding_with_reordering_matches_full_decoding() -> None:
    model = tiny_model()
    features, lengths = pad_features([torch.randn(n, FEATURES) for n in (14, 9, 20)])
    prefix = torch.tensor([[EOS, 4, 5], [EOS, 7, 7], [EOS, 9, 4]])
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        encoder_out = model.encode(features, lengths)
        reordered = model.reorder_encoder_out(encoder_out, order)
        assert torch.equal(reordered["encoder_lengths"], encoder_out["encoder_lengths"][order])
        state: dict = {}
        for step in range(1, 3):
            model.decode(prefix[:, :step], encoder_out, incremental_state=state)
        model.reorder_incremental_state(state, order)
        incremental = model.decode(prefix[order], reordered, incremental_state=state)
        full = model(features[order], lengths[order], prefix[order])
    torch.testing.assert_close(incremental[:, 0], full[:, -1], atol=1e-5, rtol=0)


def test_state_dict_names_and_cmvn() -> None:
    model = tiny_model()
    names = set(model.state_dict())
    assert {
        "cmvn_mean",
        "cmvn_std",
        "encoder.subsample.conv_layers.0.weight",
        "encoder.input_projection.weight",
        "encoder.layers.0.ffn1.fc1.weight",
        "encoder.layers.0.self_attn.pos_bias_u",
        "encoder.layers.0.self_attn.linear_pos.weight",
        "encoder.layers.0.conv_module.depthwise_conv.weight",
        "encoder.layers.0.conv_module.norm.running_var",
        "encoder.layers.1.final_layer_norm.weight",
        "decoder.embed_tokens.weight",
        "ctc_projection.weight",
    } <= names
    assert not any("embed_positions" in name for name in names)  # sinusoidal: not saved
    assert "encoder.layers.0.conv_module.norm.weight" in set(
        tiny_model(conv_norm="layer_norm").state_dict()
    )
    model.to(torch.bfloat16)
    assert model.cmvn_mean.dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        model.set_cmvn(torch.zeros(3), torch.ones(3))


def test_validation_collects_every_error() -> None:
    config = tiny_config(
        encoder_embed_dim=15,
        depthwise_conv_kernel_size=4,
        conv_norm="group_norm",
        dropout=1.5,
        ctc_head="both",
    )
    errors = config.validate()
    assert len(errors) == 5, errors
    assert any(e.startswith("depthwise_conv_kernel_size=4: must be odd") for e in errors)
    assert any(e.startswith("conv_norm=group_norm: choose one of") for e in errors)
    assert tiny_config(decoder_layers=0).validate() == [
        "decoder_layers=0 with ctc_head=none: an encoder-only model predicts the target "
        "through its CTC head, set ctc_head=target"
    ]
    with pytest.raises(ValueError, match="invalid s2t_conformer config"):
        S2TConformerModel(tiny_config(depthwise_conv_kernel_size=0), VOCAB)
    with pytest.raises(ValueError, match="ctc_vocab_size"):
        S2TConformerModel(tiny_config(ctc_head="source"), VOCAB)


def test_named_architectures_are_fairseqs_and_registered() -> None:
    base = s2t_conformer_base()
    assert (base.encoder_layers, base.decoder_layers) == (16, 6)
    assert (base.encoder_embed_dim, base.encoder_ffn_embed_dim, base.encoder_attention_heads) == (
        256,
        2048,
        4,
    )
    assert (base.decoder_embed_dim, base.decoder_ffn_embed_dim, base.decoder_attention_heads) == (
        256,
        2048,
        8,
    )
    assert base.depthwise_conv_kernel_size == 31 and base.conv_norm == "batch_norm"
    assert base.conv_kernel_sizes == [5, 5] and base.conv_channels == 1024
    assert base.dropout == base.attention_dropout == base.activation_dropout == 0.1
    tiny = make_tiny()
    assert max(tiny.encoder_embed_dim, tiny.encoder_ffn_embed_dim // 2, tiny.conv_channels) <= 16
    for name, make_config in PRESETS.items():
        assert make_config().validate() == [], name
        assert MODELS.options()[name]._name == "s2t_conformer"
    assert base.validate() == []
    model = MODELS.build(tiny_config(), tgt_vocab_size=VOCAB, padding_idx=PAD, ctc_vocab_size=None)
    assert isinstance(model, S2TConformerModel)
