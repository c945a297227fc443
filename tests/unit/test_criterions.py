from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nmtkit.criterions import (
    CRITERIONS,
    CrossEntropy,
    CrossEntropyConfig,
    LabelSmoothedCrossEntropy,
    LabelSmoothedCrossEntropyConfig,
)

PAD = 1
VOCAB = 7


class FixedLogitsModel(nn.Module):
    """Returns the same logits whatever the input, so losses can be computed by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, src_tokens, src_lengths, prev_output_tokens):
        return self.logits


def make_sample(target: torch.Tensor) -> dict:
    batch, length = target.shape
    return {
        "id": torch.arange(batch),
        "nsentences": batch,
        "ntokens": int(target.ne(PAD).sum()),
        "net_input": {
            "src_tokens": torch.full((batch, 3), 4),
            "src_lengths": torch.full((batch,), 3),
            "prev_output_tokens": torch.full((batch, length), 2),
        },
        "target": target,
    }


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, VOCAB, generator=generator)
    target = torch.tensor([[4, 5, 6, 2], [3, 2, PAD, PAD]])
    return FixedLogitsModel(logits), make_sample(target)


def hand_label_smoothed(logits: torch.Tensor, target: torch.Tensor, eps: float) -> float:
    """Position by position, as written in the fairseq paper's formula."""
    total = 0.0
    lprobs = torch.log_softmax(logits.double(), dim=-1)
    for b in range(target.size(0)):
        for t in range(target.size(1)):
            if target[b, t] == PAD:
                continue
            row = lprobs[b, t]
            nll = -row[target[b, t]].item()
            smooth = -row.sum().item()
            eps_i = eps / (VOCAB - 1)
            total += (1 - eps - eps_i) * nll + eps_i * smooth
    return total


def test_registry_lists_and_builds_criterions():
    assert {"cross_entropy", "label_smoothed_cross_entropy"} <= set(CRITERIONS.names())
    criterion = CRITERIONS.build(
        LabelSmoothedCrossEntropyConfig(_name="label_smoothed_cross_entropy"), PAD
    )
    assert isinstance(criterion, LabelSmoothedCrossEntropy)
    assert isinstance(CRITERIONS.build(CrossEntropyConfig(), PAD), CrossEntropy)


def test_cross_entropy_equals_torch_sum_and_ignores_padding(batch):
    model, sample = batch
    loss, sample_size, logging_output = CrossEntropy(CrossEntropyConfig(), PAD)(model, sample)
    expected = F.cross_entropy(
        model.logits.reshape(-1, VOCAB),
        sample["target"].reshape(-1),
        ignore_index=PAD,
        reduction="sum",
    )
    torch.testing.assert_close(loss, expected)
    assert sample_size == 6
    assert logging_output["ntokens"] == 6 and logging_output["nsentences"] == 2
    assert float(logging_output["nll_loss"]) == pytest.approx(float(expected.detach()))
    assert not logging_output["loss"].requires_grad
    # Changing logits at padding positions must not change the loss.
    with torch.no_grad():
        model.logits[1, 2:] += 100.0
    loss_after, _, _ = CrossEntropy(CrossEntropyConfig(), PAD)(model, sample)
    torch.testing.assert_close(loss_after, loss)


def test_loss_is_differentiable(batch):
    model, sample = batch
    loss, _, _ = LabelSmoothedCrossEntropy(
        LabelSmoothedCrossEntropyConfig(label_smoothing=0.1), PAD
    )(model, sample)
    loss.backward()
    assert model.logits.grad is not None
    assert torch.all(model.logits.grad[1, 2:] == 0)


def test_label_smoothing_zero_equals_cross_entropy(batch):
    model, sample = batch
    ce, _, _ = CrossEntropy(CrossEntropyConfig(), PAD)(model, sample)
    ls, _, output = LabelSmoothedCrossEntropy(
        LabelSmoothedCrossEntropyConfig(label_smoothing=0.0), PAD
    )(model, sample)
    torch.testing.assert_close(ls, ce)
    torch.testing.assert_close(output["nll_loss"], ce.detach())


