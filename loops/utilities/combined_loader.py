"""`CombinedLoader`: several iterables (dataloaders) iterated together, as Lightning's
`lightning.pytorch.utilities.CombinedLoader`. The iterables come as one collection (a dict, list or tuple, nested
as deep as wanted); each step yields `(batch, batch_idx, dataloader_idx)`, where `batch` has the collection's shape
with one batch per iterable, under one of four modes:

- "min_size": stops when the shortest iterable is done;
- "max_size_cycle": stops when the longest is done, restarting the shorter ones as they run out;
- "max_size": stops when the longest is done, giving None for the iterables already done;
- "sequential": each iterable in turn, to its end; `batch` is that iterable's own batch, `batch_idx` counts within
  it and `dataloader_idx` says which one it is (in the other modes it is always 0).

The Trainer trains on a list or dict of loaders as `CombinedLoader(loaders, "max_size_cycle")` and evaluates or
predicts on several as `"sequential"`; give it a `CombinedLoader` to choose another mode.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, Literal, NamedTuple, TypeAlias

Mode: TypeAlias = Literal["min_size", "max_size_cycle", "max_size", "sequential"]
MODES: tuple[str, ...] = ("min_size", "max_size_cycle", "max_size", "sequential")


class _Node(NamedTuple):
    """How to rebuild one collection of the user's structure from its flattened leaves."""

    kind: Any  # the collection's type
    keys: tuple[Any, ...]  # a mapping's keys; empty for a sequence
    children: tuple[_Node | None, ...]  # None: a leaf (one iterable)


def _is_leaf(tree: Any) -> bool:
    """An iterable of its own: anything but a dict, list or tuple, or one of only numbers and strings (a list of
    ints is iterated as it is, as in Lightning)."""
    if isinstance(tree, dict):
        values: Iterable[Any] = tree.values()
    elif isinstance(tree, (list, tuple)):
        values = tree
    else:
        return True
    return all(isinstance(value, (int, float, str)) for value in values)


def _flatten(tree: Any) -> tuple[list[Any], _Node | None]:
    if _is_leaf(tree):
        return [tree], None
    keys: tuple[Any, ...] = tuple(tree) if isinstance(tree, dict) else ()
    values = tree.values() if isinstance(tree, dict) else tree
    leaves: list[Any] = []
    children = []
    for value in values:
        flat, child = _flatten(value)
        leaves += flat
        children.append(child)
    return leaves, _Node(type(tree), keys, tuple(children))


def _unflatten(leaves: Iterator[Any], node: _Node | None) -> Any:
    if node is None:
        return next(leaves)
    values = [_unflatten(leaves, child) for child in node.children]
    if issubclass(node.kind, dict):
        pairs = zip(node.keys, values, strict=True)
        return OrderedDict(pairs) if issubclass(node.kind, OrderedDict) else dict(pairs)
    if node.kind is list:
        return values
    if hasattr(node.kind, "_fields"):  # a namedtuple
        return node.kind(*values)
    return tuple(values) if node.kind is tuple else node.kind(values)


def _length(iterable: Any) -> int | float:
    """`len(iterable)`, infinite for one without a length (an IterableDataset's loader)."""
    try:
        return len(iterable)
    except (TypeError, NotImplementedError):
        return math.inf


