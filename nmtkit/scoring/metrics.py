"""Corpus-level BLEU, chrF and TER through sacrebleu, and WER through jiwer.

`score_corpus` is the one scoring path of the toolkit: `nmtkit-score` and BLEU validation
during training both call it, so the numbers they report agree. All scores are on a 0-100
scale (WER and TER in percent; both can exceed 100 when the hypothesis has many insertions).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jiwer
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

from nmtkit.errors import ConfigError, DataError

KNOWN_METRICS = ("bleu", "chrf", "ter", "wer")
BLEU_TOKENIZERS = tuple(sorted(BLEU.TOKENIZERS))


@dataclass(frozen=True)
class MetricResult:
    """One corpus-level score with what is needed to reproduce and compare it."""

    name: str
    """The metric's key in KNOWN_METRICS, e.g. "bleu"."""
    score: float
    """The corpus score on a 0-100 scale (WER and TER in percent)."""
    signature: str
    """sacrebleu's signature (nrefs, case, tokenizer, version...); for WER the normalisation."""
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


def wer_signature(*, lowercase: bool, remove_punctuation: bool) -> str:
    """Describes WER's normalisation in sacrebleu's signature style."""
    case = "lc" if lowercase else "mixed"
    punctuation = "removed" if remove_punctuation else "kept"
    version = importlib.metadata.version("jiwer")
    return f"nrefs:1|case:{case}|punct:{punctuation}|tok:whitespace|jiwer:{version}"


def _wer(
    hypotheses: Sequence[str],
    reference: Sequence[str],
    lowercase: bool,
    remove_punctuation: bool,
) -> MetricResult:
    steps: list[Any] = []
    if lowercase:
        steps.append(jiwer.ToLowerCase())
    if remove_punctuation:
        steps.append(jiwer.RemovePunctuation())
    # After the optional steps, the same whitespace split jiwer uses by default.
    steps += [jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()]
    transform = jiwer.Compose(steps)
    output = jiwer.process_words(
        list(reference),
        list(hypotheses),
        reference_transform=transform,
        hypothesis_transform=transform,
    )
    substitutions, deletions = int(output.substitutions), int(output.deletions)
    insertions, hits = int(output.insertions), int(output.hits)
    score = 100.0 * float(output.wer)
    reference_words = substitutions + deletions + hits
    return MetricResult(
        name="wer",
        score=score,
        signature=wer_signature(lowercase=lowercase, remove_punctuation=remove_punctuation),
        details={
            "substitutions": substitutions,
            "deletions": deletions,
            "insertions": insertions,
            "hits": hits,
            "reference_words": reference_words,
            "hypothesis_words": substitutions + insertions + hits,
        },
        summary=(
            f"WER = {score:.2f} (S = {substitutions} D = {deletions} I = {insertions} "
            f"H = {hits} ref_words = {reference_words})"
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
            (`[refs]` for a single reference). WER uses the first stream only.
        metrics: names from KNOWN_METRICS, e.g. ["bleu", "chrf"].
        lowercase: case-insensitive BLEU, chrF and TER.
        tokenize: sacrebleu's BLEU tokenizer (None = sacrebleu's default, 13a).
        ter_case_sensitive: TER is case-insensitive by default, as in sacrebleu and tercom.
        wer_remove_punctuation: delete Unicode punctuation before WER (so "don't" -> "dont").
        wer_lowercase: lower-case hypotheses and references before WER.

    Returns:
        {metric name: MetricResult}, in the order the metrics were requested.

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
            results[name] = _wer(hypotheses, references[0], wer_lowercase, wer_remove_punctuation)
    return results
