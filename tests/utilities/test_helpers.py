"""The helpers `fabric_kit.utilities` adds under Lightning's names, checked against Lightning's own where it has one
(same inputs, same answers)."""
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.fabric import utilities as theirs
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler

from fabric_kit.utilities import (
    AttributeDict,
    DistributedSamplerWrapper,
    convert_tensors_to_scalars,
    find_usable_cuda_devices,
    get_filesystem,
    has_len,
    suggested_max_num_workers,
)

# Letters and digits only, and no dict method name (`d.items` is the method): keys an attribute can reach.
KEYS = st.dictionaries(st.text(st.characters(categories=("L", "N")), min_size=1, max_size=8).filter(
                           lambda key: not hasattr(dict, key)),
                       st.integers() | st.floats(allow_nan=False) | st.text(max_size=5), max_size=6)


@settings(deadline=None)
@given(KEYS)
def test_attribute_dict_reads_writes_and_prints_as_lightnings(values):
    ours, reference = AttributeDict(values), theirs.AttributeDict(values)
    assert repr(ours) == repr(reference)
    for key, value in values.items():
        assert getattr(ours, key) == value
    ours.extra_ = 1  # the underscore keeps it apart from the generated keys
    assert ours["extra_"] == 1
    del ours.extra_
    assert "extra_" not in ours


def test_attribute_dict_names_the_missing_key():
    with pytest.raises(AttributeError, match="no attribute 'lr'; keys: \\['batch_size'\\]"):
        AttributeDict(batch_size=2).lr  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'lr'"):
        del AttributeDict().lr


class Stream(IterableDataset):
    def __iter__(self):
        yield from range(3)


class StreamWithLen(Stream):
    def __len__(self):
        return 3


@pytest.mark.parametrize("data", [DataLoader(list(range(4))), DataLoader(Stream()), [], DataLoader(StreamWithLen()),
                                  StreamWithLen()], ids=["loader", "stream", "empty", "stream-with-len", "dataset"])
def test_has_len_answers_and_warns_as_lightning(data):
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        answer = has_len(data)
    with warnings.catch_warnings(record=True) as reference:
        warnings.simplefilter("always")
        expected = theirs.data.has_len(data)
    assert answer == expected
    assert len(ours) == len(reference)


@pytest.mark.parametrize("local_world_size", [1, 2, 3, 64])
def test_suggested_max_num_workers_is_lightnings(local_world_size):
    assert suggested_max_num_workers(local_world_size) == theirs.suggested_max_num_workers(local_world_size)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_suggested_max_num_workers_refuses_a_non_count(bad):
    with pytest.raises(ValueError, match=f"local_world_size={bad!r} is not a process count"):
        suggested_max_num_workers(bad)


@pytest.mark.parametrize("shuffle", [False, True])
def test_distributed_sampler_wrapper_shards_another_samplers_indices(shuffle):
    source = list(range(10, 20))
    shards = [list(DistributedSamplerWrapper(source, num_replicas=3, rank=rank, shuffle=shuffle)) for rank in range(3)]
    assert {len(shard) for shard in shards} == {4}  # padded to equal shards, as torch's DistributedSampler
    assert set().union(*map(set, shards)) == set(source)


def test_distributed_sampler_wrapper_needs_a_process_group_or_ranks():
    with pytest.raises(RuntimeError, match="pass num_replicas and rank, or initialize the process group"):
        DistributedSamplerWrapper(SequentialSampler(range(4)))


def test_convert_tensors_to_scalars():
    converted = convert_tensors_to_scalars({"a": torch.tensor(1.5), "b": [torch.tensor([2])], "c": "text"})
    assert converted == {"a": 1.5, "b": [2], "c": "text"} and type(converted["b"][0]) is int
    with pytest.raises(ValueError, match=r"a tensor of shape \(2,\) is not one number"):
        convert_tensors_to_scalars(torch.zeros(2))


def test_get_filesystem_is_fsspecs(tmp_path):
    local, memory = get_filesystem(tmp_path), get_filesystem("memory://bucket/file.ckpt")
    assert type(local) is type(theirs.cloud_io.get_filesystem(tmp_path))
    assert type(memory).__name__ == "MemoryFileSystem"
    with memory.open("memory://bucket/file.ckpt", "wb") as file:
        file.write(b"saved")
    assert memory.cat("memory://bucket/file.ckpt") == b"saved"


def test_get_filesystem_without_fsspec_names_it(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "fsspec.core", None)  # what an environment without fsspec gives import
    with pytest.raises(ModuleNotFoundError, match="needs fsspec to open the URL"):
        get_filesystem("s3://bucket/file")


def test_find_usable_cuda_devices_without_cuda_answers_as_lightning(monkeypatch):
    """CUDA is absent here (and replaced by a count of 0 where it is not): the answers on a machine without GPUs."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert find_usable_cuda_devices(0) == []
    with pytest.raises(ValueError, match="no visible CUDA devices"):
        find_usable_cuda_devices(2)
    with pytest.raises(ValueError, match="no visible CUDA devices"):
        find_usable_cuda_devices()


def test_find_usable_cuda_devices_counts_what_is_free(monkeypatch):
    """Two GPUs mocked (absent hardware): device 0 is held by another process, device 1 is free."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    real_tensor = torch.tensor

    def tensor(value, device=None):
        if device is not None and device.type == "cuda":
            if device.index == 0:
                raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable")
            return real_tensor(value)
        return real_tensor(value, device=device)

    monkeypatch.setattr(torch, "tensor", tensor)
    assert find_usable_cuda_devices(1) == [1] and find_usable_cuda_devices() == [1]
    with pytest.raises(RuntimeError, match=r"only 1 GPUs are free now; \[0\] are held by other processes"):
        find_usable_cuda_devices(2)
    with pytest.raises(ValueError, match="has only 2 GPUs"):
        find_usable_cuda_devices(3)
