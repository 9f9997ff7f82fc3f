"""Read the scalars of TensorBoard event files back, checking each record's checksums, with tensorboardX's own
protobuf classes. TensorBoard's own reader stops quietly at a damaged record (it takes it for one still being
written); the tests want it refused."""
from __future__ import annotations

import os
import struct
from pathlib import Path


def read_scalars(log_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """`{tag: [(step, value), ...]}` from every `events.out.tfevents.*` file in `log_dir` (not its subfolders),
    in file then write order. A damaged record raises ValueError naming the file."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            header = data[offset:offset + 12]
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header at byte {offset}")
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            body = data[offset + 12:offset + 12 + length]
            footer = data[offset + 12 + length:offset + 16 + length]
            if length_crc != masked_crc32c(header[:8]) or len(footer) < 4 \
                    or struct.unpack("<I", footer)[0] != masked_crc32c(body):
                raise ValueError(f"{path}: record at byte {offset} fails its checksum")
            offset += 16 + length
            event = Event.FromString(body)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.HasField("tensor") and len(value.tensor.float_val) == 1:
                    scalars.setdefault(value.tag, []).append((event.step, value.tensor.float_val[0]))
    return scalars
