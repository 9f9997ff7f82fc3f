"""One seed for python, numpy and torch (CPU and every CUDA device), exported so that child processes and
dataloader workers derive theirs from it."""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch

from fabric_kit.rank_zero import global_rank, rank_zero_warn

SEED_VARIABLE = "FABRIC_KIT_GLOBAL_SEED"
WORKERS_VARIABLE = "FABRIC_KIT_SEED_WORKERS"
# Lightning's names, which Lightning-style launchers and scripts export and read: exported and read too.
LIGHTNING_SEED_VARIABLE, LIGHTNING_WORKERS_VARIABLE = "PL_GLOBAL_SEED", "PL_SEED_WORKERS"
MAX_SEED = 2**32 - 1

log = logging.getLogger(__name__)


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed every random generator with `seed` and return it; None takes the exported seed (FABRIC_KIT_GLOBAL_SEED,
    else Lightning's PL_GLOBAL_SEED), else 0 with a warning, as in Lightning. The seed is exported under both names,
    so child processes and `reset_seed` find it; `verbose` logs it (and warns about the missing one).

    `workers=True` makes the loaders that `Fabric.setup_dataloaders` returns seed each worker process
    (`seed_worker`), so random augmentations differ across workers and ranks yet repeat across runs.
    """
    if seed is None:
        exported = _exported(SEED_VARIABLE, LIGHTNING_SEED_VARIABLE)
        if exported is None:
            seed = 0
            if verbose:
                rank_zero_warn(f"seed_everything(): no seed given nor exported ({SEED_VARIABLE} / "
                               f"{LIGHTNING_SEED_VARIABLE}); seed set to 0")
        else:
            try:
                seed = int(exported)
            except ValueError:
                raise ValueError(f"the exported seed {exported!r} is not an integer between 0 and {MAX_SEED}"
                                 ) from None
    elif not isinstance(seed, int):
        seed = _as_int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed!r} is out of range: pass an integer between 0 and {MAX_SEED}")
    if verbose:
        log.info(f"[rank: {global_rank()}] Seed set to {seed}")
    for name in (SEED_VARIABLE, LIGHTNING_SEED_VARIABLE):
        os.environ[name] = str(seed)
    for name in (WORKERS_VARIABLE, LIGHTNING_WORKERS_VARIABLE):
        os.environ[name] = str(int(workers))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device lazily
    return seed


def reset_seed() -> None:
    """Seed again with what `seed_everything` exported (here or in a parent process), with its `workers`
    setting; nothing when it never ran."""
    seed = _exported(SEED_VARIABLE, LIGHTNING_SEED_VARIABLE)
    if seed is not None:
        workers = _exported(WORKERS_VARIABLE, LIGHTNING_WORKERS_VARIABLE) == "1"
        seed_everything(int(seed), workers=workers, verbose=False)


@contextmanager
def isolate_rng(include_cuda: bool = True) -> Iterator[None]:
    """A block after which python's, numpy's and torch's generators are as they were before it, also when it
    raises (Lightning's `isolate_rng`, which the Trainer runs its sanity check in). `include_cuda` covers every
    CUDA device's generator too; pass False in a forked process where CUDA must not be initialised."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if include_cuda and torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def global_seed() -> int:
    """The seed `seed_everything` set (in this process or exported by a parent), else 0: the default for seeds
    that must agree across ranks and restarts, such as the shuffle order."""
    return int(_exported(SEED_VARIABLE, LIGHTNING_SEED_VARIABLE) or 0)


def _exported(*names: str) -> str | None:
    return next((os.environ[name] for name in names if name in os.environ), None)


def _as_int(seed: object) -> int:
    try:
        value: int = int(seed)  # type: ignore[call-overload]  # anything int() takes, as Lightning casts it
    except (TypeError, ValueError):
        raise ValueError(f"seed={seed!r} is not an integer between 0 and {MAX_SEED}") from None
    return value


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
    if _exported(WORKERS_VARIABLE, LIGHTNING_WORKERS_VARIABLE) != "1":
        return None
    return partial(seed_worker, rank=rank)
