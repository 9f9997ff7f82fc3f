"""Process groups and the collectives built on them. Everything here is a thin layer over torch.distributed."""
from __future__ import annotations

import atexit
import gc
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fabric_kit.environments import ClusterEnvironment

ReduceOp = dist.ReduceOp | dist.ReduceOp.RedOpType
"""A torch.distributed reduction: `dist.ReduceOp.SUM` and the like are RedOpType members, `dist.ReduceOp(...)` a
ReduceOp."""

REDUCE_OPS: dict[str, ReduceOp] = {
    "sum": dist.ReduceOp.SUM,
    "mean": dist.ReduceOp.SUM,  # divided by the world size afterwards: gloo has no AVG
    "avg": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "product": dist.ReduceOp.PRODUCT,
    "prod": dist.ReduceOp.PRODUCT,
}


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_process_group(environment: ClusterEnvironment, backend: str, timeout: timedelta | None = None) -> None:
    """Join the job's process group once; a second call is a no-op.

    Under torchrun with restarts the group is built on a store prefixed by the restart round: a plain env://
    init on round two would try to reach the dead peers' old addresses through keys left from round one.
    """
    if is_initialized():
        return
    world_size, rank = environment.world_size(), environment.global_rank()
    os.environ["MASTER_ADDR"] = environment.main_address
    os.environ["MASTER_PORT"] = str(environment.main_port)
    kwargs: dict[str, Any] = {"backend": backend, "world_size": world_size, "rank": rank}
    if timeout is not None:
        kwargs["timeout"] = timeout
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is not None and "TORCHELASTIC_RUN_ID" in os.environ:
        agent_store = dist.TCPStore(environment.main_address, environment.main_port, is_master=False,
                                    timeout=timeout or timedelta(minutes=5))
        kwargs["store"] = dist.PrefixStore(f"fabric_kit/restart_{restart}/", agent_store)
    else:
        kwargs["init_method"] = "env://"
    dist.init_process_group(**kwargs)
    # A process that exits with its gloo group still open can abort in the group's destructor (SIGABRT,
    # "terminate called without an active exception"), turning a finished run into a failed one.
    atexit.register(_close_at_exit)


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()


def _close_at_exit() -> None:
    destroy_process_group()
    # Groups still referenced from cycles (a device mesh held by sharded parameters) would otherwise be freed only
    # by C++ static destruction, after Python is gone, where a joinable gloo thread aborts the process.
    gc.collect()


def leave_process_group() -> None:
    """Wait until every rank is here, then close the group: no rank tears down while a peer still talks to it."""
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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
    dist.all_reduce(result, op=reduce_op(op), group=group)
    if mean:
        result = result / dist.get_world_size(group)
    return result


def all_gather(tensor: Tensor, group: Any = None) -> Tensor:
    """Stack every process's tensor along a new first dimension (shapes must match across processes)."""
    tensor = tensor.contiguous()
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, tensor, group=group)
    return torch.stack(gathered)


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """Send any picklable object from `src` to every process."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def barrier(group: Any = None) -> None:
    dist.barrier(group=group)
