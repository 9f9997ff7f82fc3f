"""The random generators' states of one process (python, numpy, torch CPU and CUDA), in a form the safe loader
accepts (ints, tuples, tensors), so a resumed run draws the same dropout masks and augmentations. The generators'
arrays are tensors, not tuples of ints: the safe loader reads a tensor at C speed, and python's 625 ints one by one
in Python (some milliseconds per rank, which a sharded load of a large job would pay on every rank)."""
from __future__ import annotations

import random
import zlib
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """This process's generator states."""
    numpy_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Set this process's generators to a state from `capture` (CUDA only when both have CUDA devices)."""
    python = state["python"]
    if isinstance(python, dict):
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    else:  # a checkpoint of an earlier fabric_kit: random.getstate() itself
        random.setstate(_as_tuples(python))
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, device)


def for_rank(states: dict[int, dict[str, Any]], rank: int) -> None:
    """Restore `rank`'s saved state. A rank the checkpoint has no state for (it was saved with fewer processes)
    seeds every generator from a CRC of rank 0's saved torch state and its rank: the same on every resume, and
    distinct per rank, but not a continuation of any stream of the saved run."""
    if rank in states:
        restore(states[rank])
        return
    base = zlib.crc32(states[min(states)]["torch"].numpy().tobytes())
    seeds = np.random.SeedSequence([base, rank]).generate_state(3, dtype=np.uint64)
    random.seed(int(seeds[0]))
    np.random.seed(int(seeds[1]) % 2**32)
    torch.manual_seed(int(seeds[2]))  # also every CUDA device


def _as_tuples(value: Any) -> Any:
    # random.setstate wants the nested tuples back; a round trip through other serialisers may yield lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
