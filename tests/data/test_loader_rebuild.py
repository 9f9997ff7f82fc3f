"""Rebuilding real DataLoaders around a shard sampler, and sharding them per rank."""
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from fabric_kit.data import DistributedShardSampler, distributed_loader, with_sampler


def tag_worker(worker_id):
    torch.utils.data.get_worker_info().dataset.worker_tagged = True


def collate_ids(items):
    return [int(x) for (x,) in items]


def dataset(n=20):
    return TensorDataset(torch.arange(n))


def loader_args(loader):
    names = ["dataset", "batch_size", "drop_last", "num_workers", "collate_fn", "pin_memory", "timeout",
             "worker_init_fn", "multiprocessing_context", "generator", "prefetch_factor", "persistent_workers",
             "pin_memory_device", "in_order"]
    return {name: getattr(loader, name) for name in names if hasattr(loader, name)}


def test_with_sampler_preserves_every_argument_and_runs_with_workers():
    original = DataLoader(
        dataset(),
        batch_size=3,
        shuffle=True,
        num_workers=2,
        collate_fn=collate_ids,
        pin_memory=False,
        drop_last=True,
        timeout=30,
        worker_init_fn=tag_worker,
        multiprocessing_context="fork",
        generator=torch.Generator().manual_seed(5),
        prefetch_factor=3,
        persistent_workers=True,
    )
    sampler = DistributedShardSampler(original.dataset, 2, 1, even_shards=False)
    rebuilt = with_sampler(original, sampler)
    assert type(rebuilt) is DataLoader
    assert rebuilt.sampler is sampler
    assert loader_args(rebuilt) == loader_args(original)
    assert [batch for batch in rebuilt] == [[1, 3, 5], [7, 9, 11], [13, 15, 17]]  # 19 dropped by drop_last


def test_without_auto_batching_sampler_replaces_sampler():
    original = DataLoader(dataset(5), batch_size=None)
    rebuilt = with_sampler(original, DistributedShardSampler(original.dataset, 2, 0, even_shards=False))
    assert rebuilt.batch_size is None and rebuilt.batch_sampler is None
    assert [int(x) for (x,) in rebuilt] == [0, 2, 4]


def test_explicit_torch_batch_sampler_keeps_its_batching():
    data = dataset(10)
    original = DataLoader(data, batch_sampler=BatchSampler(SequentialSampler(data), 4, drop_last=False))
    rebuilt = distributed_loader(original, 2, 0, even_shards=False)
    assert [batch[0].tolist() for batch in rebuilt] == [[0, 2, 4, 6], [8]]


class NamedLoader(DataLoader):
    """Well behaved: every __init__ argument is stored under its own name."""

    def __init__(self, data, tag, batch_size=1, **kwargs):
        super().__init__(data, batch_size=batch_size, **kwargs)
        self.data = data
        self.tag = tag


class RenamedLoader(DataLoader):
    """Ill behaved: `my_flag` is stored as `_flag`, so it cannot be recovered."""

    def __init__(self, data, my_flag, **kwargs):
        super().__init__(data, **kwargs)
        self.data = data
        self._flag = my_flag


class FixedSamplerLoader(DataLoader):
    def __init__(self, dataset):
        super().__init__(dataset, sampler=SequentialSampler(dataset))


def test_well_behaved_subclass_is_rebuilt_as_same_class():
    original = NamedLoader(dataset(), "train", batch_size=4, num_workers=2, collate_fn=collate_ids)
    rebuilt = distributed_loader(original, 2, 1, even_shards=False)
    assert type(rebuilt) is NamedLoader
    assert rebuilt.tag == "train" and rebuilt.batch_size == 4 and rebuilt.num_workers == 2
    assert isinstance(rebuilt.sampler, DistributedShardSampler)
    assert list(rebuilt) == [[1, 3, 5, 7], [9, 11, 13, 15], [17, 19]]


def test_ill_behaved_subclass_raises_naming_class_and_parameter():
    with pytest.raises(ValueError, match=r"RenamedLoader.*my_flag.*self\.<name>.*use_distributed_sampler=False"):
        distributed_loader(RenamedLoader(dataset(), True), 2, 0)


