"""Streams parallel text through TextEncoders into indexed datasets, in worker processes.

Memory stays flat whatever the corpus size: files are read in chunks of lines, at most
`2 x workers` chunks are in flight, and results are written (or merged into counts) in input
order as they come back, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import multiprocessing
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from nmtkit.data.dictionary import Dictionary
from nmtkit.data.indexed_dataset import IndexedDatasetBuilder, best_token_dtype
from nmtkit.data.text_encoder import TextEncoder, encode_piece_ids, load_sentencepiece
from nmtkit.data.utf8 import invalid_utf8_message
from nmtkit.errors import DataError

CHUNK_LINES = 20_000
CHUNKS_IN_FLIGHT_PER_WORKER = 2
EMPTY_LINE = "empty_line"

Item = TypeVar("Item")
Result = TypeVar("Result")


def progress_bar(total: int, description: str) -> tqdm:
    """A progress bar on stderr, shown only when stderr is a terminal (not in logs)."""
    return tqdm(
        total=total,
        desc=description,
        unit=" lines",
        unit_scale=True,
        leave=False,
        disable=not sys.stderr.isatty(),
    )


# ---- reading and checking text files -------------------------------------------------------
@dataclass(frozen=True)
class TextFileInfo:
    """What a scan of a text file found: its checksum and its number of lines."""

    path: Path
    sha256: str
    lines: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def scan_text_file(path: Path) -> TextFileInfo:
    """Checksum and line count of a UTF-8 text file; DataError naming the line if it is not UTF-8.

    A last line without a final newline still counts, as it does when the file is read.
    """
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    newlines, last_byte = 0, b""
    with open(path, "rb") as file:
        try:
            while block := file.read(1 << 22):
                digest.update(block)
                decoder.decode(block)
                newlines += block.count(b"\n")
                last_byte = block[-1:]
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(_describe_utf8_error(path)) from None
    lines = newlines + (1 if last_byte not in (b"", b"\n") else 0)
    return TextFileInfo(path=path, sha256=digest.hexdigest(), lines=lines)


def _describe_utf8_error(path: Path) -> str:
    with open(path, "rb") as file:
        for line_number, line in enumerate(file, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return invalid_utf8_message(str(path), line_number, line, error)
    return f"{path}: invalid UTF-8 at the end of the file (truncated multi-byte character)"


def read_lines_in_chunks(path: Path, chunk_lines: int | None = None) -> Iterator[list[str]]:
    """Lists of at most `chunk_lines` (default CHUNK_LINES) lines, newlines kept; a UTF-8
    byte-order mark is dropped."""
    chunk_lines = chunk_lines or CHUNK_LINES
    # newline="\n": only "\n" ends a line, exactly as scan_text_file counts them.
    with open(path, encoding="utf-8-sig", newline="\n") as file:
        while chunk := list(itertools.islice(file, chunk_lines)):
            yield chunk


def read_parallel_chunks(
    source_path: Path, target_path: Path, chunk_lines: int | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """Aligned chunks of source and target lines as raw UTF-8 bytes (see `split_lines`).

    Workers get bytes, not lists of strings: one bytes object pickles at memory speed, so the
    reading process does almost nothing per line. The files must have equal line counts.
    """
    yield from zip(
        _read_raw_chunks(source_path, chunk_lines or CHUNK_LINES),
        _read_raw_chunks(target_path, chunk_lines or CHUNK_LINES),
    )


def _read_raw_chunks(path: Path, chunk_lines: int) -> Iterator[bytes]:
    with open(path, "rb") as file:
        first = True
        while lines := list(itertools.islice(file, chunk_lines)):
            block = b"".join(lines)
            if first and block.startswith(codecs.BOM_UTF8):
                block = block[len(codecs.BOM_UTF8) :]
            first = False
            yield block


def split_lines(block: bytes) -> list[str]:
    """The lines of a chunk from read_parallel_chunks, without their newlines."""
    lines = block.decode("utf-8").split("\n")
    if lines[-1] == "":  # the chunk ended with a newline
        lines.pop()
    return lines


def write_line_sample(
    files: list[TextFileInfo], sample_size: int, seed: int, output_path: Path
) -> int:
    """Writes a seeded uniform sample of at most `sample_size` non-empty lines of `files`
    (as one stream) to `output_path`; returns the number written. Memory is one chunk.

    Each chunk takes a hypergeometric share of the lines still needed, then that many of its
    own lines at random: an exact uniform sample without replacement, in file order.
    """
    rng = np.random.default_rng(seed)
    remaining = sum(info.lines for info in files)
    needed = min(sample_size, remaining)
    written = 0
    bar = progress_bar(remaining, f"sampling lines to train SentencePiece on ({needed})")
    with bar, open(output_path, "w", encoding="utf-8") as output:
        for info in files:
            for chunk in read_lines_in_chunks(info.path):
                size = len(chunk)
                bar.update(size)
                if needed >= remaining:
                    chosen: Iterable[int] = range(size)
                    taken = size
                elif needed == 0:
                    chosen, taken = (), 0
                else:
                    taken = int(rng.hypergeometric(size, remaining - size, needed))
                    chosen = np.sort(rng.choice(size, taken, replace=False)).tolist()
                remaining -= size
                needed -= taken
                for index in chosen:
                    line = chunk[index].strip()
                    if line:
                        output.write(line + "\n")
                        written += 1
    return written


# ---- ordered parallel map with bounded memory ----------------------------------------------
def ordered_parallel_map(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    *,
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...],
) -> Iterator[Result]:
    """`map(function, items)` over `workers` processes, results in input order.

    Unlike Pool.imap, which reads its whole input ahead, at most
    CHUNKS_IN_FLIGHT_PER_WORKER x workers items are pending at any time. With one worker
    everything runs in this process.
    """
    if workers <= 1:
        initializer(*initargs)
        try:
            yield from map(function, items)
        finally:
            _worker_state.clear()
        return
    # fork on Linux: workers start at once and callers' scripts need no `__main__` guard; the
    # workers only run numpy and sentencepiece code. Elsewhere fork is unsafe or missing.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with context.Pool(workers, initializer, initargs) as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.apply_async(function, (item,)))
            if len(pending) >= workers * CHUNKS_IN_FLIGHT_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# Per-process state set by the worker initializers below (each worker builds its encoders once
# instead of receiving them with every chunk).
_worker_state: dict[str, Any] = {}


def _kept_pairs(
    source_lines: list[str], target_lines: list[str]
) -> tuple[list[str], list[str], int]:
    """Drops pairs with an empty (or whitespace-only) line on either side; returns the count."""
    keep = [
        index
        for index, (source, target) in enumerate(zip(source_lines, target_lines))
        if source.strip() and target.strip()
    ]
    dropped = len(source_lines) - len(keep)
    if dropped:
        source_lines = [source_lines[index] for index in keep]
        target_lines = [target_lines[index] for index in keep]
    return source_lines, target_lines, dropped


# ---- counting tokens for a dictionary ------------------------------------------------------
def _start_counting_worker(source_spm: bytes | None, target_spm: bytes | None) -> None:
    _worker_state["processors"] = tuple(
        load_sentencepiece(proto) if proto is not None else None
        for proto in (source_spm, target_spm)
    )


def _count_chunk(chunk: tuple[bytes, bytes]) -> tuple[Any, Any, int]:
    source_lines, target_lines, dropped = _kept_pairs(*map(split_lines, chunk))
    counts: list[Any] = []
    for lines, processor in zip((source_lines, target_lines), _worker_state["processors"]):
        if processor is None:
            counts.append(Counter(itertools.chain.from_iterable(map(str.split, lines))))
            continue
        flat, _ = encode_piece_ids(processor, lines)
        counts.append(np.bincount(flat, minlength=processor.get_piece_size()))
    return counts[0], counts[1], len(source_lines) + dropped


def count_parallel_tokens(
    source: TextFileInfo,
    target: TextFileInfo,
    source_spm: bytes | None,
    target_spm: bytes | None,
    *,
    workers: int,
) -> tuple[Counter[str], Counter[str]]:
    """Token (or SentencePiece piece) counts of each side over the pairs kept for binarizing.

    SentencePiece control symbols and its unknown piece are never counted, so they cannot
    become dictionary words.
    """
    totals: list[Any] = [None, None]
    with progress_bar(source.lines, f"counting tokens in {source.path.name}") as bar:
        for source_counts, target_counts, lines_read in ordered_parallel_map(
            _count_chunk,
            read_parallel_chunks(source.path, target.path),
            workers=workers,
            initializer=_start_counting_worker,
            initargs=(source_spm, target_spm),
        ):
            for side, counts in enumerate((source_counts, target_counts)):
                totals[side] = counts if totals[side] is None else totals[side] + counts
            bar.update(lines_read)
    result: list[Counter[str]] = []
    for counts, proto in zip(totals, (source_spm, target_spm)):
        if proto is None:
            result.append(counts if counts is not None else Counter())
        else:
            result.append(_piece_counter(load_sentencepiece(proto), counts))
    return result[0], result[1]


def _piece_counter(processor: Any, counts: np.ndarray | None) -> Counter[str]:
    pieces: Counter[str] = Counter()
    if counts is None:
        return pieces
    for piece_id in np.flatnonzero(counts).tolist():
        if processor.is_control(piece_id) or processor.is_unknown(piece_id):
            continue
        pieces[processor.id_to_piece(piece_id)] = int(counts[piece_id])
    return pieces


# ---- binarizing ------------------------------------------------------------------------------
@dataclass
class SideStats:
    """Counts for one language of a split."""

    tokens: int = 0
    """Token ids written, `</s>` included (the sum of the dataset's sizes)."""
    unk: int = 0
    """How many of them are `<unk>`."""

    @property
    def unk_rate(self) -> float:
        return self.unk / self.tokens if self.tokens else 0.0


@dataclass
class SplitStats:
    """What binarizing one split produced."""

    pairs: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {EMPTY_LINE: 0})
    source: SideStats = field(default_factory=SideStats)
    target: SideStats = field(default_factory=SideStats)


