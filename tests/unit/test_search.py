"""Beam search and sampling against a small deterministic model with a real incremental cache."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from torch import nn

from nmtkit.errors import ConfigError
from nmtkit.generation import SearchConfig, SequenceGenerator
from nmtkit.generation.ngram_blocking import block_repeated_ngrams

BOS, PAD, EOS, UNK = 0, 1, 2, 3
VOCAB = 12
DIM = 16


class ToyTranslationModel(nn.Module):
    """Embedding encoder; GRU decoder with causal attention over its past states and the source.

    The incremental state caches the GRU state and the growing history of decoder states (like a
    transformer's self-attention keys), so a wrong cache reorder changes the scores.
    """

    def __init__(
        self,
        seed: int = 0,
        sharpness: float = 4.0,
        token_bias: Optional[dict[int, float]] = None,
        max_positions: int = 64,
    ) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, DIM, padding_idx=PAD)
        self.cell = nn.GRUCell(DIM, DIM)
        self.output = nn.Linear(3 * DIM, VOCAB)
        torch.random.set_rng_state(generator_state)
        self.sharpness = sharpness
        bias = torch.zeros(VOCAB)
        for token, value in (token_bias or {}).items():
            bias[token] = value
        self.register_buffer("token_bias", bias)
        self.max_positions = max_positions
        self.decoded_rows: list[int] = []

    def encode(
        self, src_tokens: torch.Tensor, src_lengths: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {
            "encoder_out": self.embed(src_tokens),
            "encoder_padding_mask": src_tokens.eq(PAD),
        }

    @staticmethod
    def _attend(
        query: torch.Tensor, keys: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        weights = torch.einsum("rd,rsd->rs", query, keys) / math.sqrt(DIM)
        if mask is not None:
            weights = weights.masked_fill(mask, -math.inf)
        return torch.einsum("rs,rsd->rd", torch.softmax(weights, dim=1), keys)

    def _step(
        self, token: torch.Tensor, hidden: torch.Tensor, history: torch.Tensor, encoder_out: dict
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.cell(self.embed(token), hidden)
        history = torch.cat([history, hidden.unsqueeze(1)], dim=1)
        features = torch.cat(
            [
                hidden,
                self._attend(hidden, history),
                self._attend(
                    hidden, encoder_out["encoder_out"], encoder_out["encoder_padding_mask"]
                ),
            ],
            dim=1,
        )
        logits = self.output(features) * self.sharpness + self.token_bias
        return logits, hidden, history

    def decode(
        self,
        prev_output_tokens: torch.Tensor,
        encoder_out: dict[str, torch.Tensor],
        incremental_state: Optional[dict[str, Any]] = None,
    ) -> torch.Tensor:
        rows, length = prev_output_tokens.shape
        self.decoded_rows.append(rows)
        if incremental_state is not None and "hidden" in incremental_state:
            assert incremental_state["history"].size(1) == length - 1, "cache out of step"
            hidden, history = incremental_state["hidden"], incremental_state["history"]
            positions = [length - 1]
        else:
            hidden = torch.zeros(rows, DIM)
            history = torch.zeros(rows, 0, DIM)
            positions = range(length)
        all_logits = []
        for position in positions:
            logits, hidden, history = self._step(
                prev_output_tokens[:, position], hidden, history, encoder_out
            )
            all_logits.append(logits)
        if incremental_state is not None:
            incremental_state["hidden"], incremental_state["history"] = hidden, history
            return all_logits[-1].unsqueeze(1)
        return torch.stack(all_logits, dim=1)

    def forward(
        self, src_tokens: torch.Tensor, src_lengths: torch.Tensor, prev_output_tokens: torch.Tensor
    ) -> torch.Tensor:
        return self.decode(prev_output_tokens, self.encode(src_tokens, src_lengths))

    def reorder_encoder_out(self, encoder_out: dict, new_order: torch.Tensor) -> dict:
        return {key: value.index_select(0, new_order) for key, value in encoder_out.items()}

    def reorder_incremental_state(self, incremental_state: dict, new_order: torch.Tensor) -> None:
        for key, value in incremental_state.items():
            incremental_state[key] = value.index_select(0, new_order)

    def max_decoder_positions(self) -> int:
        return self.max_positions


class RecomputingModel(nn.Module):
    """Wraps a model and ignores the cache: every step recomputes the whole prefix."""

    def __init__(self, model: ToyTranslationModel) -> None:
        super().__init__()
        self.model = model

    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> dict:
        return self.model.encode(src_tokens, src_lengths)

    def decode(self, prev_output_tokens, encoder_out, incremental_state=None) -> torch.Tensor:
        return self.model.decode(prev_output_tokens, encoder_out)[:, -1:]

    def reorder_encoder_out(self, encoder_out: dict, new_order: torch.Tensor) -> dict:
        return self.model.reorder_encoder_out(encoder_out, new_order)

    def reorder_incremental_state(self, incremental_state: dict, new_order: torch.Tensor) -> None:
        pass

    def max_decoder_positions(self) -> int:
        return self.model.max_decoder_positions()


def make_sources(lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = random.Random(seed)
    return [[generator.randrange(4, VOCAB) for _ in range(n - 1)] + [EOS] for n in lengths]


def left_padded(sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(source) for source in sources)
    tokens = torch.full((len(sources), width), PAD, dtype=torch.long)
    for row, source in enumerate(sources):
        tokens[row, width - len(source) :] = torch.tensor(source)
    return tokens, torch.tensor([len(source) for source in sources])


def generator_for(models: list[nn.Module], **options: Any) -> SequenceGenerator:
    options.setdefault("max_len_b", 10)
    return SequenceGenerator(
        models, SearchConfig(**options), pad=PAD, eos=EOS, unk=UNK, bos=BOS, vocab_size=VOCAB
    )


def translate(models: list[nn.Module], sources: list[list[int]], **options: Any) -> list:
    seed = options.pop("seed", None)
    prefix = options.pop("prefix_tokens", None)
    src_tokens, src_lengths = left_padded(sources)
    return generator_for(models, **options).generate(
        {"src_tokens": src_tokens, "src_lengths": src_lengths}, prefix, seed=seed
    )


def assert_same_hypotheses(first: list, second: list, tolerance: float = 1e-4) -> None:
    assert len(first) == len(second)
    for hyps_a, hyps_b in zip(first, second, strict=True):
        assert len(hyps_a) == len(hyps_b)
        for hyp_a, hyp_b in zip(hyps_a, hyps_b, strict=True):
            assert hyp_a.tokens.tolist() == hyp_b.tokens.tolist()
            assert hyp_a.score == pytest.approx(hyp_b.score, abs=tolerance)
            torch.testing.assert_close(
                hyp_a.positional_scores, hyp_b.positional_scores, atol=tolerance, rtol=0
            )


SOURCES = make_sources([5, 3, 7, 4, 6, 2])


@pytest.fixture(autouse=True)
def no_autograd() -> Any:
    """Search never needs gradients (tests/conftest.py sets one thread)."""
    with torch.no_grad():
        yield


def test_beam_one_equals_handwritten_greedy_decoding() -> None:
    model = ToyTranslationModel(seed=1).eval()
    results = translate([model], SOURCES, beam=1, max_len_b=12)
    for source, hypotheses in zip(SOURCES, results, strict=True):
        src_tokens, src_lengths = left_padded([source])
        prefix, lprob_sum = [EOS], 0.0
        for step in range(13):
            logits = model(src_tokens, src_lengths, torch.tensor([prefix]))[0, -1]
            lprobs = torch.log_softmax(logits, dim=-1)
            lprobs[[PAD, BOS]] = -math.inf
            token = EOS if step == 12 else int(lprobs.argmax())
            prefix.append(token)
            lprob_sum += float(lprobs[token])
            if token == EOS:
                break
        (hypothesis,) = hypotheses
        assert hypothesis.tokens.tolist() == prefix[1:]
        assert hypothesis.score == pytest.approx(lprob_sum / len(prefix[1:]), abs=1e-5)


@pytest.mark.parametrize("options", [{}, {"no_repeat_ngram_size": 2, "lenpen": 0.5}])
def test_cached_decoding_matches_recomputing_the_prefix(options: dict) -> None:
    model = ToyTranslationModel(seed=2, sharpness=2.0).eval()
    cached = translate([model], SOURCES, beam=4, nbest=4, **options)
    recomputed = translate([RecomputingModel(model)], SOURCES, beam=4, nbest=4, **options)
    assert_same_hypotheses(cached, recomputed)
    assert any(len(hyp.tokens) > 3 for hyps in cached for hyp in hyps)


@pytest.mark.parametrize("lenpen", [0.0, 0.6, 1.0, 2.0])
def test_score_is_sum_of_positional_scores_over_length_power_lenpen(lenpen: float) -> None:
    model = ToyTranslationModel(seed=3).eval()
    results = translate([model], SOURCES, beam=3, nbest=3, lenpen=lenpen)
    for hypotheses in results:
        assert len(hypotheses) == 3
        for hypothesis in hypotheses:
            tokens, positional = hypothesis.tokens, hypothesis.positional_scores
            assert tokens[-1] == EOS and EOS not in tokens[:-1].tolist()
            assert positional.shape == tokens.shape
            expected = float(positional.sum()) / len(tokens) ** lenpen
            assert hypothesis.score == pytest.approx(expected, abs=1e-5)


def test_ensemble_of_the_same_model_twice_equals_the_model() -> None:
    model = ToyTranslationModel(seed=4).eval()
    alone = translate([model], SOURCES, beam=3, nbest=2)
    twice = translate([model, model], SOURCES, beam=3, nbest=2)
    assert_same_hypotheses(alone, twice)


def test_ensemble_averages_probabilities() -> None:
    first, second = ToyTranslationModel(seed=5).eval(), ToyTranslationModel(seed=6).eval()
    source = SOURCES[0]
    (hypothesis,) = translate([first, second], [source], beam=2)[0]
    src_tokens, src_lengths = left_padded([source])
    prev = torch.cat([torch.tensor([EOS]), hypothesis.tokens[:-1]]).unsqueeze(0)
    probs = sum(torch.softmax(m(src_tokens, src_lengths, prev)[0], -1) for m in (first, second))
    expected = (probs / 2).log().gather(1, hypothesis.tokens.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(hypothesis.positional_scores, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampling", [False, True])
def test_outputs_do_not_depend_on_batch_composition_or_order(sampling: bool) -> None:
    model = ToyTranslationModel(seed=7).eval()
    options = {"beam": 4, "nbest": 3, "max_len_a": 1.0, "max_len_b": 2, "no_repeat_ngram_size": 3}
    if sampling:
        # Sampling draws depend on the batch; top-1 sampling is deterministic and still runs
        # the sampling path with its per-row batch shrinking.
        options.update(sampling=True, sampling_topk=1, seed=0)
    alone = [translate([model], [source], **options)[0] for source in SOURCES]
    order = list(range(len(SOURCES)))
    random.Random(0).shuffle(order)
    shuffled = translate([model], [SOURCES[index] for index in order], **options)
    assert_same_hypotheses([alone[index] for index in order], shuffled)


def test_nbest_hypotheses_are_distinct_and_sorted_best_first() -> None:
    model = ToyTranslationModel(seed=8, sharpness=1.5).eval()
    for hypotheses in translate([model], SOURCES, beam=5, nbest=5):
        assert len(hypotheses) == 5
        token_lists = [tuple(hyp.tokens.tolist()) for hyp in hypotheses]
        assert len(set(token_lists)) == 5
        scores = [hyp.score for hyp in hypotheses]
        assert scores == sorted(scores, reverse=True)


def reference_beam_search(
    model: nn.Module,
    source: list[int],
    beam: int,
    max_len: int,
    lenpen: float,
    vocab_size: int = VOCAB,
) -> list[tuple[list[int], float]]:
    """Fairseq's rule, one sentence and one hypothesis at a time, recomputing every prefix."""
    src_tokens, src_lengths = left_padded([source])
    live: list[tuple[float, list[int]]] = [(0.0, [EOS])]
    finalized: list[tuple[list[int], float]] = []
    for step in range(max_len + 1):
        candidates = []
        for score, prefix in live:
            logits = model(src_tokens, src_lengths, torch.tensor([prefix]))[0, -1]
            lprobs = torch.log_softmax(logits, dim=-1).tolist()
            for token in range(vocab_size):
                allowed = token not in (PAD, BOS) and (step < max_len or token == EOS)
                allowed = allowed and (step >= 1 or token != EOS)  # min_len=1
                if allowed:
                    candidates.append((score + lprobs[token], [*prefix, token]))
        candidates.sort(key=lambda candidate: -candidate[0])
        live = []
        for rank, (score, tokens) in enumerate(candidates[: 2 * beam]):
            if tokens[-1] == EOS:
                if rank < beam and len(finalized) < beam:
                    finalized.append((tokens[1:], score / (len(tokens) - 1) ** lenpen))
            elif len(live) < beam:
                live.append((score, tokens))
        if len(finalized) == beam or step == max_len:
            break
    return sorted(finalized, key=lambda hypothesis: -hypothesis[1])


@pytest.mark.parametrize("lenpen", [0.3, 1.0, 1.8])
def test_beam_search_matches_a_one_sentence_reference(lenpen: float) -> None:
    model = ToyTranslationModel(seed=23, sharpness=1.5).eval()
    results = translate([model], SOURCES, beam=4, nbest=4, lenpen=lenpen, max_len_b=7)
    for source, hypotheses in zip(SOURCES, results, strict=True):
        expected = reference_beam_search(model, source, beam=4, max_len=7, lenpen=lenpen)
        assert [h.tokens.tolist() for h in hypotheses] == [tokens for tokens, _ in expected]
        assert [h.score for h in hypotheses] == pytest.approx([s for _, s in expected], abs=1e-5)


def test_larger_beam_finds_no_worse_best_hypothesis_on_average() -> None:
    model = ToyTranslationModel(seed=9, sharpness=1.5).eval()
    narrow = translate([model], SOURCES, beam=1)
    wide = translate([model], SOURCES, beam=6)
    assert sum(h[0].score for h in wide) >= sum(h[0].score for h in narrow)


def has_repeated_ngram(tokens: list[int], size: int) -> bool:
    ngrams = [tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)]
    return len(ngrams) != len(set(ngrams))


