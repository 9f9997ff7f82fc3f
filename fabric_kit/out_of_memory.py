"""Out-of-memory errors handled on every rank together: `find_executable_batch_size` for raw Fabric loops, and the
agreement it is built on, which the Trainer's batch-size search and `Trainer(on_oom="reduce")` use too.

    @find_executable_batch_size(fabric, starting_batch_size=64, floor=2)
    def train(batch_size):
        loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=batch_size))
        for x, y in loader:
            ...  # forward, fabric.backward(loss), optimizer.step()

    train()  # at 64; after an out-of-memory error on any rank, at 32 on every rank, then 16, ... down to 2

An attempt that runs out of memory on one rank must end on all of them, or the others wait forever in the next
collective. So every attempt ends in one small all-reduce of a flag ("this rank ran out of memory"), which the rank
that failed joins too; and while an attempt runs, `fabric.backward` first checks the same flag, so a rank that is
about to all-reduce its gradients learns there that a peer failed in its forward and stops too (raising
`PeerOutOfMemoryError`), instead of waiting in the gradient all-reduce for a rank that never comes (one small
all-reduce per backward while an attempt runs). Each rank calls
as many flag all-reduces as the others, whatever failed where. After a failure every rank's strategy forgets what
the forwards prepared for a backward that never ran (`Strategy.discard_backward`: DDP's reducer, FSDP's gathered
shard groups). Under FSDP each shard group's forward checks the flag too before its all-gather
(`Strategy.out_of_memory_checks`), so a failure in an earlier group's forward is agreed on as well; DeepSpeed ZeRO
stages 0 to 2 need nothing more, stage 3 is refused. Not agreed on this way: an out-of-memory error inside a
backward that all-reduces gradients (DDP's, FSDP's reduce-scatters), where the peers are already inside that
collective, and one raised on a rank before a forward whose own collectives (DDP's buffer broadcast) the others run.
"""
from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from fabric_kit.fabric import Fabric

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["OutOfMemoryAgreement", "PeerOutOfMemoryError", "find_executable_batch_size", "free_memory",
           "is_oom_error"]


def is_oom_error(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or a RuntimeError whose message says the device or the CPU allocator ran out."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def free_memory() -> None:
    """Collect garbage and hand the accelerator's cached blocks back, after an out-of-memory error (call it outside
    the `except` block: the failed attempt's frames, and their tensors, are only freed once it is left)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    elif torch.backends.mps.is_available():
        torch.mps.empty_cache()


class PeerOutOfMemoryError(torch.OutOfMemoryError):
    """Raised by `fabric.backward` inside an `OutOfMemoryAgreement` on a rank whose peer ran out of memory: the
    attempt ends here on this rank too (the agreement catches it)."""


class OutOfMemoryAgreement:
    """A context for one attempt that may run out of memory on some rank: it catches the out-of-memory error
    (`is_oom_error`), and on leaving, every rank learns whether any rank ran out (`failed`), through one all-reduce
    of a flag that the failing rank joins too. Other errors propagate. Inside it `fabric.backward` checks the flag
    first (see the module's docstring). `fabric=None`: one process, nothing to agree on.

        with OutOfMemoryAgreement(fabric) as attempt:
            train_a_few_steps(batch_size)
        if attempt.failed:  # on every rank alike
            free_memory()
            batch_size //= 2
    """

    def __init__(self, fabric: Fabric | None) -> None:
        if fabric is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError(f"OutOfMemoryAgreement(fabric=None) in a process group of {dist.get_world_size()} "
                             "ranks: pass the Fabric, so every rank agrees on an out-of-memory error")
        self._fabric = fabric
        self.failed = False
        """Whether some rank ran out of memory in the attempt (the same on every rank once the context is left)."""
        self.ran_out_here = False
        """Whether this rank's own code ran out of memory (not only a peer)."""
        self._agreed = False
        self._checks = ExitStack()

    def __enter__(self) -> OutOfMemoryAgreement:
        if self._fabric is not None:
            if self._fabric._oom_agreement is not None:
                raise RuntimeError("an OutOfMemoryAgreement is already open on this Fabric; they do not nest")
            self._checks.enter_context(self._fabric.strategy.out_of_memory_checks(self.check))
            self._fabric._oom_agreement = self
        self.failed = self.ran_out_here = self._agreed = False
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if self._fabric is not None:
            self._fabric._oom_agreement = None
        with self._checks:  # closed last: the strategy's discard_backward still knows the attempt's forwards
            if error is not None and not is_oom_error(error):
                return False
            self.ran_out_here = error is not None and not isinstance(error, PeerOutOfMemoryError)
            self.failed = True if self._agreed else self._any_rank(self.ran_out_here)
            if self.failed and self._fabric is not None:
                self._fabric.strategy.discard_backward()  # a forward on some rank may await a backward never run
            return error is not None

    def check(self) -> None:
        """Agree that no rank has run out of memory so far; raise `PeerOutOfMemoryError` where one has. Called by
        `fabric.backward` before each backward inside the context."""
        if self._any_rank(False):
            self._agreed = True
            raise PeerOutOfMemoryError("another rank ran out of memory; this rank ends the attempt with it")

    def _any_rank(self, failed: bool) -> bool:
        fabric = self._fabric
        if fabric is None or fabric.world_size == 1:
            return failed
        flag = torch.tensor([int(failed)], dtype=torch.int32, device=fabric.device)
        return bool(fabric.all_reduce(flag, reduce_op="max").item())


def find_executable_batch_size(fabric: Fabric | None = None, *, starting_batch_size: int = 128, floor: int = 1
                               ) -> Callable[[Callable[Concatenate[int, P], R]], Callable[P, R]]:
    """Decorate a function whose first argument is the batch size (Accelerate's `find_executable_batch_size`,
    agreed across ranks): calling it (without that argument) runs it at `starting_batch_size`; when it runs out of
    memory on any rank, every rank frees memory, halves the size and calls it again, never below `floor`. When even
    `floor` runs out of memory, every rank raises a RuntimeError naming it. The function runs from its start at
    each size, so build the loaders (and whatever depends on the size) inside it. `fabric=None`: one process.
    Non-memory errors propagate at once."""
    for name, value in (("starting_batch_size", starting_batch_size), ("floor", floor)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"find_executable_batch_size({name}={value!r}): pass an int >= 1")
    if floor > starting_batch_size:
        raise ValueError(f"find_executable_batch_size(floor={floor}) is above starting_batch_size="
                         f"{starting_batch_size}: the floor is the smallest size tried")

    def decorate(function: Callable[Concatenate[int, P], R]) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            size = starting_batch_size
            while True:
                with OutOfMemoryAgreement(fabric) as attempt:
                    result = function(size, *args, **kwargs)
                if not attempt.failed:
                    return result
                free_memory()
                if size == floor:
                    raise RuntimeError(f"out of memory at every batch size down to the floor, {floor} (from "
                                       f"{starting_batch_size}, halving); lower floor or free memory")
                size = max(floor, size // 2)

        return run

    return decorate
