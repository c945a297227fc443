from __future__ import annotations

import dataclasses

import pytest
import torch

from nmtkit.models import MODELS
from nmtkit.models.api import capability
from nmtkit.models.s2t_transformer import (
    PRESETS,
    S2TTransformerConfig,
    S2TTransformerModel,
    s2t_transformer_base,
    s2t_transformer_tiny,
)
from nmtkit.modules.conv_subsampler import (
    Conv1dSubsampler,
    conv_output_length,
    subsampled_lengths,
)

PAD, EOS = 1, 2
VOCAB = 11
FEATURES = 6


@pytest.fixture(autouse=True)
def seed() -> None:
    """Each test starts from the same random state (tests/conftest.py sets one thread)."""
    torch.manual_seed(0)


def tiny_config(**changes: object) -> S2TTransformerConfig:
    config = s2t_transformer_tiny()
    config.input_feat_per_channel = FEATURES
    config.conv_channels = 8
    return dataclasses.replace(config, **changes)


def tiny_model(ctc_head: str = "target", **changes: object) -> S2TTransformerModel:
    config = tiny_config(ctc_head=ctc_head, **changes)
    ctc_vocab = None if ctc_head == "none" else VOCAB
    return S2TTransformerModel(config, VOCAB, padding_idx=PAD, ctc_vocab_size=ctc_vocab).eval()


