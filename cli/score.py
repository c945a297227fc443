"""`nmtkit-score`: corpus BLEU, chrF, TER, WER and CER of a hypothesis file against references."""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nmtkit.config.launcher import run_cli
from nmtkit.errors import ConfigError, DataError
from nmtkit.output_files import atomic_text_output, ensure_writable_file
from nmtkit.scoring.metrics import (
    BLEU_TOKENIZERS,
    KNOWN_METRICS,
    MetricResult,
    score_with_normalised_variants,
)

STDIN_PATH = "-"
OUTPUT_FORMATS = ("text", "json")


@dataclass(kw_only=True)
class ScoreConfig:
    """What to score against what, and how."""

    hyp: str
    """Hypothesis file, one detokenized segment per line ('-' reads standard input)."""
    ref: Any
    """Reference file aligned line by line with hyp (ref=a.txt), or several (ref=[a.txt,b.txt])."""
    metrics: Any = field(default_factory=lambda: ["bleu"])
    """Metrics among bleu, chrf, ter, wer, cer: one (metrics=chrf) or a list (metrics=[wer,cer])."""
    format: str = "text"
    """Output on stdout: text (one line per metric) or json."""
    lowercase: bool = False
    """Case-insensitive BLEU, chrF and TER."""
    tokenize: Optional[str] = None
    """BLEU tokenizer, one of sacrebleu's (13a, intl, zh, char, none, ...); null means 13a."""
    ter_case_sensitive: bool = False
    """Case-sensitive TER (sacrebleu's TER, like tercom, ignores case by default)."""
    wer_lowercase: bool = False
    """Lower-case both sides before the raw WER and CER (the normalised ones always are)."""
    wer_remove_punctuation: bool = False
    """Delete Unicode punctuation before the raw WER and CER ("don't" becomes "dont")."""
    output: Optional[str] = None
    """Also write the JSON result to this file (checked before scoring; written whole or not
    at all; missing folders are created)."""

    def reference_paths(self) -> list[str]:
        """The reference files, whether given as one path or a list."""
        references = self.ref if isinstance(self.ref, list | tuple) else [self.ref]
        # Hydra reads `ref=2024` as an int; a file may well be called that.
        return [str(path) for path in references]

    def metric_names(self) -> list[str]:
        """The requested metrics, lower-cased; a quoted 'bleu,chrf' is split at commas."""
        if isinstance(self.metrics, str):
            return [name.strip().lower() for name in self.metrics.split(",") if name.strip()]
        return [str(name).strip().lower() for name in self.metrics]

    def validate(self) -> list[str]:
        errors = []
        if not isinstance(self.hyp, str) or not self.hyp:
            errors.append(f"hyp={self.hyp!r}: give the hypothesis file (hyp=- reads stdin)")
        references = self.ref if isinstance(self.ref, list | tuple) else [self.ref]
        if not references or not all(
            isinstance(path, str | int) and not isinstance(path, bool) and str(path)
            for path in references
        ):
            errors.append(
                f"ref={self.ref!r}: expected a path (ref=ref.txt) or a list of paths "
                "(ref=[ref1.txt,ref2.txt])"
            )
        elif STDIN_PATH in self.reference_paths():
            errors.append("ref=-: only hyp can be read from standard input")
        if not isinstance(self.metrics, str | list | tuple) or not all(
            isinstance(name, str) for name in self.metrics
        ):
            errors.append(
                f"metrics={self.metrics!r}: expected metric names, e.g. metrics=[bleu,chrf]"
            )
        else:
            names = self.metric_names()
            unknown = [name for name in names if name not in KNOWN_METRICS]
            if unknown:
                errors.append(
                    f"metrics: unknown metric {', '.join(repr(n) for n in unknown)} "
                    f"(known: {', '.join(KNOWN_METRICS)})"
                )
            elif not names:
                errors.append(f"metrics: empty; choose from {', '.join(KNOWN_METRICS)}")
        if self.format not in OUTPUT_FORMATS:
            errors.append(f"format={self.format}: must be one of {', '.join(OUTPUT_FORMATS)}")
        if self.tokenize is not None and self.tokenize not in BLEU_TOKENIZERS:
            errors.append(
                f"tokenize={self.tokenize}: unknown BLEU tokenizer "
                f"(known: {', '.join(BLEU_TOKENIZERS)})"
            )
        return errors