def _start_binarizing_worker(
    source: tuple[Dictionary, bytes | None], target: tuple[Dictionary, bytes | None]
) -> None:
    _worker_state["encoders"] = (TextEncoder(*source), TextEncoder(*target))


def _binarize_chunk(chunk: tuple[bytes, bytes]) -> tuple[Any, ...]:
    source_lines, target_lines, dropped = _kept_pairs(*map(split_lines, chunk))
    outputs: list[Any] = []
    for lines, encoder in zip((source_lines, target_lines), _worker_state["encoders"]):
        flat, sizes = encoder.encode_batch_flat(lines)
        unknown = int(np.count_nonzero(flat == encoder.dictionary.unk()))
        # Cast here: a uint16 array is a quarter of the int64 one to send back.
        dtype = best_token_dtype(len(encoder.dictionary))
        outputs.extend((flat.astype(dtype), sizes, unknown))
    return (*outputs, len(source_lines), dropped)


def binarize_parallel_text(
    source: TextFileInfo,
    target: TextFileInfo,
    source_encoder: TextEncoder,
    target_encoder: TextEncoder,
    source_prefix: Path,
    target_prefix: Path,
    *,
    workers: int,
) -> SplitStats:
    """Encodes aligned source/target files into `<prefix>.{bin,idx}` datasets (uint16 ids
    when the dictionary fits); pairs with an empty line on either side are dropped (and
    counted)."""
    stats = SplitStats()
    source_builder = IndexedDatasetBuilder(
        source_prefix, best_token_dtype(len(source_encoder.dictionary))
    )
    target_builder = IndexedDatasetBuilder(
        target_prefix, best_token_dtype(len(target_encoder.dictionary))
    )
    initargs = (
        (source_encoder.dictionary, source_encoder.spm_model_proto),
        (target_encoder.dictionary, target_encoder.spm_model_proto),
    )
    with progress_bar(source.lines, f"binarizing {source.path.name}") as bar:
        for result in ordered_parallel_map(
            _binarize_chunk,
            read_parallel_chunks(source.path, target.path),
            workers=workers,
            initializer=_start_binarizing_worker,
            initargs=initargs,
        ):
            (src_flat, src_sizes, src_unk, tgt_flat, tgt_sizes, tgt_unk, pairs, dropped) = result
            source_builder.add_items(src_flat, src_sizes)
            target_builder.add_items(tgt_flat, tgt_sizes)
            stats.pairs += pairs
            stats.dropped[EMPTY_LINE] += dropped
            stats.source.tokens += int(src_flat.size)
            stats.source.unk += src_unk
            stats.target.tokens += int(tgt_flat.size)
            stats.target.unk += tgt_unk
            bar.update(pairs + dropped)
    source_builder.finalize()
    target_builder.finalize()
    return stats
