"""Where a dataset's files live: split directories, shard names, manifest and dead letters."""

from __future__ import annotations

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


def shard_name(index: int, count: int, compression: str = "none") -> str:
    """File name of shard `index` of `count` in one split directory."""
    return f"pairs-{index:05d}-of-{count:05d}.tfrecord{COMPRESSIONS[compression]}"


def tf_compression_type(compression: str) -> str:
    """The `compression_type` argument of `tf.data.TFRecordDataset` for a manifest's compression."""
    return {"none": "", "gzip": "GZIP"}[compression]
