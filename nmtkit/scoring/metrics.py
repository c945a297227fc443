"""Corpus-level BLEU, chrF and TER through sacrebleu, and WER and CER through jiwer.

`score_corpus` is the one scoring path of the toolkit: `nmtkit-score` and validation during
training both call it, so the numbers they report agree. All scores are on a 0-100 scale
(WER, CER and TER in percent; they can exceed 100 when the hypothesis has many insertions).

`score_with_normalised_variants` adds, beside each WER and CER, the same rate on text that
`normalise_transcript` has lower-cased and stripped of punctuation: the number speech papers
usually quote, reported next to the raw one so neither is mistaken for the other.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

from nmtkit.errors import ConfigError, DataError

KNOWN_METRICS = ("bleu", "chrf", "ter", "wer", "cer")
BLEU_TOKENIZERS = tuple(sorted(BLEU.TOKENIZERS))
TRANSCRIPT_METRICS = ("wer", "cer")
"""The edit-distance metrics that also get a normalised variant in nmtkit-score."""
NORMALISED_SUFFIX = "_normalised"
"""Key suffix of a normalised variant: "wer_normalised" sits next to "wer"."""
NORMALISATION_NAME = "lower-cased, punctuation removed"
"""How the normalised variant's text was changed, as printed in its summary line."""


@dataclass(frozen=True)
class MetricResult:
    """One corpus-level score with what is needed to reproduce and compare it."""

    name: str
    """The metric's key in KNOWN_METRICS, e.g. "bleu"; "wer_normalised" for a variant."""
    score: float
    """The corpus score on a 0-100 scale (WER, CER and TER in percent)."""
    signature: str
    """sacrebleu's signature (nrefs, case, tokenizer, version...); for WER/CER the normalisation."""
    details: dict[str, Any] = field(default_factory=dict)
    """Statistics behind the score: BLEU precisions and brevity penalty, WER edit counts, ..."""
    summary: str = ""
    """A one-line human-readable form, e.g. sacrebleu's "BLEU = 34.21 65.1/40.2/... (BP = ...)"."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with name, score, signature and details."""
        return {
            "name": self.name,
            "score": self.score,
            "signature": self.signature,
            "details": dict(self.details),
        }

    def format_line(self) -> str:
        """`BLEU = 34.21 65.1/40.2/27.9/19.6 (BP = ...)  nrefs:1|case:mixed|...` for text output."""
        return f"{self.summary}  {self.signature}"


def normalize_metric_names(metrics: Sequence[str]) -> list[str]:
    """Lower-cases, removes duplicates (keeping order) and rejects unknown names."""
    if isinstance(metrics, str):
        metrics = [metrics]
    names: list[str] = []
    for metric in metrics:
        name = str(metric).strip().lower()
        if name not in KNOWN_METRICS:
            raise ConfigError(
                f"metrics: unknown metric '{metric}' (known: {', '.join(KNOWN_METRICS)})"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError(f"metrics: empty; choose from {', '.join(KNOWN_METRICS)}")
    return names


def _check_streams(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a list of strings, one per segment, not one string")
    if not references or isinstance(references[0], str):
        # A flat list of strings is the common slip: score_corpus(hyps, refs) instead of [refs].
        raise TypeError(
            "references must be a list of reference streams (list[list[str]]); "
            "wrap a single stream as [references]"
        )
    if not hypotheses:
        raise DataError("nothing to score: there are no hypotheses")
    for index, stream in enumerate(references, start=1):
        if len(stream) != len(hypotheses):
            raise DataError(
                f"reference stream {index} has {len(stream)} segments "
                f"but there are {len(hypotheses)} hypotheses"
            )


def _sacrebleu_result(
    metric: Metric,
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
) -> tuple[Any, str]:
    score = metric.corpus_score(list(hypotheses), [list(stream) for stream in references])
    return score, str(metric.get_signature())


def _bleu(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    lowercase: bool,
    tokenize: str | None,
) -> MetricResult:
    if tokenize is not None and tokenize not in BLEU_TOKENIZERS:
        raise ConfigError(
            f"tokenize={tokenize}: unknown BLEU tokenizer (known: {', '.join(BLEU_TOKENIZERS)})"
        )
    try:
        metric = BLEU(lowercase=lowercase, tokenize=tokenize)
    except RuntimeError as error:
        # sacrebleu's ja/ko tokenizers need optional packages and say which in the message.
        raise ConfigError(f"tokenize={tokenize}: {' '.join(str(error).split())}") from None
    score, signature = _sacrebleu_result(metric, hypotheses, references)
    return MetricResult(
        name="bleu",
        score=float(score.score),
        signature=signature,
        details={
            "precisions": [float(p) for p in score.precisions],
            "brevity_penalty": float(score.bp),
            "length_ratio": float(score.ratio),
            "sys_len": int(score.sys_len),
            "ref_len": int(score.ref_len),
            "counts": [int(c) for c in score.counts],
            "totals": [int(t) for t in score.totals],
        },
        summary=str(score),
    )


def _chrf(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], lowercase: bool
) -> MetricResult:
    metric = CHRF(lowercase=lowercase)
    score, signature = _sacrebleu_result(metric, hypotheses, references)
    return MetricResult(
        name="chrf",
        score=float(score.score),
        signature=signature,
        details={
            "char_order": int(score.char_order),
            "word_order": int(score.word_order),
            "beta": int(score.beta),
        },
        summary=str(score),
    )


def _ter(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], case_sensitive: bool
) -> MetricResult:
    metric = TER(case_sensitive=case_sensitive)
    score, signature = _sacrebleu_result(metric, hypotheses, references)
    return MetricResult(
        name="ter",
        score=float(score.score),
        signature=signature,
        details={
            "num_edits": float(score.num_edits),
            "average_ref_length": float(score.ref_length),
        },
        summary=str(score),
    )