def test_subclass_not_accepting_sampler_raises():
    with pytest.raises(ValueError, match="FixedSamplerLoader.*sampler"):
        with_sampler(FixedSamplerLoader(dataset()), DistributedShardSampler(range(20), 2, 0))


class PairBatches(torch.utils.data.Sampler):
    def __iter__(self):
        return iter([[0, 1], [2, 3]])

    def __len__(self):
        return 2


def test_custom_batch_sampler_raises():
    with pytest.raises(ValueError, match="PairBatches.*use_distributed_sampler=False"):
        distributed_loader(DataLoader(dataset(), batch_sampler=PairBatches()), 2, 0)


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(4))


def test_iterable_dataset_is_left_to_the_user():
    original = DataLoader(Stream(), batch_size=2)
    assert distributed_loader(original, 2, 0) is original
    with pytest.raises(ValueError, match=r"IterableDataset \(Stream\)"):
        with_sampler(original, DistributedShardSampler(range(4), 2, 0))


@pytest.mark.parametrize("existing", [DistributedSampler, DistributedShardSampler])
def test_already_distributed_loader_is_returned_unchanged(existing):
    data = dataset()
    original = DataLoader(data, sampler=existing(data, num_replicas=2, rank=0))
    assert distributed_loader(original, 2, 0) is original


def collect(loaders, epoch=0):
    out = []
    for loader in loaders:
        loader.sampler.set_epoch(epoch)
        out.append([i for batch in loader for i in batch[0].tolist()])
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_together_cover_the_dataset(shuffle):
    original = DataLoader(dataset(21), batch_size=4, shuffle=shuffle)
    loaders = [distributed_loader(original, 2, rank) for rank in range(2)]
    assert all(isinstance(loader.sampler, DistributedShardSampler) for loader in loaders)
    assert all(loader.sampler.shuffle is shuffle for loader in loaders)
    rank0, rank1 = collect(loaders)
    assert len(rank0) == len(rank1) == 11
    assert set(rank0) | set(rank1) == set(range(21))
    assert len(rank0 + rank1) - 21 == 1  # one padding duplicate
    if shuffle:
        assert collect(loaders, epoch=1) != [rank0, rank1]

    eval_loaders = [distributed_loader(original, 2, rank, even_shards=False) for rank in range(2)]
    assert sorted(sum(collect(eval_loaders), [])) == list(range(21))


def test_random_sampler_seed_is_respected():
    def shard_order(seed):
        original = DataLoader(dataset(30), shuffle=True, generator=torch.Generator().manual_seed(seed))
        return [list(distributed_loader(original, 2, rank).sampler) for rank in range(2)]

    assert shard_order(3) == shard_order(3)
    assert shard_order(3) != shard_order(4)
    assert distributed_loader(DataLoader(dataset(30), shuffle=True), 2, 0, seed=9).sampler.seed == 9


@pytest.mark.parametrize(
    "sampler",
    [
        WeightedRandomSampler([1.0] * 20, num_samples=15),
        SubsetRandomSampler(range(5, 17)),
        RandomSampler(range(20), replacement=True, num_samples=9),
    ],
)
def test_other_samplers_are_wrapped_and_partitioned(sampler):
    original = DataLoader(dataset(), batch_size=2, sampler=sampler)
    loaders = [distributed_loader(original, 3, rank, even_shards=False, seed=1) for rank in range(3)]
    assert all(loader.sampler.source is sampler and loader.sampler.wrap for loader in loaders)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        expected = list(sampler)
    assert sorted(sum(collect(loaders), [])) == sorted(expected)


class HardcodedWorkersLoader(DataLoader):
    """Fixes num_workers itself, so forwarding the recovered value through **kwargs collides."""

    def __init__(self, dataset, **kwargs):
        super().__init__(dataset, num_workers=2, **kwargs)


def test_subclass_whose_init_rejects_recovered_arguments_raises_clearly():
    with pytest.raises(ValueError, match=r"HardcodedWorkersLoader.*num_workers.*use_distributed_sampler=False"):
        distributed_loader(HardcodedWorkersLoader(dataset()), 2, 0)
