"""Where preprocessors write: a hidden folder beside `destdir`, moved into place when complete.

The folder is a sibling of `destdir` (same file system), so the final rename is atomic and an
interrupted run never leaves a `destdir` that looks complete. `overwrite=true` replaces only a
folder that holds nothing but data-directory files, so a mistyped `destdir=.` cannot delete
a project.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from nmtkit.data.text_encoder import PREPROCESS_JSON
from nmtkit.errors import DataError

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


def resolved_destination(destdir: Path) -> Path:
    """The absolute destdir (`destdir=.` has no name to build a sibling's from); its parent
    is created."""
    location = destdir.resolve()
    location.parent.mkdir(parents=True, exist_ok=True)
    return location


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
