"""Runs nmtkit-train with a fault injected at a chosen point (test helper, not product code):

    python tests/integration/train_with_fault.py POINT N key=value ...

POINT is where the process kills itself with SIGKILL, at the N-th occurrence:
    mid_update        after backward and before the optimizer step of update N
    checkpoint_write  after a checkpoint's temporary file is written, before its rename
    after_checkpoint  right after the N-th checkpoint save returned
    raise_on_rank1    (under torchrun) rank 1 raises a ValueError in update N
    oom               the N-th training batch raises torch.OutOfMemoryError (on rank 1 only
                      under torchrun), as a GPU that runs out of memory does
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from nmtkit import output_files, trainer
from nmtkit.tasks.base import Task
from nmtkit_cli.train import cli_main


def fail_at(point: str, n: int) -> None:
    calls = 0

    def counted(original):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            nonlocal calls
            if point == "checkpoint_write" and not str(args[1]).rsplit("/", 1)[-1].startswith(
                "checkpoint"
            ):
                return original(*args, **kwargs)  # count checkpoint files only, not logs
            calls += 1
            if point == "after_checkpoint":
                result = original(*args, **kwargs)
                if calls == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                return result
            if calls == n:
                if point == "raise_on_rank1":
                    if os.environ.get("RANK") == "1":
                        raise ValueError("injected failure on rank 1")
                elif point == "oom":
                    if os.environ.get("RANK", "1") == "1":
                        raise torch.OutOfMemoryError("CUDA out of memory (injected)")
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        return wrapper

    if point in ("mid_update", "raise_on_rank1"):
        trainer.scale_gradients = counted(trainer.scale_gradients)
    elif point == "oom":
        Task.train_step = counted(Task.train_step)
    elif point == "checkpoint_write":
        output_files._publish = counted(output_files._publish)
    elif point == "after_checkpoint":
        trainer.save_training_checkpoints = counted(trainer.save_training_checkpoints)
    else:
        raise SystemExit(f"unknown fault point {point}")


if __name__ == "__main__":
    fail_at(sys.argv[1], int(sys.argv[2]))
    cli_main(sys.argv[3:])
