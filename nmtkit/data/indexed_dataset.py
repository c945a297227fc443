"""fairseq's memory-mapped indexed dataset (`.bin` + `.idx`), byte for byte.

`.idx` layout (little endian):
    magic  b"MMIDIDX\\x00\\x00" (9 bytes) | version uint64 = 1 | dtype code uint8
    | item count uint64 N | sizes int32[N] | pointers int64[N] (byte offset of each item in .bin)
(fairseq 0.12's layout; Megatron-LM's variant adds a document index, which fairseq cannot read.)
`.bin`: the items' elements back to back, in the dtype of the index.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nmtkit.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.double,
    8: np.uint16,
    # Codes 9+ are nmtkit extensions (fairseq 0.12 does not know them): speech features.
    9: np.uint32,
    10: np.uint64,
    11: np.float32,
    12: np.float16,
}
CODE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in reversed(DTYPE_CODES.items())}
HEADER = struct.Struct("<9sQBQ")
# Items (or ids) per slice when a whole index (or .bin) is scanned: bounds temporary memory.
SCAN_SLICE = 1 << 22


def best_token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when the vocabulary fits (as fairseq chooses), else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def data_file(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def index_file(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def dataset_exists(prefix: str | Path) -> bool:
    return data_file(prefix).is_file() and index_file(prefix).is_file()


def split_names(folder: Path, suffix: str) -> list[str]:
    """The splits of a data directory that have a `<split><suffix>.idx` file (suffix
    `.de-en.de` or `.fbank`), for messages that name what the user can choose."""
    ending = f"{suffix}.idx"
    return sorted(path.name[: -len(ending)] for path in folder.glob(f"*{ending}"))


class IndexedDatasetBuilder:
    """Streams items into `<prefix>.bin`; `finalize()` writes `<prefix>.idx`."""

    def __init__(self, prefix: str | Path, dtype: np.dtype | type) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"unsupported dtype {self.dtype}")
        self._data: BinaryIO = open(data_file(prefix), "wb")
        self._size_chunks: list[np.ndarray] = []

    def _write(self, data: bytes) -> None:
        with named_write_errors(data_file(self.prefix)):
            self._data.write(data)

    def add_item(self, item: np.ndarray | list[int]) -> None:
        array = np.asarray(item, dtype=self.dtype)
        self._write(array.tobytes(order="C"))
        self._size_chunks.append(np.array([array.size], dtype=np.int32))

    def add_items(self, flat: np.ndarray, sizes: np.ndarray) -> None:
        """Appends many items at once: `flat` holds them back to back, `sizes` their lengths."""
        self._write(np.ascontiguousarray(flat, dtype=self.dtype).tobytes())
        self._size_chunks.append(np.asarray(sizes, dtype=np.int32))

    def merge_file(self, other_prefix: str | Path) -> None:
        """Appends another finished dataset (used to join per-worker shards)."""
        other = MMapIndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise ValueError(f"dtype mismatch: {other.dtype} vs {self.dtype}")
        self._size_chunks.append(other.sizes.copy())
        del other
        with open(data_file(other_prefix), "rb") as source:
            while chunk := source.read(1 << 24):
                self._write(chunk)

    def finalize(self) -> None:
        with named_write_errors(data_file(self.prefix)):
            self._data.close()  # writes what is still buffered
        sizes = (
            np.concatenate(self._size_chunks) if self._size_chunks else np.zeros(0, np.int32)
        ).astype(np.int32)
        write_index(index_file(self.prefix), self.dtype, sizes)


def write_index(path: Path, dtype: np.dtype, sizes: np.ndarray) -> None:
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    with named_write_errors(path), open(path, "wb") as file:
        file.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[dtype], len(sizes)))
        file.write(sizes.astype(np.int32).tobytes())
        file.write(pointers.tobytes())


@contextlib.contextmanager
def named_write_errors(path: Path) -> Iterator[None]:
    """A failed write() or close() (a full disk) names no file; this one names `path`, so
    the user hears which disk is full."""
    try:
        yield
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


class MMapIndexedDataset:
    """Random access to the items of `<prefix>.{bin,idx}` without loading them into memory."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        idx_path, bin_path = index_file(prefix), data_file(prefix)
        for path in (idx_path, bin_path):
            if not path.is_file():
                raise DataError(f"{path}: file not found")
        index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        if index.size < HEADER.size:
            raise DataError(f"{idx_path}: too short to be an index file")
        magic, version, code, count = HEADER.unpack(bytes(index[: HEADER.size]))
        if magic != MAGIC:
            raise DataError(f"{idx_path}: not a memory-mapped indexed dataset (bad magic bytes)")
        if version != VERSION or code not in DTYPE_CODES:
            raise DataError(f"{idx_path}: unsupported version {version} or dtype code {code}")
        expected = HEADER.size + count * (4 + 8)
        if index.size != expected:
            raise DataError(f"{idx_path}: {index.size} bytes, expected {expected} (truncated?)")
        self.dtype = np.dtype(DTYPE_CODES[code])
        offset = HEADER.size
        self.sizes = np.frombuffer(index, dtype=np.int32, count=count, offset=offset)
        offset += count * 4
        self.pointers = np.frombuffer(index, dtype=np.int64, count=count, offset=offset)
        self._index = index
        if count and (int(self.sizes.min()) < 0 or int(self.pointers.min()) < 0):
            raise DataError(f"{idx_path}: negative item sizes or offsets (corrupt index)")
        bin_size = bin_path.stat().st_size
        # The .bin may be longer than the index needs (an index over the first items of a
        # longer file, as benchmarks/ builds), not shorter.
        self._span = self._item_span()
        if bin_size < self._span[1]:
            raise DataError(
                f"{bin_path}: {bin_size} bytes, but {idx_path} needs {self._span[1]} "
                "(truncated, or the .bin and .idx are not from the same dataset)"
            )
        self._data = np.memmap(bin_path, mode="r", dtype=np.uint8) if bin_size else None

    def _item_span(self) -> tuple[int, int]:
        """(first, last + 1) byte of .bin that the items occupy; in slices, so a 40-million-
        item index needs no full-size temporary arrays."""
        if not len(self.sizes):
            return 0, 0
        first, end = int(self.pointers.min()), 0
        for begin in range(0, len(self.sizes), SCAN_SLICE):
            pointers = self.pointers[begin : begin + SCAN_SLICE]
            sizes = self.sizes[begin : begin + SCAN_SLICE].astype(np.int64)
            end = max(end, int((pointers + sizes * self.dtype.itemsize).max()))
        return first, end

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self.sizes):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        assert self._data is not None
        return np.frombuffer(
            self._data, dtype=self.dtype, count=int(self.sizes[i]), offset=int(self.pointers[i])
        )

    def check_token_ids(self, vocab_size: int, dictionary: str | Path) -> None:
        """DataError naming the .bin file when an id lies outside [0, vocab_size).

        Such an id (a corrupt file, or one binarized with another dictionary) would otherwise
        surface as an IndexError deep inside the model's embedding. One pass over the mapped
        data, no copy (measured: 0.01 s per 100 million uint16 ids in the page cache).
        """
        if self._data is None or self._span[1] == self._span[0]:
            return
        start, end = self._span
        values = np.frombuffer(
            self._data, dtype=self.dtype, count=(end - start) // self.dtype.itemsize, offset=start
        )
        too_high = int(values.max()) >= vocab_size
        negative = self.dtype.kind == "i" and int(values.min()) < 0
        if not (too_high or negative):
            return
        # The error path only: find the first bad id and its item to name them.
        position = _first_true(
            len(values), lambda begin: _outside(values[begin : begin + SCAN_SLICE], vocab_size)
        )
        assert position is not None
        offset = start + position * self.dtype.itemsize
        item = _first_true(len(self.sizes), lambda begin: self._holds(begin, offset))
        where = f" in item {item}" if item is not None else ""
        raise DataError(
            f"{data_file(self.prefix)}: token id {int(values[position])}{where} is outside "
            f"{dictionary} ({vocab_size} entries, ids 0-{vocab_size - 1}); the file is corrupt "
            "or was binarized with another dictionary"
        )

    def _holds(self, begin: int, offset: int) -> np.ndarray:
        """Which of the items begin..begin+SCAN_SLICE hold the byte at `offset` of .bin."""
        pointers = self.pointers[begin : begin + SCAN_SLICE]
        sizes = self.sizes[begin : begin + SCAN_SLICE].astype(np.int64)
        return (pointers <= offset) & (offset < pointers + sizes * self.dtype.itemsize)


def _outside(values: np.ndarray, vocab_size: int) -> np.ndarray:
    return (values >= vocab_size) | (values < 0)


def _first_true(length: int, test: Callable[[int], np.ndarray]) -> int | None:
    """The first index in 0..length where `test(begin)` (booleans for begin..begin +
    SCAN_SLICE) is True, slice by slice; None when there is none."""
    for begin in range(0, length, SCAN_SLICE):
        found = np.flatnonzero(test(begin))
        if found.size:
            return begin + int(found[0])
    return None
