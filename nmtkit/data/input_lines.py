"""Reading inference input line by line: from a file in chunks, or from stdin as it arrives."""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Iterator
from pathlib import Path

from nmtkit.data.utf8 import decode_utf8_line
from nmtkit.errors import DataError
from nmtkit.output_files import describe_os_error


def read_line_chunks(path: str | None, buffer_size: int) -> Iterator[list[str]]:
    """Chunks of up to `buffer_size` lines. From stdin, a chunk is also closed as soon as no
    more input is waiting, so an interactive user gets each result right away."""
    if path and path != "-":
        if not Path(path).is_file():
            raise DataError(f"input={path}: file not found")
        with open(path, "rb") as file:
            chunk: list[str] = []
            for line_number, raw in enumerate(file, start=1):
                chunk.append(decode_utf8_line(raw, path, line_number).rstrip("\r\n"))
                if len(chunk) >= buffer_size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        return
    yield from read_stdin_chunks(buffer_size)


def read_stdin_chunks(buffer_size: int) -> Iterator[list[str]]:
    descriptor = sys.stdin.fileno()
    pending, chunk, line_number = b"", [], 0
    while True:
        try:
            data = os.read(descriptor, 1 << 16)
        except OSError as error:  # e.g. `0>&-`-like redirections: write-only or a folder
            raise DataError(
                f"input: cannot read standard input ({describe_os_error(error)}); "
                "give input=FILE or pipe text in"
            ) from None
        pending += data
        *complete, pending = pending.split(b"\n")
        if not data and pending:  # last line without a newline
            complete, pending = [*complete, pending], b""
        for raw in complete:
            line_number += 1
            chunk.append(decode_utf8_line(raw, "<stdin>", line_number).rstrip("\r\n"))
        waiting = data and select.select([descriptor], [], [], 0)[0]
        while chunk and (len(chunk) >= buffer_size or not waiting):
            yield chunk[:buffer_size]
            chunk = chunk[buffer_size:]
        if not data:
            return