@pytest.mark.parametrize("sampling", [False, True])
def test_no_repeat_ngram_size_is_respected(sampling: bool) -> None:
    # A strong bias towards two tokens makes repetitions likely without blocking.
    model = ToyTranslationModel(seed=10, token_bias={5: 3.0, 6: 3.0, EOS: -4.0}).eval()
    options = {"beam": 3, "nbest": 3, "max_len_b": 12, "sampling": sampling, "seed": 0}
    unblocked = translate([model], SOURCES, **options)
    assert any(has_repeated_ngram(h.tokens.tolist(), 2) for hs in unblocked for h in hs)
    blocked = translate([model], SOURCES, no_repeat_ngram_size=2, **options)
    for hypotheses in blocked:
        assert hypotheses
        for hypothesis in hypotheses:
            assert not has_repeated_ngram([EOS, *hypothesis.tokens[:-1].tolist()], 2)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_ngram_blocking_matches_a_direct_count(size: int) -> None:
    generator = torch.Generator().manual_seed(size)
    tokens = torch.randint(4, 8, (6, 7), generator=generator)
    lprobs = torch.zeros(6, 8)
    block_repeated_ngrams(lprobs, tokens, size)
    for row in range(6):
        history = tokens[row].tolist()
        for token in range(8):
            repeats = has_repeated_ngram([*history, token], size) and not has_repeated_ngram(
                history, size
            )
            blocked = lprobs[row, token] == -math.inf
            if not has_repeated_ngram(history, size):
                assert blocked == repeats
            else:
                new_ngram = tuple([*history, token][len(history) + 1 - size :])
                earlier = {tuple(history[i : i + size]) for i in range(len(history) - size + 1)}
                assert blocked == (new_ngram in earlier)


