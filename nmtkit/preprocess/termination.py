"""SIGTERM during preprocessing: the same clean stop as Ctrl-C.

`kill`, Slurm, a container stop or a job scheduler's time limit send SIGTERM, whose default
action ends the process on the spot and leaves the staging folder behind. While
`sigterm_raises_terminated()` is active, SIGTERM instead raises `Terminated` (a
KeyboardInterrupt, so `except Exception` cannot swallow it) in the main process, and the
cleanup written for Ctrl-C runs: the text staging folder is removed, speech keeps its
finished shards for the next run. A second SIGTERM ends the process at once, as it would
without the handler.

Where the exception is raised matters, and three cases needed care (each was seen):
- Inside multiprocessing's own code (a Pool starting its threads and workers, or stopping
  them) an exception can leave a half-built pool whose thread keeps starting workers after
  the process has gone. There the exception waits (retried every RETRY_DELAY_S) until the
  main thread is back in our code or waits for a result, where it is safe.
- Forked workers must not run Python's handler at all: a SIGTERM that reaches a worker while
  Python sets it up is forgotten, and the worker then waits forever for a task. At-fork hooks
  hold SIGTERM back during the fork and give the worker the default action.
- Python drops an exception raised where it can only print "Exception ignored in ..." (a
  finalizer or at-fork callback); a `Terminated` dropped that way is raised again.
Waiting and raising again use SIGALRM (same handler), which the block also takes over.
POSIX only, like SIGTERM itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

# Exit status after SIGTERM, as a shell reports a process ended by it (128 + 15).
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM
# How long a pending Terminated waits before it is tried again.
RETRY_DELAY_S = 0.01
_MULTIPROCESSING_CODE = str(Path(multiprocessing.__file__).parent)
# multiprocessing functions in which the main thread only waits for a result
# (AsyncResult.get and .wait): an exception may leave them.
SAFE_TO_LEAVE = frozenset({("pool.py", "get"), ("pool.py", "wait")})


class Terminated(KeyboardInterrupt):
    """Raised in the main process when SIGTERM arrives; caught by the CLI (one line, 143)."""


# The process inside sigterm_raises_terminated(), if any (a forked child sees its parent's).
_owner: int | None = None


def _before_fork() -> None:
    if _owner == os.getpid():
        # Held back until both processes have settled (see _after_fork_in_child).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _after_fork_in_parent() -> None:
    if _owner == os.getpid():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _after_fork_in_child() -> None:
    global _owner
    if _owner is not None and _owner != os.getpid():
        _owner = None
        # A worker ends on SIGTERM as any process does (Pool.terminate() relies on it). A
        # SIGTERM sent since the fork was held back and is delivered now, with that action.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def _multiprocessing_frames(frame: FrameType | None) -> list[FrameType]:
    """The frames of the stack that ends at `frame` that run multiprocessing's code,
    innermost first."""
    frames = []
    while frame is not None:
        if frame.f_code.co_filename.startswith(_MULTIPROCESSING_CODE):
            frames.append(frame)
        frame = frame.f_back
    return frames


def must_wait(frame: FrameType | None, outside: int = 0) -> bool:
    """Whether an exception must not be raised in `frame` now: it runs multiprocessing code
    (other than waiting for a result) called from inside the block, whose stack holds
    `outside` multiprocessing frames below it."""
    inside = _multiprocessing_frames(frame)
    if len(inside) <= outside:
        return False
    # Waiting for a pool's result is safe to leave (the pool is then terminated by its
    # `with`) and is where the main thread spends its time: raise there at once.
    innermost = inside[0].f_code
    return (Path(innermost.co_filename).name, innermost.co_name) not in SAFE_TO_LEAVE


@contextlib.contextmanager
def sigterm_raises_terminated() -> Iterator[None]:
    """SIGTERM raises `Terminated` in this process inside the block; the previous handlers
    come back after. Does nothing outside the main thread (only it can set handlers)."""
    global _owner
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = _owner = os.getpid()
    # Frames below the block (a caller that itself runs in a multiprocessing.Process) do not
    # count: only multiprocessing code called from inside the block defers the exception.
    outside = len(_multiprocessing_frames(sys._getframe()))

    # "running"; "pending" (a SIGTERM came, Terminated not raised yet); "raised".
    state = "running"
    in_hook = False

    def handle(signal_number: int, frame: FrameType | None) -> None:
        nonlocal state
        if signal_number == signal.SIGTERM:
            if os.getpid() != owner or state != "running":
                # A child forked without the at-fork hooks (from C), or a second SIGTERM.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            state = "pending"
        elif state != "pending":
            return  # an alarm left over from a retry
        if in_hook or must_wait(frame, outside):
            signal.setitimer(signal.ITIMER_REAL, RETRY_DELAY_S)
            return
        state = "raised"
        raise Terminated

    previous_hook = sys.unraisablehook

    def raise_again_later(unraisable: Any) -> None:
        nonlocal state, in_hook
        if not (isinstance(unraisable.exc_value, Terminated) and os.getpid() == owner):
            previous_hook(unraisable)
            return
        # Dropped by Python: retry once this hook has returned (a raise in here is dropped).
        in_hook = True
        state = "pending"
        signal.setitimer(signal.ITIMER_REAL, RETRY_DELAY_S)
        in_hook = False

    previous = signal.signal(signal.SIGTERM, handle)
    previous_alarm = signal.signal(signal.SIGALRM, handle)
    sys.unraisablehook = raise_again_later
    try:
        yield
    finally:
        _owner = None
        sys.unraisablehook = previous_hook
        signal.setitimer(signal.ITIMER_REAL, 0)
        # None: a handler set outside Python, which cannot be put back; use the default.
        signal.signal(signal.SIGALRM, previous_alarm or signal.SIG_DFL)
        signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
