"""Gradient accumulation over windows of micro-batches: `fabric.accumulate(model, batches, window=N)`.

    for micro, (x, y) in fabric.accumulate(model, loader, window=4):
        with micro:                                   # no gradient all-reduce unless the window ends here
            loss = loss_fn(model(x), y)               # the mean over this micro-batch
            fabric.backward(micro.scale(loss))
        if micro.is_last:
            optimizer.step()
            optimizer.zero_grad()

The windows are cut by the iteration itself, so the last one ends (and syncs) at the end of the loader even when it
holds fewer than `window` micro-batches; no loop counter decides it. Two normalizations:

- step count (default): `micro.scale(loss)` is `loss / window`, what Lightning's `accumulate_grad_batches` and
  Accelerate's `accumulate()` do, also in a window the loader's end cuts short.
- items (`num_items=FN`, `FN(batch) -> int`): each window is fetched before its first micro-batch runs, its items
  are counted on every rank in one all-reduce, and `micro.scale(loss)` weighs the micro-batch's mean loss by its
  share of the window's items over all micro-batches and data-parallel ranks. The accumulated gradient is then the
  gradient of the mean loss over every item of the global batch, whatever the micro-batches hold (padding, packed
  sequences of different lengths, a short last batch): dividing by the number of micro-batches is wrong there.

In items mode the loader has yielded the whole window when its first micro-batch runs: a loader saved in a
checkpoint at a window's end (after the optimizer step) resumes exactly; one saved mid-window resumes after the
window. Strategies: the sync is skipped through `BackwardSyncControl.accumulation_context` (DDP `no_sync`, FSDP
`set_requires_gradient_sync`, DeepSpeed's accumulation boundary); a single process has nothing to skip.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from itertools import islice
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch import Tensor
from torch.nn import Module

from fabric_kit.strategies.strategy import BackwardSyncControl

if TYPE_CHECKING:
    from fabric_kit.fabric import Fabric

T = TypeVar("T")


__all__ = ["Accumulation", "MicroBatch"]


class MicroBatch:
    """One micro-batch of an accumulation window, and the context its forward and backward run in: the gradients are
    all-reduced only by the backward of the window's last micro-batch (`sync`). Re-enterable (several optimizers
    run one micro-batch several times)."""

    def __init__(self, strategy: Any, module: Module, index: int, size: int, window: int,
                 num_items: int | None, window_items: int | None, world_size: int) -> None:
        self._strategy, self._module = strategy, module
        self.index = index
        """Position in the window, from 0 (from `offset` in the first window)."""
        self.size = size
        """Micro-batches in this window: fewer than `window` where the loader's end cuts it short (known from the
        window's first micro-batch in items mode, which fetches the window; at its last in step-count mode, which
        looks one batch ahead)."""
        self.window = window
        """The window length asked for."""
        self.num_items = num_items
        """Items of this micro-batch on this rank (items mode; None in step-count mode)."""
        self.window_items = window_items
        """Items of the whole window over every micro-batch and rank (items mode; None in step-count mode)."""
        self._world_size = world_size
        self._context: AbstractContextManager[Any] | None = None

    @property
    def is_last(self) -> bool:
        """Whether this micro-batch ends the window: step the optimizer after it."""
        return self.index == self.size - 1

    @property
    def sync(self) -> bool:
        """Whether this micro-batch's backward all-reduces the gradients (it ends the window)."""
        return self.is_last

    def scale(self, loss: Tensor) -> Tensor:
        """The loss to backpropagate, from this micro-batch's mean loss: divided by `window` (step-count mode), or
        weighted by `num_items / window_items` (items mode, times the number of ranks the gradient all-reduce
        averages over), so the window's gradient is the gradient of the global batch's mean loss."""
        if self.window_items is None or self.num_items is None:
            return loss / self.window
        if self.num_items == 0:  # nothing to weigh (its mean would be NaN: return a finite loss for it, e.g. 0)
            return loss * 0.0
        return loss * (self.num_items * self._world_size / self.window_items)

    def __enter__(self) -> MicroBatch:
        strategy = self._strategy
        self._context = strategy.accumulation_context(self._module, self.sync) \
            if isinstance(strategy, BackwardSyncControl) else nullcontext()
        self._context.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        context, self._context = self._context, None
        assert context is not None  # entered above
        context.__exit__(*exc_info)

    def __repr__(self) -> str:
        items = "" if self.num_items is None else f", num_items={self.num_items}, window_items={self.window_items}"
        return f"MicroBatch(index={self.index}, size={self.size}, window={self.window}{items})"


