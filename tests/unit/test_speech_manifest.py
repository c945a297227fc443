"""Speech manifests: columns, paths and one-line errors naming MANIFEST:LINE and the column."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmtkit.data.speech_manifest import MANIFEST_COLUMNS, read_manifest
from nmtkit.errors import DataError

HEADER = "\t".join(MANIFEST_COLUMNS)


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "m.tsv"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_reads_utterances_with_paths_relative_to_the_manifest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER,
        'a\taudio/a.flac\t16000\tspk1\tSay "hi".\tSag "hallo".',
        "b\t/abs/b.wav\t0\t\tx\t",
        "",
    )
    first, second = read_manifest(path)
    assert first.audio == tmp_path / "audio" / "a.flac" and first.n_samples == 16000
    assert (first.src_text, first.tgt_text, first.line) == ('Say "hi".', 'Sag "hallo".', 2)
    assert second.audio == Path("/abs/b.wav") and second.speaker == "" and second.line == 3


def test_columns_may_come_in_any_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tgt_text\tid\taudio\tspeaker\tn_samples\tsrc_text\textra",
        "hallo\tu1\tu1.wav\ts\t5\thello\tignored",
    )
    (utterance,) = read_manifest(path)
    assert (utterance.id, utterance.n_samples, utterance.src_text, utterance.tgt_text) == (
        "u1",
        5,
        "hello",
        "hallo",
    )


ROW = "u1\ta.wav\t10\ts\thello\thallo"


@pytest.mark.parametrize(
    ("lines", "require", "message"),
    [
        ([], None, ":1: missing header; expected a tab-separated header 'id audio"),
        (
            ["id\taudio\tn_samples\tsrc_text\ttgt_text", ROW],
            None,
            ":1: header lacks column(s) speaker",
        ),
        ([HEADER, "u1\ta.wav\t10\ts\thello"], None, ":2: 5 columns, the header has 6"),
        ([HEADER, ROW, ROW], None, ":3: column id: duplicate id 'u1' (first on line 2)"),
        ([HEADER, "u1\ta.wav\tten\ts\thello\thallo"], None, ":2: column n_samples: 'ten' is not"),
        ([HEADER, "u1\ta.wav\t-3\ts\thello\thallo"], None, ":2: column n_samples: '-3' is not"),
        ([HEADER, "u1\t\t3\ts\thello\thallo"], None, ":2: column audio: empty"),
        ([HEADER, "u1\ta.wav\t3\ts\thello\t "], "tgt_text", ":2: column tgt_text: empty text"),
    ],
)
def test_mistakes_are_one_line_errors(
    tmp_path: Path, lines: list[str], require: str | None, message: str
) -> None:
    path = write(tmp_path, *lines)
    with pytest.raises(DataError) as info:
        read_manifest(path, require_text=require)
    assert str(info.value).startswith(f"{path}{message}")
    assert "\n" not in str(info.value)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    path.write_bytes((HEADER + "\n" + ROW + "\n").encode() + b"u2\ta.wav\t1\ts\t\xff\tx\n")
    with pytest.raises(DataError, match=r"m\.tsv:3: invalid UTF-8 \(byte 0xff"):
        read_manifest(path)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.tsv")
