from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nmtkit.models import MODELS
from nmtkit.models.transformer import (
    PRESETS,
    TransformerConfig,
    TransformerModel,
    transformer_base,
    transformer_tiny,
)
from nmtkit.modules.positional_embedding import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    make_positions,
)

PAD, EOS = 1, 2
VOCAB = 12


@pytest.fixture(autouse=True)
def seed() -> None:
    """Each test starts from the same random state (tests/conftest.py sets one thread)."""
    torch.manual_seed(0)


def tiny_config(**changes: object) -> TransformerConfig:
    config = transformer_tiny()
    config.dropout = 0.0
    return dataclasses.replace(config, **changes)


def tiny_model(**changes: object) -> TransformerModel:
    return TransformerModel(tiny_config(**changes), VOCAB, VOCAB, padding_idx=PAD).eval()


# Variants the equivalence tests run on: post-norm, pre-norm, and the optional embedding parts.
VARIANTS = {
    "post_norm": {},
    "pre_norm": {"encoder_normalize_before": True, "decoder_normalize_before": True},
    "learned_pos_layernorm_gelu": {
        "encoder_learned_pos": True,
        "decoder_learned_pos": True,
        "layernorm_embedding": True,
        "activation_fn": "gelu",
        "share_all_embeddings": True,
    },
    "no_positions_no_scale": {"no_token_positional_embeddings": True, "no_scale_embedding": True},
}


def left_pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([[PAD] * (width - len(row)) + row for row in rows])


def right_pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [PAD] * (width - len(row)) for row in rows])