def test_sampling_is_reproducible_with_a_seed_and_varies_across_seeds() -> None:
    model = ToyTranslationModel(seed=11, sharpness=1.0).eval()
    options = {"sampling": True, "beam": 4, "nbest": 4}
    first = translate([model], SOURCES, seed=123, **options)
    again = translate([model], SOURCES, seed=123, **options)
    other = translate([model], SOURCES, seed=456, **options)
    assert_same_hypotheses(first, again, tolerance=0.0)
    tokens = lambda results: [[h.tokens.tolist() for h in hs] for hs in results]  # noqa: E731
    assert tokens(first) != tokens(other)
    samples = [h.tokens.tolist() for hs in first for h in hs]
    assert len({tuple(sample) for sample in samples}) > len(SOURCES)


@pytest.mark.parametrize("restriction", [{"sampling_topk": 1}, {"sampling_topp": 1e-6}])
def test_sampling_restricted_to_the_top_token_is_greedy_decoding(restriction: dict) -> None:
    model = ToyTranslationModel(seed=12, sharpness=1.0).eval()
    greedy = translate([model], SOURCES, beam=1)
    sampled = translate([model], SOURCES, sampling=True, beam=3, nbest=3, seed=0, **restriction)
    for greedy_hyps, samples in zip(greedy, sampled, strict=True):
        for sample in samples:
            assert sample.tokens.tolist() == greedy_hyps[0].tokens.tolist()
            assert sample.score == pytest.approx(greedy_hyps[0].score, abs=1e-5)


