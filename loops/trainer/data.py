"""Find each stage's dataloaders (explicit argument, then datamodule, then module), apply the limit_* flags, and
hand them to fabric so each process gets its shard and batches reach the device."""
from __future__ import annotations

import math
from collections.abc import Sized
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, SequentialSampler

from fabric_kit import is_wrapped
from loops.core.hooks import DataHooks
from loops.trainer.hooks import overrides

if TYPE_CHECKING:
    from fabric_kit import Fabric
    from loops.trainer.hooks import HookTable

_HOOK = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader",
         "predict": "predict_dataloader"}


def find_loaders(stage: str, explicit: Any, hooks: HookTable) -> Any:
    """The stage's raw loader(s): `explicit` (given to the stage call), else the datamodule's or the module's
    `<stage>_dataloader()`; None when nothing provides one."""
    if explicit is not None:
        return explicit
    hook = _HOOK[stage]
    for source in (hooks.datamodule, hooks.pl_module):
        if source is not None and overrides(source, hook, DataHooks):
            return hooks.call_on(source, hook)
    return None


def as_list(loaders: Any) -> list[Any]:
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def limit_batches(loader: Any, limit: int | float, flag: str) -> int | float:
    """How many batches of `loader` a stage runs: an int limit caps the count, a float is a fraction of it."""
    length = _length(loader)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
        raise ValueError(f"{flag}={limit!r} is not valid; pass an int (batches) or a float in [0.0, 1.0] (fraction)")
    if isinstance(limit, int):
        return limit if length is None else min(length, limit)
    if limit > 1.0:
        raise ValueError(f"{flag}={limit} is a fraction larger than 1.0; pass a float in [0.0, 1.0] or an int")
    if length is None:
        if limit not in (0.0, 1.0):
            raise ValueError(f"{flag}={limit} is a fraction, but the dataloader has no length (an IterableDataset); "
                             "pass an int number of batches")
        return math.inf if limit == 1.0 else 0
    batches = int(length * limit)
    if limit > 0 and batches == 0:
        raise ValueError(f"{flag}={limit} of {length} batches is less than one batch; raise it or pass an int")
    return batches


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except (TypeError, NotImplementedError):
        return None


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """The next pass of `loader` calls its samplers' `set_epoch(epoch)` (the loader's sampler and its batch
    sampler's), as Lightning does for evaluation loaders during fit, so they can shuffle by the training epoch."""
    if is_wrapped(loader):
        loader.set_epoch(epoch)
        return
    found = (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None))
    for sampler in {id(s): s for s in found if s is not None}.values():
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)


def sequential(loader: Any) -> Any:
    """The same loader without shuffling (overfit_batches must see the same batches every epoch)."""
    if not isinstance(loader, DataLoader) or isinstance(loader.sampler, SequentialSampler) \
            or loader.batch_sampler is None:
        return loader
    dataset: Any = loader.dataset  # sized: a loader with a sampler is over a map-style dataset
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=SequentialSampler(dataset),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last, worker_init_fn=loader.worker_init_fn,
                      persistent_workers=loader.persistent_workers)


def setup_loaders(fabric: Fabric, loaders: list[Any], train: bool, use_distributed_sampler: bool,
                  move_to_device: bool) -> list[Any]:
    """Shard DataLoaders over processes (training: even shards; evaluation: every sample exactly once) and move
    batches to the device; other iterables are used as they are. An evaluation set smaller than the number of
    processes is padded instead (a sample repeats): a process without a batch would skip the evaluation, and the
    collectives the others run there would wait for it forever."""
    wrapped = []
    for loader in loaders:
        if isinstance(loader, DataLoader):
            even = train or (fabric.world_size > 1 and isinstance(loader.dataset, Sized)
                             and len(loader.dataset) < fabric.world_size)
            loader = fabric.setup_dataloaders(loader, use_distributed_sampler=use_distributed_sampler,
                                              move_to_device=move_to_device, even_shards=even)
        wrapped.append(loader)
    return wrapped


class CycleLoaders:
    """Training on several loaders at once (Lightning's "max_size_cycle"): each batch holds one batch of every
    loader, in the given list or dict shape; an epoch lasts as long as the longest loader, shorter ones restart."""

    def __init__(self, loaders: list[Any] | dict[str, Any]) -> None:
        self.loaders = loaders
        self._keys = list(loaders) if isinstance(loaders, dict) else None
        self._values = list(loaders.values()) if isinstance(loaders, dict) else list(loaders)

    def __len__(self) -> int:
        return max(len(loader) for loader in self._values)

    def __iter__(self) -> Any:
        iterators = [iter(loader) for loader in self._values]
        for _ in range(len(self)):
            batches = []
            for index, loader in enumerate(self._values):
                try:
                    batches.append(next(iterators[index]))
                except StopIteration:
                    iterators[index] = iter(loader)
                    batches.append(next(iterators[index]))
            yield dict(zip(self._keys, batches, strict=False)) if self._keys is not None else batches
