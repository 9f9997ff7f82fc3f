"""`ddp_spawn` / `ddp_fork`: start the ranks with torch.multiprocessing and run the launched function in each.
Used where there is no script to re-run (notebooks) or when the user prefers spawning.

The launching process supervises the ranks as torchrun does: when one fails (its traceback is on the shared
stderr), the others get SIGTERM, a few seconds, then SIGKILL, and `launch` raises `RankFailed`, a SystemExit with
that rank's exit status (128 + signal for a killed one). SIGTERM / SIGINT to the launching process are forwarded to
every rank, which get the grace period (FABRIC_KIT_GRACE_PERIOD, 30 s) before SIGKILL; a rank ends by itself when
the launching process is gone."""
from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp
from torch.nn import Module

from fabric_kit import signals
from fabric_kit.collections import apply_to_collection, move_to_device
from fabric_kit.distributed import leave_process_group
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.strategies.launchers.launcher import Launcher
from fabric_kit.strategies.launchers.processes import (
    FAILURE_GRACE_PERIOD,
    RankFailed,
    grace_period,
    root_cause,
    watch_parent,
)


class MultiprocessingLauncher(Launcher):
    def __init__(self, environment: ClusterEnvironment, num_processes: int, start_method: str = "spawn") -> None:
        if start_method not in mp.get_all_start_methods():
            raise ValueError(f"start method {start_method!r} is not available on this platform; available: "
                             f"{mp.get_all_start_methods()}")
        self.environment = environment
        self.num_processes = num_processes
        self.start_method = start_method

    @property
    def is_interactive_compatible(self) -> bool:
        return self.start_method == "fork"

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Pick the address before forking so every rank agrees on it.
        os.environ["MASTER_ADDR"] = self.environment.main_address
        os.environ["MASTER_PORT"] = str(self.environment.main_port)
        results = mp.get_context(self.start_method).SimpleQueue()
        context = mp.start_processes(_run_rank, args=(self.environment, self.num_processes, function, args, kwargs,
                                                      results, self.start_method != "fork", os.getpid()),
                                     nprocs=self.num_processes, start_method=self.start_method, join=False)
        processes = context.processes
        deadline: list[float] = []  # set by the first forwarded signal: the ranks' grace period ends then

        def forward(number: int) -> None:
            if not deadline:
                deadline.append(time.monotonic() + grace_period())
            for process in processes:
                if process.is_alive() and process.pid is not None:
                    os.kill(process.pid, number)

        signals.forward_to(forward)
        try:
            return _supervise(processes, results)
        except RankFailed:
            raise
        except BaseException:
            # SystemExit / KeyboardInterrupt after a forwarded signal: the ranks end within their grace period.
            signals.stopping_signal()
            _wait_or_kill(processes, deadline[0] if deadline else time.monotonic() + FAILURE_GRACE_PERIOD)
            raise
        finally:
            signals.stop_forwarding(forward)


def _supervise(processes: list[Any], results: Any) -> Any:
    """Rank 0's result once every rank has ended well; `RankFailed` once one fails, the others stopped (SIGTERM, a
    few seconds, SIGKILL). Each rank has printed its own traceback."""
    # Read rank 0's result while the ranks run: one larger than the pipe's buffer blocks rank 0 in `put` until it
    # is read.
    received: list[bytes] = []
    while True:
        if not received and not results.empty():
            received.append(results.get())
        codes = [process.exitcode for process in processes]
        if any(codes):
            # The others may be failing too, as a consequence or on their way out: their statuses tell the cause.
            _wait_or_kill(processes, time.monotonic() + FAILURE_GRACE_PERIOD, kill=False)
            failed = {rank: code for rank, process in enumerate(processes) if (code := process.exitcode)}
            rank = root_cause(failed)
            error = RankFailed(rank, processes[rank].pid, failed[rank])
            print(f"fabric_kit: {error}; stopping the job", file=sys.stderr, flush=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()
            _wait_or_kill(processes, time.monotonic() + FAILURE_GRACE_PERIOD)
            raise error
        if all(code == 0 for code in codes):
            break
        time.sleep(0.05)
    if not received:
        received.append(results.get())
    return pickle.loads(received[0])


def _wait_or_kill(processes: list[Any], deadline: float, kill: bool = True) -> None:
    """Wait for every process until `deadline`, then SIGKILL those still running (with `kill`)."""
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if kill and process.is_alive():
            process.kill()
            process.join()


def _run_rank(local_rank: int, environment: ClusterEnvironment, num_processes: int, function: Callable[..., Any],
              args: tuple[Any, ...], kwargs: dict[str, Any], results: Any, pickled: bool, launcher: int) -> None:
    signals.reset()  # a forked rank must not forward signals to its siblings as the launching process does
    watch_parent(launcher, local_rank)
    os.environ["LOCAL_RANK"] = os.environ["RANK"] = str(local_rank)
    os.environ["WORLD_SIZE"] = os.environ["LOCAL_WORLD_SIZE"] = str(num_processes)
    os.environ["NODE_RANK"] = "0"
    # With spawn, `environment` is a pickled copy of the parent's and `function` holds another: both must learn
    # this process's rank.
    environment.set_global_rank(local_rank)
    environment.set_world_size(num_processes)
    if pickled:
        _own_module_tensors((args, kwargs))
    try:
        result = function(*args, **kwargs)
    except Exception:
        # On the shared stderr, as every rank's of the re-run-script launcher (torch's wrapper only files it).
        traceback.print_exc()
        raise
    leave_process_group()
    if local_rank == 0:
        # Plain pickle copies tensor data: torch's shared-memory pickling would hand the parent file descriptors
        # of a process that has exited by the time they are opened. CPU tensors, as the parent may have no GPU.
        results.put(pickle.dumps(move_to_device(result, "cpu")))
    # The rank's work is done and delivered. Ending here, as forked children always do, skips C++ static
    # destructors, where torch's store and gloo threads can abort a finished process (SIGABRT, no Python frame).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _own_module_tensors(data: Any) -> None:
    """torch's pickling for spawn puts CPU tensors in shared memory: every rank's copy of a model passed to
    `launch` would train one set of weights, each rank stepping it (two ranks: two updates per step). Each rank
    takes its own copy of the parameters and buffers of the modules it received."""
    def own(module: Module) -> Module:
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()
        return module

    apply_to_collection(data, Module, own)