class Accumulation(Generic[T]):
    """What `fabric.accumulate(model, batches, window=...)` returns: iterating it yields `(MicroBatch, batch)` for
    every batch of `batches`, windows of `window` micro-batches, the last one cut by the end of `batches`. `module`
    is the strategy's (the set-up module behind fabric's wrapper)."""

    def __init__(self, fabric: Fabric, module: Module, batches: Iterable[T], window: int,
                 num_items: Callable[[T], int | Tensor] | None = None, offset: int = 0) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"fabric.accumulate(window={window!r}): the window is a number of micro-batches, an "
                             "int >= 1")
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < window:
            raise ValueError(f"fabric.accumulate(offset={offset!r}): the micro-batches of the first window already "
                             f"run, an int in [0, window={window})")
        if num_items is not None and not callable(num_items):
            raise TypeError(f"fabric.accumulate(num_items=...) takes a function batch -> number of items; got "
                            f"{type(num_items).__name__}")
        self._fabric, self._module, self._batches = fabric, module, batches
        self.window, self.offset, self._num_items = window, offset, num_items

    def __iter__(self) -> Iterator[tuple[MicroBatch, T]]:
        if self._num_items is None:
            return self._step_count()
        return self._item_weighted(self._num_items)

    def _item_weighted(self, num_items: Callable[[T], int | Tensor]) -> Iterator[tuple[MicroBatch, T]]:
        """Fetch each window, count its items on every rank in one all-reduce, then run its micro-batches."""
        fabric, window, start = self._fabric, self.window, self.offset
        strategy, module, world = fabric.strategy, self._module, fabric.world_size
        iterator = iter(self._batches)
        while batches := list(islice(iterator, window - start)):
            counts = [_item_count(num_items(batch)) for batch in batches]
            total = int(fabric.all_reduce(torch.tensor(sum(counts), dtype=torch.int64), reduce_op="sum").item())
            size = start + len(batches)
            for index, (batch, count) in enumerate(zip(batches, counts, strict=True), start):
                yield MicroBatch(strategy, module, index, size, window, count, total, world), batch
            start = 0

    def _step_count(self) -> Iterator[tuple[MicroBatch, T]]:
        """Without items to count, one batch is fetched ahead inside a window, to know whether the loader ends it;
        none at its end, so the loader's position is exact where the optimizer steps."""
        strategy, module, world, window = self._fabric.strategy, self._module, self._fabric.world_size, self.window
        iterator = iter(self._batches)
        index, done = self.offset, object()
        upcoming: Any = next(iterator, done)
        while upcoming is not done:
            batch = upcoming
            upcoming = next(iterator, done) if index < window - 1 else done
            size = window if upcoming is not done or index == window - 1 else index + 1
            yield MicroBatch(strategy, module, index, size, window, None, None, world), batch
            index += 1
            if index == size:
                index, upcoming = 0, next(iterator, done)

def _item_count(count: int | Tensor) -> int:
    """`num_items(batch)`'s answer as an int: a Python int or a one-element integer tensor, never negative."""
    if isinstance(count, Tensor):
        if count.numel() != 1 or count.is_floating_point():
            raise TypeError(f"fabric.accumulate(num_items=...) must return an int or a one-element integer tensor; "
                            f"got a {count.dtype} tensor of shape {tuple(count.shape)}")
        count = int(count.item())
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"fabric.accumulate(num_items=...) must return the number of items of the batch, an int "
                         f">= 0; got {count!r}")
    return count