@functools.lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    # jiwer's definition (every Unicode category P*), built once as a str.translate table:
    # one translate per line instead of jiwer's one str.replace per punctuation character.
    return {
        code: None
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)).startswith("P")
    }


def _normalise(text: str, *, lowercase: bool, remove_punctuation: bool) -> str:
    if lowercase:
        text = text.lower()
    if remove_punctuation:
        text = text.translate(_punctuation_table())
    # Any run of Unicode whitespace becomes one space, so "a\tb" and "a  b" are both "a b".
    return " ".join(text.split())


def normalise_transcript(text: str) -> str:
    """Lower-cases, deletes Unicode punctuation and squeezes whitespace: "Don't  stop!" -> "dont stop".

    The exact normalisation of "wer_normalised" and "cer_normalised" (and of score_corpus
    with wer_lowercase=True, wer_remove_punctuation=True), so word lists built with it (e.g.
    words seen in training) match the words those scores count.
    """
    return _normalise(text, lowercase=True, remove_punctuation=True)


def wer_signature(*, lowercase: bool, remove_punctuation: bool) -> str:
    """Describes WER's normalisation in sacrebleu's signature style."""
    case = "lc" if lowercase else "mixed"
    punctuation = "removed" if remove_punctuation else "kept"
    version = importlib.metadata.version("jiwer")
    return f"nrefs:1|case:{case}|punct:{punctuation}|tok:whitespace|jiwer:{version}"


def cer_signature(*, lowercase: bool, remove_punctuation: bool) -> str:
    """Describes CER's normalisation; `space:yes` says spaces between words count as characters."""
    case = "lc" if lowercase else "mixed"
    punctuation = "removed" if remove_punctuation else "kept"
    version = importlib.metadata.version("jiwer")
    return f"nrefs:1|case:{case}|punct:{punctuation}|tok:char|space:yes|jiwer:{version}"


def _edit_rate(
    kind: str,
    hypotheses: Sequence[str],
    reference: Sequence[str],
    *,
    lowercase: bool,
    remove_punctuation: bool,
    normalised_variant: bool = False,
) -> MetricResult:
    """WER (kind "wer") or CER ("cer") with its edit counts, named as a variant if asked.

    Both rates see the same normalised text, so CER's spaces are single spaces between words.
    """
    references = [
        _normalise(text, lowercase=lowercase, remove_punctuation=remove_punctuation)
        for text in reference
    ]
    hypotheses = [
        _normalise(text, lowercase=lowercase, remove_punctuation=remove_punctuation)
        for text in hypotheses
    ]
    import jiwer  # only when an edit rate is asked for: BLEU-only users never load it

    if kind == "wer":
        # The text is normalised already: what is left for jiwer is the split into units.
        words = jiwer.Compose([jiwer.ReduceToListOfListOfWords()])
        output: Any = jiwer.process_words(
            references, hypotheses, reference_transform=words, hypothesis_transform=words
        )
        rate, unit = output.wer, "words"
        signature = wer_signature(lowercase=lowercase, remove_punctuation=remove_punctuation)
    else:
        characters = jiwer.Compose([jiwer.ReduceToListOfListOfChars()])
        output = jiwer.process_characters(
            references,
            hypotheses,
            reference_transform=characters,
            hypothesis_transform=characters,
        )
        rate, unit = output.cer, "chars"
        signature = cer_signature(lowercase=lowercase, remove_punctuation=remove_punctuation)
    substitutions, deletions = int(output.substitutions), int(output.deletions)
    insertions, hits = int(output.insertions), int(output.hits)
    score = 100.0 * float(rate)
    reference_units = substitutions + deletions + hits
    name, label = kind, kind.upper()
    if normalised_variant:
        name, label = kind + NORMALISED_SUFFIX, f"{label} normalised ({NORMALISATION_NAME})"
    return MetricResult(
        name=name,
        score=score,
        signature=signature,
        details={
            "substitutions": substitutions,
            "deletions": deletions,
            "insertions": insertions,
            "hits": hits,
            f"reference_{unit}": reference_units,
            f"hypothesis_{unit}": substitutions + insertions + hits,
        },
        summary=(
            f"{label} = {score:.2f} (S = {substitutions} D = {deletions} I = {insertions} "
            f"H = {hits} ref_{unit} = {reference_units})"
        ),
    )


