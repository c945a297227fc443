"""Multi-head attention on `torch.nn.functional.scaled_dot_product_attention`, with a key/value
cache for incremental decoding.

Tensors are batch-first: (batch, length, dim). Self-attention projects queries, keys and values
with one fused matrix; encoder-decoder attention projects the query alone and keys/values with
one fused matrix, so each costs one matrix multiplication fewer than three separate projections.

Incremental decoding: the caller passes the same dict on every step. Each attention module keeps
its entry under its `cache_name`, unique per module instance (derived from the instance unless
given explicitly), so layers built with default arguments never share a cache entry:
  self-attention:          {"key", "value"}: (batch, heads, steps so far, head_dim), grown
                           per step;
  encoder-decoder attention: {"key", "value"}: (batch, heads, source_len, head_dim) and
                           "attn_mask": (batch, 1, 1, source_len) bool, True = attend (absent
                           without source padding), computed on the first step from the encoder
                           output and reused afterwards.
`reorder_cache` applies a beam-search reordering (index_select on the batch dimension) to all of
them, so a cache stays consistent whatever permutation or selection is applied.

Grouped rows: encoder-decoder attention accepts queries for `rows = g * batch` rows against an
encoder output of `batch` sources, rows g*i .. g*i+g-1 all reading source i (the beams of one
sentence). The g queries of a source then attend together, in one matrix product against keys
and values stored once, instead of g copies of them; the cache entry records
"rows_per_source": g. A reordering must then keep each block of g rows inside one old block
(beam search does: it reshuffles beams within a sentence and drops whole sentences).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

IncrementalState = dict[str, dict[str, Any]]
"""Per-model decoding cache: attention module's cache_name -> its tensors (and, for grouped
encoder-decoder attention, the int "rows_per_source")."""


def build_attention_mask(
    key_padding_mask: Optional[torch.Tensor],
    query_length: int,
    key_length: int,
    causal: bool,
    device: torch.device,
) -> Optional[torch.Tensor]:
    """Boolean mask for SDPA (True = may attend), broadcastable to (batch, heads, query, key).

    A causal mask is aligned to the bottom right: the last query sees every key, as needed when
    the keys include cached earlier steps. Rows where every key is masked (an all-pad sequence,
    or a pad query in front of a left-padded prefix) are opened completely instead: their output
    is meaningless but finite, whereas a fully masked softmax gives NaN that leaks into gradients.
    """
    allowed: Optional[torch.Tensor] = None
    if key_padding_mask is not None:
        allowed = ~key_padding_mask[:, None, None, :]
    if causal:
        causal_allowed = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
        causal_allowed = causal_allowed.tril(diagonal=key_length - query_length)
        allowed = causal_allowed if allowed is None else allowed & causal_allowed
    if allowed is None:
        return None
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> torch.Tensor:
    """`scaled_dot_product_attention`, with two CPU exceptions measured on torch 2.14.

    Incremental decoding on the CPU (one query per row, or a beam's few queries per source; no
    gradient) uses two batched matrix products and a softmax: the CPU flash kernel costs 2-6x
    more there in bfloat16 at every key length, and about 2x more in float32 from 10 keys on
    (single query, 320 rows, 4 heads, head_dim 64: at 40 keys 3.1 ms against 0.5 ms in
    bfloat16, 1.3 ms against 0.6 ms in float32).

    PyTorch's CPU flash-attention backward is about 7x slower in bfloat16 than in float32
    (torch 2.14, transformer_small: 5.1 s against 0.7 s of a 21 s profile), which made bf16
    training slower than fp32; the upcast costs two small copies. Autocast is paused so it
    cannot cast the inputs back down.
    """
    if (
        q.device.type == "cpu"
        and q.size(2) <= 8
        and not is_causal
        and dropout_p == 0.0
        and not torch.is_grad_enabled()
        and (q.dtype != torch.float32 or k.size(2) >= 10)
    ):
        return _attend_few_queries(q, k, v, attn_mask)
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        with torch.autocast("cpu", enabled=False):
            output = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal,
            )  # fmt: skip
        return output.to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )


def _attend_few_queries(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor]
) -> torch.Tensor:
    """Attention without a causal mask as two matrix products; the softmax in float32."""
    scores = torch.matmul(q * (1.0 / math.sqrt(q.size(-1))), k.transpose(-1, -2))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(weights, v)


class MultiheadAttention(nn.Module):
    """Scaled dot-product attention with `num_heads` heads over `embed_dim` features.

    With `encoder_decoder=True` keys and values come from a separate input (the encoder output,
    of `key_value_dim` features); otherwise it is self-attention over the query input.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        encoder_decoder: bool = False,
        key_value_dim: Optional[int] = None,
        cache_name: Optional[str] = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.encoder_decoder = encoder_decoder
        self._cache_name = cache_name
        if encoder_decoder:
            self.q_proj = nn.Linear(embed_dim, embed_dim)
            self.kv_proj = nn.Linear(key_value_dim or embed_dim, 2 * embed_dim)
        else:
            if key_value_dim is not None and key_value_dim != embed_dim:
                raise ValueError(
                    "self-attention uses its input as keys and values: no key_value_dim"
                )
            self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    @property
    def cache_name(self) -> str:
        """This module's key in an incremental-decoding dict.

        Without an explicit name it is derived from the instance's id when read, so every live
        module has its own, copies included (copy.deepcopy gives a copy a new id, where a
        name stored at construction would be duplicated with it).
        """
        if self._cache_name is not None:
            return self._cache_name
        return f"{type(self).__name__}@{id(self):x}"

    def reset_parameters(self) -> None:
        """fairseq's initialisation, applied to each D x D block of the fused projections.

        Query/key/value weights: xavier_uniform with gain 1/sqrt(2) (fairseq's choice for equal
        dimensions); their biases keep nn.Linear's default. Output: xavier_uniform, zero bias.
        """
        fused = self.kv_proj if self.encoder_decoder else self.qkv_proj
        with torch.no_grad():
            for block in fused.weight.split(self.embed_dim, dim=0):
                nn.init.xavier_uniform_(block, gain=1 / math.sqrt(2))
            if self.encoder_decoder:
                nn.init.xavier_uniform_(self.q_proj.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def _split_heads(self, x: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(batch, len, parts * dim) -> `parts` tensors of (batch, heads, len, head_dim), as views."""
        batch, length, _ = x.shape
        x = x.view(batch, length, parts, self.num_heads, self.head_dim)
        return x.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(
        self,
        query: torch.Tensor,
        key_value: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        causal: bool = False,
        incremental_state: Optional[IncrementalState] = None,
    ) -> torch.Tensor:
        """Attends from `query` (batch, tgt_len, dim) and returns (batch, tgt_len, dim).

        key_value: encoder output (batch, src_len, key_value_dim) for encoder-decoder attention
            (may be None on later incremental steps, whose keys/values are cached).
        key_padding_mask: (batch, key_len) bool, True at keys to ignore. For cached
            self-attention it must cover the cached and new keys; for cached encoder-decoder
            attention it is stored on the first step and reused.
        causal: each query sees only keys at its own position or before (self-attention).
        incremental_state: decoding cache (see the module docstring); the new queries are the
            positions after those already cached.
        """
        dropout_p = self.dropout if self.training else 0.0
        if self.encoder_decoder:
            q, k, v, mask = self._encoder_decoder_qkv(
                query, key_value, key_padding_mask, incremental_state
            )
            output = self._attend_grouped(q, k, v, mask, dropout_p)
        else:
            q, k, v = self._split_heads(self.qkv_proj(query), 3)
            if incremental_state is not None:
                k, v = self._append_to_cache(k, v, incremental_state)
            query_length, key_length = q.size(2), k.size(2)
            if key_padding_mask is None and causal and query_length == key_length:
                # No explicit mask lets SDPA pick the flash kernel.
                output = attend(q, k, v, dropout_p=dropout_p, is_causal=True)
            else:
                # A single new query after cached keys sees all of them: no causal mask needed.
                causal = causal and query_length > 1
                mask = build_attention_mask(
                    key_padding_mask, query_length, key_length, causal, query.device
                )
                output = attend(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        batch = output.size(0)
        output = output.transpose(1, 2).reshape(batch, query.size(1), self.embed_dim)
        return self.out_proj(output)

    def _attend_grouped(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: Optional[torch.Tensor],
        dropout_p: float,
    ) -> torch.Tensor:
        """Encoder-decoder attention where `q` may hold several rows per source (module doc)."""
        rows, sources = q.size(0), k.size(0)
        if rows == sources:
            return attend(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        if rows % sources != 0:
            raise ValueError(
                f"encoder-decoder attention: {rows} query rows cannot be grouped over "
                f"{sources} encoder outputs"
            )
        group, heads, length, head_dim = rows // sources, q.size(1), q.size(2), q.size(3)
        q = q.reshape(sources, group, heads, length, head_dim).transpose(1, 2)
        q = q.reshape(sources, heads, group * length, head_dim)
        output = attend(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        output = output.reshape(sources, heads, group, length, head_dim).transpose(1, 2)
        return output.reshape(rows, heads, length, head_dim)

    def _encoder_decoder_qkv(
        self,
        query: torch.Tensor,
        key_value: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        incremental_state: Optional[IncrementalState],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Query, keys, values and the SDPA mask, from the cache after the first step."""
        (q,) = self._split_heads(self.q_proj(query), 1)
        cached = incremental_state.get(self.cache_name) if incremental_state is not None else None
        if cached is not None:
            return q, cached["key"], cached["value"], cached.get("attn_mask")
        if key_value is None:
            raise ValueError("encoder-decoder attention needs key_value (the encoder output)")
        k, v = self._split_heads(self.kv_proj(key_value), 2)
        # The mask does not depend on the query position, so decoding builds it once.
        mask = build_attention_mask(key_padding_mask, q.size(2), k.size(2), False, query.device)
        if incremental_state is not None:
            entry: dict[str, Any] = {"key": k, "value": v}
            if q.size(0) != k.size(0):
                entry["rows_per_source"] = q.size(0) // k.size(0)
            if mask is not None:
                entry["attn_mask"] = mask
            incremental_state[self.cache_name] = entry
        return q, k, v, mask

    def _append_to_cache(
        self, k: torch.Tensor, v: torch.Tensor, incremental_state: IncrementalState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cached = incremental_state.get(self.cache_name)
        if cached is not None:
            k = torch.cat([cached["key"], k], dim=2)
            v = torch.cat([cached["value"], v], dim=2)
        incremental_state[self.cache_name] = {"key": k, "value": v}
        return k, v

    def cached_length(self, incremental_state: IncrementalState) -> int:
        """Number of key positions already cached (0 before the first step)."""
        cached = incremental_state.get(self.cache_name)
        return 0 if cached is None else cached["key"].size(2)

    def reorder_cache(self, incremental_state: IncrementalState, new_order: torch.Tensor) -> None:
        """Selects/permutes the cached batch entries in place of the old ones (beam search)."""
        cached = incremental_state.get(self.cache_name)
        if cached is None:
            return
        group = cached.get("rows_per_source", 1)
        if group > 1:
            # Blocks of `group` rows stay together, so block i reads the source of its first row.
            if new_order.numel() % group != 0:
                raise ValueError(
                    f"a reordering of grouped rows must keep blocks of {group} rows; got "
                    f"{new_order.numel()} rows"
                )
            new_order = torch.div(new_order[::group], group, rounding_mode="floor")
        incremental_state[self.cache_name] = {
            name: value.index_select(0, new_order) if isinstance(value, torch.Tensor) else value
            for name, value in cached.items()
        }
