"""`nmtkit-generate`: translate or transcribe raw input (text lines, an audio manifest or audio
paths; a file or stdin, streaming) or a binarized split, through the Python API's
`Translator` (nmtkit/api.py)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Optional

import torch

from nmtkit.api import PRECISIONS, DecodingOptions, Translator, load, resolve_device
from nmtkit.config.launcher import run_cli
from nmtkit.errors import DataError
from nmtkit.generation.translate import TranslationResult
from nmtkit.output_files import (
    OutputError,
    atomic_text_output,
    describe_os_error,
    ensure_writable_file,
)
from nmtkit.scoring import score_corpus


@dataclass(kw_only=True)
class GenerateConfig(DecodingOptions):
    """What to translate, with which model(s), and how to write the output."""

    checkpoint: Any = ""
    """Checkpoint file, or a list of them for an ensemble: checkpoint=[a.pt,b.pt]."""
    input: Optional[str] = None
    """Raw input: a text file (translation), or an audio manifest (TSV with the header id audio
    n_samples ...) or a file of audio paths (speech); '-' or unset = stdin, as lines arrive."""
    data: Optional[str] = None
    """Translate a binarized split of this data directory instead (references included)."""
    subset: str = "test"
    """Split of `data` to translate."""
    output: Optional[str] = None
    """Output file (default stdout), written under a temporary name and renamed when complete:
    a failed run leaves an existing file as it was. Missing folders are created."""
    format: str = "text"
    """text (one detokenized hypothesis per line), fairseq (S-/T-/H-/D-/P- lines, scores in
    base 2 as fairseq prints them) or jsonl (scores in natural log)."""
    buffer_size: int = 2000
    """Raw input is read and batched in chunks of up to this many lines (sorted by length)."""
    bpe_model: Optional[str] = None
    """SentencePiece model for a checkpoint that carries none (trained on a fairseq data-bin):
    raw input is cut into its pieces and hypotheses are detokenized with it."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    precision: str = "fp32"
    """fp32, bf16 or fp16: the dtype of the model weights (log-probabilities and scores stay
    float32). bf16 is faster on GPUs and on CPUs with AVX-512 BF16; translations may differ
    slightly from fp32."""
    user_dir: Optional[str] = None
    """Folder or .py file with the custom components the checkpoint needs (a plugin)."""

    def validate(self) -> list[str]:
        errors = super().validate()
        paths = self.checkpoint if isinstance(self.checkpoint, list) else [self.checkpoint]
        if not all(isinstance(p, str) and p for p in paths) or not paths:
            errors.append("checkpoint: required (checkpoint=model.pt or checkpoint=[a.pt,b.pt])")
        if self.format not in ("text", "fairseq", "jsonl"):
            errors.append(f"format={self.format}: choose text, fairseq or jsonl")
        if self.precision not in PRECISIONS:
            errors.append(f"precision={self.precision}: choose fp32, bf16 or fp16")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                errors.append(f"device={self.device}: choose auto, cpu, cuda or cuda:N")
        if self.buffer_size < 1:
            errors.append(f"buffer_size={self.buffer_size}: must be >= 1")
        if self.data and self.input:
            errors.append("input/data: give one of them")
        if self.prefix_size > 0 and not self.data:
            errors.append(
                f"prefix_size={self.prefix_size}: forced prefixes come from the references, "
                "so it needs data=DIR (a binarized split with targets)"
            )
        return errors


@dataclass
class RunSummary:
    """What the end-of-run summary reports (fairseq's "Translated N sentences ...")."""

    sentences: int = 0
    """Inputs decoded (empty inputs, which skip the model, are not counted)."""
    tokens: int = 0
    """Generated tokens of the best hypotheses, </s> included (as fairseq counts them)."""
    seconds: float = 0.0
    """Time spent decoding (reading input and writing output excluded)."""
    hypotheses: list[str] = field(default_factory=list)
    """Best hypotheses of the inputs that have a reference, for BLEU."""
    references: list[str] = field(default_factory=list)
    """Those inputs' references."""

    def add(self, result: TranslationResult) -> None:
        self.sentences += 1
        if result.hypotheses:
            self.tokens += len(result.hypotheses[0].tokens)
        if result.reference is not None:
            self.hypotheses.append(result.hypotheses[0].text if result.hypotheses else "")
            self.references.append(result.reference)

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started


