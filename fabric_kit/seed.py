"""One seed for python, numpy and torch (CPU and every CUDA device), exported so that child processes and
dataloader workers derive theirs from it."""
from __future__ import annotations

import os
import random
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

SEED_VARIABLE = "FABRIC_KIT_GLOBAL_SEED"
WORKERS_VARIABLE = "FABRIC_KIT_SEED_WORKERS"


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seed every random generator with `seed` (or the exported one, or 0) and return it.

    `workers=True` makes the loaders that `Fabric.setup_dataloaders` returns seed each worker process
    (`seed_worker`), so random augmentations differ across workers and ranks yet repeat across runs.
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
    """A `worker_init_fn` seeding torch, numpy and python in dataloader worker `worker_id` of global rank `rank`
    from the loader's base seed (which the loader draws from the global torch generator for each pass, so it
    repeats across runs and differs between passes), the worker id and the rank. Lightning's
    `pl_worker_init_function` semantics: without it, every worker starts numpy from the parent's state, and every
    rank seeded alike gives its workers the same torch seeds."""
    base_seed = torch.initial_seed() - worker_id  # torch seeds each worker with the loader's base seed + its id
    torch_seed, python_seed, numpy_seed = np.random.SeedSequence([base_seed, worker_id, rank]).generate_state(3)
    torch.manual_seed(int(torch_seed))
    random.seed(int(python_seed))
    np.random.seed(int(numpy_seed))


def worker_init_function(rank: int) -> Callable[[int], None] | None:
    """`seed_worker` for global rank `rank` once `seed_everything(workers=True)` ran (here or in a parent process),
    else None: what `Fabric.setup_dataloaders` gives a loader that has no `worker_init_fn` of its own."""
    if os.environ.get(WORKERS_VARIABLE) != "1":
        return None
    return partial(seed_worker, rank=rank)
