"""One seed for python, numpy and torch (CPU and every CUDA device), exported so that child processes and
dataloader workers derive theirs from it."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

SEED_VARIABLE = "FABRIC_KIT_GLOBAL_SEED"
WORKERS_VARIABLE = "FABRIC_KIT_SEED_WORKERS"


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seed every random generator with `seed` (or the exported one, or 0) and return it.

    `workers=True` makes dataloader workers seed themselves from the global seed, the worker id and the rank, so
    augmentations differ across workers yet repeat across runs.
    """
    if seed is None:
        seed = int(os.environ.get(SEED_VARIABLE, 0))
    if not isinstance(seed, int) or not (0 <= seed <= 2**32 - 1):
        raise ValueError(f"seed={seed!r} is out of range: pass an integer between 0 and {2**32 - 1}")
    os.environ[SEED_VARIABLE] = str(seed)
    os.environ[WORKERS_VARIABLE] = str(int(workers))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device lazily
    return seed


def global_seed() -> int:
    """The seed `seed_everything` set (in this process or exported by a parent), else 0: the default for seeds
    that must agree across ranks and restarts, such as the shuffle order."""
    return int(os.environ.get(SEED_VARIABLE, 0))


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """A `worker_init_fn` deriving distinct, reproducible seeds for each (rank, worker)."""
    base = int(os.environ.get(SEED_VARIABLE, 0))
    sequence = np.random.SeedSequence([base, worker_id, rank])
    torch_seed, numpy_seed, python_seed = sequence.generate_state(3, dtype=np.uint64)
    torch.manual_seed(int(torch_seed))
    np.random.seed(int(numpy_seed) % 2**32)
    random.seed(int(python_seed))
