"""`Problem`: one thing wrong with a dataset, as reported in the terminal and in the JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

CORRUPT_RECORD = "corrupt_record"
"""TFRecord framing or CRC broken; the rest of that shard cannot be read."""
UNDECODABLE_RECORD = "undecodable_record"
"""A framed record that is not a valid pair (not a tf.train.Example, missing feature, bad size)."""
SCHEMA_VERSION = "schema_version"
"""A record or the manifest written with a schema version this reader does not know."""
MISPLACED_RECORDS = "misplaced_records"
"""Records whose `split`/`subdataset` fields disagree with the directory they are in."""
SHARD_SET = "shard_set"
"""Shard files of a split directory that do not form one complete pairs-i-of-n set."""
MANIFEST = "manifest"
"""manifest.json missing, unreadable, of another schema, or listing other shard files."""
COUNT_MISMATCH = "count_mismatch"
"""A count on disk (pairs, patients, series) differs from the one manifest.json states."""
PATIENT_LEAKAGE = "patient_leakage"
STRAY_FILE = "stray_file"
"""A file in a split directory that manifest.json does not list: readers that glob the
directory would read it, the trainer (which reads by manifest) would not."""
CHECKSUM_MISMATCH = "checksum_mismatch"
"""A shard whose bytes differ from the sha256 manifest.json states: altered after writing."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """What is wrong (`kind`, `message` with what to do) and where (`file` relative to the dataset
    root, 0-based `record_index`, `split` directory); `patient_keys` for leakage."""

    kind: str
    message: str
    file: str | None = None
    record_index: int | None = None
    split: str | None = None
    patient_keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this problem (unset locations left out)."""
        result: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.file is not None:
            result["file"] = self.file
        if self.record_index is not None:
            result["record_index"] = self.record_index
        if self.split is not None:
            result["split"] = self.split
        if self.patient_keys:
            result["patient_keys"] = list(self.patient_keys)
        return result
