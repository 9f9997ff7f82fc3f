"""FSDP's DCP writer records every file it writes with its size and CRC-32 as it writes it, and leaves DCP's own
files exactly as DCP alone writes them. One process (`no_dist=True`); the 2-process saves are in test_fsdp.py."""
import pickle

import torch
import torch.distributed.checkpoint as dcp

from fabric_kit.checkpoint.crc import file_crc32
from fabric_kit.checkpoint.directory import file_sizes
from fabric_kit.checkpoint.sharded_writer import ReportingFileSystemWriter


def _state():
    torch.manual_seed(0)
    return {"model": {"weight": torch.randn(300, 500), "bias": torch.randn(500)}, "extra": {"step": 3, "lr": 0.1}}


def test_every_file_is_recorded_as_it_is_on_disk(tmp_path):
    records = {}
    dcp.save(_state(), storage_writer=ReportingFileSystemWriter(tmp_path, records), no_dist=True)
    assert set(records) == set(file_sizes(tmp_path)) == {".metadata", "__0_0.distcp"}  # .metadata.tmp was renamed
    for name, record in records.items():
        assert (record["size"], record["crc32"]) == file_crc32(tmp_path / name)


def test_the_metadata_is_what_dcp_alone_writes(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    dcp.save(_state(), storage_writer=ReportingFileSystemWriter(ours, {}), no_dist=True)
    dcp.save(_state(), checkpoint_id=theirs, no_dist=True)
    mine, plain = (pickle.loads((path / ".metadata").read_bytes()) for path in (ours, theirs))
    assert mine.state_dict_metadata == plain.state_dict_metadata
    assert mine.storage_data == plain.storage_data  # no record of fabric_kit's among DCP's
    assert (ours / "__0_0.distcp").read_bytes() == (theirs / "__0_0.distcp").read_bytes()
    loaded = {"model": {"weight": torch.zeros(300, 500), "bias": torch.zeros(500)}, "extra": {"step": 0, "lr": 0.0}}
    dcp.load(loaded, checkpoint_id=ours, no_dist=True)
    assert torch.equal(loaded["model"]["weight"], _state()["model"]["weight"]) and loaded["extra"]["step"] == 3
