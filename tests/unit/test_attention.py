from __future__ import annotations

import math

import pytest
import torch

from nmtkit.modules.attention import MultiheadAttention, build_attention_mask

EMBED_DIM, HEADS = 8, 2


def reference_attention(
    module: MultiheadAttention,
    query: torch.Tensor,
    key_value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Plain softmax attention with the module's weights, written out step by step."""
    if module.encoder_decoder:
        q = module.q_proj(query)
        k, v = module.kv_proj(key_value).chunk(2, dim=-1)
    else:
        q, k, v = module.qkv_proj(query).chunk(3, dim=-1)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), HEADS, -1).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(EMBED_DIM // HEADS)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if causal:
        future = torch.ones(q.size(2), k.size(2), dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    output = (scores.softmax(-1) @ v).transpose(1, 2).reshape(query.shape)
    return module.out_proj(output)


@pytest.fixture(autouse=True)
def seed() -> None:
    """Each test starts from the same random state (tests/conftest.py sets one thread)."""
    torch.manual_seed(0)


def test_self_attention_matches_reference_with_padding_and_causal_mask() -> None:
    attention = MultiheadAttention(EMBED_DIM, HEADS).eval()
    x = torch.randn(2, 5, EMBED_DIM)
    padding = torch.tensor([[True, False, False, False, False], [False] * 5])
    for mask, causal in [(None, False), (padding, False), (None, True), (padding, True)]:
        expected = reference_attention(attention, x, x, mask, causal)
        actual = attention(x, key_padding_mask=mask, causal=causal)
        # Row 0 of the causal+padding case sees only a pad: the module opens it, skip it.
        rows = slice(1, None) if mask is not None and causal else slice(None)
        torch.testing.assert_close(actual[:, rows], expected[:, rows], atol=1e-5, rtol=1e-5)


def test_encoder_decoder_attention_matches_reference() -> None:
    attention = MultiheadAttention(EMBED_DIM, HEADS, encoder_decoder=True, key_value_dim=6)
    attention.eval()
    query, memory = torch.randn(2, 3, EMBED_DIM), torch.randn(2, 4, 6)
    padding = torch.tensor([[True, True, False, False], [False] * 4])
    torch.testing.assert_close(
        attention(query, memory, key_padding_mask=padding),
        reference_attention(attention, query, memory, padding),
        atol=1e-5,
        rtol=1e-5,
    )


def test_fully_masked_rows_give_finite_outputs_and_gradients() -> None:
    attention = MultiheadAttention(EMBED_DIM, HEADS)
    x = torch.randn(2, 3, EMBED_DIM, requires_grad=True)
    all_pad = torch.tensor([[True, True, True], [False, False, True]])
    output = attention(x, key_padding_mask=all_pad, causal=True)
    output.sum().backward()
    assert torch.isfinite(output).all()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attention.parameters())


def test_causal_mask_is_aligned_to_the_last_key() -> None:
    mask = build_attention_mask(None, query_length=2, key_length=4, causal=True, device="cpu")
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert build_attention_mask(None, 3, 3, causal=False, device="cpu") is None


def test_incremental_self_attention_matches_full_causal_attention() -> None:
    attention = MultiheadAttention(EMBED_DIM, HEADS, cache_name="layer.self_attn").eval()
    x = torch.randn(2, 6, EMBED_DIM)
    full = attention(x, causal=True)
    state: dict = {}
    # Two positions at once first, then one per step: the cache takes both.
    steps = [(0, 2), (2, 3), (3, 4), (4, 6)]
    for start, end in steps:
        output = attention(x[:, start:end], causal=True, incremental_state=state)
        torch.testing.assert_close(output, full[:, start:end], atol=1e-5, rtol=1e-5)
        assert attention.cached_length(state) == end
    assert set(state) == {"layer.self_attn"}


def test_encoder_decoder_keys_are_computed_once_and_reordered() -> None:
    attention = MultiheadAttention(
        EMBED_DIM, HEADS, encoder_decoder=True, cache_name="layer.encoder_attn"
    ).eval()
    query, memory = torch.randn(3, 1, EMBED_DIM), torch.randn(3, 4, EMBED_DIM)
    padding = torch.tensor([[True, False, False, False], [False] * 4, [True, True, False, False]])
    state: dict = {}
    first = attention(query, memory, key_padding_mask=padding, incremental_state=state)
    cached_key = state["layer.encoder_attn"]["key"]
    # Later steps need no encoder output: keys, values and mask come from the cache.
    again = attention(query, None, incremental_state=state)
    assert state["layer.encoder_attn"]["key"] is cached_key
    torch.testing.assert_close(again, first)

    order = torch.tensor([2, 0, 0])
    attention.reorder_cache(state, order)
    reordered = attention(query[order], None, incremental_state=state)
    expected = attention(query[order], memory[order], key_padding_mask=padding[order])
    torch.testing.assert_close(reordered, expected, atol=1e-6, rtol=1e-6)


def test_layers_built_with_defaults_keep_separate_caches() -> None:
    """Two decoder layers with default arguments share one incremental-state dict without
    reading each other's keys and values."""
    from nmtkit.modules.transformer_layer import TransformerDecoderLayer

    layers = [
        TransformerDecoderLayer(EMBED_DIM, 2 * EMBED_DIM, HEADS, dropout=0.0).eval()
        for _ in range(2)
    ]
    names = {
        attention.cache_name
        for layer in layers
        for attention in (layer.self_attn, layer.encoder_attn)
    }
    assert len(names) == 4
    x, memory = torch.randn(2, 4, EMBED_DIM), torch.randn(2, 5, EMBED_DIM)

    def run(inputs: torch.Tensor, state: dict | None) -> torch.Tensor:
        for layer in layers:
            inputs = layer(inputs, memory, incremental_state=state)
        return inputs

    with torch.no_grad():
        full = run(x, None)
        state: dict = {}
        steps = [run(x[:, step : step + 1], state) for step in range(x.size(1))]
    assert set(state) == names
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 3)