def _decode_lines(data: bytes, name: str) -> list[str]:
    """One segment per '\\n'-terminated line, as sacrebleu reads files; strict UTF-8."""
    if not data:
        return []
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":
        # The final newline ends the last line; it does not start an empty one.
        raw_lines.pop()
    lines = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"{name}:{number}: not valid UTF-8 (byte {raw[error.start]:#04x} "
                f"at column {error.start + 1})"
            ) from None
        # sacrebleu strips trailing whitespace (and so any '\r' of Windows line ends) too.
        lines.append(text.rstrip())
    return lines


def read_segments(path: str) -> list[str]:
    """Reads a UTF-8 text file (gzip if it ends in .gz; '-' = stdin) into one string per line."""
    if path == STDIN_PATH:
        stream = sys.stdin
        buffer = getattr(stream, "buffer", None)
        if buffer is None:
            # An in-memory text stream (tests, notebooks) is already decoded.
            return _decode_lines(stream.read().encode("utf-8"), "<stdin>")
        return _decode_lines(buffer.read(), "<stdin>")
    file = Path(path)
    if not file.exists():
        raise DataError(f"{path}: no such file")
    if file.is_dir():
        raise DataError(f"{path}: is a folder, not a text file")
    try:
        data = gzip.decompress(file.read_bytes()) if path.endswith(".gz") else file.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    except (gzip.BadGzipFile, EOFError) as error:
        raise DataError(f"{path}: not a valid gzip file ({error})") from None
    return _decode_lines(data, path)


def format_text(results: dict[str, MetricResult]) -> str:
    """One line per result: its summary (sacrebleu's for BLEU/chrF/TER), then the signature."""
    return "\n".join(result.format_line() for result in results.values())


def main(cfg: ScoreConfig) -> dict[str, Any]:
    """Scores a hypothesis file against one or more line-aligned reference files.

    Example:
        nmtkit-score hyp=hyp.en ref=RAW/test.en metrics=[bleu,chrf,ter] format=json
        cat hyp.en | nmtkit-score hyp=- ref=[ref1.en,ref2.en] metrics=wer
        nmtkit-score hyp=hyp.txt ref=ref.txt 'metrics=[wer,cer]'

    Settings: hyp, ref (one path or a list), metrics (bleu, chrf, ter, wer, cer), format
    (text or json), lowercase, tokenize, ter_case_sensitive, wer_lowercase,
    wer_remove_punctuation, output (also write the JSON there); see docs/scoring.md.

    BLEU, chrF and TER come from sacrebleu (its default settings and signatures), WER and
    CER from jiwer on whitespace-split words and on characters; all scores are 0-100, WER,
    CER and TER in percent. WER and CER are each reported twice: raw (as wer_lowercase and
    wer_remove_punctuation say) and normalised (lower-cased, punctuation removed; keys
    wer_normalised, cer_normalised), unless the raw one is already normalised that way.
    Returns {metric: {"name", "score", "signature", "details"}}, which is also what
    format=json prints and output= writes.
    """
    errors = cfg.validate()
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
    if cfg.output is not None:
        ensure_writable_file(cfg.output, "output")
    hypothesis_name = "<stdin>" if cfg.hyp == STDIN_PATH else cfg.hyp
    hypotheses = read_segments(cfg.hyp)
    references = []
    for path in cfg.reference_paths():
        stream = read_segments(path)
        if len(stream) != len(hypotheses):
            raise DataError(
                f"line counts differ: {hypothesis_name} has {len(hypotheses)} lines, "
                f"{path} has {len(stream)}"
            )
        references.append(stream)
    if not hypotheses:
        raise DataError(f"{hypothesis_name}: no lines to score")
    results = score_with_normalised_variants(
        hypotheses,
        references,
        cfg.metric_names(),
        lowercase=cfg.lowercase,
        tokenize=cfg.tokenize,
        ter_case_sensitive=cfg.ter_case_sensitive,
        wer_remove_punctuation=cfg.wer_remove_punctuation,
        wer_lowercase=cfg.wer_lowercase,
    )
    report = {name: result.to_dict() for name, result in results.items()}
    as_json = json.dumps(report, indent=2, ensure_ascii=False)
    if cfg.output is not None:
        with atomic_text_output(cfg.output) as output:
            output.write(as_json + "\n")
    print(as_json if cfg.format == "json" else format_text(results))
    return report


def cli_main(argv: Sequence[str] | None = None) -> None:
    run_cli(
        main,
        config_name="nmtkit_score",
        config_class=ScoreConfig,
        groups={},
        top_level={"nmtkit_score": ScoreConfig},
        argv=argv,
        program="nmtkit-score",
    )


if __name__ == "__main__":
    cli_main()
