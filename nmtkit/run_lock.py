"""One training per run directory: `train.lock` holds the owner's pid and host. A second
`nmtkit-train` on the same save_dir is refused; a lock left by a dead process on this host is
taken over with a message (a crash or kill -9 cannot remove its own lock)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from nmtkit.errors import ConfigError

LOCK_NAME = "train.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RunLock:
    def __init__(self, save_dir: Path) -> None:
        self.path = save_dir / LOCK_NAME
        self.held = False
        self.took_over: str | None = None

    def acquire(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            with os.fdopen(descriptor, "w") as file:
                json.dump(record, file)
            self.held = True
            return
        raise ConfigError(f"{self.path}: could not take the run lock (another run races for it)")

    def _handle_existing(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = None, -1, ""
        if owner is not None and host == socket.gethostname() and _process_alive(pid):
            raise ConfigError(
                f"checkpoint.save_dir={self.path.parent}: another training (pid {pid}) is "
                "running in this directory; wait for it, or choose another save_dir"
            )
        if owner is not None and host != socket.gethostname():
            raise ConfigError(
                f"checkpoint.save_dir={self.path.parent}: locked by a training on host {host} "
                f"(pid {pid}); if that run is dead, delete {self.path}"
            )
        self.took_over = (
            f"took over the stale lock of pid {pid}, which is no longer running"
            if owner is not None
            else f"replaced an unreadable lock file {self.path.name}"
        )
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
