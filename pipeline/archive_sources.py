"""Beam stages of the archive sources: TCIA and IDC series, and registered FB/DIBH pairs.

Listing happens in the launcher (fast, and a wrong collection name fails before any worker
starts); fetching and registration run on the workers. Every listed series ends as files to read
or as a series-level `Rejection` (unit "series") naming the reason and, for HTTP, the status.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.archives.idc import IdcSeriesRecord, idc_series_files
from ct_io.series import CTSeries
from pipeline.archives.registration import (
    RegistrationResult,
    SeriesVolumeError,
    read_ct_series,
    read_series_volume,
    register_fb_to_dibh,
    series_volume,
)
from pipeline.archives.series import ArchiveError, SeriesListing
from pipeline.archives.tcia import fetch_series
from pipeline.config import PipelineConfig
from pipeline.files import list_files, read_bytes, write_bytes
from pipeline.pairs import to_int16_hu
from pipeline.planning import InputFile, Rejection

LOG = logging.getLogger("ctdeblur.pipeline")
NAMESPACE = "ctdeblur"
REJECTED = "rejected"
PAIRS_COLUMNS = ("patient_id", "fb_series", "dibh_series")


@dataclasses.dataclass(frozen=True)
class PairRow:
    """One line of a pairs manifest: FB and DIBH series directories (local or gs://)."""

    patient_id: str
    fb_series: str
    dibh_series: str
    transform: str = ""
    """Optional ITK transform file mapping DIBH points to FB points (skips registration)."""

    @property
    def pair_id(self) -> str:
        return hashlib.sha256(f"{self.fb_series}\x1f{self.dibh_series}".encode()).hexdigest()[:16]


def read_pairs_manifest(path: str) -> list[PairRow]:
    """Parses the CSV `patient_id,fb_series,dibh_series[,transform]` (header line required)."""
    text = read_bytes(path).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in PAIRS_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: header must name {', '.join(PAIRS_COLUMNS)}[, transform]; missing {missing}")
    rows = []
    for number, row in enumerate(reader, start=2):
        values = {k: (row.get(k) or "").strip() for k in (*PAIRS_COLUMNS, "transform")}
        empty = [c for c in PAIRS_COLUMNS if not values[c]]
        if empty:
            raise ValueError(f"{path} line {number}: empty {', '.join(empty)}")
        rows.append(PairRow(**values))
    if not rows:
        raise ValueError(f"{path} lists no pairs")
    return rows


def listing_rejections(listing: SeriesListing, source: str) -> list[Rejection]:
    """Series the listing filters dropped (unselected) and collections that gave nothing."""
    rejections = [
        Rejection("", f"filtered_{reason}", f"{source}: {record.collection} patient {record.patient_id}, "
                  f"{record.image_count} images, description {record.description!r}", "list",
                  record.series_uid, unselected=True, unit="series")
        for record, reason in listing.dropped
    ]
    rejections += [Rejection(name, "collection_unavailable", message, "list", unit="series")
                   for name, message in listing.unavailable]
    return rejections


def _archive_rejection(source: str, series_uid: str, error: ArchiveError) -> Rejection:
    status = f" (HTTP {error.status})" if error.status else ""
    Metrics.counter(NAMESPACE, f"rejected_{error.reason}").inc()
    return Rejection("", error.reason, f"{source}{status}: {error.detail}", "fetch", series_uid, unit="series")


def tcia_series_files(record, config: PipelineConfig) -> list[str]:
    """Downloads (or finds in the cache) a TCIA series; its files' paths."""
    return fetch_series(record, config.tcia_config())


def idc_files(record: IdcSeriesRecord, config: PipelineConfig) -> list[str]:
    """The files of an IDC series in the bucket (or the root --idc_bucket_root maps it to)."""
    return idc_series_files(record, config.idc_bucket_root or None)


class FetchSeriesFn(beam.DoFn):
    """Archive series record -> InputFile per file, or a series Rejection with the HTTP status."""

    def __init__(self, source: str, series_files, config: PipelineConfig):
        self.source = source
        self.series_files = series_files
        self.config = config

    def process(self, record):
        try:
            paths = self.series_files(record, self.config)
        except ArchiveError as error:
            yield beam.pvalue.TaggedOutput(REJECTED, _archive_rejection(self.source, record.series_uid, error))
            return
        Metrics.counter(NAMESPACE, "series_fetched").inc()
        for path in paths:
            yield InputFile(path, record.collection)


def series_paths(directory: str) -> list[str]:
    """The files of a series directory (local or gs://), sorted."""
    return sorted(m.path for m in FileSystems.match([list_files(directory)])[0].metadata_list)


def fb_slices_npz(sop_instance_uids: list[str], fb_hu: np.ndarray) -> bytes:
    """The npz file of a registered pair: DIBH SOPInstanceUIDs and, in the same order, the FB
    slices resampled onto them (int16 HU [N, H, W])."""
    buffer = io.BytesIO()
    np.savez(buffer, sop_instance_uids=np.asarray(sop_instance_uids), fb_hu=fb_hu)
    return buffer.getvalue()


def fb_slices_of_npz(data: bytes) -> dict[str, np.ndarray]:
    """SOPInstanceUID of a DIBH slice -> FB resampled onto it (int16 HU [H, W]), from
    `fb_slices_npz`' bytes."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return dict(zip(archive["sop_instance_uids"].tolist(), archive["fb_hu"]))


def registered_slices(fb_volume_path: str) -> dict[str, np.ndarray]:
    """SOPInstanceUID of a DIBH slice -> FB resampled onto it (int16 HU [H, W])."""
    return fb_slices_of_npz(read_bytes(fb_volume_path))


def pair_rejection(row: PairRow, reason: str, detail: str) -> Rejection:
    """The series-level Rejection of a pair that gives no files."""
    return Rejection(row.dibh_series, reason, f"pair {row.patient_id}: FB {row.fb_series} -> DIBH "
                     f"{row.dibh_series}: {detail}", "register", unit="series")


def registration_summary(result: RegistrationResult) -> str:
    """One line on the registration's quality and motion (NCC, overlap, mm, degrees)."""
    return (f"NCC inside body {result.ncc_body:.3f}, body overlap {result.body_overlap:.2f}, "
            f"translation {np.round(result.translation_mm, 2).tolist()} mm, "
            f"rotation {np.round(result.rotation_deg, 2).tolist()} deg")


@dataclasses.dataclass(frozen=True)
class RegisteredPair:
    """What a registered pair gives: an InputFile per usable DIBH slice, the rejections, and the
    npz bytes of the FB slices (`fb_slices_npz`) to store at the files' `registered_path`.

    `npz` is None when the pair is rejected as a whole: `rejections` then holds its one
    series-level Rejection; otherwise `rejections` are the DIBH slices FB does not cover."""

    files: tuple[InputFile, ...]
    rejections: tuple[Rejection, ...]
    npz: bytes | None


def registered_pair(row: PairRow, dibh_series: CTSeries, fb_hu: np.ndarray, result: RegistrationResult,
                    collection: str, volume_path: str) -> RegisteredPair:
    """The outputs of pair `row` given its DIBH series (frames in stack order), FB resampled on
    the DIBH grid (HU float32 [Z, H, W]) and the registration verdict; the files point at
    `volume_path`, where the caller stores `npz`."""
    if dibh_series.multiframe:
        return RegisteredPair((), (pair_rejection(
            row, "multiframe_dibh", "registered pairs need the breath-hold series as single-frame files"),), None)
    if not result.accepted:
        return RegisteredPair((), (pair_rejection(
            row, "registration_rejected", f"{result.reason}; {registration_summary(result)}"),), None)
    usable = set(result.usable_slices)
    ordered = [(frame.source, frame.sop_instance_uid) for frame in dibh_series.frames]
    npz = fb_slices_npz([uid for z, (_, uid) in enumerate(ordered) if z in usable], to_int16_hu(fb_hu[sorted(usable)]))
    files = tuple(InputFile(path, collection, "registered", volume_path)
                  for z, (path, _) in enumerate(ordered) if z in usable)
    rejections = tuple(Rejection(
        path, "outside_registered_fb", "free-breathing scan does not cover this breath-hold slice's body",
        "register", "", uid, z, unselected=True) for z, (path, uid) in enumerate(ordered) if z not in usable)
    return RegisteredPair(files, rejections, npz)


class RegisterPairFn(beam.DoFn):
    """PairRow -> an InputFile per usable DIBH slice (with the registered FB slices stored beside),
    or a series Rejection (unreadable series, registration below the quality gate); the outputs
    are `registered_pair`'s, this shell reads the series and writes the npz."""

    def __init__(self, config: PipelineConfig, work_dir: str):
        self.config = config
        self.work_dir = work_dir

    def process(self, row: PairRow):
        try:
            fb_paths, dibh_paths = series_paths(row.fb_series), series_paths(row.dibh_series)
            dibh_series, dibh_hu = read_ct_series(dibh_paths)
            fb, dibh = read_series_volume(fb_paths), series_volume(dibh_series, dibh_hu)
            fb_hu, result = register_fb_to_dibh(fb, dibh, self.config.registration, row.transform or None)
        except SeriesVolumeError as error:
            outcome = RegisteredPair((), (pair_rejection(row, error.reason, error.detail),), None)
        except (OSError, ValueError) as error:
            outcome = RegisteredPair((), (pair_rejection(row, "unreadable_pair", f"{type(error).__name__}: {error}"),), None)
        else:
            volume_path = FileSystems.join(self.work_dir, f"{row.pair_id}.npz")
            outcome = registered_pair(row, dibh_series, fb_hu, result, self.config.registered_collection, volume_path)
        if outcome.npz is None:
            for rejection in outcome.rejections:
                Metrics.counter(NAMESPACE, f"rejected_{rejection.reason}").inc()
                yield beam.pvalue.TaggedOutput(REJECTED, rejection)
            return
        Metrics.counter(NAMESPACE, "pairs_registered").inc()
        LOG.info("registered %s onto %s: %s", row.fb_series, row.dibh_series, registration_summary(result))
        write_bytes(volume_path, outcome.npz)
        yield from outcome.files
        for rejection in outcome.rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, rejection)
