"""Where a dataset's files live: split directories, shard names, manifest and dead letters; and
how a reader finds the shards of a split (`find_split_shards`, file-system calls injected, so
this module needs neither TensorFlow nor a cloud client)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

TEST_DIR = "test"
VALIDATION_DIR = "validation"
"""Optional split of validation pairs (patient-disjoint from train and test) for the trainer."""
MANIFEST_NAME = "manifest.json"
DEAD_LETTER_NAME = "dead_letter.jsonl"
"""Inputs rejected because something is wrong with them (one JSON object a line)."""
UNSELECTED_NAME = "dead_letter_unselected.jsonl"
"""Valid slices deliberately not used (too little body, not picked by the z stride)."""

COMPRESSIONS = {"none": "", "gzip": ".gz"}
"""Shard compression -> file-name suffix; tf.data's `compression_type` is "" or "GZIP"."""


def train_dir(subdataset: int) -> str:
    """Directory of train sub-dataset `subdataset` (0-based), relative to the dataset root."""
    return f"train-{subdataset}"


def split_dir(split: str, subdataset: int) -> str:
    """Directory of a pair's split: `test`, `validation` or `train-<subdataset>`."""
    return {"test": TEST_DIR, "validation": VALIDATION_DIR}.get(split) or train_dir(subdataset)


SHARD_NAME_PATTERN = re.compile(r"pairs-(\d+)-of-(\d+)\.tfrecord(\.gz)?")
"""`shard_name`'s names: index, count, optional gzip suffix."""
SPLIT_DIR_PATTERN = re.compile(r"test|validation|train-(\d+)")
"""`split_dir`'s names."""


def shard_name(index: int, count: int, compression: str = "none") -> str:
    """File name of shard `index` of `count` in one split directory."""
    return f"pairs-{index:05d}-of-{count:05d}.tfrecord{COMPRESSIONS[compression]}"


def parse_shard_name(name: str) -> tuple[int, int, str] | None:
    """(index, count, compression) of a `shard_name`, or None for any other name."""
    match = SHARD_NAME_PATTERN.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), "gzip" if match.group(3) else "none"


def is_split_dir(name: str) -> bool:
    """True for `test`, `validation` and `train-<K>`."""
    return SPLIT_DIR_PATTERN.fullmatch(name) is not None


def split_dir_order(name: str) -> tuple[int, int]:
    """Sort key of split directories: test, validation, then train-0, train-1, ... numerically."""
    if name == TEST_DIR:
        return (0, 0)
    if name == VALIDATION_DIR:
        return (1, 0)
    return (2, int(name.split("-", 1)[1]))


class SplitNotFound(ValueError):
    """A split's shards cannot be found; the message names the path and what was expected."""


@dataclasses.dataclass(frozen=True)
class SplitShards:
    """The shard files of one split directory in order, its pair count (None when no manifest
    states it) and the shards' compression ("none" or "gzip")."""

    name: str
    files: tuple[str, ...]
    pairs: int | None
    compression: str


def join_path(*parts: str) -> str:
    """Joins path parts with '/', for local paths and gs:// URLs alike."""
    return "/".join([parts[0].rstrip("/"), *parts[1:]])


def find_split_shards(root: str, name: str, manifest: Mapping[str, Any] | None,
                      list_dir: Callable[[str], Sequence[str]], exists: Callable[[str], bool]) -> SplitShards:
    """The shards of split directory `name` of the dataset at `root` (local path or URL).

    They are the ones the manifest lists (each must exist) when it lists any, else the split
    directory's files named by `shard_name`. `list_dir` and `exists` are the file system's
    (e.g. `tf.io.gfile.listdir`, `tf.io.gfile.exists`). Raises SplitNotFound.
    """
    compression = (manifest or {}).get("compression", "none")
    if compression not in COMPRESSIONS:
        raise SplitNotFound(f"{join_path(root, MANIFEST_NAME)}: unknown compression {compression!r}")
    listed = ((manifest or {}).get("splits") or {}).get(name) or {}
    if listed.get("shards"):
        files = tuple(join_path(root, shard["file"]) for shard in listed["shards"])
        missing = [path for path in files if not exists(path)]
        if missing:
            raise SplitNotFound(f"{join_path(root, MANIFEST_NAME)} lists shards that do not exist: {', '.join(missing)}")
        return SplitShards(name, files, int(listed["pairs"]) if "pairs" in listed else None, compression)
    directory = join_path(root, name)
    names = sorted(entry for entry in (list_dir(directory) if exists(directory) else ()) if parse_shard_name(entry))
    if not names:
        raise SplitNotFound(f"no shards match {join_path(directory, 'pairs-*.tfrecord[.gz]')}: is {root} a ctdeblur "
                            f"dataset with a {name}/ split?")
    kinds = {parse_shard_name(entry)[2] for entry in names}
    if len(kinds) > 1:
        raise SplitNotFound(f"{directory} mixes gzip and uncompressed shards: files of different runs")
    return SplitShards(name, tuple(join_path(directory, entry) for entry in names), None, kinds.pop())


def tf_compression_type(compression: str) -> str:
    """The `compression_type` argument of `tf.data.TFRecordDataset` for a manifest's compression."""
    return {"none": "", "gzip": "GZIP"}[compression]