def main(cfg: GenerateConfig) -> None:
    """Translate with a trained checkpoint; it carries its dictionaries and SentencePiece model.

    Examples:
        nmtkit-generate checkpoint=ckpt/checkpoint_best.pt input=test.de output=hyp.en beam=5
        echo "Guten Morgen" | nmtkit-generate checkpoint=model.pt
        nmtkit-generate checkpoint=model.pt data=data-bin subset=test format=fairseq
        nmtkit-generate 'checkpoint=[a.pt,b.pt]' input=test.de   # ensemble
        nmtkit-generate checkpoint=asr/checkpoint_best.pt input=test.tsv output=hyp.txt  # speech
        nmtkit-generate checkpoint=asr/checkpoint_best.pt input=test.tsv ctc_weight=0.3  # joint
        nmtkit-generate checkpoint=fairseq_bin_model.pt bpe_model=spm.model input=test.de
    """
    # Everything that can be checked without the models is checked before loading them.
    device = resolve_device(cfg.device)
    if cfg.output:
        ensure_writable_file(cfg.output, "output")
    elif (problem := standard_stream_problem(sys.stdout)) is not None:
        raise OutputError(f"output: standard output {problem}; give output=FILE")
    reading_stdin = not cfg.data and cfg.input in (None, "-")
    if reading_stdin:
        if (problem := standard_stream_problem(sys.stdin)) is not None:
            raise DataError(f"input: standard input {problem}; give input=FILE or pipe text in")
    paths = cfg.checkpoint if isinstance(cfg.checkpoint, list) else [cfg.checkpoint]
    translator = load(
        [str(p) for p in paths], device=device, precision=cfg.precision, bpe_model=cfg.bpe_model
    )
    translator.check_options(cfg)  # before any input is read (stdin may be interactive)
    summary = RunSummary()
    with open_output(cfg.output) as out, progress_bar(cfg, reading_stdin) as bar:
        if cfg.data:
            with summary.timing():
                results = translator.generate_split(cfg.data, cfg.subset, cfg, progress=bar.update)
            for result in results:
                write_result(cfg, translator, result, out, result.id)
                summary.add(result)
        else:
            done = 0
            for inputs in translator.task.read_inference_inputs(cfg.input, cfg.buffer_size):
                translate_inputs(cfg, translator, inputs, done, out, summary, bar.update)
                done += len(inputs)
        bleu = None
        if summary.references:
            bleu = score_corpus(summary.hypotheses, [summary.references], ["bleu"])["bleu"]
            if cfg.format == "fairseq":  # fairseq prints it with the hypotheses
                out.write(f"Generate {cfg.subset} with beam={cfg.beam}: {bleu.summary}\n")
    print_summary(cfg, summary, bleu)


def standard_stream_problem(stream: Optional[IO[str]]) -> Optional[str]:
    """Why stdin/stdout cannot be used ('is closed'), or None. Python sets sys.stdin/stdout to
    None when the process starts with that descriptor closed (`0<&-`, `1>&-`)."""
    if stream is None or stream.closed:
        return "is closed"
    try:
        descriptor = stream.fileno()
    except io.UnsupportedOperation:
        return None  # an in-memory stream (tests, notebooks) has no descriptor to check
    except (OSError, ValueError):
        return "is closed"
    try:
        os.fstat(descriptor)
    except OSError:
        return "is closed"
    return None


@contextlib.contextmanager
def open_output(path: Optional[str]) -> Iterator[IO[str]]:
    """The output file, published only when complete; or stdout, written as results come, with
    a closed or read-only stdout reported as one line rather than a traceback."""
    if path:
        with atomic_text_output(path) as out:
            yield out
        return
    try:
        yield sys.stdout
        sys.stdout.flush()
    except (ValueError, OSError) as error:
        if isinstance(error, ValueError) and sys.stdout.closed:
            reason = "it is closed; give output=FILE"
        elif isinstance(error, OSError) and error.errno == errno.EBADF:
            reason = "it is closed or not open for writing; give output=FILE"
        elif isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = describe_os_error(error, "")
        else:  # BrokenPipeError (`| head`) is the launcher's; other errors are not stdout's
            raise
        # Python flushes stdout again at exit; send that to /dev/null rather than a second
        # traceback ("Exception ignored ...") after our one line.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputError(f"output: cannot write to standard output: {reason}") from None


def translate_inputs(
    cfg: GenerateConfig,
    translator: Translator,
    inputs: list[Any],
    first_index: int,
    out: IO[str],
    summary: RunSummary,
    progress: Any = None,
) -> None:
    """Decodes one chunk of inputs (text lines, utterances), writing results in input order;
    empty inputs give empty outputs (they are not sent to the model)."""
    task = translator.task

    def describe(index: int) -> str:
        where = task.input_location(inputs[index], first_index + index)
        return f"<stdin> {where}" if cfg.input in (None, "-") else f"input={cfg.input} {where}"

    with summary.timing():
        results = translator.generate(inputs, cfg, describe=describe, progress=progress)
    for i, (item, result) in enumerate(zip(inputs, results)):
        name = task.input_name(item, first_index + i)
        if result is None:
            write_empty(cfg, name, str(item), out)
        else:
            write_result(cfg, translator, result, out, name)
            summary.add(result)
    out.flush()


