"""`strategy="xla"`: start one process per XLA device with torch_xla's PJRT spawn (`xmp.spawn`, what
`torch_xla.launch` calls) and return the result of this host's first process."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from fabric_kit.accelerators.xla import import_torch_xla
from fabric_kit.strategies.launchers.launcher import Launcher


class XLALauncher(Launcher):
    def __init__(self, num_processes: int, start_method: str = "spawn") -> None:
        self.num_processes = num_processes
        self.start_method = start_method

    @property
    def is_interactive_compatible(self) -> bool:
        return self.start_method == "fork"

    @property
    def nprocs(self) -> int | None:
        """PJRT accepts 1 (run in this process) or None (one process per device of the host), nothing between."""
        return 1 if self.num_processes == 1 else None

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import_torch_xla()
        import torch_xla.distributed.xla_multiprocessing as xmp

        # PJRT hands the arguments to a process pool, which pickles them: a plain multiprocessing queue cannot
        # travel that way, a manager's queue proxy can.
        with mp.Manager() as manager:
            results = manager.Queue()
            xmp.spawn(_run_rank, args=(function, args, kwargs, results), nprocs=self.nprocs,
                      start_method=self.start_method)
            return results.get()


def _run_rank(global_ordinal: int, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              results: Any) -> None:
    import torch_xla.runtime as xr

    result = function(*args, **kwargs)
    # Local, not global, ordinal 0: on a multi-host pod every host's launcher waits for a result.
    if xr.local_ordinal() == 0:
        results.put(result)
