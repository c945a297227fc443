"""Label-smoothed negative log-likelihood from logits with a hand-written backward.

Autograd's backward of `log_softmax -> gather -> sum` makes several full passes over the
(tokens, vocabulary) tensor, each with a buffer of its own (a zero-filled one for the gather).
The gradient has a closed form, so `backward` builds it in one pass over the probabilities:

    d loss / d logits = (a + b V) p - a onehot(target) - b,   a = 1 - eps - eps_i, b = eps_i

(eps_i = eps / (V - 1), fairseq's formula). On CPU this removed a tenth of the training step
time for transformer_small with an 8k vocabulary (torch profiler: gather/log_softmax backward).
`epsilon=0` is plain cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def label_smoothed_nll_loss(
    lprobs: torch.Tensor, target: torch.Tensor, epsilon: float, padding_idx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed loss, nll loss) from log-probabilities, summed over non-padding positions.

    loss = (1 - eps - eps_i) * nll + eps_i * smooth, with eps_i = eps / (V - 1) and
    smooth = -sum_v lprobs[v]: the reference gets 1 - eps and every other token eps / (V - 1).
    """
    padding = target.eq(padding_idx)
    nll_loss = -lprobs.gather(dim=-1, index=target.unsqueeze(-1)).squeeze(-1)
    nll_loss = nll_loss.masked_fill(padding, 0.0).sum()
    if epsilon == 0.0:
        return nll_loss, nll_loss
    smooth_loss = -lprobs.sum(dim=-1)
    smooth_loss = smooth_loss.masked_fill(padding, 0.0).sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss, nll_loss


class _SmoothedNllFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, target: torch.Tensor, epsilon: float, padding_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # dtype= reads half/bfloat16 logits directly; the softmax itself must be float32.
        lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        loss, nll_loss = label_smoothed_nll_loss(lprobs, target, epsilon, padding_idx)
        ctx.save_for_backward(lprobs, target)
        ctx.epsilon, ctx.padding_idx, ctx.logits_dtype = epsilon, padding_idx, logits.dtype
        return loss, nll_loss.clone() if nll_loss is loss else nll_loss

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_loss: torch.Tensor, grad_nll: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None]:
        lprobs, target = ctx.saved_tensors
        vocab = lprobs.size(-1)
        eps_i = ctx.epsilon / (vocab - 1) if ctx.epsilon else 0.0
        reference_weight = 1.0 - ctx.epsilon - eps_i
        # Per-position coefficients, zero at padding, so padding needs no extra pass over the
        # (tokens, vocabulary) gradient. nll_loss is normally only logged, but its gradient is
        # honoured if it is used.
        counted = target.ne(ctx.padding_idx).unsqueeze(-1).to(lprobs.dtype)
        probability_coefficient = counted * (
            grad_loss * (reference_weight + eps_i * vocab) + grad_nll
        )
        target_coefficient = counted * (grad_loss * reference_weight + grad_nll)
        # lprobs is consumed in place: this Function is differentiated once per forward.
        grad = lprobs.exp_().mul_(probability_coefficient)
        if eps_i:
            grad.sub_(counted * (grad_loss * eps_i))
        grad.scatter_add_(-1, target.unsqueeze(-1), -target_coefficient)
        return grad.to(ctx.logits_dtype), None, None, None


def smoothed_nll_from_logits(
    logits: torch.Tensor, target: torch.Tensor, epsilon: float, padding_idx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed loss, nll loss) in nats, summed over non-padding positions; logits (..., V)."""
    return _SmoothedNllFromLogits.apply(logits, target, epsilon, padding_idx)