def copy_batch(batch_size: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source = random tokens + </s>; target = the same; prev_output_tokens = </s> + target[:-1]."""
    words = torch.randint(4, VOCAB, (batch_size, length))
    eos = torch.full((batch_size, 1), EOS)
    target = torch.cat([words, eos], dim=1)
    prev_output_tokens = torch.cat([eos, words], dim=1)
    return target.clone(), target, prev_output_tokens


@pytest.mark.parametrize("normalize_before", [False, True], ids=["post_norm", "pre_norm"])
def test_tiny_model_learns_to_copy(normalize_before: bool) -> None:
    model = TransformerModel(
        tiny_config(
            encoder_normalize_before=normalize_before, decoder_normalize_before=normalize_before
        ),
        VOCAB,
        VOCAB,
    ).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005, betas=(0.9, 0.98))
    for _ in range(150):
        src_tokens, target, prev_output_tokens = copy_batch(32, 5)
        logits = model(src_tokens, torch.full((32,), 6), prev_output_tokens)
        loss = F.cross_entropy(logits.view(-1, VOCAB), target.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    src_tokens, target, prev_output_tokens = copy_batch(100, 5)
    with torch.no_grad():
        logits = model(src_tokens, torch.full((100,), 6), prev_output_tokens)
    assert F.cross_entropy(logits.view(-1, VOCAB), target.view(-1)).item() < 0.1
    assert logits.argmax(-1).eq(target).float().mean().item() > 0.99


def test_shared_embeddings_are_the_same_parameters() -> None:
    model = tiny_model(share_all_embeddings=True)
    embedding = model.encoder.embed_tokens.weight
    assert model.decoder.embed_tokens.weight is embedding
    assert model.decoder.output_projection.weight is embedding

    decoder_only = tiny_model(share_decoder_input_output_embed=True)
    assert decoder_only.decoder.output_projection.weight is decoder_only.decoder.embed_tokens.weight
    assert decoder_only.encoder.embed_tokens.weight is not decoder_only.decoder.embed_tokens.weight

    separate = tiny_model()
    assert separate.decoder.output_projection.weight is not separate.decoder.embed_tokens.weight


def test_share_all_embeddings_needs_one_vocabulary() -> None:
    with pytest.raises(ValueError, match="joined dictionary.*12.*13"):
        TransformerModel(tiny_config(share_all_embeddings=True), 12, 13)
    model = TransformerModel(tiny_config(), 12, 13)
    logits = model(left_pad([[5, 2]]), torch.tensor([2]), torch.tensor([[2, 7, 8]]))
    assert logits.shape == (1, 3, 13)


def test_initialisation_follows_fairseq() -> None:
    model = tiny_model()
    for embedding in (model.encoder.embed_tokens, model.decoder.embed_tokens):
        assert embedding.weight[PAD].abs().sum() == 0
        assert embedding.weight.std().item() == pytest.approx(16**-0.5, rel=0.3)
    attention = model.encoder.layers[0].self_attn
    assert attention.out_proj.bias.abs().sum() == 0


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_padding_never_changes_real_positions(variant: dict) -> None:
    model = tiny_model(**variant)
    short_source, long_source = [5, 6, 7, 2], [8, 9, 10, 11, 6, 5, 2]
    short_target, long_target = [2, 4, 5], [2, 6, 7, 8, 9]

    alone_encoder = model.encode(left_pad([short_source]), torch.tensor([4]))
    alone_logits = model(left_pad([short_source]), torch.tensor([4]), torch.tensor([short_target]))
    batch_sources = left_pad([short_source, long_source])
    batch_targets = right_pad([short_target, long_target])
    batch_encoder = model.encode(batch_sources, torch.tensor([4, 7]))
    batch_logits = model(batch_sources, torch.tensor([4, 7]), batch_targets)

    torch.testing.assert_close(
        batch_encoder["encoder_out"][0, -4:], alone_encoder["encoder_out"][0], atol=1e-5, rtol=0
    )
    assert batch_encoder["encoder_padding_mask"][0].tolist() == [True] * 3 + [False] * 4
    torch.testing.assert_close(batch_logits[0, :3], alone_logits[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_decoder_is_causal(variant: dict) -> None:
    model = tiny_model(**variant)
    src_tokens = left_pad([[5, 6, 7, 2], [8, 2]])
    prev_output_tokens = torch.tensor([[2, 4, 5, 6, 7], [2, 8, 9, 10, 11]])
    changed_future = prev_output_tokens.clone()
    changed_future[:, 3:] = torch.tensor([[9, 9], [4, 4]])
    logits = model(src_tokens, torch.tensor([4, 2]), prev_output_tokens)
    changed = model(src_tokens, torch.tensor([4, 2]), changed_future)
    torch.testing.assert_close(changed[:, :3], logits[:, :3], atol=1e-6, rtol=0)
    assert not torch.allclose(changed[:, 3:], logits[:, 3:])


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_incremental_decoding_matches_full_recomputation(variant: dict) -> None:
    model = tiny_model(**variant)
    src_tokens = left_pad([[5, 6, 7, 2], [8, 2], [9, 10, 2]])
    src_lengths = torch.tensor([4, 2, 3])
    prefix = torch.tensor([[2, 4, 5, 6, 7, 8], [2, 8, 9, 10, 11, 4], [2, 5, 5, 5, 6, 7]])
    encoder_out = model.encode(src_tokens, src_lengths)
    state: dict = {}
    permutation = torch.tensor([2, 0, 1])
    with torch.no_grad():
        for step in range(1, prefix.size(1) + 1):
            if step == 4:
                # A beam-search reordering in the middle of decoding.
                model.reorder_incremental_state(state, permutation)
                encoder_out = model.reorder_encoder_out(encoder_out, permutation)
                src_tokens, src_lengths, prefix = (
                    src_tokens[permutation],
                    src_lengths[permutation],
                    prefix[permutation],
                )
            incremental = model.decode(prefix[:, :step], encoder_out, incremental_state=state)
            full = model(src_tokens, src_lengths, prefix[:, :step])
            assert incremental.shape == (3, 1, VOCAB)
            torch.testing.assert_close(incremental[:, 0], full[:, -1], atol=1e-5, rtol=0)
    # One self-attention and one encoder-attention entry per decoder layer, each module's own.
    layer = model.decoder.layers[0]
    assert set(state) == {layer.self_attn.cache_name, layer.encoder_attn.cache_name}
    assert state[layer.self_attn.cache_name]["key"].shape == (3, 2, prefix.size(1), 8)


def test_reordering_can_drop_and_repeat_rows() -> None:
    model = tiny_model()
    src_tokens = left_pad([[5, 6, 7, 2], [8, 2]])
    prefix = torch.tensor([[2, 4, 5], [2, 8, 9]])
    encoder_out = model.encode(src_tokens, torch.tensor([4, 2]))
    state: dict = {}
    with torch.no_grad():
        model.decode(prefix[:, :2], encoder_out, incremental_state=state)
        order = torch.tensor([1, 1, 1])
        model.reorder_incremental_state(state, order)
        encoder_out = model.reorder_encoder_out(encoder_out, order)
        incremental = model.decode(prefix[order], encoder_out, incremental_state=state)
        full = model(src_tokens[order], torch.tensor([2, 2, 2]), prefix[order])
    torch.testing.assert_close(incremental[:, 0], full[:, -1], atol=1e-5, rtol=0)


def test_incremental_state_must_not_be_reused_for_the_same_step() -> None:
    model = tiny_model()
    encoder_out = model.encode(left_pad([[5, 2]]), torch.tensor([2]))
    state: dict = {}
    model.decode(torch.tensor([[2]]), encoder_out, incremental_state=state)
    with pytest.raises(ValueError, match="already holds 1 steps"):
        model.decode(torch.tensor([[2]]), encoder_out, incremental_state=state)


def test_bf16_autocast_forward_and_backward() -> None:
    model = tiny_model(share_all_embeddings=True).train()
    src_tokens, target, prev_output_tokens = copy_batch(4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src_tokens, torch.full((4,), 4), prev_output_tokens)
    assert logits.dtype == torch.bfloat16
    loss = F.cross_entropy(logits.float().view(-1, VOCAB), target.view(-1))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_validation_collects_every_error() -> None:
    config = TransformerConfig(
        encoder_embed_dim=100,
        encoder_attention_heads=3,
        decoder_embed_dim=64,
        share_all_embeddings=True,
        dropout=1.0,
        activation_fn="swish",
        decoder_layers=0,
    )
    errors = config.validate()
    assert "encoder_embed_dim=100: must be divisible by encoder_attention_heads=3" in errors
    assert any(error.startswith("share_all_embeddings=true") for error in errors)
    assert "dropout=1.0: must be in [0, 1)" in errors
    assert any(error.startswith("activation_fn=swish") for error in errors)
    assert "decoder_layers=0: must be >= 1" in errors
    assert len(errors) == 5
    with pytest.raises(ValueError, match="invalid transformer config"):
        TransformerModel(config, VOCAB, VOCAB)


def test_named_architectures_are_valid_and_registered() -> None:
    sizes = {
        name: (
            make().encoder_embed_dim,
            make().encoder_ffn_embed_dim,
            make().encoder_attention_heads,
            make().encoder_layers,
            make().decoder_layers,
        )
        for name, make in PRESETS.items()
    }
    assert sizes == {
        "transformer_tiny": (16, 32, 2, 1, 1),
        "transformer_small": (256, 1024, 4, 3, 3),
        "transformer_iwslt_de_en": (512, 1024, 4, 6, 6),
        "transformer_base": (512, 2048, 8, 6, 6),
        "transformer_big": (1024, 4096, 16, 6, 6),
    }
    assert PRESETS["transformer_big"]().dropout == 0.3
    for name, make in PRESETS.items():
        assert make().validate() == []
        assert MODELS.options()[name]._name == "transformer"
    assert isinstance(MODELS.build(MODELS.options()["transformer_tiny"], 10, 10), TransformerModel)


def test_transformer_base_has_fairseqs_parameter_count() -> None:
    config = transformer_base()
    config.share_all_embeddings = True
    with torch.device("meta"):
        model = TransformerModel(config, 32000, 32000)
    # fairseq 0.12 --arch transformer --share-all-embeddings with a 32000-symbol dictionary.
    assert sum(p.numel() for p in model.parameters()) == 60_522_496


def test_positions_ignore_left_padding() -> None:
    tokens = torch.tensor([[PAD, PAD, 5, 6], [7, 8, 9, 10]])
    assert make_positions(tokens, PAD).tolist() == [[1, 1, 2, 3], [2, 3, 4, 5]]
    for embedding in (
        SinusoidalPositionalEmbedding(6, PAD, max_positions=8),
        LearnedPositionalEmbedding(6, PAD, max_positions=8),
    ):
        embedded = embedding(tokens)
        assert embedded[0, :2].abs().sum() == 0
        torch.testing.assert_close(embedded[0, 2:], embedded[1, :2])


def test_sinusoidal_table_layout_and_growth() -> None:
    embedding = SinusoidalPositionalEmbedding(6, PAD, max_positions=4)
    assert embedding.table.shape == (6, 6)
    # Position p: sin(p * f_i) in the first half, cos(p * f_i) in the second; f_0 = 1.
    assert embedding.table[3, 0].item() == pytest.approx(torch.sin(torch.tensor(3.0)).item())
    assert embedding.table[3, 3].item() == pytest.approx(torch.cos(torch.tensor(3.0)).item())
    assert embedding.state_dict() == {}
    longer = torch.full((1, 10), 5)
    assert embedding(longer).shape == (1, 10, 6)
    assert embedding.table.size(0) >= 12
