"""Stopping on a scheduler's signal: Slurm and cloud schedulers send SIGTERM (or SIGUSR1 with
`#SBATCH --signal`) some time before they kill a job. The first signal asks the trainer to
finish the current update, write checkpoint_last.pt and exit with PREEMPTED_EXIT_CODE; a
second one stops at once (the last checkpoint written stays valid: writes are atomic)."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

# EX_TEMPFAIL from sysexits.h: "try again later" - the run is resumable by re-running it.
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Installs the handlers for the duration of a `with` block (main thread only)."""

    def __init__(self, program: str = "nmtkit-train") -> None:
        self.program = program
        self.received: str | None = None
        self._previous: dict[int, Any] = {}
        self._owner = os.getpid()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:
            # A forked data-loading worker inherited the handler: it must simply die, as its
            # parent (or the scheduler) asks, not wait for an update that it never runs.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        if self.received is not None:
            print(
                f"{self.program}: received {name} again: stopping at once without saving",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + signum)
        self.received = name
        print(
            f"{self.program}: received {name}: finishing the current update, then saving "
            "checkpoint_last.pt (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. called from a notebook worker)
                break
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