def write_result(
    cfg: GenerateConfig, translator: Translator, result: TranslationResult, out: IO[str], name: Any
) -> None:
    hypotheses = result.hypotheses[: cfg.nbest]
    if cfg.format == "text":
        for hypothesis in hypotheses:
            out.write(hypothesis.text + "\n")
    elif cfg.format == "jsonl":
        # Natural-log scores: jsonl is nmtkit's own format and keeps the units of the API.
        record = {
            "id": name,
            "source": result.source,
            **({"reference": result.reference} if result.reference is not None else {}),
            "hypotheses": [
                {
                    "text": h.text,
                    "tokens": h.pieces.split(),
                    "score": h.score,
                    "token_log_probs": h.positional_scores.float().tolist(),
                }
                for h in hypotheses
            ],
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:  # fairseq's layout and units, so existing post-processing scripts keep working
        task = translator.task
        out.write(f"S-{name}\t{fairseq_source(task, result)}\n")
        if result.reference is not None:
            out.write(f"T-{name}\t{fairseq_reference(task, result)}\n")
        for h in hypotheses:
            # fairseq divides the float32 score by ln 2 and prints the float as Python does.
            score = (torch.tensor(h.score, dtype=torch.float32) / math.log(2)).item()
            out.write(f"H-{name}\t{score}\t{h.pieces}\n")
            out.write(f"D-{name}\t{score}\t{h.text}\n")
            positional = (h.positional_scores.float() / math.log(2)).tolist()
            out.write(f"P-{name}\t{' '.join(f'{s:.4f}' for s in positional)}\n")


def fairseq_decode(pieces: str) -> str:
    """fairseq's SentencePiece decoding of a line of pieces (`--bpe sentencepiece`), which
    joins pieces as strings (an unknown piece stays `<unk>`)."""
    return pieces.replace(" ", "").replace("\u2581", " ").strip()


def fairseq_source(task: Any, result: TranslationResult) -> str:
    """The S- line's text: the source symbols, SentencePiece pieces joined into words."""
    if task.uses_sentencepiece("source"):
        return fairseq_decode(result.source_pieces)
    return result.source  # whitespace tokens as they are; the utterance's name for speech


def fairseq_reference(task: Any, result: TranslationResult) -> str:
    """The T- line's text: reference symbols with <unk> shown as <<unk>> (fairseq's
    escape_unk), SentencePiece pieces joined into words."""
    unk = task.target_dictionary.symbols[task.target_dictionary.unk()]
    pieces = result.reference_pieces or ""
    escaped = " ".join(f"<{piece}>" if piece == unk else piece for piece in pieces.split(" "))
    return fairseq_decode(escaped) if task.uses_sentencepiece("target") else escaped


def write_empty(cfg: GenerateConfig, name: Any, line: str, out: IO[str]) -> None:
    if cfg.format == "text":
        out.write("\n" * cfg.nbest)
    elif cfg.format == "jsonl":
        out.write(json.dumps({"id": name, "source": line, "hypotheses": []}) + "\n")
    else:
        out.write(f"S-{name}\t{line}\n")


@contextlib.contextmanager
def progress_bar(cfg: GenerateConfig, reading_stdin: bool) -> Iterator[Any]:
    """A tqdm bar on stderr when stderr is a terminal; a do-nothing one otherwise, when input
    comes from stdin (interactive use) or when hypotheses go to the same terminal."""
    from tqdm import tqdm

    stderr_is_terminal = sys.stderr is not None and sys.stderr.isatty()
    output_on_terminal = not cfg.output and sys.stdout is not None and sys.stdout.isatty()
    enabled = stderr_is_terminal and not reading_stdin and not output_on_terminal
    bar = tqdm(file=sys.stderr, unit=" sentences", disable=not enabled, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def print_summary(cfg: GenerateConfig, summary: RunSummary, bleu: Any) -> None:
    """fairseq's closing lines, on stderr: the speed, the score units and BLEU."""
    seconds = max(summary.seconds, 1e-9)
    lines = []
    if cfg.format == "fairseq":
        lines.append("NOTE: hypothesis and token scores are output in base 2")
    lines.append(
        f"Translated {summary.sentences:,} sentences ({summary.tokens:,} tokens) in "
        f"{summary.seconds:.1f}s ({summary.sentences / seconds:.2f} sentences/s, "
        f"{summary.tokens / seconds:.2f} tokens/s)"
    )
    if bleu is not None:
        lines.append(f"Generate {cfg.subset} with beam={cfg.beam}: {bleu.format_line()}")
    for line in lines:
        print(f"nmtkit-generate: {line}", file=sys.stderr)


def cli_main(argv: Sequence[str] | None = None) -> None:
    run_cli(
        main, config_name="nmtkit_generate", config_class=GenerateConfig, groups={},
        top_level={"nmtkit_generate": GenerateConfig}, argv=argv, program="nmtkit-generate",
    )  # fmt: skip


if __name__ == "__main__":
    cli_main()
