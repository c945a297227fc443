from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from nmtkit.criterions import (
    CRITERIONS,
    Ctc,
    CtcConfig,
    LabelSmoothedCrossEntropy,
    LabelSmoothedCrossEntropyConfig,
    LabelSmoothedCrossEntropyWithCtc,
    LabelSmoothedCrossEntropyWithCtcConfig,
)
from nmtkit.criterions.ctc import ctc_loss
from nmtkit.errors import ConfigError
from nmtkit.models.s2t_transformer import S2TTransformerModel, s2t_transformer_tiny

PAD, EOS = 1, 2
VOCAB = 9
FEATURES = 4


@pytest.fixture(autouse=True)
def seed() -> None:
    """Each test starts from the same random state (tests/conftest.py sets one thread)."""
    torch.manual_seed(0)


def tiny_model(ctc_head: str = "target", decoder_layers: int = 1) -> S2TTransformerModel:
    config = dataclasses.replace(
        s2t_transformer_tiny(),
        input_feat_per_channel=FEATURES,
        conv_channels=8,
        ctc_head=ctc_head,
        decoder_layers=decoder_layers,
    )
    ctc_vocab = None if ctc_head == "none" else VOCAB
    return S2TTransformerModel(config, VOCAB, padding_idx=PAD, ctc_vocab_size=ctc_vocab)


def with_eos(rows: list[list[int]]) -> torch.Tensor:
    """Right-padded (batch, length) rows, each ending with </s>."""
    width = max(len(row) for row in rows) + 1
    return torch.tensor([row + [EOS] + [PAD] * (width - len(row) - 1) for row in rows])


def make_sample(frames: list[int], targets: list[list[int]]) -> dict[str, Any]:
    target = with_eos(targets)
    prev = torch.cat([torch.full((len(targets), 1), EOS), target[:, :-1]], dim=1)
    prev = prev.masked_fill(prev.eq(EOS) & (torch.arange(prev.size(1)) > 0), PAD)
    features = torch.randn(len(frames), max(frames), FEATURES)
    return {
        "net_input": {
            "src_tokens": features,
            "src_lengths": torch.tensor(frames),
            "prev_output_tokens": prev,
        },
        "target": target,
        "ntokens": int(target.ne(PAD).sum()),
        "nsentences": len(targets),
    }


def brute_force_ctc(log_probs: torch.Tensor, target: list[int]) -> float:
    """-log of the summed probability of every frame labelling that collapses to `target`."""
    table = log_probs.tolist()
    total = 0.0
    for path in itertools.product(range(len(table[0])), repeat=len(table)):
        collapsed = [symbol for i, symbol in enumerate(path) if i == 0 or symbol != path[i - 1]]
        if [symbol for symbol in collapsed if symbol != 0] == target:
            total += math.exp(sum(table[t][symbol] for t, symbol in enumerate(path)))
    return -math.log(total)


def test_ctc_loss_matches_torch_and_brute_force_enumeration() -> None:
    # Blank 0, pad 1 and </s> 2 never occur inside a target: the symbols are 3 and 4.
    log_probs = torch.randn(2, 5, 5).log_softmax(-1)
    reference = with_eos([[3, 4, 4], [4]])
    result = ctc_loss(log_probs, torch.tensor([5, 4]), reference, PAD)
    expected = F.ctc_loss(
        log_probs.transpose(0, 1),
        torch.tensor([[3, 4, 4], [4, 0, 0]]),
        torch.tensor([5, 4]),
        torch.tensor([3, 1]),
        blank=0,
        reduction="sum",
    )
    torch.testing.assert_close(result.loss, expected)
    by_hand = brute_force_ctc(log_probs[0], [3, 4, 4]) + brute_force_ctc(log_probs[1, :4], [4])
    assert math.isclose(float(result.loss), by_hand, rel_tol=1e-5)
    assert int(result.ntokens) == 4 and int(result.infeasible) == 0
    # Repeated pads after a short row are not repeats of its target.
    short_row = ctc_loss(log_probs, torch.tensor([4, 1]), with_eos([[3, 4, 3, 4], [3]]), PAD)
    assert int(short_row.infeasible) == 0


def test_unalignable_utterances_are_counted_and_left_out() -> None:
    log_probs = torch.randn(3, 4, 5).log_softmax(-1).requires_grad_()
    # [3, 3, 3] needs 5 frames (two blanks between repeats); [3, 4, 3, 4] needs 4; [4, 4] needs 3.
    reference = with_eos([[3, 3, 3], [3, 4, 3, 4], [4, 4]])
    result = ctc_loss(log_probs, torch.tensor([4, 4, 2]), reference, PAD)
    assert int(result.infeasible) == 2 and int(result.ntokens) == 4
    alone = ctc_loss(log_probs[1:2], torch.tensor([4]), reference[1:2], PAD)
    torch.testing.assert_close(result.loss, alone.loss)
    result.loss.backward()
    assert torch.isfinite(log_probs.grad).all()
    assert log_probs.grad[0].abs().sum() == 0 and log_probs.grad[2].abs().sum() == 0


