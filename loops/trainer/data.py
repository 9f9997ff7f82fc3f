"""Find each stage's dataloaders (explicit argument, then datamodule, then module), apply the limit_* flags, and
hand them to fabric so each process gets its shard and batches reach the device."""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, SequentialSampler

from fabric_kit import is_wrapped
from loops.core.hooks import DataHooks
from loops.trainer.hooks import overrides
from loops.utilities.combined_loader import MODES, CombinedLoader

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


def train_loader(fabric: Fabric, raw: Any, overfit: bool, use_distributed_sampler: bool,
                 move_to_device: bool) -> Any:
    """What fit trains on: one loader set up by fabric, or, for a list / dict of them (or a `CombinedLoader`),
    a `CombinedLoader` of the set-up loaders, "max_size_cycle" unless the user's says otherwise (Lightning's rule).
    `overfit`: each loader without shuffling."""
    if not isinstance(raw, (CombinedLoader, list, tuple, dict)):
        return setup_loaders(fabric, [sequential(raw) if overfit else raw], True, use_distributed_sampler,
                             move_to_device)[0]
    mode = raw.mode if isinstance(raw, CombinedLoader) else "max_size_cycle"
    if mode == "sequential":
        raise ValueError("fit does not train on CombinedLoader(mode='sequential'); accepted modes: "
                         f"{', '.join(m for m in MODES if m != 'sequential')}")
    combined = CombinedLoader(raw.iterables if isinstance(raw, CombinedLoader) else raw, mode)
    raws = [sequential(loader) for loader in combined.flattened] if overfit else combined.flattened
    combined.flattened = setup_loaders(fabric, raws, True, use_distributed_sampler, move_to_device)
    return combined


def eval_loaders(fabric: Fabric, found: Any, stage: str, limit: int | float, flag: str,
                 use_distributed_sampler: bool, move_to_device: bool) -> tuple[list[Any], list[int | float]]:
    """The loaders an evaluation (`stage` "val" / "test") or prediction ("predict") runs one after the other, set
    up by fabric, and how many batches each gives. Several loaders (a list, dict, or a "sequential"
    `CombinedLoader`) run in turn, each with its `dataloader_idx`; a `CombinedLoader` of another mode is one
    loader whose batches combine its loaders' (no `dataloader_idx`), which prediction refuses, as Lightning does."""
    if not isinstance(found, CombinedLoader) or found.mode == "sequential":
        if isinstance(found, CombinedLoader):
            flat = found.flattened
        else:  # nested collections too, as Lightning flattens them
            flat = CombinedLoader(found).flattened if isinstance(found, (list, tuple, dict)) else as_list(found)
        loaders = setup_loaders(fabric, flat, False, use_distributed_sampler, move_to_device)
        return loaders, [limit_batches(loader, limit, flag) for loader in loaders]
    if stage == "predict":
        raise ValueError(f"Trainer.predict runs several loaders one after the other only: got "
                         f"CombinedLoader(mode={found.mode!r}); pass the loaders, or CombinedLoader(mode='sequential')")
    combined = CombinedLoader(found.iterables, found.mode)
    combined.flattened = setup_loaders(fabric, combined.flattened, False, use_distributed_sampler, move_to_device)
    return [combined], [limit_combined(combined, limit, flag)]


def limit_combined(loader: Any, limit: int | float, flag: str) -> int | float:
    """`limit_batches` for what a stage iterates: a `CombinedLoader` applies the limit to each of its loaders,
    then gives as many batches as its mode makes of them."""
    if not isinstance(loader, CombinedLoader):
        return limit_batches(loader, limit, flag)
    loader.limits = [limit_batches(part, limit, flag) for part in loader.flattened]
    length = _length(loader)
    return math.inf if length is None else length


def batches(loader: Any) -> Any:
    """The batches a stage iterates: a `CombinedLoader`'s without their (batch_idx, dataloader_idx)."""
    if isinstance(loader, CombinedLoader):
        return (batch for batch, _, _ in loader)
    return loader


class DataloaderIter(Iterator[tuple[Any, int, int]]):
    """What a step that fetches its own batches (`training_step(self, dataloader_iter)`, and the evaluation and
    predict steps alike) receives: the loader's batches as `(batch, batch_idx, dataloader_idx)` (on the device
    already), up to `limit`; a resumed epoch's first `skip` batches are left out. `batch` / `batch_idx` are the
    last fetched (None / the next index before any); `done` once the limit is reached or the loader `ran_out`."""

    def __init__(self, loader: Any, first: int, skip: int, limit: int | float, dataloader_idx: int = 0) -> None:
        self._batches = itertools.islice(enumerate(batches(loader), first), skip, None)
        self.limit, self.dataloader_idx = limit, dataloader_idx
        self.batch: Any = None
        self.batch_idx = max(first, skip)
        self.done = self.batch_idx >= limit
        self.ran_out = False

    def __next__(self) -> tuple[Any, int, int]:
        if self.done:
            raise StopIteration
        try:
            self.batch_idx, self.batch = next(self._batches)
        except StopIteration:
            self.done = self.ran_out = True
            raise
        self.done = self.batch_idx + 1 >= self.limit
        return self.batch, self.batch_idx, self.dataloader_idx


def step_calls(loader: Iterable[Any], limit: int | float, pulled: DataloaderIter | None,
               transfer: Callable[[Any], Any]) -> Iterator[tuple[Any, Any, int]]:
    """Each call of an evaluation or predict step over `loader`'s first `limit` batches: what the step gets, and
    the batch and `batch_idx` the hooks before it see. A step that fetches its own batches gets the iterator
    `pulled` while it has batches left, and those hooks the batch it fetched last (Lightning's rule); any other
    step gets each batch, after the transfer hooks."""
    if pulled is not None:
        while not pulled.done:
            yield pulled, pulled.batch, pulled.batch_idx
        return
    for batch_idx, batch in enumerate(loader):
        batch = transfer(batch)
        yield batch, batch, batch_idx
        if batch_idx + 1 >= limit:
            return
