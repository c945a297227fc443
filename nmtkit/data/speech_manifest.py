"""Speech manifests: one utterance per line of a UTF-8 TSV file with a header.

    id  audio  n_samples  speaker  src_text  tgt_text

`audio` is relative to the manifest's folder, or absolute; `n_samples` counts the sample
frames in the file (before any resampling). Columns may come in any order and extra
columns are ignored. Fields are split on tabs only (csv.QUOTE_NONE): quotes in the text
are kept as they are.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nmtkit.data.utf8 import decode_utf8_line
from nmtkit.errors import DataError

MANIFEST_COLUMNS = ("id", "audio", "n_samples", "speaker", "src_text", "tgt_text")
TEXT_COLUMNS = ("src_text", "tgt_text")


@dataclass
class Utterance:
    """One manifest line; `audio` is resolved against the manifest's folder."""

    id: str
    audio: Path
    n_samples: int
    speaker: str
    src_text: str
    tgt_text: str
    line: int
    """Line number in the manifest (the header is line 1)."""

    def text(self, column: str) -> str:
        """The `src_text` or `tgt_text` column."""
        if column not in TEXT_COLUMNS:
            raise ValueError(f"not a text column: {column}")
        return self.src_text if column == "src_text" else self.tgt_text


def read_manifest(path: str | Path, require_text: str | None = None) -> list[Utterance]:
    """The utterances of a manifest, in file order; DataError `MANIFEST:LINE: ...` on mistakes.

    With `require_text` (`src_text` or `tgt_text`), an empty value in that column is an error.
    """
    path = Path(path)
    if require_text is not None and require_text not in TEXT_COLUMNS:
        raise ValueError(f"require_text must be one of {TEXT_COLUMNS}, not {require_text!r}")
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    numbered_rows = ((number, _split_fields(line)) for number, line in _decoded_lines(path))
    first = next(numbered_rows, None)
    if first is None:
        raise DataError(f"{path}:1: missing header; expected {_expected_header()}")
    _, header = first
    columns = _check_header(path, header)
    utterances: list[Utterance] = []
    first_line_of: dict[str, int] = {}
    for number, row in numbered_rows:
        if row == [] or row == [""]:
            continue  # blank line (e.g. at the end of the file)
        if len(row) != len(header):
            raise DataError(
                f"{path}:{number}: {len(row)} columns, the header has {len(header)} "
                "(a tab missing or extra in a field?)"
            )
        fields = {name: row[index] for name, index in columns.items()}
        utterance_id = fields["id"].strip()
        if not utterance_id:
            raise DataError(f"{path}:{number}: column id: empty")
        if utterance_id in first_line_of:
            raise DataError(
                f"{path}:{number}: column id: duplicate id '{utterance_id}' "
                f"(first on line {first_line_of[utterance_id]})"
            )
        first_line_of[utterance_id] = number
        audio = fields["audio"].strip()
        if not audio:
            raise DataError(f"{path}:{number}: column audio: empty")
        n_samples = fields["n_samples"].strip()
        if not n_samples.isdigit() or not n_samples.isascii():
            raise DataError(
                f"{path}:{number}: column n_samples: '{n_samples}' is not a non-negative integer"
            )
        utterance = Utterance(
            id=utterance_id,
            audio=path.parent / audio,  # an absolute `audio` replaces the folder
            n_samples=int(n_samples),
            speaker=fields["speaker"].strip(),
            src_text=fields["src_text"].strip(),
            tgt_text=fields["tgt_text"].strip(),
            line=number,
        )
        if require_text is not None and not utterance.text(require_text):
            raise DataError(f"{path}:{number}: column {require_text}: empty text")
        utterances.append(utterance)
    return utterances


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without its line end); strict UTF-8, a leading BOM dropped."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield number, decode_utf8_line(raw, str(path), number).rstrip("\r\n")


def _split_fields(line: str) -> list[str]:
    # QUOTE_NONE: a quote is text, never the start of a field spanning tabs or lines.
    return next(csv.reader((line,), delimiter="\t", quoting=csv.QUOTE_NONE), [])


def _check_header(path: Path, header: list[str]) -> dict[str, int]:
    """Column name -> index; every MANIFEST_COLUMNS name must appear exactly once."""
    names = [name.strip() for name in header]
    missing = [name for name in MANIFEST_COLUMNS if name not in names]
    if missing:
        raise DataError(
            f"{path}:1: header lacks column(s) {', '.join(missing)}; expected {_expected_header()}"
        )
    repeated = sorted({name for name in MANIFEST_COLUMNS if names.count(name) > 1})
    if repeated:
        raise DataError(f"{path}:1: header repeats column(s) {', '.join(repeated)}")
    return {name: names.index(name) for name in MANIFEST_COLUMNS}


def _expected_header() -> str:
    return "a tab-separated header '" + " ".join(MANIFEST_COLUMNS) + "'"
