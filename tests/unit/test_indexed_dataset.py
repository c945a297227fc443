"""The mmap indexed dataset must be fairseq's byte layout: checked against a reader and a
writer written here from the format description alone (not from nmtkit's code):

.idx = b"MMIDIDX\x00\x00" | uint64 version 1 | uint8 dtype code | uint64 item count N
       | int32 sizes[N] | int64 byte offsets[N]          (all little endian)
.bin = the items back to back in that dtype
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from nmtkit.data.indexed_dataset import (
    IndexedDatasetBuilder,
    MMapIndexedDataset,
    best_token_dtype,
    dataset_exists,
)
from nmtkit.errors import DataError

# fairseq's dtype codes (fairseq/data/indexed_dataset.py `_code_to_dtype`).
FAIRSEQ_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}


def independent_read(prefix: Path) -> tuple[np.dtype, list[list[int]]]:
    """Reads `.idx`/`.bin` following the documented layout, with plain struct/numpy."""
    index = Path(f"{prefix}.idx").read_bytes()
    assert index[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack("<Q", index[9:17])
    assert version == 1
    dtype = np.dtype(FAIRSEQ_CODES[index[17]])
    (count,) = struct.unpack("<Q", index[18:26])
    assert len(index) == 26 + 12 * count
    sizes = np.frombuffer(index, dtype="<i4", count=count, offset=26)
    pointers = np.frombuffer(index, dtype="<i8", count=count, offset=26 + 4 * count)
    data = Path(f"{prefix}.bin").read_bytes()
    items = [
        np.frombuffer(data, dtype=dtype, count=int(size), offset=int(pointer)).tolist()
        for size, pointer in zip(sizes, pointers)
    ]
    return dtype, items


def independent_write(prefix: Path, items: list[list[int]], dtype: type) -> None:
    code = {np.dtype(value): key for key, value in FAIRSEQ_CODES.items()}[np.dtype(dtype)]
    arrays = [np.asarray(item, dtype=dtype) for item in items]
    Path(f"{prefix}.bin").write_bytes(b"".join(array.tobytes() for array in arrays))
    sizes = np.array([array.size for array in arrays], dtype="<i4")
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1]) * np.dtype(dtype).itemsize]).astype(
        "<i8"
    )[: len(arrays)]
    header = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + bytes([code])
    header += struct.pack("<Q", len(arrays))
    Path(f"{prefix}.idx").write_bytes(header + sizes.tobytes() + pointers.tobytes())


ITEMS = [[5, 6, 2], [2], [7, 8, 9, 10, 11, 2], [65000, 2]]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_nmtkit_writes_what_an_independent_reader_reads(tmp_path: Path, dtype: type) -> None:
    builder = IndexedDatasetBuilder(tmp_path / "data", dtype)
    builder.add_item(ITEMS[0])
    flat = np.concatenate([np.asarray(item) for item in ITEMS[1:]])
    builder.add_items(flat, np.array([len(item) for item in ITEMS[1:]]))
    builder.finalize()

    read_dtype, items = independent_read(tmp_path / "data")
    assert read_dtype == np.dtype(dtype)
    assert items == ITEMS
    assert dataset_exists(tmp_path / "data")


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_independent_writer_is_read_by_mmap_dataset(tmp_path: Path, dtype: type) -> None:
    items = [[min(value, 250) for value in item] for item in ITEMS]
    independent_write(tmp_path / "data", items, dtype)
    dataset = MMapIndexedDataset(tmp_path / "data")
    assert len(dataset) == len(items)
    assert dataset.dtype == np.dtype(dtype)
    assert [dataset[i].tolist() for i in range(len(dataset))] == items
    assert dataset.sizes.tolist() == [len(item) for item in items]


def test_identical_bytes_to_independent_writer(tmp_path: Path) -> None:
    independent_write(tmp_path / "theirs", ITEMS, np.uint16)
    builder = IndexedDatasetBuilder(tmp_path / "ours", np.uint16)
    for item in ITEMS:
        builder.add_item(item)
    builder.finalize()
    for suffix in (".bin", ".idx"):
        ours = Path(f"{tmp_path / 'ours'}{suffix}").read_bytes()
        assert ours == Path(f"{tmp_path / 'theirs'}{suffix}").read_bytes()


def test_merge_file_appends_a_finished_dataset(tmp_path: Path) -> None:
    first = IndexedDatasetBuilder(tmp_path / "first", np.uint16)
    first.add_item([1, 2])
    first.finalize()
    merged = IndexedDatasetBuilder(tmp_path / "merged", np.uint16)
    merged.add_item([9])
    merged.merge_file(tmp_path / "first")
    merged.finalize()
    assert independent_read(tmp_path / "merged")[1] == [[9], [1, 2]]


def test_empty_dataset_round_trips(tmp_path: Path) -> None:
    IndexedDatasetBuilder(tmp_path / "empty", np.uint16).finalize()
    assert len(MMapIndexedDataset(tmp_path / "empty")) == 0
    assert independent_read(tmp_path / "empty")[1] == []


def test_out_of_range_item_raises_index_error(tmp_path: Path) -> None:
    independent_write(tmp_path / "data", ITEMS, np.uint16)
    with pytest.raises(IndexError):
        MMapIndexedDataset(tmp_path / "data")[len(ITEMS)]


def test_corrupt_files_raise_data_error(tmp_path: Path) -> None:
    independent_write(tmp_path / "data", ITEMS, np.uint16)
    index = Path(f"{tmp_path / 'data'}.idx")
    good = index.read_bytes()
    index.write_bytes(good[:-3])
    with pytest.raises(DataError, match="truncated"):
        MMapIndexedDataset(tmp_path / "data")
    index.write_bytes(b"NOTANIDX!" + good[9:])
    with pytest.raises(DataError, match="magic"):
        MMapIndexedDataset(tmp_path / "data")
    index.write_bytes(good)
    data = Path(f"{tmp_path / 'data'}.bin")
    data.write_bytes(data.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated"):
        MMapIndexedDataset(tmp_path / "data")
    with pytest.raises(DataError, match="not found"):
        MMapIndexedDataset(tmp_path / "missing")


def test_token_dtype_follows_fairseq_threshold() -> None:
    assert best_token_dtype(8008) == np.uint16
    assert best_token_dtype(65499) == np.uint16
    assert best_token_dtype(65500) == np.int32
