"""Self-attention with relative positional encoding (Transformer-XL, Dai et al., 2019, in the
form ESPnet's Conformer calls "rel_pos" and fairseq's `--pos-enc-type rel_pos`).

The score of query i for key j is

    ((q_i + u) . k_j + (q_i + v) . W_pos r_(i-j)) / sqrt(head_dim)

where r_d is a sinusoidal embedding of the distance d = i - j (positive when the key is to the
left), W_pos is `linear_pos`, and u, v are per-head learned biases (`pos_bias_u`,
`pos_bias_v`). The content term and the softmax run in `scaled_dot_product_attention`; the
position term enters it as an additive float mask.

The position term is computed for the 2T - 1 distances T - 1, ..., -(T - 1) once per query,
(batch, heads, T, 2T - 1), and `rel_shift` moves row i left by T - 1 - i so that column j
holds distance i - j: O(T^2) work, without building the (T, T, dim) tensor of embeddings an
explicit gather would need.

Scores depend on distances only, so an utterance's attention is the same whatever the padded
width of its batch (padded keys are masked).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def relative_sinusoidal_table(length: int, embedding_dim: int) -> torch.Tensor:
    """(2 * length - 1, embedding_dim) embeddings of the distances length - 1, ..., 0, ...,
    -(length - 1), in that order (row r is distance length - 1 - r).

    Sines at even and cosines at odd features, frequencies 10000^(-2i / dim): ESPnet's and
    fairseq's layout, so that a `linear_pos` trained there reads the same features here.
    """
    distances = torch.arange(length - 1, -length, -1, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.exp(
        torch.arange(0, embedding_dim, 2, dtype=torch.float32)
        * -(math.log(10000.0) / embedding_dim)
    )
    angles = distances * frequencies
    table = torch.zeros(2 * length - 1, embedding_dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : embedding_dim // 2])
    return table


class RelativePositionalEncoding(nn.Module):
    """The relative sinusoidal embeddings a layer stack shares (no parameters, nothing saved).

    The table is built for `max_length` and grows on demand, like the absolute sinusoidal one.
    """

    def __init__(self, embedding_dim: int, max_length: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.register_buffer(
            "table", relative_sinusoidal_table(max_length, embedding_dim), persistent=False
        )

    def forward(self, length: int) -> torch.Tensor:
        """(2 * length - 1, dim) embeddings of distances length - 1 .. -(length - 1)."""
        centre = (self.table.size(0) - 1) // 2  # the row of distance 0
        if length - 1 > centre:
            table = relative_sinusoidal_table(length, self.embedding_dim)
            self.table = table.to(device=self.table.device, dtype=self.table.dtype)
            centre = length - 1
        return self.table[centre - (length - 1) : centre + length]


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """(..., T, 2T - 1) scores against distances T - 1 .. -(T - 1) -> (..., T, T) scores with
    out[..., i, j] = scores[..., i, T - 1 - i + j], the score of distance i - j.

    The shift trick of Transformer-XL: with one zero column in front, row i of the flattened
    (T, 2T) matrix starts at 2T * i; read as 2T rows of T and without its first row, then as
    rows of 2T - 1, row i starts T - i columns further into the padded row i, i.e. at column
    T - 1 - i of the original one. Only views and one concatenation: no gather.
    """
    *leading, queries, distances = scores.shape
    if distances != 2 * queries - 1:
        raise ValueError(f"rel_shift needs (..., T, 2T - 1) scores, got {tuple(scores.shape)}")
    padded = F.pad(scores, (1, 0))  # (..., T, 2T)
    padded = padded.reshape(*leading, 2 * queries, queries)[..., 1:, :]
    return padded.reshape(*leading, queries, distances)[..., :queries]


class RelativePositionMultiheadAttention(nn.Module):
    """Self-attention over (batch, T, embed_dim) with relative positions (module docstring).

    Parameters: the fused `qkv_proj` and `out_proj` of nmtkit's MultiheadAttention, plus
    `linear_pos` (no bias) and `pos_bias_u`, `pos_bias_v` (heads, head_dim).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.linear_pos = nn.Linear(embed_dim, embed_dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections as nmtkit's MultiheadAttention (xavier, gain 1/sqrt(2) per q/k/v block,
        zero output bias); the position biases xavier-uniform as in Transformer-XL/ESPnet."""
        with torch.no_grad():
            for block in self.qkv_proj.weight.split(self.embed_dim, dim=0):
                nn.init.xavier_uniform_(block, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.linear_pos.weight)
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def position_scores(self, q: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """(batch, heads, T, T) unscaled position term (q_i + v) . W_pos r_(i-j) of queries q
        (batch, heads, T, head_dim) against `pos_emb` (2T - 1, embed_dim)."""
        p = self.linear_pos(pos_emb).view(-1, self.num_heads, self.head_dim).transpose(0, 1)
        # The biases are cast to the compute dtype: under autocast a float32 parameter added to
        # bfloat16 queries would promote them to float32.
        scores = torch.matmul(q + self.pos_bias_v.to(q.dtype).unsqueeze(1), p.transpose(-1, -2))
        return rel_shift(scores)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x (batch, T, dim), pos_emb (2T - 1, dim) from RelativePositionalEncoding(T),
        key_padding_mask (batch, T) bool, True at padded frames -> (batch, T, dim)."""
        batch, length, _ = x.shape
        q, k, v = (
            self.qkv_proj(x)
            .view(batch, length, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        bias = self.position_scores(q, pos_emb.to(x.dtype)) * (1.0 / math.sqrt(self.head_dim))
        if key_padding_mask is not None:
            # Every row has a real frame (lengths >= 1), so no softmax row is fully masked.
            bias = bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        output = F.scaled_dot_product_attention(
            q + self.pos_bias_u.to(q.dtype).unsqueeze(1),
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(output.transpose(1, 2).reshape(batch, length, self.embed_dim))
