"""Rebuild a user's DataLoader so that it draws from another sampler, e.g. this rank's shard.

A DataLoader cannot swap its sampler after construction, so a new one is built from the loader's public attributes.
A DataLoader subclass is rebuilt through its own ``__init__``, which only works when every parameter of that
``__init__`` can be read back from an attribute of the same name; otherwise we refuse loudly rather than guess
(recording constructor arguments by patching ``DataLoader.__init__`` silently loses the ones it cannot recover).
"""
from __future__ import annotations

import inspect
import sys
from typing import Any

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from fabric_kit.data.sampler import DistributedShardSampler

_LOADER_PARAMS = inspect.signature(DataLoader.__init__).parameters
# Arguments a DataLoader keeps as attributes of the same name; the batching arguments are derived separately.
_STORED_ARGS = tuple(
    name
    for name in (
        "dataset",
        "num_workers",
        "collate_fn",
        "pin_memory",
        "timeout",
        "worker_init_fn",
        "multiprocessing_context",
        "generator",
        "prefetch_factor",
        "persistent_workers",
        "pin_memory_device",
        "in_order",
    )
    if name in _LOADER_PARAMS
)
_ADVICE = "or pass `use_distributed_sampler=False` to `setup_dataloaders` and shard the data yourself."


def _torchdata_twins(torch_class: type) -> tuple[type, ...]:
    """`torch_class` and, once torchdata is imported, the class its StatefulDataLoader puts in its place
    (`torchdata.stateful_dataloader.sampler.BatchSampler` / `RandomSampler`): the same order, plus a state of their
    own that the shard sampler makes unnecessary. Read from `sys.modules`, so fabric_kit imports no torchdata."""
    module = sys.modules.get("torchdata.stateful_dataloader.sampler")
    twin = getattr(module, torch_class.__name__, None)
    return (torch_class,) if twin is None else (torch_class, twin)


def _index_sampler(dataloader: DataLoader[Any]) -> Sampler[Any] | Any:
    """The sampler yielding single indices that the loader batches, or an error for a custom batch sampler."""
    batch_sampler = dataloader.batch_sampler
    if batch_sampler is None:
        return dataloader.sampler
    if isinstance(batch_sampler, BatchSampler) and type(batch_sampler) in _torchdata_twins(BatchSampler):
        return batch_sampler.sampler
    raise ValueError(
        f"The DataLoader uses a custom batch_sampler of type {type(batch_sampler).__name__}, which cannot be "
        "sharded faithfully; expected no batch_sampler or torch's BatchSampler. Give it a sampler to draw from "
        f"instead, {_ADVICE}"
    )


def _constructor_args(dataloader: DataLoader[Any], sampler: Sampler[Any]) -> dict[str, Any]:
    """DataLoader arguments reproducing ``dataloader`` with ``sampler`` as its source of indices."""
    batching = dataloader.batch_sampler  # torch's BatchSampler, or None (`_index_sampler` refused the others)
    args = {name: getattr(dataloader, name) for name in _STORED_ARGS}
    args.update(
        shuffle=None,
        sampler=sampler,
        batch_sampler=None,
        # Without auto-batching (batch_sampler None) DataLoader needs batch_size=None and ignores drop_last.
        batch_size=batching.batch_size if isinstance(batching, BatchSampler) else None,
        drop_last=batching.drop_last if isinstance(batching, BatchSampler) else False,
    )
    return args


def _is_default(name: str, value: Any) -> bool:
    """Whether ``value`` is what DataLoader would use for ``name`` if the argument were left out."""
    default = _LOADER_PARAMS[name].default
    if value is default:
        return True
    return type(value) is type(default) and isinstance(value, (int, float, str)) and value == default


def _rebuild_subclass(cls: type[DataLoader[Any]], dataloader: DataLoader[Any], args: dict[str, Any]) -> DataLoader[Any]:
    """Call ``cls.__init__`` with standard arguments from ``args`` and the others from same-named attributes.

    Through a ``**kwargs`` parameter only ``sampler`` and non-default standard arguments are forwarded (never the
    dataset, which the subclass passes on itself): a default needs no forwarding, and one the subclass fixes in its
    own ``super().__init__`` call would collide, which is reported instead of guessed around.
    """
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    missing = [p.name for p in named if p.name not in args and not hasattr(dataloader, p.name)]
    if "sampler" not in {p.name for p in named} and not accepts_kwargs:
        missing.append("sampler (not accepted by __init__)")
    if missing:
        raise ValueError(
            f"Cannot rebuild {cls.__qualname__} with a distributed sampler: __init__ parameter(s) "
            f"{', '.join(missing)} cannot be recovered, because the instance has no attribute of the same name. "
            f"Store each as `self.<name>` in {cls.__qualname__}.__init__ (and accept `sampler`), {_ADVICE}"
        )
    positional, keywords = [], {}
    for p in named:
        value = args[p.name] if p.name in args else getattr(dataloader, p.name)
        if p.kind is p.POSITIONAL_ONLY:
            positional.append(value)
        else:
            keywords[p.name] = value
    if accepts_kwargs:
        for name, value in args.items():
            if name not in keywords and name != "dataset" and (name == "sampler" or not _is_default(name, value)):
                keywords[name] = value
    try:
        return cls(*positional, **keywords)
    except TypeError as error:
        raise ValueError(
            f"Cannot rebuild {cls.__qualname__} with a distributed sampler: calling its __init__ with the recovered "
            f"arguments {sorted(keywords)} failed ({error}). Give every DataLoader argument that "
            f"{cls.__qualname__}.__init__ forwards a parameter of the same name stored as `self.<name>`, {_ADVICE}"
        ) from error


