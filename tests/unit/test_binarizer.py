from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nmtkit.data import binarizer
from nmtkit.data.binarizer import (
    ordered_parallel_map,
    read_parallel_chunks,
    scan_text_file,
    split_lines,
    write_line_sample,
)
from nmtkit.errors import DataError


def test_scan_counts_lines_and_hashes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    for content, lines in [(b"", 0), (b"x\n", 1), (b"x\ny", 2), (b"x\n\n\n", 3), (b"\n", 1)]:
        path.write_bytes(content)
        info = scan_text_file(path)
        assert info.lines == lines, content
        assert info.sha256 == hashlib.sha256(content).hexdigest()


def test_scan_reports_the_line_of_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\nstill ok\nab\xffc\n")
    with pytest.raises(DataError, match=r"bad.txt:3: invalid UTF-8 \(byte 0xff at byte 3 "):
        scan_text_file(path)
    path.write_bytes("groß".encode()[:-1])  # cut inside the last character
    with pytest.raises(DataError, match="bad.txt:1: invalid UTF-8"):
        scan_text_file(path)


def test_parallel_chunks_are_aligned_and_split_back_into_lines(tmp_path: Path) -> None:
    source, target = tmp_path / "s", tmp_path / "t"
    source.write_text("".join(f"s{i}\n" for i in range(10)), encoding="utf-8")
    target.write_text("".join(f"t{i}\r\n" for i in range(9)) + "t9", encoding="utf-8")
    chunks = list(read_parallel_chunks(source, target, chunk_lines=4))
    assert len(chunks) == 3
    lines = [tuple(map(split_lines, chunk)) for chunk in chunks]
    assert [len(s) for s, _ in lines] == [4, 4, 2] == [len(t) for _, t in lines]
    assert lines[2] == (["s8", "s9"], ["t8\r", "t9"])


def test_split_lines_keeps_empty_lines() -> None:
    assert split_lines(b"a\n\n\n") == ["a", "", ""]
    assert split_lines(b"a\nb") == ["a", "b"]


def write_numbered(path: Path, count: int, empty_every: int = 0) -> binarizer.TextFileInfo:
    lines = [
        "" if empty_every and i % empty_every == 0 else f"{path.name} {i}" for i in range(count)
    ]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return scan_text_file(path)


def test_line_sample_is_exact_seeded_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(binarizer, "CHUNK_LINES", 7)
    files = [write_numbered(tmp_path / "a", 50), write_numbered(tmp_path / "b", 30)]
    samples = []
    for seed in (1, 1, 2):
        output = tmp_path / f"sample{len(samples)}"
        assert write_line_sample(files, 20, seed, output) == 20
        samples.append(output.read_text(encoding="utf-8").splitlines())
    assert samples[0] == samples[1] != samples[2]
    sample = samples[0]
    assert len(set(sample)) == 20
    everything = [f"a {i}" for i in range(50)] + [f"b {i}" for i in range(30)]
    assert set(sample) <= set(everything)
    assert sample == sorted(sample, key=everything.index)  # file order kept


def test_line_sample_takes_everything_when_small_and_skips_empty_lines(tmp_path: Path) -> None:
    files = [write_numbered(tmp_path / "a", 12, empty_every=4)]
    output = tmp_path / "sample"
    assert write_line_sample(files, 1000, 1, output) == 9
    assert output.read_text(encoding="utf-8").splitlines() == [f"a {i}" for i in range(12) if i % 4]


def test_line_sample_is_roughly_uniform(tmp_path: Path) -> None:
    files = [write_numbered(tmp_path / "a", 2000)]
    output = tmp_path / "sample"
    write_line_sample(files, 500, 3, output)
    numbers = [int(line.split()[1]) for line in output.read_text(encoding="utf-8").splitlines()]
    first_half = sum(number < 1000 for number in numbers)
    assert 200 < first_half < 300


def _square(value: int) -> int:
    return value * value


def _no_setup() -> None:
    return None


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_parallel_map_keeps_order_and_bounds_what_is_in_flight(workers: int) -> None:
    consumed = 0

    def items():
        nonlocal consumed
        for value in range(40):
            consumed += 1
            yield value

    results = []
    for index, result in enumerate(
        ordered_parallel_map(_square, items(), workers=workers, initializer=_no_setup, initargs=())
    ):
        assert consumed - index <= max(1, workers * binarizer.CHUNKS_IN_FLIGHT_PER_WORKER)
        results.append(result)
    assert results == [value * value for value in range(40)]
