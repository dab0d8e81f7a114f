"""Checks of a dataset against its own layout and manifest: placement, leakage, counts (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.stats import problems as kinds
from pipeline.stats.problems import Problem
from pipeline.stats.reader import Shard, ShardResult, stray_shard
from pipeline.stats.summary import Measurements
from tfrecords_schema import MANIFEST_NAME, READABLE_VERSIONS, TEST_DIR, VALIDATION_DIR

HELD_OUT_DIRS = (TEST_DIR, VALIDATION_DIR)
"""Split directories whose patients must appear in no other split directory."""


def expected_fields(directory: str) -> tuple[str, int]:
    """(split, subdataset) that records in `directory` must carry: ("test", -1), ("validation", -1)
    or ("train", k)."""
    if directory in HELD_OUT_DIRS:
        return directory, -1
    return "train", int(directory.split("-", 1)[1])


def check_placement(result: ShardResult) -> list[Problem]:
    """Records of a shard whose `split`/`subdataset` fields disagree with its directory."""
    split, subdataset = expected_fields(result.shard.directory)
    columns = result.measurements.columns
    wrong = (columns["split"] != split) | (columns["subdataset"] != subdataset)
    if not wrong.any():
        return []
    first = int(np.argmax(wrong))
    return [
        Problem(
            kinds.MISPLACED_RECORDS,
            f"{int(wrong.sum())} of {len(wrong)} records say split={columns['split'][first]!r} "
            f"subdataset={columns['subdataset'][first]} but lie in {result.shard.directory}/ "
            f"(expected split={split!r} subdataset={subdataset}); the shard was copied into the wrong directory",
            file=result.shard.relative,
            record_index=int(columns["record_index"][first]),
        )
    ]


@dataclasses.dataclass(frozen=True)
class Leakage:
    """Patients of a held-out directory (test, validation) present in another split directory.

    patient_keys: sorted keys of test patients found elsewhere; by_subdataset: other directory ->
    how many test patients it holds; validation_keys: sorted keys of validation patients found in
    train directories.
    """

    patient_keys: tuple[str, ...]
    by_subdataset: Mapping[str, int]
    validation_keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "patients_in_test_and_train": len(self.patient_keys),
            "patient_keys": list(self.patient_keys),
            "by_subdataset": dict(self.by_subdataset),
            "patients_in_validation_and_train": len(self.validation_keys),
            "validation_patient_keys": list(self.validation_keys),
        }


def _patients(measurements: Measurements | None) -> set[str]:
    return set(measurements.columns["patient_key"]) if measurements is not None else set()


def find_leakage(by_directory: Mapping[str, Measurements]) -> Leakage:
    """Patient keys of the `test` directory that also occur in any other directory, and of the
    `validation` directory that also occur in a `train-N` directory."""
    test_patients = _patients(by_directory.get(TEST_DIR))
    validation_patients = _patients(by_directory.get(VALIDATION_DIR))
    leaked: set[str] = set()
    leaked_validation: set[str] = set()
    by_subdataset: dict[str, int] = {}
    for directory, measurements in by_directory.items():
        if directory == TEST_DIR:
            continue
        patients = set(measurements.columns["patient_key"])
        shared = test_patients & patients
        by_subdataset[directory] = len(shared)
        leaked |= shared
        if directory != VALIDATION_DIR:
            leaked_validation |= validation_patients & patients
    return Leakage(tuple(sorted(leaked)), by_subdataset, tuple(sorted(leaked_validation)))


def leakage_problems(leakage: Leakage) -> list[Problem]:
    """One problem naming the leaked test patient keys, one for leaked validation keys, or none."""
    where = ", ".join(f"{name} ({count})" for name, count in leakage.by_subdataset.items() if count)
    cases = (
        (TEST_DIR, leakage.patient_keys,
         f"in both test and train ({where}): the test split is not patient-disjoint, so test scores would be optimistic"),
        (VALIDATION_DIR, leakage.validation_keys,
         "in both validation and train: the checkpoint chosen on validation would favour what it trained on"),
    )
    return [
        Problem(kinds.PATIENT_LEAKAGE, f"{len(keys)} patient(s) {what}; remove the copied shards or re-make the dataset",
                split=split, patient_keys=keys)
        for split, keys, what in cases if keys
    ]


def check_splits_present(directories: Sequence[str]) -> list[Problem]:
    """A dataset needs a test directory and at least one train-N directory."""
    found = []
    if TEST_DIR not in directories:
        found.append(Problem(kinds.SHARD_SET, "no test/ shards: leakage cannot be checked and there is nothing to evaluate on"))
    if not any(directory not in HELD_OUT_DIRS for directory in directories):
        found.append(Problem(kinds.SHARD_SET, "no train-N/ shards: there is nothing to train on"))
    return found


def _count_problem(what: str, where: str, stated: Any, found: int, file: str | None = None) -> Problem:
    holder = "the shard holds" if file else "the shards hold"
    return Problem(
        kinds.COUNT_MISMATCH,
        f"manifest.json states {stated} {what}, {holder} {found}",
        file=file,
        split=None if file else where,
    )


def check_manifest(
    manifest: Mapping[str, Any],
    shards: Sequence[Shard],
    results: Sequence[ShardResult],
    by_directory: Mapping[str, Measurements],
    digests: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Differences between manifest.json and what is on disk.

    Schema version and compression; split directories and shard files listed vs present (a
    present one not listed is a `stray_file`); pairs per shard, and pairs, patients and series
    per split; `written.pairs` vs all pairs read; each shard's sha256 against `digests` (shard
    path relative to the dataset -> sha256 hex of its bytes). Counts on disk are of records that
    decoded, so corrupt records also show up here.
    """
    digests = digests or {}
    found: list[Problem] = []
    version = manifest.get("schema_version")
    if version not in READABLE_VERSIONS:
        found.append(
            Problem(
                kinds.SCHEMA_VERSION,
                f"manifest.json has schema_version {version!r}, this reader knows {list(READABLE_VERSIONS)}; "
                "use the ctdeblur version that wrote the dataset",
                file=MANIFEST_NAME,
            )
        )
    compression = manifest.get("compression")
    odd = [shard.relative for shard in shards if shard.compression != compression]
    if odd:
        found.append(
            Problem(
                kinds.MANIFEST,
                f"manifest.json says compression {compression!r} but {len(odd)} shard file name(s) disagree "
                f"(first: {odd[0]}); files from different runs are mixed",
                file=MANIFEST_NAME,
            )
        )
    splits = manifest.get("splits")
    if not isinstance(splits, Mapping):
        found.append(Problem(kinds.MANIFEST, "manifest.json has no 'splits' mapping; counts cannot be checked", file=MANIFEST_NAME))
        return found

    pairs_by_file = {result.shard.relative: len(result.measurements) for result in results}
    for directory in sorted(set(splits) - set(by_directory)):
        found.append(Problem(kinds.MANIFEST, "listed in manifest.json but has no shards on disk", split=directory))
    for directory in sorted(set(by_directory) - set(splits)):
        found.append(Problem(kinds.MANIFEST, "on disk but not listed in manifest.json", split=directory))
    for directory, stated in splits.items():
        if directory not in by_directory or not isinstance(stated, Mapping):
            continue
        measurements = by_directory[directory]
        on_disk = {
            "pairs": len(measurements),
            "patients": len(set(measurements.columns["patient_key"])),
            "series": len(set(measurements.columns["series_uid"])),
        }
        for what, count in on_disk.items():
            if what in stated and stated[what] != count:
                found.append(_count_problem(what, directory, stated[what], count))
        entries = [entry for entry in stated.get("shards", []) if isinstance(entry, Mapping)]
        listed = {entry.get("file"): entry.get("pairs") for entry in entries}
        stated_sha256 = {entry.get("file"): entry.get("sha256") for entry in entries}
        present = {shard.relative for shard in shards if shard.directory == directory}
        for file in sorted(set(listed) - present):
            found.append(Problem(kinds.MANIFEST, "listed in manifest.json but missing on disk", file=str(file)))
        for file in sorted(present - set(listed)):
            found.append(stray_shard(file))
        for file in sorted(present & set(listed)):
            if listed[file] is not None and listed[file] != pairs_by_file[file]:
                found.append(_count_problem("pairs", directory, listed[file], pairs_by_file[file], file=file))
            expected, actual = stated_sha256[file], digests.get(file)
            if expected and actual and expected != actual:
                found.append(Problem(
                    kinds.CHECKSUM_MISMATCH,
                    f"sha256 {actual[:16]}... differs from manifest.json's {str(expected)[:16]}...: the shard was "
                    "altered or damaged after it was written; copy it again or re-make the dataset",
                    file=file,
                ))
    written = manifest.get("written")
    if isinstance(written, Mapping) and "pairs" in written:
        total = sum(pairs_by_file.values())
        if written["pairs"] != total:
            found.append(
                Problem(kinds.COUNT_MISMATCH, f"written.pairs is {written['pairs']}, the shards hold {total}", file=MANIFEST_NAME)
            )
    return found
