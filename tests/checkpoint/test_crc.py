"""CRC-32s of checkpoint files: `file_crc32` and `crc32_of_range` through windows of mappings, and `ChecksummedFile`,
which knows its file's size and CRC-32 when closed without reading it back (a thread checksums what was written)."""
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric_kit.checkpoint import crc
from fabric_kit.checkpoint.crc import WINDOW, ChecksummedFile, crc32_of_range, file_crc32

# Pieces from one byte to past a window, so writes are buffered, written through, and cross window boundaries.
pieces = st.lists(st.sampled_from([1, 7, 2**16 - 1, 2**16, 2**16 + 3, WINDOW - 5, WINDOW + 9]), max_size=8)


@settings(max_examples=15, deadline=None)
@given(pieces)
def test_a_checksummed_file_knows_its_size_and_crc(tmp_path_factory, lengths):
    path = tmp_path_factory.mktemp("crc") / "file"
    data = [bytes([i % 251]) * length for i, length in enumerate(lengths)]
    with ChecksummedFile(path) as f:
        for piece in data:
            assert f.write(memoryview(piece)) == len(piece)
        assert f.tell() == sum(lengths)
    content = path.read_bytes()
    assert content == b"".join(data)
    assert (f.size, f.crc) == (len(content), zlib.crc32(content)) == file_crc32(path)


def test_torch_save_through_a_checksummed_file(tmp_path):
    path = tmp_path / "tensor.pt"
    tensor = torch.arange(3 * WINDOW // 4, dtype=torch.int32)  # 3 windows of data, in one write
    with ChecksummedFile(path) as f:
        torch.save(tensor, f)
    assert (f.size, f.crc) == file_crc32(path)
    assert torch.equal(torch.load(path), tensor)


def test_an_empty_file(tmp_path):
    with ChecksummedFile(tmp_path / "empty") as f:
        pass
    assert (f.size, f.crc) == (0, 0) == file_crc32(tmp_path / "empty")


def test_a_failed_checksum_fails_the_close(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(crc, "crc32_of_range", fail)
    f = ChecksummedFile(tmp_path / "file")
    f.write(b"x" * (WINDOW + 1))
    with pytest.raises(OSError, match="Input/output error"):
        f.close()
    assert f.closed


def test_an_error_inside_the_block_is_the_one_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(crc, "crc32_of_range", lambda *args: (_ for _ in ()).throw(OSError(5, "checksum")))
    with pytest.raises(ValueError, match="the writer's"):
        with ChecksummedFile(tmp_path / "file") as f:
            f.write(b"x" * 10)
            raise ValueError("the writer's")
    assert f.closed


def test_file_crc32_over_several_windows_and_a_part(tmp_path):
    content = bytes(range(256)) * (2 * WINDOW // 256) + b"tail"
    (tmp_path / "file").write_bytes(content)
    assert file_crc32(tmp_path / "file", fsync=True) == (len(content), zlib.crc32(content))


# Ranges that start and end anywhere, mid-page and across window boundaries, as a torch.save archive's records do.
offsets = st.sampled_from([0, 1, 4095, 4096, 4097, WINDOW - 1, WINDOW, WINDOW + 4097, 2 * WINDOW + 3])


@settings(max_examples=25, deadline=None)
@given(offsets, offsets, st.integers(0, 2**32 - 1))
def test_the_crc_of_any_range_continues_a_crc(tmp_path_factory, a, b, seed):
    content = torch.randint(0, 256, (2 * WINDOW + 4, ), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.uint8).numpy().tobytes()
    path = tmp_path_factory.mktemp("range") / "file"
    path.write_bytes(content)
    start, end = min(a, b), max(a, b)
    with open(path, "rb") as f:
        assert crc32_of_range(f.fileno(), start, end, 12345) == zlib.crc32(content[start:end], 12345)
        with pytest.raises(ValueError):  # a range past the end of the file
            crc32_of_range(f.fileno(), start, len(content) + 1)
