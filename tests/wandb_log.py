"""A reader of W&B's offline run file (`run-<id>.wandb`), written from its format, for the tracker tests.

The file is a 7-byte header (":W&B", magic 0xBEE1 little-endian, version 0) and then records in LevelDB's log
format: 32 KiB blocks; each record chunk has a 7-byte header (CRC-32 of the type byte then the data, as zlib
computes it; data length, 2 bytes; type: 1 whole, 2 first, 3 middle, 4 last piece), a block's tail shorter than
a header is padding. Each record's bytes are a `wandb_internal_pb2.Record` protobuf.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
HEADER = 7


def raw_records(path: str | Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if (crc, length, kind) == (0, 0, 0):  # zero padding to the block's end
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: a damaged record at byte {pos}"
        pos += HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def read_run(path: str | Path) -> dict:
    """{'run': the run record, 'config': {key: value}, 'history': [{key: value} per logged step],
    'summary': {key: value}, 'artifacts': [artifact records], 'exited': whether the run's last record (its
    exit) is in the file} of one offline run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = {"run": None, "config": {}, "history": [], "summary": {}, "artifacts": [], "exited": False}
    for raw in raw_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "history":
            out["history"].append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            out["summary"].update({_key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "artifact":
            out["artifacts"].append(record.artifact)
        elif kind == "exit":
            out["exited"] = True
    return out


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)
