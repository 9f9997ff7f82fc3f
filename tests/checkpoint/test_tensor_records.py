"""A tensor that torch.save wrote on its own (as DCP stores each shard) is read in place exactly as torch.load reads
it: every layout torch.save keeps (views with strides and offsets), any box of it, into destinations of any
layout and dtype; what it does not read is left to torch.load, and a DCP load reads plain tensors without it."""
import io
import mmap

import pytest
import torch
import torch.distributed.checkpoint as dcp
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric_kit.checkpoint import CheckpointCorruptedError
from fabric_kit.checkpoint.sharded_reading import load_sharded
from fabric_kit.checkpoint.tensor_records import read_tensor, tensor_layout

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
_READ_HERE = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _archive(tmp_path, tensor):
    """The file torch.save wrote for `tensor` after 5 bytes of something else, as a shard holds it."""
    file = tmp_path / "shard"
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    file.write_bytes(b"01234" + buffer.getvalue())
    return file


def _layout_of(file):
    with open(file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapping, \
            memoryview(mapping)[5:] as archive:
        return tensor_layout(archive, file)


@st.composite
def _stored_and_box(draw):
    """A tensor as torch.save may store it (a view of a larger storage, transposed, offset), and a box of it."""
    dtype = draw(st.sampled_from(_READ_HERE))
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    base = torch.randn([n + 1 for n in shape], generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    base = base.to(dtype)
    view = draw(st.sampled_from(["whole", "offset", "transposed"]))
    if view == "offset" and shape:
        tensor = base[1:]
    elif view == "transposed" and len(shape) >= 2:
        tensor = base.transpose(0, 1)
    else:
        tensor = base
    offsets = [draw(st.integers(0, n - 1)) for n in tensor.shape]
    lengths = [draw(st.integers(1, n - offset)) for n, offset in zip(tensor.shape, offsets, strict=True)]
    return tensor, offsets, lengths


@settings(max_examples=60, deadline=None)
@given(_stored_and_box(), st.sampled_from(["same", "float64", "strided"]))
def test_reads_what_torch_load_reads(tmp_path_factory, stored_and_box, destination):
    tensor, offsets, lengths = stored_and_box
    file = _archive(tmp_path_factory.mktemp("records"), tensor)
    expected = torch.load(io.BytesIO(file.read_bytes()[5:]), weights_only=True)
    for dim, (offset, length) in enumerate(zip(offsets, lengths, strict=True)):
        expected = expected.narrow(dim, offset, length)
    if destination == "same":
        target = torch.zeros(lengths, dtype=tensor.dtype)
    elif destination == "float64":
        target = torch.zeros(lengths, dtype=torch.float64)
    else:  # every other element of a larger tensor
        target = torch.zeros([*lengths[:-1], 2 * lengths[-1]] if lengths else [], dtype=tensor.dtype)
        target = target[..., ::2] if lengths else target
    layout = _layout_of(file)
    assert layout is not None and layout.dtype == tensor.dtype
    with open(file, "rb", buffering=0) as f:
        read_tensor(f, 5, layout, target, offsets, lengths)
    assert torch.equal(target, expected.to(target.dtype))


@pytest.mark.parametrize("stored", [
    torch.arange(6),  # int64: other dtypes go to torch.load
    torch.ones(3, dtype=torch.bool),
    torch.nn.Parameter(torch.ones(3)),  # a subclass is rebuilt by another function
], ids=["int64", "bool", "parameter"])
def test_anything_but_a_plain_tensor_of_the_dtypes_read_here_is_left_to_torch_load(tmp_path, stored):
    assert _layout_of(_archive(tmp_path, stored)) is None


def test_a_damaged_archive_or_a_file_cut_inside_the_tensor_names_the_file(tmp_path):
    file = _archive(tmp_path, torch.ones(1000))
    layout = _layout_of(file)
    data = file.read_bytes()
    file.write_bytes(data[:5 + layout.data.start + 100])
    with open(file, "rb", buffering=0) as f, pytest.raises(CheckpointCorruptedError, match="inside a stored tensor"):
        read_tensor(f, 5, layout, torch.zeros(1000), [0], [1000])
    file.write_bytes(data[:-30])  # no end record
    with pytest.raises(CheckpointCorruptedError, match="truncated") as error:
        _layout_of(file)
    assert str(file) in str(error.value)


def test_a_dcp_load_reads_plain_tensors_without_torch_load(tmp_path, monkeypatch):
    """A budget: torch.load runs only for what is not a plain tensor of the dtypes read here (the int tensor and
    the float entry), where DCP's own reader runs it for every tensor."""
    saved = {"weight": torch.randn(8, 4), "half": torch.randn(3, dtype=torch.bfloat16), "count": torch.arange(5),
             "lr": 0.25}
    dcp.save(saved, checkpoint_id=tmp_path, no_dist=True)
    loaded = {"weight": torch.zeros(8, 4), "half": torch.zeros(3, dtype=torch.bfloat16),
              "count": torch.zeros(5, dtype=torch.int64), "lr": 0.0}
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(1) or real_load(*args, **kwargs))
    load_sharded(loaded, tmp_path, no_dist=True)
    assert len(calls) == 2
    assert loaded["lr"] == 0.25
    for key in ("weight", "half", "count"):
        assert torch.equal(loaded[key], saved[key])