def test_ctc_criterion_on_an_encoder_only_model() -> None:
    model = tiny_model(decoder_layers=0)
    criterion = CRITERIONS.build(CtcConfig(), padding_idx=PAD)
    assert isinstance(criterion, Ctc)
    sample = make_sample([40, 13, 6], [[4, 5, 6], [7, 7, 8], [5, 6, 7, 8]])
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    loss, sample_size, logging_output = criterion(model, sample)
    assert len(calls) == 1  # one forward: DDP sees every parameter in it
    _, log_probs, lengths = model(**sample["net_input"], with_ctc=True)
    assert lengths.tolist() == [10, 4, 2]  # the last utterance has 2 frames for 4 tokens
    expected = ctc_loss(log_probs, lengths, sample["target"], PAD)
    torch.testing.assert_close(loss, expected.loss)
    assert sample_size == 6 and int(logging_output["ctc_infeasible"]) == 1
    loss.backward()
    assert model.ctc_projection.weight.grad.abs().sum() > 0
    metrics = Ctc.reduce_metrics([logging_output, logging_output])
    assert metrics["ctc_infeasible"] == 2 and metrics["sample_size"] == 12
    assert math.isclose(metrics["loss"], float(loss.detach()) / 6 / math.log(2), rel_tol=1e-5)


def test_source_side_ctc_reads_the_transcript() -> None:
    model = tiny_model(ctc_head="source")
    sample = make_sample([30, 20], [[4, 5], [6]])
    sample["source_text"] = with_eos([[7, 8, 7], [5, 4]])
    criterion = Ctc(CtcConfig(ctc_target="source"), PAD)
    loss, sample_size, _ = criterion(model, sample)
    _, log_probs, lengths = model(**sample["net_input"], with_ctc=True)
    torch.testing.assert_close(loss, ctc_loss(log_probs, lengths, sample["source_text"], PAD).loss)
    assert sample_size == 5
    del sample["source_text"]
    with pytest.raises(ConfigError, match="ctc_target=source"):
        criterion(model, sample)


def test_joint_loss_interpolates_attention_and_ctc() -> None:
    model = tiny_model()
    sample = make_sample([40, 25], [[4, 5, 6], [7, 8]])
    weight = 0.3
    joint = LabelSmoothedCrossEntropyWithCtc(
        LabelSmoothedCrossEntropyWithCtcConfig(label_smoothing=0.1, ctc_weight=weight), PAD
    )
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    loss, sample_size, logging_output = joint(model, sample)
    assert len(calls) == 1
    attention, _, attention_log = LabelSmoothedCrossEntropy(
        LabelSmoothedCrossEntropyConfig(label_smoothing=0.1), PAD
    )(model, sample)
    ctc, _, _ = Ctc(CtcConfig(), PAD)(model, sample)
    torch.testing.assert_close(loss, (1 - weight) * attention + weight * ctc)
    torch.testing.assert_close(logging_output["ctc_loss"], ctc.detach())
    torch.testing.assert_close(logging_output["nll_loss"], attention_log["nll_loss"])
    assert sample_size == sample["ntokens"] and int(logging_output["ctc_ntokens"]) == 5

    model.zero_grad()
    loss.backward()
    assert model.ctc_projection.weight.grad.abs().sum() > 0
    assert model.decoder.output_projection.weight.grad.abs().sum() > 0
    metrics = LabelSmoothedCrossEntropyWithCtc.reduce_metrics([logging_output])
    assert math.isclose(metrics["ctc_loss"], float(ctc.detach()) / 5 / math.log(2), rel_tol=1e-5)
    assert metrics["ctc_infeasible"] == 0 and "nll_loss" in metrics and "ppl" in metrics


def test_joint_criterion_checks_the_model() -> None:
    sample = make_sample([20], [[4, 5]])
    joint = LabelSmoothedCrossEntropyWithCtc(LabelSmoothedCrossEntropyWithCtcConfig(), PAD)
    with pytest.raises(ConfigError, match=r"criterion\.ctc_weight=0\.3.*model\.ctc_head"):
        joint(tiny_model(ctc_head="none"), sample)
    with pytest.raises(ConfigError, match=r"ctc_target=target but model\.ctc_head=source"):
        joint.check_model(tiny_model(ctc_head="source"))
    without_ctc = LabelSmoothedCrossEntropyWithCtc(
        LabelSmoothedCrossEntropyWithCtcConfig(ctc_weight=0.0), PAD
    )
    loss, _, logging_output = without_ctc(tiny_model(ctc_head="none"), sample)
    assert "ctc_loss" not in logging_output and torch.isfinite(loss)
    with pytest.raises(ConfigError, match="model.ctc_head=target"):
        Ctc(CtcConfig(), PAD).check_model(tiny_model(ctc_head="none"))


def test_configs_validate_their_fields() -> None:
    assert CtcConfig(ctc_target="both").validate() == [
        "ctc_target=both: choose one of target, source"
    ]
    errors = LabelSmoothedCrossEntropyWithCtcConfig(
        ctc_weight=1.5, ctc_target="x", label_smoothing=-1
    ).validate()
    assert len(errors) == 3


def test_criterions_refuse_models_they_cannot_train() -> None:
    encoder_only = tiny_model(decoder_layers=0)
    with pytest.raises(ConfigError, match="encoder-only.*criterion=ctc"):
        LabelSmoothedCrossEntropyWithCtc(LabelSmoothedCrossEntropyWithCtcConfig(), PAD).check_model(
            encoder_only
        )
    plain = LabelSmoothedCrossEntropy(LabelSmoothedCrossEntropyConfig(), PAD)
    with pytest.raises(ConfigError, match="criterion=label_smoothed_cross_entropy needs a decoder"):
        plain.check_model(encoder_only)
    with pytest.raises(ConfigError, match=r"does not train the model's CTC head \(model.ctc_head"):
        plain.check_model(tiny_model(ctc_head="target"))
    plain.check_model(tiny_model(ctc_head="none"))