def pad_features(utterances: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (batch, frames, features) with zeros and the lengths."""
    lengths = torch.tensor([len(u) for u in utterances])
    batch = torch.zeros(len(utterances), int(lengths.max()), utterances[0].size(1))
    for row, utterance in enumerate(utterances):
        batch[row, : len(utterance)] = utterance
    return batch, lengths


@pytest.mark.parametrize("kernel_sizes", [(5, 5), (3,), (3, 4, 5)])
def test_subsampler_lengths_follow_the_convolution_formula(kernel_sizes: tuple[int, ...]) -> None:
    subsampler = Conv1dSubsampler(FEATURES, 8, 4, kernel_sizes).eval()
    for length in (1, 2, 3, 4, 7, 8, 13):
        output, out_lengths = subsampler(torch.randn(1, length, FEATURES), torch.tensor([length]))
        expected = length
        for kernel_size in kernel_sizes:
            # torch's Conv1d output size with stride 2 and padding k // 2
            expected = (expected + 2 * (kernel_size // 2) - kernel_size) // 2 + 1
        assert output.shape == (1, expected, 4)
        assert int(out_lengths) == expected == subsampled_lengths(length, kernel_sizes)
    assert conv_output_length(9, 5) == 5 and subsampled_lengths(100, [5, 5]) == 25
    lengths = torch.tensor([100, 37])
    assert subsampled_lengths(lengths, [5, 5]).tolist() == [25, 10]


def test_subsampler_ignores_values_in_padded_frames() -> None:
    subsampler = Conv1dSubsampler(FEATURES, 8, 4, (5, 5)).eval()
    features = torch.randn(2, 23, FEATURES)
    lengths = torch.tensor([23, 9])
    output, out_lengths = subsampler(features, lengths)
    noisy = features.clone()
    noisy[1, 9:] = 1000.0 * torch.randn(14, FEATURES)
    noisy_output, _ = subsampler(noisy, lengths)
    valid = int(out_lengths[1])
    torch.testing.assert_close(noisy_output[1, :valid], output[1, :valid], atol=0, rtol=0)
    torch.testing.assert_close(noisy_output[0], output[0], atol=0, rtol=0)


def test_utterance_gives_the_same_outputs_alone_and_batched() -> None:
    """fairseq's issue 3078: without zeroing padding before each convolution, an utterance's
    encoder output depends on the longer utterances of its batch."""
    model = tiny_model()
    # With CMVN the zero padding of the batch becomes non-zero features: the model must not
    # rely on the collater's zeros.
    model.set_cmvn(torch.randn(FEATURES), torch.rand(FEATURES) + 0.5)
    short, long = torch.randn(10, FEATURES), torch.randn(30, FEATURES)
    prev = torch.tensor([[EOS, 4, 5, 6]])
    with torch.no_grad():
        alone = model.encode(*pad_features([short]))
        features, lengths = pad_features([short, long])
        batched = model.encode(features, lengths)
        valid = int(alone["encoder_lengths"][0])
        assert int(batched["encoder_lengths"][0]) == valid and alone["encoder_out"].size(1) == valid
        assert not batched["encoder_padding_mask"][0, :valid].any()
        assert batched["encoder_padding_mask"][0, valid:].all()
        torch.testing.assert_close(
            batched["encoder_out"][0, :valid], alone["encoder_out"][0], atol=1e-5, rtol=0
        )
        logits_alone = model(*pad_features([short]), prev)
        logits_batched = model(features, lengths, torch.cat([prev, prev]))
        torch.testing.assert_close(logits_batched[0], logits_alone[0], atol=1e-5, rtol=0)
        _, ctc_alone, _ = model(*pad_features([short]), with_ctc=True)
        _, ctc_batched, ctc_lengths = model(features, lengths, with_ctc=True)
        assert ctc_lengths.tolist() == batched["encoder_lengths"].tolist()
        torch.testing.assert_close(ctc_batched[0, :valid], ctc_alone[0], atol=1e-5, rtol=0)


def test_cmvn_buffers_normalise_the_input_and_stay_float32() -> None:
    model = tiny_model()
    mean, std = torch.randn(FEATURES), torch.rand(FEATURES) + 0.5
    features, lengths = pad_features([torch.randn(12, FEATURES), torch.randn(8, FEATURES)])
    with torch.no_grad():
        expected = model.encode((features - mean) / std, lengths)["encoder_out"]
        model.set_cmvn(mean, std)
        normalised = model.encode(features, lengths)["encoder_out"]
    torch.testing.assert_close(normalised, expected, atol=1e-5, rtol=1e-5)
    state = model.state_dict()
    assert torch.equal(state["cmvn_mean"], mean) and torch.equal(state["cmvn_std"], std)
    assert state["cmvn_mean"].dtype == torch.float32

    # Half-precision inference casts the weights, never the statistics.
    model.to(torch.bfloat16)
    assert model.cmvn_mean.dtype == torch.float32 and torch.equal(model.cmvn_std, std)
    assert model.encoder.subsample.conv_layers[0].weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits, ctc_log_probs, _ = model(
            features, lengths, torch.tensor([[EOS], [EOS]]), with_ctc=True
        )
    assert logits.dtype == torch.bfloat16 and ctc_log_probs.dtype == torch.float32

    with pytest.raises(ValueError, match="shape"):
        model.set_cmvn(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        model.set_cmvn(torch.zeros(FEATURES), torch.zeros(FEATURES))


def test_forward_with_ctc_and_output_positions() -> None:
    model = tiny_model()
    features, lengths = pad_features([torch.randn(17, FEATURES), torch.randn(9, FEATURES)])
    prev = torch.tensor([[EOS, 4, 5], [EOS, 6, PAD]])
    logits, log_probs, ctc_lengths = model(features, lengths, prev, with_ctc=True)
    assert logits.shape == (2, 3, VOCAB)
    assert log_probs.shape == (2, 5, VOCAB) and log_probs.dtype == torch.float32
    assert ctc_lengths.tolist() == [5, 3]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 5))
    positions = torch.tensor([0, 1, 2, 3, 4])
    selected = model(features, lengths, prev, output_positions=positions)
    torch.testing.assert_close(selected, logits.reshape(-1, VOCAB)[positions])
    no_logits, _, _ = model(features, lengths, with_ctc=True)
    assert no_logits is None
    assert capability(model, "supports_ctc") and capability(model, "supports_output_positions")
    assert not capability(model, "is_encoder_only") and model.ctc_head == "target"
    assert not capability(tiny_model("none"), "supports_ctc")


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
    prefix = torch.tensor([[EOS, 4, 5, 6], [EOS, 7, 7, 8], [EOS, 9, 4, 10]])
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        encoder_out = model.encode(features, lengths)
        reordered = model.reorder_encoder_out(encoder_out, order)
        assert set(reordered) == {"encoder_out", "encoder_padding_mask", "encoder_lengths"}
        assert (
            reordered["encoder_lengths"].tolist() == encoder_out["encoder_lengths"][order].tolist()
        )
        state: dict = {}
        for step in range(1, 3):
            model.decode(prefix[:, :step], encoder_out, incremental_state=state)
        model.reorder_incremental_state(state, order)
        prefix = prefix[order]
        incremental = model.decode(prefix[:, :3], reordered, incremental_state=state)
        full = model(features[order], lengths[order], prefix[:, :3])
    torch.testing.assert_close(incremental[:, 0], full[:, -1], atol=1e-5, rtol=0)


def test_bf16_autocast_forward_and_backward() -> None:
    model = tiny_model().train()
    features, lengths = pad_features([torch.randn(12, FEATURES), torch.randn(7, FEATURES)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, log_probs, _ = model(
            features, lengths, torch.tensor([[EOS, 4], [EOS, 5]]), with_ctc=True
        )
    assert log_probs.dtype == torch.float32
    (logits.float().sum() + log_probs.sum()).backward()
    assert model.encoder.subsample.conv_layers[0].weight.grad is not None


def test_parameter_names_follow_fairseq_for_the_speech_parts() -> None:
    names = set(tiny_model().state_dict())
    assert {
        "cmvn_mean",
        "cmvn_std",
        "encoder.subsample.conv_layers.0.weight",
        "encoder.subsample.conv_layers.1.bias",
        "encoder.layer_norm.weight",
        "decoder.embed_tokens.weight",
        "decoder.output_projection.weight",
        "ctc_projection.weight",
    } <= names
    assert not any("embed_positions" in name for name in names)  # sinusoidal: not saved


def test_validation_collects_every_error() -> None:
    config = tiny_config(
        encoder_embed_dim=15,
        conv_kernel_sizes=[],
        dropout=1.5,
        activation_fn="swish",
        ctc_head="both",
    )
    errors = config.validate()
    assert len(errors) == 5, errors
    assert any(e.startswith("encoder_embed_dim=15") for e in errors)
    assert any(e.startswith("conv_kernel_sizes=[]") for e in errors)
    errors = tiny_config(decoder_layers=0).validate()
    assert errors == [
        "decoder_layers=0 with ctc_head=none: an encoder-only model predicts the target "
        "through its CTC head, set ctc_head=target"
    ]
    assert (
        tiny_config(decoder_layers=0, ctc_head="target", decoder_attention_heads=0).validate() == []
    )
    assert tiny_config(conv_channels=7).validate() == [
        "conv_channels=7: must be even (GLU halves it)"
    ]
    with pytest.raises(ValueError, match="ctc_vocab_size"):
        S2TTransformerModel(tiny_config(ctc_head="source"), VOCAB)


def test_named_architectures_are_fairseqs_and_registered() -> None:
    base = s2t_transformer_base()
    assert (base.encoder_layers, base.decoder_layers, base.encoder_embed_dim) == (12, 6, 512)
    assert base.conv_kernel_sizes == [5, 5] and base.conv_channels == 1024
    assert base.encoder_normalize_before and base.decoder_normalize_before
    expected = {
        # name: (enc layers, dec layers, dim, ffn, heads, dropout)
        "s2t_transformer_xs": (6, 3, 256, 1024, 4, 0.3),
        "s2t_transformer_s": (12, 6, 256, 2048, 4, 0.1),
        "s2t_transformer_m": (12, 6, 512, 2048, 8, 0.15),
    }
    for name, (enc, dec, dim, ffn, heads, dropout) in expected.items():
        c = PRESETS[name]()
        assert (c.encoder_layers, c.decoder_layers) == (enc, dec), name
        assert c.encoder_embed_dim == c.decoder_embed_dim == dim, name
        assert c.encoder_ffn_embed_dim == c.decoder_ffn_embed_dim == ffn, name
        assert c.encoder_attention_heads == c.decoder_attention_heads == heads, name
        assert c.dropout == c.attention_dropout == c.activation_dropout == dropout, name
    for name, make_config in PRESETS.items():
        assert make_config().validate() == [], name
        assert MODELS.options()[name]._name == "s2t_transformer"
    model = MODELS.build(tiny_config(), tgt_vocab_size=VOCAB, padding_idx=PAD, ctc_vocab_size=None)
    assert isinstance(model, S2TTransformerModel)


def test_grouped_rows_decode_like_repeated_encoder_outputs() -> None:
    """decodes_grouped_rows: 3 beams per utterance read one encoder output."""
    model = tiny_model()
    features, lengths = pad_features([torch.randn(14, FEATURES), torch.randn(6, FEATURES)])
    prefix = torch.tensor([[EOS, 4], [EOS, 5], [EOS, 6], [EOS, 7], [EOS, 8], [EOS, 9]])
    with torch.no_grad():
        encoder_out = model.encode(features, lengths)
        repeated = model.reorder_encoder_out(encoder_out, torch.tensor([0, 0, 0, 1, 1, 1]))
        grouped_state: dict = {}
        grouped = model.decode(prefix, encoder_out, incremental_state=grouped_state)
        expected = model.decode(prefix, repeated, incremental_state={})
    torch.testing.assert_close(grouped, expected, atol=1e-5, rtol=0)
