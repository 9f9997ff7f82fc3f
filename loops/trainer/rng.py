"""`isolated_rng()`: a block of code that leaves the random generators as it found them, as Lightning runs its
sanity check, so a run draws the same numbers whatever `num_sanity_val_steps` is."""
from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Python's, numpy's and torch's generators (CPU, and `device`'s when it is a CUDA device) are put back after
    the block, also when it raises."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
