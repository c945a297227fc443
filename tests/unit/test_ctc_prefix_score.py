"""CTC prefix probabilities against a brute-force sum over every alignment of toy utterances."""

from __future__ import annotations

import itertools
import math
from typing import Optional

import pytest
import torch

from nmtkit.generation.ctc_prefix_score import (
    CtcPrefixScorer,
    ctc_prefix_beam_search,
    labelling_prefix_log_probs,
)

BLANK, EOS = 0, 2


def labelling_probabilities(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Probability of every labelling of one utterance (frames, V): the sum over all V**frames
    alignments, collapsed (repeats merged, blanks removed)."""
    probs = log_probs.double().exp()
    frames, vocab = probs.shape
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(vocab), repeat=frames):
        probability = math.prod(float(probs[t, symbol]) for t, symbol in enumerate(path))
        labels = tuple(
            symbol
            for t, symbol in enumerate(path)
            if symbol != BLANK and (t == 0 or symbol != path[t - 1])
        )
        totals[labels] = totals.get(labels, 0.0) + probability
    return totals


def prefix_log_prob(totals: dict[tuple[int, ...], float], prefix: tuple[int, ...]) -> float:
    mass = sum(p for labels, p in totals.items() if labels[: len(prefix)] == prefix)
    return math.log(mass) if mass > 0 else -math.inf


def random_log_probs(batch: int, frames: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(2 * torch.randn(batch, frames, vocab, generator=generator), dim=-1)


class FixedCtcHead:
    """Stands in for a model: its 'encoder output' carries the CTC log-probabilities."""

    def ctc_log_probs(self, encoder_out: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return encoder_out["log_probs"], encoder_out["lengths"]


def started_scorer(
    log_probs: torch.Tensor, lengths: torch.Tensor, rows_per_source: int
) -> CtcPrefixScorer:
    scorer = CtcPrefixScorer([FixedCtcHead()], eos=EOS)  # type: ignore[list-item]
    longest = scorer.start([{"log_probs": log_probs, "lengths": lengths}], rows_per_source)
    assert longest.tolist() == lengths.tolist()
    return scorer


def assert_scores_match_brute_force(
    increments: torch.Tensor,
    candidates: torch.Tensor,
    hypotheses: list[tuple[int, ...]],
    totals: list[dict[tuple[int, ...], float]],
    rows_per_source: int,
    row_sources: Optional[list[int]] = None,
) -> None:
    """increments[i, k] == log psi(hyp_i + c) - log psi(hyp_i), or for eos log P(hyp_i) -
    log psi(hyp_i); -inf for the blank and for every candidate of an impossible hypothesis."""
    for row, hypothesis in enumerate(hypotheses):
        source = row // rows_per_source if row_sources is None else row_sources[row]
        before = prefix_log_prob(totals[source], hypothesis)
        for k, candidate in enumerate(candidates[row].tolist()):
            if candidate == BLANK or before == -math.inf:
                expected = -math.inf
            elif candidate == EOS:
                whole = totals[source].get(hypothesis, 0.0)
                expected = (math.log(whole) if whole > 0 else -math.inf) - before
            else:
                expected = prefix_log_prob(totals[source], (*hypothesis, candidate)) - before
            got = float(increments[row, k])
            if math.isinf(expected):
                assert got == expected, (hypothesis, candidate)
            else:
                assert got == pytest.approx(expected, abs=1e-4), (hypothesis, candidate)


def test_prefix_scorer_matches_a_sum_over_all_alignments() -> None:
    """Two utterances of 5 and 3 frames in one padded batch, two hypotheses each, over a
    vocabulary of blank, a symbol 1, eos and labels 3, 4; three steps with beam reorderings
    (a repeated label included), then the first utterance leaves the batch."""
    vocab, lengths = 5, torch.tensor([5, 3])
    log_probs = random_log_probs(2, 5, vocab, seed=1)
    log_probs[1, 3:] = torch.randn(2, vocab)  # padding: must be ignored
    totals = [labelling_probabilities(log_probs[0]), labelling_probabilities(log_probs[1, :3])]
    scorer = started_scorer(log_probs, lengths, rows_per_source=2)
    every_token = torch.arange(vocab).repeat(4, 1)

    hypotheses: list[tuple[int, ...]] = [()] * 4
    increments = scorer.score(every_token)
    assert_scores_match_brute_force(increments, every_token, hypotheses, totals, 2)

    # Rows become: utterance 0: (3,), (4,); utterance 1: (4,), (3,)
    scorer.advance(torch.tensor([0, 1, 2, 3]), torch.tensor([3, 4, 4, 3]))
    hypotheses = [(3,), (4,), (4,), (3,)]
    assert_scores_match_brute_force(scorer.score(every_token), every_token, hypotheses, totals, 2)

    # Utterance 0 keeps (4, 4) and (3, 4); utterance 1 keeps (4, 3) and (3, 3).
    scorer.advance(torch.tensor([1, 0, 2, 3]), torch.tensor([4, 4, 3, 3]))
    hypotheses = [(4, 4), (3, 4), (4, 3), (3, 3)]
    candidates = torch.tensor([[4, 3, 2], [1, 4, 2], [3, 4, 2], [0, 2, 3]])
    assert_scores_match_brute_force(scorer.score(candidates), candidates, hypotheses, totals, 2)

    # Utterance 0 finishes; utterance 1 (3 frames) continues with (4, 3, 4) and (3, 3, 3).
    scorer.advance(torch.tensor([2, 3]), torch.tensor([4, 3]), kept_sources=torch.tensor([1]))
    hypotheses = [(4, 3, 4), (3, 3, 3)]
    increments = scorer.score(every_token[:2])
    assert_scores_match_brute_force(
        increments, every_token[:2], hypotheses, totals, 2, row_sources=[1, 1]
    )
    # Three frames hold no fourth token, and three copies of 3 need five.
    assert torch.isneginf(increments[:, [1, 3, 4]]).all() and torch.isneginf(increments[1]).all()
    assert torch.isfinite(increments[0, EOS])


def test_prefix_scores_of_a_labelling_match_brute_force() -> None:
    log_probs = random_log_probs(3, 4, 4, seed=2)
    lengths = torch.tensor([4, 4, 2])
    labels = torch.tensor([[3, 3, 1], [1, 3, 0], [2, 9, 9]])
    label_lengths = torch.tensor([3, 2, 1])
    prefixes, whole = labelling_prefix_log_probs(log_probs, lengths, labels, label_lengths)
    for row in range(3):
        totals = labelling_probabilities(log_probs[row, : lengths[row]])
        labelling = tuple(labels[row, : label_lengths[row]].tolist())
        for i in range(len(labelling)):
            assert float(prefixes[row, i]) == pytest.approx(
                prefix_log_prob(totals, labelling[: i + 1]), abs=1e-4
            )
        assert torch.isneginf(prefixes[row, len(labelling) :]).all()
        assert float(whole[row]) == pytest.approx(math.log(totals[labelling]), abs=1e-4)


@pytest.mark.parametrize("frames", [1, 3, 5])
def test_prefix_beam_search_with_a_large_beam_finds_the_most_probable_labellings(
    frames: int,
) -> None:
    log_probs = random_log_probs(1, frames, 3, seed=frames)
    totals = labelling_probabilities(log_probs[0])
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    # 2**6 - 1 labellings of up to 5 labels over 2 symbols: a beam of 64 loses none.
    found = ctc_prefix_beam_search(log_probs, torch.tensor([frames]), beam=64, nbest=3)[0]
    assert [tuple(f.labels) for f in found] == [labels for labels, _ in ranked[:3]]
    for labelling, (_, probability) in zip(found, ranked, strict=False):
        assert labelling.log_prob == pytest.approx(math.log(probability), abs=1e-4)
        assert float(labelling.positional_scores.sum()) == pytest.approx(
            labelling.log_prob, abs=1e-4
        )
        assert len(labelling.positional_scores) == len(labelling.labels) + 1


def test_prefix_beam_search_batched_equals_one_at_a_time() -> None:
    log_probs = random_log_probs(3, 6, 4, seed=3)
    lengths = torch.tensor([6, 2, 4])
    batched = ctc_prefix_beam_search(log_probs, lengths, beam=3, nbest=2)
    for row in range(3):
        frames = int(lengths[row])
        alone = ctc_prefix_beam_search(
            log_probs[row : row + 1, :frames], lengths[row : row + 1], beam=3, nbest=2
        )[0]
        assert [f.labels for f in batched[row]] == [f.labels for f in alone]
        for a, b in zip(batched[row], alone, strict=True):
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-5)


def test_prefix_beam_search_beats_or_equals_the_best_path() -> None:
    """A small beam is not exact in general, but on these random examples it finds a
    labelling at least as probable as the best path's (greedy decoding)."""
    log_probs = random_log_probs(4, 8, 5, seed=4)
    lengths = torch.full((4,), 8)
    found = ctc_prefix_beam_search(log_probs, lengths, beam=4, nbest=1)
    best_path = log_probs.argmax(dim=-1)
    for row in range(4):
        path = best_path[row].tolist()
        labels = [s for t, s in enumerate(path) if s != BLANK and (t == 0 or s != path[t - 1])]
        _, whole = labelling_prefix_log_probs(
            log_probs[row : row + 1],
            lengths[:1],
            torch.tensor([labels or [0]]),
            torch.tensor([len(labels)]),
        )
        assert found[row][0].log_prob >= float(whole[0]) - 1e-5


def test_encoder_only_model_beam_decoding_finds_the_most_probable_transcripts() -> None:
    """nmtkit-generate beam > 1 on an encoder-only CTC model (tiny, random weights): 9 input
    frames make 3 encoder frames, whose 12**3 alignments are summed by brute force."""
    from nmtkit.generation.translate import ctc_beam_decode
    from nmtkit.models.s2t_transformer import S2TTransformerModel, s2t_transformer_tiny

    vocab, pad = 12, 1
    config = s2t_transformer_tiny()
    config.input_feat_per_channel, config.conv_channels, config.decoder_layers = 6, 8, 0
    config.ctc_head = "target"
    torch.manual_seed(5)
    model = S2TTransformerModel(config, vocab, padding_idx=pad, ctc_vocab_size=vocab).eval()
    net_input = {"src_tokens": torch.randn(1, 9, 6), "src_lengths": torch.tensor([9])}
    with torch.no_grad():
        log_probs, lengths = model.ctc_log_probs(model.encode(**net_input))
        found = ctc_beam_decode([model], net_input, eos=EOS, beam=256, nbest=3)[0]
    assert int(lengths[0]) == 3
    ranked = sorted(labelling_probabilities(log_probs[0]).items(), key=lambda item: -item[1])
    assert [h.tokens.tolist() for h in found] == [[*labels, EOS] for labels, _ in ranked[:3]]
    for hypothesis, (_, probability) in zip(found, ranked, strict=False):
        assert float(hypothesis.positional_scores.sum()) == pytest.approx(
            math.log(probability), abs=1e-4
        )
        assert hypothesis.score == pytest.approx(
            math.log(probability) / len(hypothesis.tokens), abs=1e-4
        )