def with_sampler(dataloader: DataLoader[Any], sampler: Sampler[Any]) -> DataLoader[Any]:
    """A new DataLoader like ``dataloader`` (same class and arguments) that draws its indices from ``sampler``.

    The loader's batching is kept: its ``batch_size``/``drop_last`` (also when given through a plain
    ``BatchSampler``), or no auto-batching when ``batch_size=None``. Loaders over an ``IterableDataset`` take no
    sampler and loaders with a custom batch sampler cannot be rebuilt faithfully; both raise ``ValueError``.
    """
    if isinstance(dataloader.dataset, IterableDataset):
        raise ValueError(
            f"The DataLoader's dataset is an IterableDataset ({type(dataloader.dataset).__name__}), which takes no "
            "sampler; expected a map-style dataset. Shard an iterable dataset inside its __iter__ (e.g. by rank)."
        )
    _index_sampler(dataloader)  # raises for a custom batch sampler
    args = _constructor_args(dataloader, sampler)
    cls = type(dataloader)
    if cls is DataLoader:
        return DataLoader(**args)
    return _rebuild_subclass(cls, dataloader, args)


def _is_plain_permutation(sampler: Any) -> bool:
    """Whether the RandomSampler draws each index once (a permutation), which sharding can reproduce by seed."""
    return not sampler.replacement and sampler.num_samples == len(sampler.data_source)


def distributed_loader(
    dataloader: DataLoader[Any], num_replicas: int, rank: int, even_shards: bool = True, seed: int = 0
) -> DataLoader[Any]:
    """This rank's loader: ``dataloader`` rebuilt to draw a :class:`DistributedShardSampler` shard.

    - ``SequentialSampler`` -> the dataset's indices in order, sharded.
    - ``RandomSampler`` drawing a permutation -> shuffled by the shard sampler, seeded by the RandomSampler's
      generator's initial seed when it has one (so a user's seed is kept), else by ``seed``; the same on all ranks.
    - any other sampler -> wrapped: its index sequence is sharded each epoch.
    - a loader already using ``DistributedSampler`` or ``DistributedShardSampler``, or over an ``IterableDataset``
      (which the user shards, e.g. by rank, inside ``__iter__``) -> returned unchanged.

    ``even_shards=True`` suits training (equal shard sizes), ``False`` evaluation (each sample seen once).
    Call ``loader.sampler.set_epoch(epoch)`` (or ``loader.batch_sampler.sampler``) before each epoch to reshuffle.
    """
    if isinstance(dataloader.dataset, IterableDataset):
        return dataloader
    sampler = _index_sampler(dataloader)
    if isinstance(sampler, (DistributedSampler, DistributedShardSampler)):
        return dataloader
    options: dict[str, Any] = dict(num_replicas=num_replicas, rank=rank, even_shards=even_shards, seed=seed)
    if type(sampler) in _torchdata_twins(RandomSampler) and _is_plain_permutation(sampler):
        # torchdata's twin always holds a generator, one it seeds from the global RNG unless the loader was given
        # one: only the loader's tells whether the user chose a seed.
        generator = sampler.generator if type(sampler) is RandomSampler else dataloader.generator
        if generator is not None:
            options["seed"] = generator.initial_seed()
        shard = DistributedShardSampler(dataloader.dataset, shuffle=True, **options)
    elif type(sampler) is SequentialSampler:
        shard = DistributedShardSampler(dataloader.dataset, shuffle=False, **options)
    else:
        shard = DistributedShardSampler(sampler, shuffle=False, wrap=True, **options)
    return with_sampler(dataloader, shard)


def resumable_loader(dataloader: DataLoader[Any], seed: int = 0) -> DataLoader[Any]:
    """On one process: ``dataloader`` rebuilt on a single-shard :class:`DistributedShardSampler`, so its order is a
    function of ``(seed, epoch)`` and a position inside an epoch can be restored (a ``RandomSampler`` draws from the
    global RNG, which cannot be rewound to an epoch's start).

    A loader that cannot be rebuilt (custom batch sampler, a subclass whose arguments cannot be recovered) is
    returned unchanged: sharding is optional on one process. It iterates as before but cannot resume mid-epoch.
    """
    try:
        return distributed_loader(dataloader, 1, 0, seed=seed)
    except ValueError:
        return dataloader