def test_sampling_topk_draws_only_among_the_k_most_likely_tokens() -> None:
    model = ToyTranslationModel(seed=13, sharpness=0.5).eval()
    (sample,) = translate([model], [SOURCES[0]], sampling=True, beam=1, sampling_topk=2, seed=1)[0]
    src_tokens, src_lengths = left_padded([SOURCES[0]])
    prev = torch.cat([torch.tensor([EOS]), sample.tokens[:-1]]).unsqueeze(0)
    logits = model(src_tokens, src_lengths, prev)[0]
    logits[:, [PAD, BOS]] = -math.inf
    among_top2 = (logits.topk(2, dim=1).indices == sample.tokens.unsqueeze(1)).any(dim=1)
    # The eos forced at the maximum length (10 tokens) is exempt.
    checked = among_top2 if len(sample.tokens) <= 10 else among_top2[:-1]
    assert checked.all() and len(checked) > 3


def test_min_len_forbids_early_end_of_sentence() -> None:
    model = ToyTranslationModel(seed=14, token_bias={EOS: 3.0}).eval()
    short = translate([model], SOURCES, beam=3, nbest=3)
    assert min(len(h.tokens) - 1 for hs in short for h in hs) < 4
    for sampling in (False, True):
        results = translate([model], SOURCES, beam=3, nbest=3, min_len=4, sampling=sampling)
        for hypotheses in results:
            assert hypotheses
            assert all(len(h.tokens) - 1 >= 4 for h in hypotheses)


def test_max_length_is_respected_per_sentence_and_by_model_positions() -> None:
    model = ToyTranslationModel(seed=15, token_bias={EOS: -20.0}).eval()
    results = translate([model], SOURCES, beam=2, nbest=2, max_len_a=1.0, max_len_b=1)
    for source, hypotheses in zip(SOURCES, results, strict=True):
        for hypothesis in hypotheses:
            # Without a likely eos every hypothesis runs to the limit, then ends with eos.
            assert len(hypothesis.tokens) - 1 == len(source) + 1
            assert hypothesis.tokens[-1] == EOS
    capped = ToyTranslationModel(seed=15, token_bias={EOS: -20.0}, max_positions=4).eval()
    for sampling in (False, True):
        for hypotheses in translate([capped], SOURCES, beam=2, max_len_b=50, sampling=sampling):
            assert len(hypotheses[0].tokens) - 1 == 3


def test_finished_sentences_leave_the_batch() -> None:
    model = ToyTranslationModel(seed=16, token_bias={EOS: -20.0}).eval()
    sources = make_sources([2, 9])
    translate([model], sources, beam=3, max_len_a=1.0, max_len_b=0)
    # The short sentence stops after step 2: from then on only the long one's 3 beams run.
    assert model.decoded_rows == [6, 6, 6] + [3] * 7