def score_corpus(
    hypotheses: list[str],
    references: list[list[str]],
    metrics: list[str],
    *,
    lowercase: bool = False,
    tokenize: str | None = None,
    ter_case_sensitive: bool = False,
    wer_remove_punctuation: bool = False,
    wer_lowercase: bool = False,
) -> dict[str, MetricResult]:
    """Scores detokenized hypotheses against one or more reference streams.

    Args:
        hypotheses: one detokenized hypothesis per segment.
        references: reference streams, each a list aligned with `hypotheses`
            (`[refs]` for a single reference). WER and CER use the first stream only.
        metrics: names from KNOWN_METRICS, e.g. ["bleu", "chrf"] or ["wer", "cer"].
        lowercase: case-insensitive BLEU, chrF and TER.
        tokenize: sacrebleu's BLEU tokenizer (None = sacrebleu's default, 13a).
        ter_case_sensitive: TER is case-insensitive by default, as in sacrebleu and tercom.
        wer_remove_punctuation: delete Unicode punctuation before WER and CER ("don't" ->
            "dont"). Both always squeeze runs of whitespace to one space.
        wer_lowercase: lower-case hypotheses and references before WER and CER.

    Returns:
        {metric name: MetricResult}, exactly the metrics requested, in that order.

    Raises:
        ConfigError: an unknown metric or tokenizer.
        DataError: no hypotheses, or a reference stream of a different length.
    """
    names = normalize_metric_names(metrics)
    _check_streams(hypotheses, references)
    results: dict[str, MetricResult] = {}
    for name in names:
        if name == "bleu":
            results[name] = _bleu(hypotheses, references, lowercase, tokenize)
        elif name == "chrf":
            results[name] = _chrf(hypotheses, references, lowercase)
        elif name == "ter":
            results[name] = _ter(hypotheses, references, ter_case_sensitive and not lowercase)
        else:
            results[name] = _edit_rate(
                name,
                hypotheses,
                references[0],
                lowercase=wer_lowercase,
                remove_punctuation=wer_remove_punctuation,
            )
    return results


def score_with_normalised_variants(
    hypotheses: list[str],
    references: list[list[str]],
    metrics: list[str],
    *,
    lowercase: bool = False,
    tokenize: str | None = None,
    ter_case_sensitive: bool = False,
    wer_remove_punctuation: bool = False,
    wer_lowercase: bool = False,
) -> dict[str, MetricResult]:
    """score_corpus, plus a normalised variant right after each requested WER and CER.

    The variant, keyed "wer_normalised" / "cer_normalised", scores the text after
    `normalise_transcript` (lower-cased, punctuation removed); its signature says
    `case:lc|punct:removed` and its summary names the normalisation. When the raw score is
    already computed that way (wer_lowercase and wer_remove_punctuation both true), there is
    no variant: it would repeat the raw line. Arguments as for score_corpus.
    """
    results = score_corpus(
        hypotheses,
        references,
        metrics,
        lowercase=lowercase,
        tokenize=tokenize,
        ter_case_sensitive=ter_case_sensitive,
        wer_remove_punctuation=wer_remove_punctuation,
        wer_lowercase=wer_lowercase,
    )
    if wer_lowercase and wer_remove_punctuation:
        return results
    combined: dict[str, MetricResult] = {}
    for name, result in results.items():
        combined[name] = result
        if name in TRANSCRIPT_METRICS:
            normalised = _edit_rate(
                name,
                hypotheses,
                references[0],
                lowercase=True,
                remove_punctuation=True,
                normalised_variant=True,
            )
            combined[normalised.name] = normalised
    return combined
