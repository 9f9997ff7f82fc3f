"""A sampler that gives each rank its own shard of a dataset or of another sampler's index sequence.

All ranks compute the same global index order for an epoch from ``(seed, epoch)`` alone and then take every
``num_replicas``-th index starting at ``rank``. Nothing is communicated between ranks, and a position in an epoch can
be restored later from ``seed``, ``epoch`` and the number of indices already consumed (``set_epoch(epoch, start)``),
even on a different number of ranks.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class DistributedShardSampler(Sampler[int]):
    """Yields this rank's shard of the epoch's index order.

    Args:
        source: a map-style dataset (its indices ``range(len(source))`` are sharded) or a sampler (its index
            sequence is materialised each epoch and sharded, so ``WeightedRandomSampler``, ``SubsetRandomSampler``
            and custom samplers keep their distribution).
        num_replicas: number of ranks sharing the data.
        rank: this process's rank, in ``[0, num_replicas)``.
        shuffle: permute the order with a generator seeded by ``seed + epoch``; every rank gets the same permutation.
        seed: base seed; must be equal on all ranks.
        drop_last: with ``even_shards=True``, drop the tail instead of padding. Uneven shards never pad nor drop, so
            it has no effect with ``even_shards=False``.
        even_shards: ``True`` (training) gives every rank the same number of indices, padding by repeating indices
            from the start of the order (fewer than ``num_replicas`` duplicates) so collective ops stay in lockstep.
            ``False`` (evaluation) gives every index to exactly one rank, so a metric reduced over ranks counts each
            sample once; shard sizes then differ by at most one.
        wrap: whether ``source`` is a sampler to wrap. ``None`` decides by ``isinstance(source, Sampler)``; pass
            ``True`` for a plain iterable of indices.

    A wrapped sampler is iterated with torch's global RNG forked and seeded by ``seed + epoch``, so samplers that
    draw from the global RNG (e.g. ``WeightedRandomSampler`` without a generator) yield the same sequence on every
    rank. A sampler with its own generator or other randomness must be seeded identically on all ranks. Call
    :meth:`set_epoch` before each epoch; it is forwarded to a wrapped sampler that has ``set_epoch`` too.
    """

    def __init__(
        self,
        source: Dataset[Any] | Sampler[Any] | Iterable[int],
        num_replicas: int,
        rank: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        even_shards: bool = True,
        wrap: bool | None = None,
    ) -> None:
        if not isinstance(num_replicas, int) or isinstance(num_replicas, bool) or num_replicas < 1:
            raise ValueError(f"num_replicas={num_replicas!r} is invalid; expected an int >= 1.")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank!r} is invalid; expected an int in [0, {num_replicas - 1}].")
        self.wrap = isinstance(source, Sampler) if wrap is None else wrap
        if not self.wrap and not isinstance(source, Sized):
            raise TypeError(
                f"source of type {type(source).__name__} has no len(); expected a map-style dataset, or a sampler "
                "(pass wrap=True for a plain iterable of indices)."
            )
        self.source: Any = source  # a Sized dataset (checked above), or a sampler or iterable of indices
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.even_shards = even_shards
        self.epoch = 0
        self.start = 0
        self.exclude: tuple[tuple[int, int], ...] = ()

    def set_epoch(self, epoch: int, start: int = 0, exclude: Iterable[tuple[int, int]] = ()) -> None:
        """Select the epoch whose order is produced next (changes the permutation when shuffling).

        ``start`` resumes the epoch after its first ``start`` indices of the global order, consumed before a restart
        by any number of ranks: the rest is sharded over the current ranks, so no index is repeated or skipped.
        ``exclude`` leaves out the positions ``[first, stop)`` of each pair from the global order before sharding
        (the samples of skipped steps); leaving out whole global batches keeps every later batch on its rank.
        """
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start={start!r} is invalid; expected an int >= 0 (indices of the epoch consumed).")
        spans = tuple((int(first), int(stop)) for first, stop in exclude)
        bad = [span for span in spans if not 0 <= span[0] <= span[1]]
        if bad:
            raise ValueError(f"exclude={bad!r} is invalid; expected (first, stop) positions with 0 <= first <= stop.")
        self.epoch = epoch
        self.start = start
        self.exclude = spans
        if self.wrap and hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def global_order(self, epoch: int | None = None) -> torch.Tensor:
        """The index order of epoch ``epoch`` (default: the current one) over all ranks, before ``start`` and
        ``exclude`` apply; identical on every rank. Position ``p`` of it is what ``start`` and ``exclude`` count.
        A wrapped sampler with ``set_epoch`` is set to ``epoch`` for the reading and back afterwards."""
        epoch = self.epoch if epoch is None else epoch
        if self.wrap:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + epoch)
                if epoch != self.epoch and hasattr(self.source, "set_epoch"):
                    self.source.set_epoch(epoch)
                order = torch.tensor(list(self.source), dtype=torch.long)
                if epoch != self.epoch and hasattr(self.source, "set_epoch"):
                    self.source.set_epoch(self.epoch)
        else:
            order = torch.arange(len(self.source))
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = order[torch.randperm(len(order), generator=generator)]
        return order

    def _kept(self, n: int) -> torch.Tensor:
        """Which of the epoch's ``n`` positions are handed out: from ``start`` on, outside ``exclude``."""
        kept = torch.zeros(n, dtype=torch.bool)
        kept[self.start :] = True
        for first, stop in self.exclude:
            kept[first:stop] = False
        return kept

    def _total(self, n: int) -> int:
        """Number of indices handed out over all ranks for an epoch of ``n`` indices."""
        if not self.even_shards:
            return n
        if self.drop_last:
            return n // self.num_replicas * self.num_replicas
        return -(-n // self.num_replicas) * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        order = order[self._kept(len(order))]
        total = self._total(len(order))
        if total > len(order):
            order = order.repeat(-(-total // len(order)))
        return iter(order[self.rank : total : self.num_replicas].tolist())

    def __len__(self) -> int:
        total = self._total(int(self._kept(len(self.source)).sum()) if self.exclude else
                            max(0, len(self.source) - self.start))
        return len(range(self.rank, total, self.num_replicas))


class DistributedSamplerWrapper(DistributedShardSampler):
    """Lightning's name, with the arguments of torch's `DistributedSampler`, for giving each rank its shard of
    another sampler's indices: `num_replicas` and `rank` default to the initialized process group's, `shuffle` to
    True. It is `DistributedShardSampler(sampler, ..., wrap=True)`; call `set_epoch` before each epoch."""

    def __init__(self, sampler: Sampler[Any] | Iterable[int], num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        if num_replicas is None or rank is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise RuntimeError("DistributedSamplerWrapper: pass num_replicas and rank, or initialize the process "
                                   "group first (fabric.launch())")
            num_replicas = torch.distributed.get_world_size() if num_replicas is None else num_replicas
            rank = torch.distributed.get_rank() if rank is None else rank
        super().__init__(sampler, num_replicas, rank, shuffle=shuffle, seed=seed, drop_last=drop_last, wrap=True)