def test_prefix_tokens_are_forced() -> None:
    model = ToyTranslationModel(seed=17).eval()
    prefix = torch.full((len(SOURCES), 3), PAD, dtype=torch.long)
    prefix[:, :2] = torch.tensor([7, 8])
    prefix[0, 2] = 9
    prefix[1] = PAD  # nothing forced for this sentence
    prefix[2, 1] = EOS  # a forced end: the hypothesis is just [7, eos]
    free = translate([model], SOURCES, beam=4, nbest=4)
    for sampling in (False, True):
        results = translate(
            [model],
            SOURCES,
            beam=4,
            nbest=4,
            prefix_tokens=prefix,
            prefix_size=3,
            sampling=sampling,
        )
        for row, hypotheses in enumerate(results):
            assert hypotheses
            forced = [token for token in prefix[row].tolist() if token != PAD]
            for hypothesis in hypotheses:
                assert hypothesis.tokens[: len(forced)].tolist() == forced
            if row == 2:
                assert [h.tokens.tolist() for h in hypotheses] == [[7, EOS]] * (
                    4 if sampling else 1
                )
            if row == 1 and not sampling:
                assert_same_hypotheses([hypotheses], [free[1]])


def test_prefix_size_without_prefix_tokens_is_a_config_error() -> None:
    model = ToyTranslationModel().eval()
    with pytest.raises(ConfigError, match="prefix_size=2"):
        translate([model], SOURCES, prefix_size=2)


def test_invalid_search_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nbest=3"):
        generator_for([ToyTranslationModel()], beam=2, nbest=3)


def test_unkpen_reduces_unknown_tokens() -> None:
    model = ToyTranslationModel(seed=18, token_bias={UNK: 2.5}).eval()
    count_unk = lambda results: sum(  # noqa: E731
        h.tokens.tolist().count(UNK) for hs in results for h in hs
    )
    plain = translate([model], SOURCES, beam=3, nbest=3)
    penalized = translate([model], SOURCES, beam=3, nbest=3, unkpen=3.0)
    assert count_unk(penalized) < count_unk(plain)
    assert count_unk(translate([model], SOURCES, beam=3, nbest=3, unkpen=100.0)) == 0


def test_pad_and_bos_are_never_generated() -> None:
    model = ToyTranslationModel(seed=19, token_bias={PAD: 6.0, BOS: 6.0}).eval()
    for sampling in (False, True):
        for hypotheses in translate([model], SOURCES, beam=3, nbest=3, sampling=sampling):
            for hypothesis in hypotheses:
                assert not {PAD, BOS} & set(hypothesis.tokens.tolist())


