"""Checkpoints crafted to run code when unpickled, as anyone who can write a checkpoint directory can make them: a
pickled object whose reconstruction creates a marker file, placed in one of the directory's files, with the
manifest rewritten to match (the manifest guards against damage, not against a writer)."""
import io
import pathlib
import pickle
import shutil

import torch

from fabric_kit.checkpoint.directory import write_manifest
from fabric_kit.checkpoint.sharded_reading import read_metadata


class TouchesMarker:
    """Unpickling it calls `Path(marker).touch()`: the stand-in for any code an attacker would run."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def copy_of(checkpoint, destination):
    destination = pathlib.Path(destination)
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(checkpoint, destination)
    return destination


def crafted_metadata(checkpoint, destination, marker):
    """A copy of a DCP checkpoint whose `.metadata` is the real one with the marker object inside it."""
    destination = copy_of(checkpoint, destination)
    metadata = read_metadata(destination)
    metadata.storage_meta.modules = [TouchesMarker(marker)]
    (destination / ".metadata").write_bytes(pickle.dumps(metadata))
    write_manifest(destination)
    return destination


def crafted_entry(checkpoint, destination, marker, fqn="optimizer.param_groups.0.lr"):
    """A copy of a DCP checkpoint whose non-tensor entry `fqn` (stored as torch.save bytes inside a shard) is
    replaced by a torch.save of the marker object: appended to the entry's shard file, and the (clean) metadata
    pointed at it."""
    destination = copy_of(checkpoint, destination)
    metadata = read_metadata(destination)
    info = next(info for index, info in metadata.storage_data.items() if index.fqn == fqn)
    payload = io.BytesIO()
    torch.save(TouchesMarker(marker), payload)
    shard = destination / info.relative_path
    info.offset, info.length = shard.stat().st_size, len(payload.getvalue())
    with open(shard, "ab") as f:
        f.write(payload.getvalue())
    (destination / ".metadata").write_bytes(pickle.dumps(metadata))
    write_manifest(destination)
    return destination


def crafted_files(checkpoint, destination, marker, pattern):
    """A copy of a directory checkpoint whose files matching `pattern` (a glob below it) each hold a torch.save of
    the marker object, wrapped in a dict as a real checkpoint file would be."""
    destination = copy_of(checkpoint, destination)
    files = sorted(destination.glob(pattern))
    assert files, f"no file matches {pattern!r} in {destination}"
    for file in files:
        torch.save({"module": TouchesMarker(marker)}, file)
    write_manifest(destination)
    return destination
