"""Properties of DistributedShardSampler over all ranks of a simulated world."""
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Sampler, SubsetRandomSampler, WeightedRandomSampler

from fabric_kit.data import DistributedShardSampler


def shards(source, world_size, epoch=0, **options):
    samplers = [DistributedShardSampler(source, world_size, rank, **options) for rank in range(world_size)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return samplers, [list(sampler) for sampler in samplers]


def interleave(per_rank):
    """The global order the ranks' strided shards were taken from (truncated to the shortest shard's rounds)."""
    rounds = min(len(indices) for indices in per_rank)
    return [indices[i] for i in range(rounds) for indices in per_rank]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 500),
    world_size=st.integers(1, 8),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    even_shards=st.booleans(),
    epoch=st.integers(0, 1000),
)
def test_shards_cover_dataset(n, world_size, drop_last, shuffle, even_shards, epoch):
    options = dict(shuffle=shuffle, drop_last=drop_last, even_shards=even_shards, seed=7)
    samplers, per_rank = shards(range(n), world_size, epoch, **options)
    for sampler, indices in zip(samplers, per_rank, strict=False):
        assert len(sampler) == len(indices)
    counts = Counter(i for indices in per_rank for i in indices)
    assert set(counts) <= set(range(n))
    if not even_shards:
        assert sorted(counts.elements()) == list(range(n))
        assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1
    else:
        assert len({len(indices) for indices in per_rank}) == 1
        if drop_last:
            assert max(counts.values(), default=1) == 1
            assert n - len(counts) < world_size
        else:
            assert set(counts) == set(range(n))
            assert sum(counts.values()) - n < world_size

    # Ranks agree on the epoch's permutation: rebuilding it from any one epoch's shards gives the same order twice.
    _, again = shards(range(n), world_size, epoch, **options)
    assert again == per_rank
    if shuffle and n >= 10:  # two permutations of >= 10 items coincide with probability <= 1/10!
        _, next_epoch = shards(range(n), world_size, epoch + 1, **options)
        assert interleave(next_epoch) != interleave(per_rank)
    if not shuffle and not even_shards:
        assert interleave(per_rank) == list(range(len(interleave(per_rank))))


def test_same_permutation_on_all_ranks():
    _, per_rank = shards(range(12), 3, epoch=4, shuffle=True, even_shards=False)
    order = interleave(per_rank)
    generator = torch.Generator().manual_seed(0 + 4)
    assert order == torch.randperm(12, generator=generator).tolist()


def test_padding_repeats_from_start_even_when_world_exceeds_dataset():
    _, per_rank = shards(range(2), 5)
    assert per_rank == [[0], [1], [0], [1], [0]]


def test_wrapped_weighted_sampler_is_partitioned():
    weighted = WeightedRandomSampler([0.1, 5.0, 1.0, 0.0, 2.0], num_samples=23, replacement=True)
    _, per_rank = shards(weighted, 4, epoch=3, even_shards=False, seed=11)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11 + 3)
        expected = list(weighted)
    assert sorted(i for indices in per_rank for i in indices) == sorted(expected)
    assert [indices[0] for indices in per_rank] == expected[:4]
    assert 3 not in expected


def test_wrapped_subset_sampler_is_partitioned_and_reshuffled_per_epoch():
    subset = SubsetRandomSampler(list(range(100, 160)))
    samplers, epoch0 = shards(subset, 3, epoch=0)
    assert sorted(i for indices in epoch0 for i in indices) == list(range(100, 160))
    assert all(len(sampler) == 20 for sampler in samplers)
    _, epoch1 = shards(subset, 3, epoch=1)
    assert interleave(epoch0) != interleave(epoch1)


class RecordingSampler(Sampler[int]):
    """A custom sampler whose order depends on the epoch it was told about."""

    def __init__(self, n):
        self.n = n
        self.epoch = None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(range(self.epoch % self.n, self.n))

    def __len__(self):
        return self.n - self.epoch % self.n


def test_set_epoch_is_forwarded_to_wrapped_sampler():
    custom = RecordingSampler(10)
    samplers, per_rank = shards(custom, 2, epoch=3, even_shards=False)
    assert custom.epoch == 3
    assert sorted(per_rank[0] + per_rank[1]) == list(range(3, 10))
    assert [len(s) for s in samplers] == [4, 3]


def test_plain_index_list_can_be_wrapped():
    _, per_rank = shards([5, 6, 7], 2, even_shards=False, wrap=True)
    assert per_rank == [[5, 7], [6]]


@pytest.mark.parametrize(
    ("num_replicas", "rank", "message"),
    [(0, 0, "num_replicas=0"), (2, 2, r"rank=2 .*\[0, 1\]"), (2, -1, "rank=-1"), (2.0, 0, "num_replicas=2.0")],
)
def test_invalid_world_is_rejected(num_replicas, rank, message):
    with pytest.raises(ValueError, match=message):
        DistributedShardSampler(range(4), num_replicas, rank)


def test_unsized_source_needs_wrap():
    with pytest.raises(TypeError, match="generator has no len"):
        DistributedShardSampler((i for i in range(3)), 1, 0)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 120), world_size=st.integers(1, 4), start=st.integers(0, 130),
       spans=st.lists(st.tuples(st.integers(0, 130), st.integers(0, 40)), max_size=3), shuffle=st.booleans(),
       even_shards=st.booleans())
def test_excluded_positions_are_left_out_before_sharding(n, world_size, start, spans, shuffle, even_shards):
    exclude = [(first, first + length) for first, length in spans]
    samplers = [DistributedShardSampler(range(n), world_size, rank, shuffle=shuffle, even_shards=even_shards)
                for rank in range(world_size)]
    for sampler in samplers:
        sampler.set_epoch(1, start=start, exclude=exclude)
    order = samplers[0].global_order().tolist()
    left_out = {p for first, stop in exclude for p in range(first, stop)}
    kept = [index for position, index in enumerate(order) if position >= start and position not in left_out]
    per_rank = [list(sampler) for sampler in samplers]
    assert [len(indices) for indices in per_rank] == [len(sampler) for sampler in samplers]
    # The kept order, sharded as if it were the whole epoch (padding, if any, repeats its start).
    assert interleave(per_rank)[: len(kept)] == kept[: len(interleave(per_rank))]
    assert set(i for indices in per_rank for i in indices) == set(kept)


def test_excluded_spans_must_be_ordered_positions():
    with pytest.raises(ValueError, match=r"exclude=\[\(4, 2\)\] is invalid; expected \(first, stop\) positions"):
        DistributedShardSampler(range(8), 1, 0).set_epoch(0, exclude=[(4, 2)])