def test_bf16_training_attention_runs_in_float32_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from nmtkit.modules import attention

    seen_dtypes = []
    sdpa = attention.F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):  # noqa: ANN001, ANN202
        seen_dtypes.append(q.dtype)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_sdpa)
    module = MultiheadAttention(EMBED_DIM, HEADS)
    # More than 8 queries, so inference goes through SDPA too (fewer take the written-out path).
    query = torch.randn(2, 12, EMBED_DIM)
    padding = torch.tensor([[False] * 12, [False] * 9 + [True] * 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = module(query, key_padding_mask=padding, causal=True)
        with torch.no_grad():
            module(query, key_padding_mask=padding, causal=True)
    # With gradients: float32 inside, bf16 outside; inference keeps bf16 (its kernel is fast).
    assert seen_dtypes == [torch.float32, torch.bfloat16]
    assert output.dtype == torch.bfloat16
    output.float().sum().backward()
    expected = reference_attention(module, query, query, padding, causal=True)
    torch.testing.assert_close(output.float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_single_query_decoding_bypasses_sdpa_and_matches_it(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    from nmtkit.modules import attention

    q = torch.randn(3, HEADS, 1, 4, dtype=dtype)
    k = torch.randn(3, HEADS, 12, 4, dtype=dtype)
    v = torch.randn(3, HEADS, 12, 4, dtype=dtype)
    padding = torch.zeros(3, 12, dtype=torch.bool)
    padding[1, 7:] = True
    padding[2, :] = True  # an all-pad row is opened by build_attention_mask, not NaN
    mask = build_attention_mask(padding, 1, 12, False, q.device)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask
    )
    calls = []
    monkeypatch.setattr(
        attention.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1)
    )
    with torch.inference_mode():
        output = attention.attend(q, k, v, attn_mask=mask)
    assert calls == []
    assert output.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(output.float(), expected, atol=tolerance, rtol=tolerance)
