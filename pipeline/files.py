"""Whole-file reads and writes on any Beam file system (local paths, gs://, ...)."""

from __future__ import annotations

import os

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def read_bytes(path: str) -> bytes:
    """All bytes of a local or remote file, never decompressed by extension."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def write_bytes(path: str, data: bytes) -> None:
    """Writes a local or remote file whole, creating local parent directories."""
    if "://" not in path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def list_files(root: str) -> str:
    """The file pattern of every file under `root` (or `root` itself if it is a local file)."""
    if "://" not in root:
        if not os.path.exists(root):
            raise FileNotFoundError(f"{root} does not exist")
        if os.path.isfile(root):
            return root
    return root.rstrip("/") + "/**"
