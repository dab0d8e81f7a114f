"""What the archive sources share: a listed series, the listing filters and the archive error.

A listing keeps every series it was given: each one is either kept or dropped with a stable
reason, so the pipeline can account for all of them.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Iterable, NamedTuple, Sequence

DEFAULT_DESCRIPTION_EXCLUDE = (
    r"scout", r"localizer", r"locator", r"topogram", r"surview", r"scanogram",
    r"dose ?(report|info|summary)", r"patient ?protocol", r"screen ?save",
)
"""SeriesDescription patterns (case-insensitive regex) of series that are no axial CT volume:
planning views and dose / protocol pages (a "LOW DOSE CHEST" series is kept)."""


class ArchiveError(Exception):
    """A series or listing the archive did not deliver.

    `reason` is a short stable code for the dead letter (`http_400`, `http_404`,
    `http_503_exhausted`, `timeout`, `connection_error`, `truncated_download`, `zip_slip`,
    `zip_bomb`, `zip_too_large`, `bad_zip`, `md5_mismatch`, `incomplete_series`,
    `short_on_server`, `no_ct_in_idc`, ...), `detail` says what happened and what to do, `status`
    is the last HTTP status when there was one.
    """

    def __init__(self, reason: str, detail: str, status: int | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status

    def __reduce__(self):
        return ArchiveError, (self.reason, self.detail, self.status)


@dataclasses.dataclass(frozen=True)
class SeriesRecord:
    """One CT series as an archive lists it (before any file is fetched)."""

    series_uid: str
    patient_id: str
    collection: str
    modality: str
    image_count: int
    """Instances the archive says the series has."""
    description: str = ""
    """SeriesDescription."""


@dataclasses.dataclass(frozen=True)
class SeriesFilter:
    """Which listed series to use. Patterns are case-insensitive regular expressions."""

    min_slices: int = 20
    description_include: tuple[str, ...] = ()
    """If not empty, keep only series whose description matches one of these."""
    description_exclude: tuple[str, ...] = DEFAULT_DESCRIPTION_EXCLUDE
    max_series_per_patient: int = 2
    """0 = no limit. Ties are broken by more slices first, then series UID."""

    def validate(self) -> "SeriesFilter":
        if self.min_slices < 0:
            raise ValueError(f"min_slices must be >= 0, got {self.min_slices}")
        if self.max_series_per_patient < 0:
            raise ValueError(f"max_series_per_patient must be >= 0 (0 = no limit), got {self.max_series_per_patient}")
        for pattern in (*self.description_include, *self.description_exclude):
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"series description pattern {pattern!r} is not a valid regular expression: {error}") from error
        return self


class SeriesListing(NamedTuple):
    """Result of listing an archive: every listed series is in `kept` or `dropped`.

    `unavailable` names requested collections that gave no series at all, with the reason, so a
    typo or a collection the archive does not hold is reported instead of silently missing.
    """

    kept: tuple[SeriesRecord, ...]
    dropped: tuple[tuple[SeriesRecord, str], ...]
    unavailable: tuple[tuple[str, str], ...] = ()


def _matches(patterns: Sequence[str], text: str) -> str | None:
    for pattern in patterns:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return pattern
    return None


def filter_series(records: Iterable[SeriesRecord], series_filter: SeriesFilter) -> tuple[
        tuple[SeriesRecord, ...], tuple[tuple[SeriesRecord, str], ...]]:
    """(kept, dropped with reason) in a stable order (collection, patient, series UID).

    Reasons: `duplicate_series`, `not_ct`, `too_few_slices`, `description_not_included`,
    `description_excluded`, `over_patient_limit`.
    """
    ordered = sorted(records, key=lambda r: (r.collection, r.patient_id, r.series_uid))
    dropped: list[tuple[SeriesRecord, str]] = []
    candidates: list[SeriesRecord] = []
    seen: set[str] = set()
    for record in ordered:
        if record.series_uid in seen:
            dropped.append((record, "duplicate_series"))
        elif record.modality.upper() != "CT":
            dropped.append((record, "not_ct"))
        elif record.image_count < series_filter.min_slices:
            dropped.append((record, "too_few_slices"))
        elif series_filter.description_include and not _matches(series_filter.description_include, record.description):
            dropped.append((record, "description_not_included"))
        elif _matches(series_filter.description_exclude, record.description):
            dropped.append((record, "description_excluded"))
        else:
            candidates.append(record)
        seen.add(record.series_uid)
    limit = series_filter.max_series_per_patient
    by_patient: dict[tuple[str, str], list[SeriesRecord]] = collections.defaultdict(list)
    for record in candidates:
        by_patient[(record.collection, record.patient_id)].append(record)
    over: set[str] = set()
    if limit:
        for group in by_patient.values():
            ranked = sorted(group, key=lambda r: (-r.image_count, r.series_uid))
            over.update(r.series_uid for r in ranked[limit:])
    kept = tuple(r for r in candidates if r.series_uid not in over)
    dropped.extend((r, "over_patient_limit") for r in candidates if r.series_uid in over)
    dropped.sort(key=lambda item: (item[0].collection, item[0].patient_id, item[0].series_uid, item[1]))
    return kept, tuple(dropped)


def collection_names(value: str | Iterable[str]) -> tuple[str, ...]:
    """Collection names as people type them: `CPTAC-GBM,TCGA-SARC`, `CPTAC-GBM, TCGA-SARC` (two
    words: `CPTAC-GBM,` and `TCGA-SARC`) or separate words; a YAML string or list. Commas
    separate names; spaces inside a name stay (TCIA has names such as `CT COLONOGRAPHY`). Order
    kept, repeats and empty items dropped."""
    items = [value] if isinstance(value, str) else list(value)
    names = (" ".join(part.split()) for item in items for part in str(item).split(","))
    return tuple(dict.fromkeys(name for name in names if name))