def test_temperature_flattens_beam_search_scores() -> None:
    model = ToyTranslationModel(seed=20).eval()
    source = [SOURCES[0]]
    (plain,) = translate([model], source, beam=1)[0]
    (hot,) = translate([model], source, beam=1, temperature=2.0)[0]
    src_tokens, src_lengths = left_padded(source)
    prev = torch.cat([torch.tensor([EOS]), hot.tokens[:-1]]).unsqueeze(0)
    logits = model(src_tokens, src_lengths, prev)[0] / 2.0
    expected = torch.log_softmax(logits, -1).gather(1, hot.tokens.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(hot.positional_scores, expected, atol=1e-5, rtol=0)
    # Greedy choices do not change with temperature, but the flatter distribution scores lower.
    assert hot.tokens.tolist() == plain.tokens.tolist()
    assert hot.score < plain.score


# The same properties on nmtkit's transformer (tiny, random weights).

TRANSFORMER_VOCAB = 20


def tiny_transformer(seed: int, **changes: Any) -> nn.Module:
    from nmtkit.models.transformer import TransformerModel, transformer_tiny

    config = dataclasses.replace(transformer_tiny(), dropout=0.0, **changes)
    torch.manual_seed(seed)
    return TransformerModel(config, TRANSFORMER_VOCAB, TRANSFORMER_VOCAB, padding_idx=PAD).eval()


def transformer_generator(models: list[nn.Module], **options: Any) -> SequenceGenerator:
    options.setdefault("max_len_b", 8)
    config = SearchConfig(**options)
    return SequenceGenerator(
        models, config, pad=PAD, eos=EOS, unk=UNK, bos=BOS, vocab_size=TRANSFORMER_VOCAB
    )


TRANSFORMER_SOURCES = [
    [random.Random(n).randrange(4, TRANSFORMER_VOCAB) for _ in range(n)] + [EOS]
    for n in (4, 1, 6, 3, 5)
]


def transformer_translate(models: list[nn.Module], sources: list[list[int]], **options: Any):
    src_tokens, src_lengths = left_padded(sources)
    return transformer_generator(models, **options).generate(
        {"src_tokens": src_tokens, "src_lengths": src_lengths}
    )


@pytest.mark.parametrize("normalize_before", [False, True], ids=["post_norm", "pre_norm"])
def test_transformer_cache_matches_recomputing_and_batching(normalize_before: bool) -> None:
    model = tiny_transformer(
        30, encoder_normalize_before=normalize_before, decoder_normalize_before=normalize_before
    )
    options = {"beam": 4, "nbest": 4, "max_len_a": 1.0, "max_len_b": 2}
    cached = transformer_translate([model], TRANSFORMER_SOURCES, **options)
    recomputed = transformer_translate([RecomputingModel(model)], TRANSFORMER_SOURCES, **options)
    assert_same_hypotheses(cached, recomputed)
    alone = [
        transformer_translate([model], [source], **options)[0] for source in TRANSFORMER_SOURCES
    ]
    assert_same_hypotheses(alone, cached)
    for source, hypotheses in zip(TRANSFORMER_SOURCES, cached, strict=True):
        assert all(len(h.tokens) - 1 <= len(source) + 2 for h in hypotheses)


@pytest.mark.parametrize("beam", [1, 3])
def test_transformer_beam_search_matches_a_one_sentence_reference(beam: int) -> None:
    model = tiny_transformer(31)
    results = transformer_translate([model], TRANSFORMER_SOURCES, beam=beam, nbest=beam)
    for source, hypotheses in zip(TRANSFORMER_SOURCES, results, strict=True):
        expected = reference_beam_search(
            model, source, beam=beam, max_len=8, lenpen=1.0, vocab_size=TRANSFORMER_VOCAB
        )
        assert [h.tokens.tolist() for h in hypotheses] == [tokens for tokens, _ in expected]
        scores = [h.score for h in hypotheses]
        assert scores == pytest.approx([score for _, score in expected], abs=1e-5)


def test_transformer_ensemble_of_one_model_twice_equals_the_model() -> None:
    model = tiny_transformer(32)
    alone = transformer_translate([model], TRANSFORMER_SOURCES, beam=3, nbest=2)
    twice = transformer_translate([model, model], TRANSFORMER_SOURCES, beam=3, nbest=2)
    assert_same_hypotheses(alone, twice)


def test_beams_sharing_one_encoder_output_equal_beams_with_copies() -> None:
    """decodes_grouped_rows (one encoder output and cross-attention cache per sentence) is a
    speed-up only: same hypotheses and scores as repeating the encoder output per beam, alone
    and in an ensemble that mixes both kinds of model."""
    import copy

    model = tiny_transformer(33)
    assert model.decodes_grouped_rows
    repeated = copy.deepcopy(model)
    repeated.decodes_grouped_rows = False
    options = {"beam": 4, "nbest": 3, "max_len_a": 1.0, "max_len_b": 3}
    grouped_result = transformer_translate([model], TRANSFORMER_SOURCES, **options)
    repeated_result = transformer_translate([repeated], TRANSFORMER_SOURCES, **options)
    assert_same_hypotheses(grouped_result, repeated_result, tolerance=1e-5)
    mixed = transformer_translate([model, repeated], TRANSFORMER_SOURCES, **options)
    assert_same_hypotheses(grouped_result, mixed, tolerance=1e-5)


# Joint CTC/attention decoding on a tiny speech Transformer with a CTC head (random weights).

FEATURES = 6
SPEECH_FRAMES = [30, 12, 21, 17]
"""Input frames of the test utterances: 8, 3, 6 and 5 encoder frames after subsampling."""
FIXTURE_CHECKPOINT = (
    Path(__file__).resolve().parent.parent / "fixtures" / "checkpoints" / "format1_tiny.pt"
)
"""A committed text Transformer checkpoint: a model without a CTC head."""


def tiny_speech_model(seed: int, ctc_head: str = "target") -> nn.Module:
    from nmtkit.models.s2t_transformer import S2TTransformerModel, s2t_transformer_tiny

    config = dataclasses.replace(
        s2t_transformer_tiny(), input_feat_per_channel=FEATURES, conv_channels=8, ctc_head=ctc_head
    )
    torch.manual_seed(seed)
    ctc_vocab = None if ctc_head == "none" else VOCAB
    return S2TTransformerModel(config, VOCAB, padding_idx=PAD, ctc_vocab_size=ctc_vocab).eval()


def speech_input(frames: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.zeros(len(frames), max(frames), FEATURES)
    for row, count in enumerate(frames):
        features[row, :count] = torch.randn(count, FEATURES, generator=generator)
    return {"src_tokens": features, "src_lengths": torch.tensor(frames)}


def speech_translate(models: list[nn.Module], frames: list[int], **options: Any) -> list:
    options.setdefault("max_len_b", 6)
    return generator_for(models, **options).generate(speech_input(frames))


def test_ctc_weight_zero_is_attention_only_beam_search_exactly() -> None:
    """ctc_weight=0 never touches the CTC head: the same hypotheses, bit for bit, as the same
    weights without a CTC head."""
    with_head = tiny_speech_model(40)
    without_head = tiny_speech_model(40, ctc_head="none")
    state = {k: v for k, v in with_head.state_dict().items() if not k.startswith("ctc_")}
    without_head.load_state_dict(state)

    def no_ctc(encoder_out: Any) -> Any:
        raise AssertionError("the CTC head was used at ctc_weight=0")

    with_head.ctc_log_probs = no_ctc  # type: ignore[method-assign]
    options = {"beam": 3, "nbest": 3, "ctc_weight": 0.0}
    assert_same_hypotheses(
        speech_translate([with_head], SPEECH_FRAMES, **options),
        speech_translate([without_head], SPEECH_FRAMES, **options),
        tolerance=0.0,
    )


@pytest.mark.parametrize("ctc_weight", [0.4, 1.0])
def test_joint_scores_interpolate_attention_and_ctc_log_probabilities(ctc_weight: float) -> None:
    """Each positional score is (1 - w) * the attention log-probability of the token + w *
    the increase of the CTC prefix log-probability, which sums to the CTC log-probability
    of the whole hypothesis (all its alignments) at eos."""
    from nmtkit.generation.ctc_prefix_score import labelling_prefix_log_probs
    from nmtkit.generation.translate import forced_log_probs

    model = tiny_speech_model(41)
    results = speech_translate([model], SPEECH_FRAMES, beam=3, nbest=3, ctc_weight=ctc_weight)
    changed = speech_translate([model], SPEECH_FRAMES, beam=3, nbest=3)
    assert [[h.tokens.tolist() for h in hs] for hs in results] != [
        [h.tokens.tolist() for h in hs] for hs in changed
    ]
    for row, hypotheses in enumerate(results):
        net_input = speech_input(SPEECH_FRAMES)
        one = {key: value[row : row + 1] for key, value in net_input.items()}
        one["src_tokens"] = one["src_tokens"][:, : SPEECH_FRAMES[row]]
        ctc_log_probs, ctc_lengths = model.ctc_log_probs(model.encode(**one))
        assert hypotheses
        for hypothesis in hypotheses:
            tokens = hypothesis.tokens
            assert len(tokens) - 1 <= int(ctc_lengths[0])  # capped by the encoder frames
            attention = forced_log_probs([model], one, tokens.unsqueeze(0), eos=EOS, pad=PAD)[0]
            prefixes, whole = labelling_prefix_log_probs(
                ctc_log_probs,
                ctc_lengths,
                tokens[:-1].unsqueeze(0),
                torch.tensor([len(tokens) - 1]),
            )
            cumulative = torch.cat([torch.zeros(1), prefixes[0], whole])
            ctc = cumulative[1:] - cumulative[:-1]
            expected = (1 - ctc_weight) * attention + ctc_weight * ctc
            torch.testing.assert_close(hypothesis.positional_scores, expected, atol=1e-4, rtol=0)
            total = (1 - ctc_weight) * attention.sum() + ctc_weight * whole[0]
            assert hypothesis.score == pytest.approx(float(total) / len(tokens), abs=1e-4)


def test_joint_decoding_batched_equals_one_at_a_time() -> None:
    model = tiny_speech_model(42)
    options = {"beam": 4, "nbest": 3, "ctc_weight": 0.3}
    batched = speech_translate([model], SPEECH_FRAMES, **options)
    alone = []
    for row, frames in enumerate(SPEECH_FRAMES):
        net_input = speech_input(SPEECH_FRAMES)
        one = {"src_tokens": net_input["src_tokens"][row : row + 1, :frames],
               "src_lengths": net_input["src_lengths"][row : row + 1]}  # fmt: skip
        alone.append(generator_for([model], max_len_b=6, **options).generate(one)[0])
    assert_same_hypotheses(batched, alone)


def test_joint_decoding_ensemble_of_one_model_twice_equals_the_model() -> None:
    model = tiny_speech_model(43)
    options = {"beam": 3, "nbest": 2, "ctc_weight": 0.5}
    assert_same_hypotheses(
        speech_translate([model], SPEECH_FRAMES, **options),
        speech_translate([model, model], SPEECH_FRAMES, **options),
        tolerance=1e-5,
    )


def test_joint_hypotheses_are_capped_by_the_encoder_frames() -> None:
    """max_len_b allows 40 tokens; CTC can align at most one token per encoder frame."""
    model = tiny_speech_model(44)
    frames = [12, 9]  # 3 and 3 encoder frames
    for hypotheses in speech_translate([model], frames, beam=3, nbest=3, ctc_weight=0.2,
                                       min_len=0, max_len_b=40):  # fmt: skip
        assert hypotheses and all(len(h.tokens) - 1 <= 3 for h in hypotheses)


@pytest.mark.parametrize(
    ("ctc_head", "message"),
    [("none", "the model has no CTC head"), ("source", "predicts the source side")],
)
def test_ctc_weight_needs_a_ctc_head_on_the_target(ctc_head: str, message: str) -> None:
    model = tiny_speech_model(45, ctc_head=ctc_head)
    with pytest.raises(ConfigError, match=f"ctc_weight=0.3: .*{message}"):
        speech_translate([model], SPEECH_FRAMES, ctc_weight=0.3)


def test_ctc_weight_without_ctc_head_names_the_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import nmtkit
    from nmtkit_cli.generate import cli_main as generate_cli

    translator = nmtkit.load(FIXTURE_CHECKPOINT, device="cpu")
    with pytest.raises(ConfigError) as error:
        translator.translate(["Hallo"], ctc_weight=0.3)
    assert str(error.value).startswith(
        f"ctc_weight=0.3: checkpoint {FIXTURE_CHECKPOINT} has no CTC head;"
    )
    assert "\n" not in str(error.value)
    source = tmp_path / "in.txt"
    source.write_text("Hallo\n")
    with pytest.raises(SystemExit) as exit_:
        generate_cli([f"checkpoint={FIXTURE_CHECKPOINT}", f"input={source}", "ctc_weight=0.3",
                      f"output={tmp_path / 'out.txt'}"])  # fmt: skip
    assert exit_.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"checkpoint {FIXTURE_CHECKPOINT} has no CTC head" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ctc_weight": 1.5}, r"ctc_weight=1.5: must be in \[0, 1\]"),
        ({"ctc_weight": -0.1}, r"ctc_weight=-0.1: must be in \[0, 1\]"),
        ({"ctc_weight": 0.3, "sampling": True}, "ctc_weight=0.3: joint CTC/attention decoding"),
    ],
)
def test_invalid_ctc_weight_is_a_config_error(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generator_for([tiny_speech_model(46)], **options)


def test_validation_refuses_generation_ctc_weight_without_a_ctc_head() -> None:
    """Validation decodes with the `generation` group, ctc_weight included; the message names
    the training key."""
    from types import SimpleNamespace

    from nmtkit.generation.config import ValidationGenerationConfig
    from nmtkit.validation import decoded_metrics

    cfg = SimpleNamespace(
        generation=ValidationGenerationConfig(ctc_weight=0.3, eval_wer=True),
        common=SimpleNamespace(precision="fp32"),
    )
    context = SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(
        ConfigError, match=r"^generation\.ctc_weight=0\.3: the model being trained has no CTC head"
    ):
        decoded_metrics(cfg, None, tiny_speech_model(47, "none"), [], ["wer"], context, None)  # type: ignore[arg-type]


class ToyTargetTask:
    """What translate_batches reads from a task, for token ids 0..VOCAB-1 shown as numbers."""

    def __init__(self) -> None:
        from nmtkit.data.dictionary import Dictionary

        self.target_dictionary = Dictionary()  # <s> <pad> </s> <unk>: BOS, PAD, EOS, UNK
        for number in range(len(self.target_dictionary), VOCAB):
            self.target_dictionary.add_symbol(str(number))

    def postprocess(self, token_ids: list[int]) -> str:
        return " ".join(map(str, token_ids))

    target_pieces = postprocess

    def describe_source(self, sample: dict, row: int) -> tuple[str, str]:
        return str(row), ""


def translate_speech(models: list[nn.Module], **options: Any) -> list[list[int]]:
    from nmtkit.generation.translate import translate_batches

    sample = {"id": torch.arange(len(SPEECH_FRAMES)), "net_input": speech_input(SPEECH_FRAMES)}
    results = translate_batches(
        ToyTargetTask(), models, SearchConfig(**options), [sample], device=torch.device("cpu")
    )
    return [result.hypotheses[0].tokens.tolist() for result in results]


@pytest.mark.parametrize("beam", [1, 3])
def test_ctc_weight_one_decodes_with_the_ctc_head_alone(beam: int) -> None:
    """ctc_weight=1 (ESPnet's pure CTC decoding): the attention decoder never runs; beam 1 is
    the CTC best path, beam > 1 CTC prefix beam search, as for an encoder-only model."""
    from nmtkit.generation.translate import ctc_beam_decode, ctc_greedy_decode

    model = tiny_speech_model(48)
    net_input = speech_input(SPEECH_FRAMES)
    with torch.no_grad():
        if beam == 1:
            expected = ctc_greedy_decode([model], net_input, eos=EOS)
        else:
            expected = ctc_beam_decode([model], net_input, eos=EOS, beam=beam, nbest=1)

    def no_attention(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the attention decoder ran at ctc_weight=1")

    model.decode = no_attention  # type: ignore[method-assign]
    found = translate_speech([model], beam=beam, ctc_weight=1.0)
    assert found == [hypotheses[0].tokens.tolist() for hypotheses in expected]
    # Just below 1 the attention decoder still takes part (and is called).
    with pytest.raises(AssertionError, match="attention decoder ran"):
        translate_speech([model], beam=beam, ctc_weight=0.99)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prefix_size": 1}, "prefix_size=1: ctc_weight=1 decodes with the CTC head alone"),
        ({"no_repeat_ngram_size": 2}, "no_repeat_ngram_size=2: ctc_weight=1 decodes"),
    ],
)
def test_ctc_weight_one_refuses_settings_it_cannot_honour(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        translate_speech([tiny_speech_model(49)], ctc_weight=1.0, **options)


def test_ctc_weight_one_without_a_ctc_head_names_the_checkpoint() -> None:
    with pytest.raises(ConfigError, match="ctc_weight=1.0: checkpoint 1 has no CTC head"):
        translate_speech([tiny_speech_model(50, ctc_head="none")], ctc_weight=1.0)
