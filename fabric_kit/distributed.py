"""Process groups and the collectives built on them. Everything here is a thin layer over torch.distributed."""
from __future__ import annotations

import atexit
import gc
import os
import signal
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from fabric_kit import watchdog
from fabric_kit.collective_log import LOG
from fabric_kit.environments import ClusterEnvironment

if TYPE_CHECKING or dist.is_available():
    ReduceOp = dist.ReduceOp | dist.ReduceOp.RedOpType
    """A torch.distributed reduction: `dist.ReduceOp.SUM` and the like are RedOpType members, `dist.ReduceOp(...)`
    a ReduceOp."""
    REDUCE_OPS: dict[str, ReduceOp] = {
        "sum": dist.ReduceOp.SUM,
        "mean": dist.ReduceOp.SUM,  # divided by the world size afterwards: gloo has no AVG
        "avg": dist.ReduceOp.SUM,
        "max": dist.ReduceOp.MAX,
        "min": dist.ReduceOp.MIN,
        "product": dist.ReduceOp.PRODUCT,
        "prod": dist.ReduceOp.PRODUCT,
    }
else:  # a torch built without torch.distributed: one process, nothing to reduce, and `import fabric_kit` works
    ReduceOp = Any
    REDUCE_OPS = {}


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_process_group(environment: ClusterEnvironment, backend: str, timeout: timedelta | None = None,
                       collective_timeout: float | None = None) -> None:
    """Join the job's process group once; a second call is a no-op. With `collective_timeout` (seconds), start the
    collective watchdog (`fabric_kit.watchdog`) of this rank.

    Under torchrun with restarts the group is built on a store prefixed by the restart round: a plain env://
    init on round two would try to reach the dead peers' old addresses through keys left from round one.

    A process that joins again after its group was destroyed (a second Fabric in the same processes) meets its
    peers on a fresh store under a prefix of its own: a rank that is faster to get there could otherwise reach
    rank 0's previous store, not yet closed, read the previous round's addresses and hang (`_rejoin_store`).
    """
    if is_initialized():
        return
    world_size, rank = environment.world_size(), environment.global_rank()
    os.environ["MASTER_ADDR"] = environment.main_address
    os.environ["MASTER_PORT"] = str(environment.main_port)
    kwargs: dict[str, Any] = {"backend": backend, "world_size": world_size, "rank": rank}
    if timeout is not None:
        kwargs["timeout"] = timeout
    _JOINS[0] += 1
    if _restart_round() is not None:
        kwargs["store"] = store_client(environment, timeout or timedelta(minutes=5))
    elif _JOINS[0] > 1:
        kwargs["store"] = _rejoin_store(environment, rank, timeout or timedelta(minutes=5))
    else:
        kwargs["init_method"] = "env://"
    dist.init_process_group(**kwargs)
    # A process that exits with its gloo group still open can abort in the group's destructor (SIGABRT,
    # "terminate called without an active exception"), turning a finished run into a failed one.
    atexit.register(_close_at_exit)
    if collective_timeout is not None and world_size > 1:
        watchdog.start(dist.PrefixStore("watchdog/", store_client(environment, timedelta(seconds=30))), rank,
                       world_size, collective_timeout)


_JOINS = [0]
"""How many times this process joined a process group: the same count on every rank that joins in step."""


def store_client(environment: ClusterEnvironment, timeout: timedelta) -> dist.Store:
    """A new connection to the c10d store the job's processes meet on (the launcher's: torchrun's agent, or rank
    0's), under a prefix of its own for each torchrun restart round and each time the processes join a group."""
    client = dist.TCPStore(environment.main_address, environment.main_port, is_master=False, timeout=timeout)
    return dist.PrefixStore(_store_prefix(), client)


def _store_prefix() -> str:
    return f"fabric_kit/restart_{_restart_round() or 0}/join_{_JOINS[0]}/"


def _rejoin_store(environment: ClusterEnvironment, rank: int, timeout: timedelta) -> dist.Store:
    """The store of a second (third, ...) group in these processes. Rank 0 hosts a new one and marks it with this
    join's key; the others connect until they reach a store with that key: one that lacks it is rank 0's previous
    store, which closes (ending the connection) once rank 0 destroyed its previous group."""
    ready = "ready"
    if rank == 0:
        server = dist.TCPStore(environment.main_address, environment.main_port, is_master=True, timeout=timeout,
                               wait_for_workers=False)
        hosted = dist.PrefixStore(_store_prefix(), server)
        hosted.set(ready, "1")
        return hosted
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        try:
            store = store_client(environment, timeout)
            store.wait([ready], timeout)
            return store
        except dist.DistError:  # rank 0's previous store closed under us, or is not up yet: try again
            if time.monotonic() > deadline:
                raise


def _restart_round() -> str | None:
    """torchrun's restart round (0 for the first run), None outside torchrun."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    return restart if restart is not None and "TORCHELASTIC_RUN_ID" in os.environ else None


def destroy_process_group() -> None:
    watchdog.stop()
    if is_initialized():
        dist.destroy_process_group()


def _close_at_exit() -> None:
    # Closing the group tells the peers this rank is gone; one of them then fails at once, and its launcher stops
    # the others with SIGTERM. A rank already on its way out finishes with its own exit status instead (a launcher
    # reports the first failure by status, and SIGKILL still comes after its grace period).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    destroy_process_group()
    # Groups still referenced from cycles (a device mesh held by sharded parameters) would otherwise be freed only
    # by C++ static destruction, after Python is gone, where a joinable gloo thread aborts the process.
    gc.collect()


def leave_process_group() -> None:
    """Wait until every rank is here, then close the group: no rank tears down while a peer still talks to it."""
    if is_initialized():
        barrier()
        destroy_process_group()


def reduce_op(op: str | ReduceOp) -> ReduceOp:
    if not isinstance(op, str):
        return op
    found = REDUCE_OPS.get(op.lower())
    if found is None:
        raise ValueError(f"reduce_op={op!r} is not supported; accepted: {', '.join(REDUCE_OPS)} or a "
                         "torch.distributed.ReduceOp")
    return found


def all_reduce(tensor: Tensor, op: str | ReduceOp = "mean", group: Any = None) -> Tensor:
    """Reduce a copy of `tensor` over all processes; "mean" divides the sum by the group size."""
    mean = isinstance(op, str) and op.lower() in ("mean", "avg")
    result = tensor.to(torch.get_default_dtype()) if mean and not tensor.is_floating_point() else tensor.clone()
    seq = LOG.enter("all_reduce")
    try:
        dist.all_reduce(result, op=reduce_op(op), group=group)
    finally:
        LOG.left = seq
    if mean:
        result = result / dist.get_world_size(group)
    return result


def all_gather(tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor:
    """Stack every process's tensor along a new first dimension (shapes must match across processes);
    `sync_grads=True` lets gradients flow back to every process's tensor."""
    tensor = tensor.contiguous()
    seq = LOG.enter("all_gather")
    try:
        if sync_grads:
            from torch.distributed.nn.functional import all_gather as all_gather_with_grads

            return torch.stack(all_gather_with_grads(tensor, group=group or dist.group.WORLD))
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, tensor, group=group)
    finally:
        LOG.left = seq
    return torch.stack(gathered)


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """Send any picklable object from `src` to every process."""
    box = [obj]
    seq = LOG.enter("broadcast")
    try:
        dist.broadcast_object_list(box, src=src, group=group)
    finally:
        LOG.left = seq
    return box[0]


def barrier(group: Any = None) -> None:
    seq = LOG.enter("barrier")
    try:
        dist.barrier(group=group)
    finally:
        LOG.left = seq
