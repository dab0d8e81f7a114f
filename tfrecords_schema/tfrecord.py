"""TFRecord framing (the container format of every shard), with CRC-32C checks.

A TFRecord file is a sequence of records::

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

This module writes and reads that framing without TensorFlow so that writers are fast and
byte-deterministic; `tf.data.TFRecordDataset` reads the files it writes.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

import google_crc32c

_MASK_DELTA = 0xA282EAD8


class TFRecordCorruptionError(ValueError):
    """A TFRecord file is truncated or fails its CRC check; `record_index` is 0-based."""

    def __init__(self, message: str, record_index: int, offset: int):
        super().__init__(f"{message} (record {record_index}, byte offset {offset})")
        self.record_index = record_index
        self.offset = offset


def masked_crc32c(data: bytes) -> int:
    """The CRC-32C of `data`, masked as TFRecord does."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record, framed: length, its masked CRC, the data and the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (length, struct.pack("<I", masked_crc32c(length)), data, struct.pack("<I", masked_crc32c(data)))
    )


def write_records(stream: BinaryIO, records) -> int:
    """Writes each bytes object of `records` as one framed record; returns how many."""
    count = 0
    for data in records:
        stream.write(frame_record(data))
        count += 1
    return count


def read_records(stream: BinaryIO) -> Iterator[bytes]:
    """Yields the data of each record, checking both CRCs.

    Raises `TFRecordCorruptionError` naming the record index at the first bad record.
    """
    index = 0
    offset = 0
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise TFRecordCorruptionError("truncated record header", index, offset)
        length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
        if masked_crc32c(length_bytes) != length_crc:
            raise TFRecordCorruptionError("length CRC mismatch", index, offset)
        (length,) = struct.unpack("<Q", length_bytes)
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise TFRecordCorruptionError("truncated record data", index, offset)
        if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
            raise TFRecordCorruptionError("data CRC mismatch", index, offset)
        yield data
        index += 1
        offset += 16 + length
