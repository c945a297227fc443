"""One wording for undecodable input lines, wherever text is read line by line."""

from __future__ import annotations

from nmtkit.errors import DataError


def invalid_utf8_message(name: str, line_number: int, raw: bytes, error: UnicodeDecodeError) -> str:
    return (
        f"{name}:{line_number}: invalid UTF-8 (byte 0x{raw[error.start]:02x} at byte "
        f"{error.start + 1} of the line); convert the file to UTF-8"
    )


def decode_utf8_line(raw: bytes, name: str, line_number: int) -> str:
    """Strict UTF-8; a DataError names the file, the line and the offending byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(invalid_utf8_message(name, line_number, raw, error)) from None
