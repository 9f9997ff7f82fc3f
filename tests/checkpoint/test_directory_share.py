"""The ranks of a job split a directory checkpoint's checksumming by file: `share` hands every file to exactly one
rank, the same way on every rank, balanced by size; `verify_directory(path, rank, world_size)` reads only that
rank's share (and checks every file's presence and size)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fabric_kit.checkpoint import CheckpointCorruptedError, atomic_directory, verify_directory
from fabric_kit.checkpoint.directory import share

sizes = st.dictionaries(st.text("abc_.0123", min_size=1, max_size=6), st.integers(0, 10**9), max_size=12)


@given(sizes, st.integers(1, 6))
def test_every_file_goes_to_exactly_one_rank(sizes, world_size):
    shares = [share(sizes, rank, world_size) for rank in range(world_size)]
    assert sorted(name for part in shares for name in part) == sorted(sizes)
    assert shares == [share(dict(reversed(sizes.items())), rank, world_size) for rank in range(world_size)]


@given(sizes, st.integers(1, 6))
def test_no_rank_reads_more_than_its_part_plus_one_file(sizes, world_size):
    # Largest-first onto the least loaded rank: the busiest rank exceeds the mean by at most the largest file.
    loads = [sum(sizes[name] for name in share(sizes, rank, world_size)) for rank in range(world_size)]
    assert max(loads) <= sum(sizes.values()) / world_size + max(sizes.values(), default=0)


def test_one_shard_file_per_rank_is_read_by_that_rank():
    sizes = {"__0_0.distcp": 100, "__1_0.distcp": 100, ".metadata": 5, "fabric_kit_plain.pt": 3}
    assert share(sizes, 0, 2)[0] == "__0_0.distcp" and share(sizes, 1, 2)[0] == "__1_0.distcp"


@pytest.fixture
def two_shards(tmp_path):
    path = tmp_path / "checkpoint"
    with atomic_directory(path) as staging:
        for rank in range(2):
            torch.save(torch.full((1000,), float(rank)), staging / f"__{rank}_0.distcp")
    return path


def test_a_rank_verifies_the_contents_of_its_share_only(two_shards):
    damaged = two_shards / "__1_0.distcp"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    verify_directory(two_shards, rank=0, world_size=2)  # rank 0 reads __0_0 only
    for rank, world_size in ((1, 2), (0, 1)):
        with pytest.raises(CheckpointCorruptedError, match="checksum") as info:
            verify_directory(two_shards, rank, world_size)
        assert str(damaged) in str(info.value)


def test_every_rank_checks_every_file_is_there_with_its_size(two_shards):
    other = two_shards / "__1_0.distcp"
    other.write_bytes(other.read_bytes()[:-1])
    with pytest.raises(CheckpointCorruptedError, match="bytes") as info:
        verify_directory(two_shards, rank=0, world_size=2)
    assert str(other) in str(info.value)
    other.unlink()
    with pytest.raises(CheckpointCorruptedError, match="missing"):
        verify_directory(two_shards, rank=0, world_size=2)
