"""Settings for the whole test suite: one intra-op thread per process.

The test models are tiny, so more threads only add synchronisation; and on a 2-core machine
shared with another busy process, OpenMP's spinning worker threads made a one-second
training run 15x slower. Subprocesses inherit OMP_NUM_THREADS.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the environment variable, which torch reads at import)

torch.set_num_threads(1)
