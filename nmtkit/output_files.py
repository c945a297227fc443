"""Output files and folders: checked before long work starts, written under a temporary name
and renamed when complete, so a failed or interrupted run never leaves a file that looks
finished. Disk problems (read-only, full, a file where a folder should be) become one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from nmtkit.errors import NmtkitError


class OutputError(NmtkitError):
    """An output path that cannot be written: read-only, full disk, wrong kind of path."""


# OSErrors that come from the user's disk or paths, not from a bug: reported as one line.
USER_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error on the device",
}


def is_user_os_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in USER_ERRNOS


def describe_os_error(error: OSError, path: str | Path | None = None) -> str:
    """'no space left on device at runs/x/checkpoint_last.pt' rather than a traceback."""
    reason = USER_ERRNOS.get(error.errno or 0, error.strerror or type(error).__name__)
    where = path if path is not None else (error.filename or "")
    return f"{reason} at {where}" if where else reason


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(path: str | Path, key: str) -> Path:
    """Creates `path` (and parents) if needed and proves a file can be written in it, so a bad
    `key=` fails before any work rather than after hours of it."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{key}={path}: is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=".nmtkit-write-test-", dir=folder)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(
            f"{key}={path}: cannot write there ({describe_os_error(error)})"
        ) from None
    return folder


def ensure_writable_file(path: str | Path, key: str) -> Path:
    """The parent folder is created and writable and `path` is not a folder."""
    file = Path(path)
    if file.is_dir():
        raise OutputError(f"{key}={path}: is a directory; give a file name")
    ensure_writable_dir(file.parent if str(file.parent) else Path("."), key)
    if file.exists() and not os.access(file, os.W_OK):
        raise OutputError(f"{key}={path}: the existing file is not writable")
    return file


def _temp_sibling(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _publish(temp_name: str, path: Path) -> None:
    # mkstemp creates files with mode 0600; a finished output gets the usual umask mode.
    os.chmod(temp_name, 0o666 & ~current_umask())
    os.replace(temp_name, path)
    _fsync_folder(path.parent)


def write_atomically(data: bytes | memoryview, path: str | Path) -> None:
    """Writes bytes to a temporary sibling, fsyncs, then renames over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = _temp_sibling(path)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _publish(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_text_output(path: str | Path) -> Iterator[IO[str]]:
    """A text file opened under a temporary name; renamed to `path` only when the block ends
    without an exception. An existing `path` stays untouched until then."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = _temp_sibling(path)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        _publish(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | Path, pattern: str = ".*.tmp") -> list[Path]:
    """Deletes temporary files a killed write left behind; returns what it removed."""
    removed = []
    for stale in Path(folder).glob(pattern):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed
