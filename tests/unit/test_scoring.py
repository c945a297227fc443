"""score_corpus agrees with sacrebleu's own corpus functions and computes WER/CER with jiwer."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from nmtkit.errors import ConfigError, DataError
from nmtkit.scoring import (
    KNOWN_METRICS,
    MetricResult,
    normalise_transcript,
    score_corpus,
    score_with_normalised_variants,
)

HYPOTHESES = [
    "The cat sat on the mat.",
    "Hello world, how are you?",
    "It's a beautiful day in Berlin",
]
REFERENCE = [
    "The cat is sitting on the mat.",
    "hello world, how are you doing?",
    "It is a beautiful day in Berlin.",
]
SECOND_REFERENCE = [
    "A cat sat on the mat.",
    "Hello world, how are you?",
    "It's a lovely day in Berlin",
]


def test_bleu_matches_sacrebleu_corpus_bleu() -> None:
    result = score_corpus(HYPOTHESES, [REFERENCE], ["bleu"])["bleu"]
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCE])
    assert result.name == "bleu"
    assert result.score == pytest.approx(expected.score, abs=1e-9)
    assert 0 < result.score < 100
    assert result.details["precisions"] == pytest.approx(expected.precisions)
    assert result.details["brevity_penalty"] == pytest.approx(expected.bp)
    assert (result.details["sys_len"], result.details["ref_len"]) == (
        expected.sys_len,
        expected.ref_len,
    )
    assert result.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert result.format_line().startswith(f"BLEU = {expected.score:.2f} ")


def test_bleu_options_match_sacrebleu() -> None:
    result = score_corpus(HYPOTHESES, [REFERENCE], ["bleu"], lowercase=True, tokenize="intl")
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCE], lowercase=True, tokenize="intl")
    assert result["bleu"].score == pytest.approx(expected.score, abs=1e-9)
    assert "case:lc" in result["bleu"].signature and "tok:intl" in result["bleu"].signature
    mixed_case = score_corpus(HYPOTHESES, [REFERENCE], ["bleu"], tokenize="intl")["bleu"]
    assert mixed_case.score < result["bleu"].score


def test_chrf_matches_sacrebleu_corpus_chrf() -> None:
    result = score_corpus(HYPOTHESES, [REFERENCE], ["chrf"])["chrf"]
    expected = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCE])
    assert result.score == pytest.approx(expected.score, abs=1e-9)
    assert result.details == {"char_order": 6, "word_order": 0, "beta": 2}
    assert "nc:6|nw:0" in result.signature


def test_ter_matches_sacrebleu_corpus_ter_and_is_case_insensitive_by_default() -> None:
    result = score_corpus(HYPOTHESES, [REFERENCE], ["ter"])["ter"]
    expected = sacrebleu.corpus_ter(HYPOTHESES, [REFERENCE])
    assert result.score == pytest.approx(expected.score, abs=1e-9)
    assert "case:lc" in result.signature
    sensitive = score_corpus(HYPOTHESES, [REFERENCE], ["ter"], ter_case_sensitive=True)["ter"]
    expected_sensitive = sacrebleu.corpus_ter(HYPOTHESES, [REFERENCE], case_sensitive=True)
    assert sensitive.score == pytest.approx(expected_sensitive.score, abs=1e-9)
    # "Hello" vs "hello" is one more edit when case counts.
    assert sensitive.score > result.score


def test_multiple_references_match_sacrebleu() -> None:
    references = [REFERENCE, SECOND_REFERENCE]
    results = score_corpus(HYPOTHESES, references, ["bleu", "chrf", "ter"])
    assert results["bleu"].score == pytest.approx(
        sacrebleu.corpus_bleu(HYPOTHESES, references).score, abs=1e-9
    )
    assert results["chrf"].score == pytest.approx(
        sacrebleu.corpus_chrf(HYPOTHESES, references).score, abs=1e-9
    )
    assert results["ter"].score == pytest.approx(
        sacrebleu.corpus_ter(HYPOTHESES, references).score, abs=1e-9
    )
    assert results["bleu"].signature.startswith("nrefs:2|")
    single = score_corpus(HYPOTHESES, [REFERENCE], ["bleu"])["bleu"]
    assert results["bleu"].score > single.score


def test_wer_one_substitution_in_four_words_is_25_percent() -> None:
    result = score_corpus(["the cat sat down"], [["the dog sat down"]], ["wer"])["wer"]
    assert result.score == pytest.approx(25.0)
    assert result.details == {
        "substitutions": 1,
        "deletions": 0,
        "insertions": 0,
        "hits": 3,
        "reference_words": 4,
        "hypothesis_words": 4,
    }
    assert result.signature.startswith("nrefs:1|case:mixed|punct:kept|tok:whitespace|jiwer:")
    assert result.format_line().startswith("WER = 25.00 (S = 1 D = 0 I = 0 H = 3")


def test_wer_is_corpus_level_and_can_exceed_100() -> None:
    # 1 deletion over 4 reference words in the first segment, 2 insertions over 1 in the second.
    result = score_corpus(["a b c", "x y z"], [["a b c d", "x"]], ["wer"])["wer"]
    assert result.score == pytest.approx(100.0 * 3 / 5)
    inserted = score_corpus(["x y z"], [["x"]], ["wer"])["wer"]
    assert inserted.score == pytest.approx(200.0)


@pytest.mark.parametrize(
    ("lowercase", "remove_punctuation", "expected", "signature_part"),
    [
        (False, False, 50.0, "case:mixed|punct:kept"),
        (True, False, 50.0, "case:lc|punct:kept"),
        (False, True, 50.0, "case:mixed|punct:removed"),
        (True, True, 0.0, "case:lc|punct:removed"),
    ],
)
def test_wer_normalisation_options(
    lowercase: bool, remove_punctuation: bool, expected: float, signature_part: str
) -> None:
    result = score_corpus(
        ["hello world"],
        [["Hello, world"]],
        ["wer"],
        wer_lowercase=lowercase,
        wer_remove_punctuation=remove_punctuation,
    )["wer"]
    assert result.score == pytest.approx(expected)
    assert signature_part in result.signature


def test_wer_punctuation_removal_applies_to_both_sides() -> None:
    result = score_corpus(["dont stop !"], [["don't stop"]], ["wer"], wer_remove_punctuation=True)[
        "wer"
    ]
    assert result.score == pytest.approx(0.0)


def test_wer_uses_the_first_reference_only() -> None:
    results = score_corpus(["a b"], [["a c"], ["a b"]], ["wer", "bleu"])
    assert results["wer"].score == pytest.approx(50.0)
    assert results["wer"].signature.startswith("nrefs:1|")
    assert results["bleu"].signature.startswith("nrefs:2|")


def test_wer_splits_on_any_whitespace() -> None:
    result = score_corpus(["a\tb  c"], [["a b c"]], ["wer"])["wer"]
    assert result.score == pytest.approx(0.0)
    assert result.details["hypothesis_words"] == 3


def test_cer_matches_a_hand_computed_alignment() -> None:
    # kitten -> sitting: k/s and e/i substituted, g inserted, i t t n hit (4 hits).
    # ab -> ab: 2 hits. Corpus CER = (2 + 0 + 1) / (6 + 2) reference characters.
    result = score_corpus(["sitting", "ab"], [["kitten", "ab"]], ["cer"])["cer"]
    assert result.name == "cer"
    assert result.score == pytest.approx(100.0 * 3 / 8)
    assert result.details == {
        "substitutions": 2,
        "deletions": 0,
        "insertions": 1,
        "hits": 6,
        "reference_chars": 8,
        "hypothesis_chars": 9,
    }
    assert result.signature.startswith("nrefs:1|case:mixed|punct:kept|tok:char|space:yes|jiwer:")
    assert result.format_line().startswith("CER = 37.50 (S = 2 D = 0 I = 1 H = 6 ref_chars = 8)")


def test_cer_counts_spaces_between_words_but_squeezes_runs() -> None:
    # "the cat" is 7 characters; a missing space is one deletion.
    joined = score_corpus(["thecat"], [["the cat"]], ["cer"])["cer"]
    assert joined.score == pytest.approx(100.0 / 7)
    assert joined.details["deletions"] == 1
    spaced = score_corpus([" the \t  cat "], [["the cat"]], ["cer"])["cer"]
    assert spaced.score == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("lowercase", "remove_punctuation", "edits", "reference_chars", "signature_part"),
    [
        # "hello world" against "Hello, world": H/h substituted, "," deleted.
        (False, False, 2, 12, "case:mixed|punct:kept"),
        (True, False, 1, 12, "case:lc|punct:kept"),
        (False, True, 1, 11, "case:mixed|punct:removed"),
        (True, True, 0, 11, "case:lc|punct:removed"),
    ],
)
def test_cer_normalisation_options(
    lowercase: bool,
    remove_punctuation: bool,
    edits: int,
    reference_chars: int,
    signature_part: str,
) -> None:
    result = score_corpus(
        ["hello world"],
        [["Hello, world"]],
        ["cer"],
        wer_lowercase=lowercase,
        wer_remove_punctuation=remove_punctuation,
    )["cer"]
    assert result.score == pytest.approx(100.0 * edits / reference_chars)
    assert result.details["reference_chars"] == reference_chars
    assert signature_part in result.signature


def test_normalise_transcript() -> None:
    assert normalise_transcript("  Don't\tSTOP -- now!  ") == "dont stop now"
    # Unicode punctuation (category P*) goes too; letters with accents stay.
    assert normalise_transcript("\u201cÇa va ?\u201d \u2014 ¿Qué…") == "ça va qué"
    assert normalise_transcript("...") == ""


def test_normalise_transcript_is_the_normalised_wer_normalisation() -> None:
    hypotheses = ["Hello,  World!", "it's  fine"]
    references = ["hello world", "It is fine."]
    result = score_corpus(
        hypotheses, [references], ["wer"], wer_lowercase=True, wer_remove_punctuation=True
    )["wer"]
    normalised = score_corpus(
        [normalise_transcript(h) for h in hypotheses],
        [[normalise_transcript(r) for r in references]],
        ["wer"],
    )["wer"]
    assert result.score == pytest.approx(normalised.score)
    assert result.details == normalised.details
    assert result.details["reference_words"] == sum(
        len(normalise_transcript(r).split()) for r in references
    )


def test_score_corpus_returns_exactly_the_requested_transcript_metrics() -> None:
    results = score_corpus(
        HYPOTHESES,
        [REFERENCE],
        ["wer", "cer"],
        wer_lowercase=True,
        wer_remove_punctuation=True,
    )
    assert list(results) == ["wer", "cer"]
    assert all("case:lc|punct:removed" in result.signature for result in results.values())


def test_normalised_variants_follow_their_raw_scores() -> None:
    results = score_with_normalised_variants(HYPOTHESES, [REFERENCE], ["bleu", "wer", "cer"])
    assert list(results) == ["bleu", "wer", "wer_normalised", "cer", "cer_normalised"]
    raw = score_corpus(HYPOTHESES, [REFERENCE], ["bleu", "wer", "cer"])
    normalised = score_corpus(
        HYPOTHESES, [REFERENCE], ["wer", "cer"], wer_lowercase=True, wer_remove_punctuation=True
    )
    for name in ("bleu", "wer", "cer"):
        assert results[name] == raw[name]
    for name in ("wer", "cer"):
        variant = results[f"{name}_normalised"]
        assert variant.name == f"{name}_normalised"
        assert variant.score == pytest.approx(normalised[name].score)
        assert variant.details == normalised[name].details
        assert variant.signature == normalised[name].signature
        assert "case:lc|punct:removed" in variant.signature
        assert variant.summary.startswith(
            f"{name.upper()} normalised (lower-cased, punctuation removed) = "
        )
        # Case and punctuation differ between HYPOTHESES and REFERENCE, so normalising helps.
        assert variant.score < results[name].score


def test_no_normalised_variant_when_raw_is_already_normalised() -> None:
    results = score_with_normalised_variants(
        HYPOTHESES,
        [REFERENCE],
        ["wer", "cer"],
        wer_lowercase=True,
        wer_remove_punctuation=True,
    )
    assert list(results) == ["wer", "cer"]
    # Half-normalised raw scores still get the fully normalised variant beside them.
    partly = score_with_normalised_variants(HYPOTHESES, [REFERENCE], ["wer"], wer_lowercase=True)
    assert list(partly) == ["wer", "wer_normalised"]
    assert "case:lc|punct:kept" in partly["wer"].signature


def test_normalised_variants_leave_other_metrics_alone() -> None:
    results = score_with_normalised_variants(HYPOTHESES, [REFERENCE], ["chrf", "ter"])
    assert results == score_corpus(HYPOTHESES, [REFERENCE], ["chrf", "ter"])


def test_results_follow_request_order_without_duplicates() -> None:
    results = score_corpus(HYPOTHESES, [REFERENCE], ["WER", "bleu", "wer", "chrf"])
    assert list(results) == ["wer", "bleu", "chrf"]
    assert all(isinstance(result, MetricResult) for result in results.values())
    round_trip = json.loads(json.dumps({k: v.to_dict() for k, v in results.items()}))
    assert round_trip["bleu"]["score"] == pytest.approx(results["bleu"].score)
    assert set(round_trip["wer"]) == {"name", "score", "signature", "details"}


def test_unknown_metric_is_a_config_error_listing_known_ones() -> None:
    with pytest.raises(ConfigError, match="meteor") as error:
        score_corpus(HYPOTHESES, [REFERENCE], ["bleu", "meteor"])
    for name in KNOWN_METRICS:
        assert name in str(error.value)


def test_no_metrics_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="empty"):
        score_corpus(HYPOTHESES, [REFERENCE], [])


def test_unknown_tokenizer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tokenize=moses.*13a"):
        score_corpus(HYPOTHESES, [REFERENCE], ["bleu"], tokenize="moses")


def test_reference_stream_of_other_length_is_a_data_error() -> None:
    # sacrebleu itself silently scores the shorter prefix; we refuse.
    with pytest.raises(DataError, match="reference stream 2 has 2 segments but there are 3"):
        score_corpus(HYPOTHESES, [REFERENCE, SECOND_REFERENCE[:2]], ["bleu"])


def test_empty_hypotheses_are_a_data_error() -> None:
    with pytest.raises(DataError, match="no hypotheses"):
        score_corpus([], [[]], ["bleu"])


def test_flat_reference_list_is_rejected_with_a_hint() -> None:
    with pytest.raises(TypeError, match=r"\[references\]"):
        score_corpus(HYPOTHESES, REFERENCE, ["bleu"])  # type: ignore[arg-type]
