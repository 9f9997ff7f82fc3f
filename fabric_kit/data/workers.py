"""`suggested_max_num_workers`: how many loader workers a process can use without oversubscribing the machine."""
from __future__ import annotations

import os


def suggested_max_num_workers(local_world_size: int) -> int:
    """An upper bound for `DataLoader(num_workers=...)`: the CPU cores this process may run on, shared by the
    `local_world_size` processes of this machine, minus one left to each main process; at least 1."""
    if not isinstance(local_world_size, int) or local_world_size < 1:
        raise ValueError(f"local_world_size={local_world_size!r} is not a process count: pass an int >= 1")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // local_world_size - 1)