def test_label_smoothing_matches_hand_formula(batch):
    model, sample = batch
    eps = 0.1
    loss, _, output = LabelSmoothedCrossEntropy(
        LabelSmoothedCrossEntropyConfig(label_smoothing=eps), PAD
    )(model, sample)
    assert loss.item() == pytest.approx(
        hand_label_smoothed(model.logits.detach(), sample["target"], eps), rel=1e-5
    )
    # fairseq's eps / (V - 1) smoothing is torch's smoothing with eps * V / (V - 1).
    torch_loss = F.cross_entropy(
        model.logits.reshape(-1, VOCAB),
        sample["target"].reshape(-1),
        ignore_index=PAD,
        reduction="sum",
        label_smoothing=eps * VOCAB / (VOCAB - 1),
    )
    torch.testing.assert_close(loss, torch_loss)
    nll = F.cross_entropy(
        model.logits.reshape(-1, VOCAB),
        sample["target"].reshape(-1),
        ignore_index=PAD,
        reduction="sum",
    )
    torch.testing.assert_close(output["nll_loss"], nll.detach())
    assert loss.item() > nll.item()


def test_ignore_prefix_size_drops_leading_positions(batch):
    model, sample = batch
    loss, sample_size, _ = LabelSmoothedCrossEntropy(
        LabelSmoothedCrossEntropyConfig(label_smoothing=0.1, ignore_prefix_size=1), PAD
    )(model, sample)
    expected = hand_label_smoothed(model.logits.detach()[:, 1:], sample["target"][:, 1:], 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert sample_size == sample["ntokens"]


def test_half_precision_logits_are_scored_in_float32(batch):
    model, sample = batch
    half_model = FixedLogitsModel(model.logits.detach().to(torch.bfloat16))
    loss, _, _ = CrossEntropy(CrossEntropyConfig(), PAD)(half_model, sample)
    assert loss.dtype == torch.float32


def test_reduce_metrics_converts_to_base_2_and_sums_batches(batch):
    model, sample = batch
    criterion = LabelSmoothedCrossEntropy(LabelSmoothedCrossEntropyConfig(label_smoothing=0.1), PAD)
    _, _, first = criterion(model, sample)
    _, _, second = criterion(model, sample)
    metrics = LabelSmoothedCrossEntropy.reduce_metrics([first, second])
    expected_loss = 2 * float(first["loss"]) / 12 / math.log(2)
    expected_nll = 2 * float(first["nll_loss"]) / 12 / math.log(2)
    assert metrics["loss"] == pytest.approx(expected_loss)
    assert metrics["nll_loss"] == pytest.approx(expected_nll)
    assert metrics["ppl"] == pytest.approx(2**expected_nll)
    assert (metrics["ntokens"], metrics["nsentences"], metrics["sample_size"]) == (12, 4, 12)
    assert "accuracy" not in metrics
    # The trainer may also hand in already summed plain numbers.
    as_floats = {k: float(v) for k, v in first.items()}
    assert CrossEntropy.reduce_metrics([as_floats])["loss"] == pytest.approx(expected_loss)


def test_reduce_metrics_survives_huge_loss_and_empty_input():
    metrics = CrossEntropy.reduce_metrics(
        [{"loss": 1e6, "nll_loss": 1e6, "ntokens": 1, "nsentences": 1, "sample_size": 1}]
    )
    assert metrics["ppl"] == math.inf
    assert CrossEntropy.reduce_metrics([])["loss"] == 0.0


@pytest.mark.parametrize(
    "criterion_class, config_class",
    [
        (CrossEntropy, CrossEntropyConfig),
        (LabelSmoothedCrossEntropy, LabelSmoothedCrossEntropyConfig),
    ],
)
def test_accuracy_counts_non_padding_argmax_hits(criterion_class, config_class):
    logits = torch.full((1, 3, VOCAB), -5.0)
    logits[0, 0, 4] = logits[0, 1, 6] = logits[0, 2, 5] = 5.0  # argmax 4, 6, 5
    target = torch.tensor([[4, 5, PAD]])
    model, sample = FixedLogitsModel(logits), make_sample(target)
    _, _, output = criterion_class(config_class(report_accuracy=True), PAD)(model, sample)
    assert int(output["n_correct"]) == 1 and int(output["total"]) == 2
    assert criterion_class.reduce_metrics([output])["accuracy"] == pytest.approx(50.0)


def test_label_smoothing_config_validation():
    assert LabelSmoothedCrossEntropyConfig(label_smoothing=0.1).validate() == []
    errors = LabelSmoothedCrossEntropyConfig(label_smoothing=1.0, ignore_prefix_size=-1).validate()
    assert len(errors) == 2 and errors[0].startswith("label_smoothing=1.0")


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_gradient_equals_autograd(epsilon: float, dtype: torch.dtype) -> None:
    from nmtkit.criterions.fused_loss import label_smoothed_nll_loss, smoothed_nll_from_logits

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11).to(dtype)
    target = torch.randint(2, 11, (3, 5))
    target[0, 3:] = 1  # padding
    fused_input = logits.clone().requires_grad_(True)
    reference_input = logits.clone().requires_grad_(True)
    loss, nll = smoothed_nll_from_logits(fused_input, target, epsilon, padding_idx=1)
    (0.7 * loss + 0.3 * nll).backward()
    lprobs = torch.log_softmax(reference_input.float(), dim=-1)
    ref_loss, ref_nll = label_smoothed_nll_loss(lprobs, target, epsilon, padding_idx=1)
    (0.7 * ref_loss + 0.3 * ref_nll).backward()
    assert torch.allclose(loss, ref_loss) and torch.allclose(nll, ref_nll)
    assert fused_input.grad is not None and fused_input.grad.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(fused_input.grad.float(), reference_input.grad.float(), atol=tolerance)
    assert fused_input.grad[0, 3:].abs().sum() == 0  # padding gets no gradient