class CombinedLoader(Iterable[tuple[Any, int, int]]):
    """Iterate `iterables` (one iterable, or a dict / list / tuple of them) together under `mode` ("min_size",
    the default as in Lightning, "max_size_cycle", "max_size" or "sequential"; see the module's docstring). Each
    step yields `(batch, batch_idx, dataloader_idx)`."""

    def __init__(self, iterables: Any, mode: Mode = "min_size") -> None:
        if mode not in MODES:
            raise ValueError(f"CombinedLoader(mode={mode!r}) is not a mode; accepted: {', '.join(MODES)}")
        self._iterables = iterables
        self._flattened, self._spec = _flatten(iterables)
        self._mode: Mode = mode
        self._limits: list[int | float] | None = None
        self._iterator: _Pass | None = None

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def iterables(self) -> Any:
        """The collection of iterables, in the shape given."""
        return self._iterables

    @property
    def flattened(self) -> list[Any]:
        """The iterables as one flat list (dict values in their order, nested collections depth first)."""
        return self._flattened

    @flattened.setter
    def flattened(self, flattened: list[Any]) -> None:
        """Replace the iterables (e.g. by their distributed versions), keeping the collection's shape."""
        if len(flattened) != len(self._flattened):
            raise ValueError(f"CombinedLoader.flattened takes {len(self._flattened)} iterables, one per iterable "
                             f"it holds; got {len(flattened)}")
        self._iterables = _unflatten(iter(flattened), self._spec)
        self._flattened = list(flattened)

    @property
    def sampler(self) -> Any:
        """Each iterable's `sampler` (None where it has none), in the collection's shape."""
        return _unflatten(iter([getattr(it, "sampler", None) for it in self._flattened]), self._spec)

    @property
    def batch_sampler(self) -> Any:
        """Each iterable's `batch_sampler` (None where it has none), in the collection's shape."""
        return _unflatten(iter([getattr(it, "batch_sampler", None) for it in self._flattened]), self._spec)

    @property
    def limits(self) -> list[int | float] | None:
        """How many batches each iterable may give (None: all), as the Trainer's `limit_*_batches` set it."""
        return self._limits

    @limits.setter
    def limits(self, limits: int | float | list[int | float] | None) -> None:
        if isinstance(limits, (int, float)):
            limits = [limits] * len(self._flattened)
        elif limits is not None and len(limits) != len(self._flattened):
            raise ValueError(f"CombinedLoader.limits takes one limit per iterable ({len(self._flattened)}) or one "
                             f"number for all; got {len(limits)}")
        self._limits = None if limits is None else list(limits)

    def __iter__(self) -> CombinedLoader:
        self._iterator = _Pass(self._mode, self._flattened, self._limits)
        return self

    def __next__(self) -> tuple[Any, int, int]:
        if self._iterator is None:
            raise RuntimeError("call iter(combined_loader) before next(combined_loader)")
        batches, batch_idx, dataloader_idx = self._iterator.next()
        if self._mode == "sequential":
            return batches[0], batch_idx, dataloader_idx
        return _unflatten(iter(batches), self._spec), batch_idx, dataloader_idx

    def __len__(self) -> int:
        """Batches in a pass under the mode and the limits; a TypeError when an iterable has no length that
        decides it (as `len()` of an IterableDataset's loader). Known also before `iter()` (Lightning asks for
        `iter()` first)."""
        length = _mode_length(self._mode, [_length(it) for it in self._flattened], self._limits)
        if length == math.inf:
            raise TypeError("this CombinedLoader has no length: an iterable it holds has none")
        return int(length)

    def reset(self) -> None:
        """Forget the running pass (its iterators, and so a loader's worker processes, are released)."""
        self._iterator = None


def _mode_length(mode: Mode, lengths: list[int | float], limits: list[int | float] | None) -> int | float:
    if not lengths:
        return 0
    if mode == "min_size":  # Lightning's rule: the smallest of every length and every limit
        return min(lengths + (limits or []))
    capped = lengths if limits is None else [min(n, limit) for n, limit in zip(lengths, limits, strict=True)]
    return sum(capped) if mode == "sequential" else max(capped)


class _Pass:
    """One pass over the iterables under a mode: `next()` gives (batches, batch_idx, dataloader_idx), `batches`
    the list of each iterable's batch (sequential: a list of the one running iterable's batch)."""

    def __init__(self, mode: Mode, iterables: list[Any], limits: list[int | float] | None) -> None:
        self.mode, self.iterables, self.limits = mode, iterables, limits
        self.batch_idx = 0
        self.current = 0  # sequential: the running iterable
        self.done = [False] * len(iterables)  # max_size_cycle / max_size: the iterables that ran out
        if mode == "sequential":  # one iterable's iterator at a time: one set of worker processes at a time
            self.iterators = [iter(iterables[0])] if iterables else []
        else:
            self.iterators = [iter(it) for it in iterables]

    def next(self) -> tuple[list[Any], int, int]:
        if self.mode == "sequential":
            return self._next_sequential()
        if not self.iterators:
            raise StopIteration
        batches = [self._next_of(i) for i in range(len(self.iterators))]
        if all(self.done) and self.mode != "min_size":
            raise StopIteration
        index, self.batch_idx = self.batch_idx, self.batch_idx + 1
        return batches, index, 0

    def _next_of(self, i: int) -> Any:
        try:
            return next(self.iterators[i])
        except StopIteration:
            if self.mode == "min_size":
                raise
            self.done[i] = True
            if self.mode == "max_size" or all(self.done):
                return None
            self.iterators[i] = iter(self.iterables[i])  # max_size_cycle: restart it
            return next(self.iterators[i])

    def _next_sequential(self) -> tuple[list[Any], int, int]:
        while self.current < len(self.iterables):
            if self.limits is None or self.batch_idx < self.limits[self.current]:
                try:
                    batch = next(self.iterators[0])
                except StopIteration:
                    pass
                else:
                    index, self.batch_idx = self.batch_idx, self.batch_idx + 1
                    return [batch], index, self.current
            self.current += 1
            self.batch_idx = 0
            self.iterators = [iter(self.iterables[self.current])] if self.current < len(self.iterables) else []
        raise StopIteration


__all__ = ["CombinedLoader"]
