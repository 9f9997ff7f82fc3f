"""Read the records of an offline wandb run file (`run-<id>.wandb`: a LevelDB-style log of protobuf Records in
32 KiB blocks), so tests can check what an offline run stored without a server."""
import struct
from pathlib import Path

_BLOCK = 32 * 1024
_HEADER = 7  # file: ":W&B" + 2-byte magic + 1-byte version; record: crc32 + length + type


def run_records(run_file):
    """(history rows as {key: value}, config as {key: value}) from one offline run file."""
    import json

    from wandb.proto import wandb_internal_pb2

    data = Path(run_file).read_bytes()
    position, chunks, history, config = _HEADER, [], [], {}
    while position + _HEADER <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + _HEADER])
        if kind == 0 and length == 0:
            break
        chunks.append(data[position + _HEADER:position + _HEADER + length])
        position += _HEADER + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record.FromString(b"".join(chunks))
            chunks = []
            if record.HasField("history"):
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
            elif record.HasField("config"):
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return history, config
