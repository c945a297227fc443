"""Where preprocessors write: a hidden folder beside `destdir`, moved into place when complete.

The folder is a sibling of `destdir` (same file system), so the final rename is atomic and an
interrupted run never leaves a `destdir` that looks complete. `overwrite=true` replaces only a
folder that holds nothing but data-directory files, so a mistyped `destdir=.` cannot delete
a project.

Disk problems end as one line naming `destdir`: the folder that will hold it is checked
(created, and written to) before any input is read, and a disk that fills up during the
work is reported as such rather than as a library's internal error.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nmtkit.data.text_encoder import PREPROCESS_JSON
from nmtkit.errors import DataError
from nmtkit.output_files import OutputError, describe_os_error, is_user_os_error

# What an nmtkit or fairseq data directory holds; overwrite=true replaces only such folders.
DATA_DIRECTORY_FILES = (
    PREPROCESS_JSON,
    "preprocess.log",
    "dict.*.txt",
    "*.bin",
    "*.idx",
    "*.model",
    "*.vocab",
    "*.ids.txt",
    "*.speed.txt",
    "global_cmvn.npz",
)


def fingerprint(content: dict[str, Any]) -> str:
    """sha256 of a JSON-able description of the inputs' hashes and the output-shaping settings."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def check_destination(destdir: Path, fingerprint: str, overwrite: bool) -> None:
    """DataError unless `destdir` is absent, empty, or (with overwrite) a data directory."""
    if not destdir.exists():
        return
    if not destdir.is_dir():
        raise DataError(f"destdir={destdir}: exists and is not a folder")
    entries = sorted(destdir.iterdir())
    if not entries:
        return
    if not overwrite:
        if previous_fingerprint(destdir) == fingerprint:
            raise DataError(
                f"destdir={destdir} already exists, built from the same inputs and settings; "
                "pass overwrite=true to rebuild it"
            )
        raise DataError(
            f"destdir={destdir} already exists and holds other data; "
            "pass overwrite=true to replace it"
        )
    foreign = [
        entry.name
        for entry in entries
        if not (
            entry.is_file()
            and any(fnmatch.fnmatch(entry.name, pattern) for pattern in DATA_DIRECTORY_FILES)
        )
    ]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise DataError(
            f"destdir={destdir}: not replaced although overwrite=true, because it holds what "
            f"nmtkit-preprocess does not write ({shown}); choose another destdir"
        )


def previous_fingerprint(destdir: Path) -> str | None:
    try:
        return json.loads((destdir / PREPROCESS_JSON).read_text(encoding="utf-8")).get(
            "fingerprint"
        )
    except (OSError, ValueError, AttributeError):
        return None


def check_output_location(destdir: Path) -> Path:
    """The absolute destdir, once the folder that will hold it exists and takes a new folder
    (the staging folder and the final rename happen there); OutputError naming `destdir=`
    otherwise. Cheap, so it runs before the inputs are read and hashed."""
    if destdir.exists() and not destdir.is_dir():
        raise OutputError(f"destdir={destdir}: is a file, not a directory")
    # resolve(): `destdir=.` has no name to build a sibling's from.
    location = destdir.resolve()
    parent = location.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"destdir={destdir}: {parent} is a file, not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # A folder, not a file: what the staging folder will be.
        os.rmdir(tempfile.mkdtemp(prefix=f".{location.name}.write-test-", dir=parent))
    except OSError as error:
        if not is_user_os_error(error):
            raise
        reason = describe_os_error(error, "")  # the reason alone: the folder is named here
        raise OutputError(f"destdir={destdir}: cannot write in {parent} ({reason})") from None
    return location


# Written to find out whether a write failed because the disk is full: about the size of a
# SentencePiece model, so a disk with less room than one more model counts as full.
FULL_DISK_PROBE_BYTES = 1 << 20


def disk_is_full(folder: Path) -> bool:
    """True when `folder`'s file system (or the user's quota) has no room for
    FULL_DISK_PROBE_BYTES more.

    Libraries that write their own files (SentencePiece) report a full disk in their own
    words; asking the disk afterwards tells the user what really happened.
    """
    try:
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < FULL_DISK_PROBE_BYTES:
            return True
        # Free blocks are not the whole story (quotas, blocks reserved for root): write.
        descriptor, probe = tempfile.mkstemp(prefix=".nmtkit-space-test-", dir=folder)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(bytes(FULL_DISK_PROBE_BYTES))
                file.flush()
                os.fsync(file.fileno())
        finally:
            os.unlink(probe)
    except OSError as error:
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return False


@contextlib.contextmanager
def output_disk_errors(destdir: Path, work: Path, location: Path) -> Iterator[None]:
    """A full, read-only or over-quota disk while writing `work` (the staging folder) ends
    as one OutputError naming `destdir=`, its absolute `location` and the file being written
    when the error knows it, instead of an OSError from deep inside the work. Other errors,
    and disk errors about other files (the inputs), pass unchanged."""
    try:
        yield
    except OSError as error:
        if not is_user_os_error(error):
            raise
        written = Path(error.filename) if isinstance(error.filename, str) else None
        if written is not None and not written.is_relative_to(work):
            raise
        being_written = ""
        if written is not None and written != work:
            being_written = f" (writing {written.relative_to(work)})"
        raise OutputError(
            f"destdir={destdir}: {describe_os_error(error, location)}{being_written}"
        ) from None


def new_staging_folder(location: Path) -> Path:
    """A fresh hidden sibling `.NAME.tmp-<random>` of the resolved destdir."""
    staging = location.with_name(f".{location.name}.tmp-{uuid.uuid4().hex[:12]}")
    staging.mkdir()  # mkdir (not mkdtemp) so the folder gets the usual permissions
    return staging


def move_into_place(staging: Path, destdir: Path) -> None:
    """Renames the finished `staging` folder to `destdir`; an old destdir is removed after."""
    previous = None
    if destdir.exists():
        previous = destdir.with_name(f".{destdir.name}.old-{uuid.uuid4().hex[:8]}")
        destdir.rename(previous)
    staging.rename(destdir)
    if previous is not None:
        shutil.rmtree(previous)