class FullLogitsTransformer(nn.Module):
    """A transformer behind a model that does not declare `supports_output_positions`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_tokens, src_lengths, prev_output_tokens):
        return self.model(src_tokens, src_lengths, prev_output_tokens)


@pytest.mark.parametrize("ignore_prefix_size", [0, 1])
@pytest.mark.parametrize("with_collated_positions", [True, False])
def test_skipping_padding_in_the_projection_changes_nothing(
    ignore_prefix_size: int, with_collated_positions: bool
) -> None:
    from nmtkit.models.api import capability
    from nmtkit.models.transformer import TransformerModel, transformer_tiny

    torch.manual_seed(0)
    config = transformer_tiny()
    config.dropout = 0.0
    model = TransformerModel(config, 20, 20, padding_idx=PAD)
    target = torch.tensor([[4, 5, 6, 2], [7, 2, PAD, PAD], [8, 9, 2, PAD]])
    sample = make_sample(target)
    sample["net_input"]["src_tokens"] = torch.tensor([[4, 5, 2], [PAD, 6, 2], [7, 8, 2]])
    if with_collated_positions:
        sample["target_positions"] = target.ne(PAD).view(-1).nonzero().squeeze(1)
    criterion = LabelSmoothedCrossEntropy(
        LabelSmoothedCrossEntropyConfig(
            label_smoothing=0.1, ignore_prefix_size=ignore_prefix_size, report_accuracy=True
        ),
        PAD,
    )
    wrapped = FullLogitsTransformer(model)
    assert capability(model, "supports_output_positions")
    assert not capability(wrapped, "supports_output_positions")

    results = []
    for runner in (model, wrapped):
        model.zero_grad()
        loss, sample_size, logging_output = criterion(runner, sample)
        loss.backward()
        gradients = [p.grad.clone() for p in model.parameters()]
        results.append((loss.detach(), logging_output, gradients))
    (loss_a, log_a, grads_a), (loss_b, log_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(log_a["nll_loss"], log_b["nll_loss"])
    assert int(log_a["n_correct"]) == int(log_b["n_correct"])
    assert int(log_a["total"]) == int(target.ne(PAD).sum()) - (3 if ignore_prefix_size else 0)
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(grad_a, grad_b)
