"""NCI Imaging Data Commons: list CT series from the offline index, find their files in a bucket.

- `list_idc_series`: the series index in the `idc-index-data` package (the data package of
  IDC's `idc-index`; a parquet file read with pyarrow, no network, no idc-index needed), or a
  local CSV/parquet file with the same columns. Collections are named as on TCIA
  (`CPTAC-LUAD`) or by IDC id (`cptac_luad`). A requested collection without CT series in IDC is
  reported in `unavailable` with the reason (IDC holds no CT for CPTAC-GBM or CPTAC-HNSCC: their
  CT is only on TCIA); if none of the requested collections has CT, it raises.
- `idc_series_files`: the DICOM files of one series, `<root>/<crdc_series_uuid>/*.dcm`, listed
  through Beam's file systems. The default root is the public GCS twin of the series' AWS
  bucket (`gs://idc-open-data`). Beam's GCS client reads it with whatever Google credentials it
  finds (application default credentials, a Dataflow worker's service account) and anonymously
  only when there are none. `bucket_root` (the `--idc_bucket_root` flag) replaces the root with
  any other: a mirror, `s3://...` when Beam's AWS file system is installed, or a local directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import re
from typing import Iterable, Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline.archives.series import (
    ArchiveError,
    SeriesFilter,
    SeriesListing,
    SeriesRecord,
    collection_names,
    filter_series,
)

INDEX_COLUMNS = ("collection_id", "PatientID", "SeriesInstanceUID", "Modality", "instanceCount",
                 "crdc_series_uuid", "aws_bucket")
"""Columns a series index must have (SeriesDescription is used when present)."""
GCS_TWIN = {"idc-open-data": "idc-open-data", "idc-open-data-two": "idc-open-idc1", "idc-open-data-cr": "idc-open-cr"}
"""AWS bucket of the index -> its public Google Cloud Storage twin."""


@dataclasses.dataclass(frozen=True)
class IdcSeriesRecord(SeriesRecord):
    """A series in IDC: where its files are (`<bucket>/<crdc_series_uuid>/`) and which IDC collection."""

    crdc_series_uuid: str = ""
    bucket: str = "idc-open-data"
    """AWS bucket named by the index."""
    idc_collection_id: str = ""


def idc_collection_id(name: str) -> str:
    """`CPTAC-LUAD` -> `cptac_luad` (IDC ids are lower case with underscores); ids pass unchanged."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


INSTALL_HINT = ("pip install -c constraints.txt idc-index-data (the index alone; installing idc-index would pull "
                "in an older idc-index-data than ctdeblur pins), or pass a local index file (CSV or parquet) "
                "with --idc_index")


def bundled_index_version() -> str:
    """Version of the index in the idc-index-data package, e.g. `25.0.5`."""
    import idc_index_data

    return str(idc_index_data.__version__)


def _read_index(index: str | None, collection_ids: Sequence[str]):
    """A pyarrow Table of the index rows of `collection_ids` (all modalities)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    if index is None:
        try:
            import idc_index_data
        except ImportError as error:
            raise ArchiveError("idc_index_missing", f"the idc-index-data package is not installed: {INSTALL_HINT}") from error
        source, label = str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH), f"idc-index-data {idc_index_data.__version__}"
    else:
        with FileSystems.open(index) as handle:
            source, label = io.BytesIO(handle.read()), index
    try:
        if index is not None and index.lower().endswith(".csv"):
            text_columns = {c: pa.string() for c in (*INDEX_COLUMNS, "SeriesDescription") if c != "instanceCount"}
            table = pa_csv.read_csv(source, convert_options=pa_csv.ConvertOptions(column_types=text_columns))
        else:
            available = pq.read_schema(source).names
            wanted = [c for c in (*INDEX_COLUMNS, "SeriesDescription") if c in available]
            table = pq.read_table(source, columns=wanted, filters=[("collection_id", "in", list(collection_ids))])
    except (pa.ArrowInvalid, OSError) as error:
        raise ArchiveError("bad_idc_index", f"cannot read the series index {label}: {error}") from error
    missing = [c for c in INDEX_COLUMNS if c not in table.column_names]
    if missing:
        raise ArchiveError("bad_idc_index", f"series index {label} lacks columns {missing}; it needs {list(INDEX_COLUMNS)} "
                                            "(as in idc-index's idc_index.parquet)")
    table = table.filter(pc.is_in(table["collection_id"].cast(pa.string()), pa.array(list(collection_ids), pa.string())))
    return table, label


def _all_collection_ids(index: str | None) -> list[str]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if index is not None:
        return []
    import idc_index_data

    column = pq.read_table(str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH), columns=["collection_id"])["collection_id"]
    return [str(value) for value in pc.unique(column).to_pylist()]


def list_idc_series(collections: Iterable[str], index: str | None = None,
                    series_filter: SeriesFilter = SeriesFilter()) -> SeriesListing:
    """CT series of `collections` from the IDC index, filtered like TCIA listings.

    `index`: None for the index in the idc-index-data package, or a CSV/parquet file (local or gs://)
    with the columns of INDEX_COLUMNS. Records carry the collection name as requested.
    Raises ArchiveError(no_ct_in_idc) when no requested collection has CT series in the index.
    """
    series_filter.validate()
    requested = {idc_collection_id(name): name for name in collection_names(collections)}
    if not requested:
        raise ValueError("no collections given: name at least one, e.g. CPTAC-LUAD or tcga_sarc")
    table, label = _read_index(index, sorted(requested))
    rows = table.to_pylist()
    records, modalities = [], {cid: set() for cid in requested}
    for row in rows:
        cid = str(row["collection_id"])
        modality = str(row["Modality"] or "")
        modalities[cid].add(modality)
        if modality != "CT":
            continue
        records.append(IdcSeriesRecord(
            series_uid=str(row["SeriesInstanceUID"]), patient_id=str(row["PatientID"] or ""), collection=requested[cid],
            modality=modality, image_count=int(row["instanceCount"] or 0), description=str(row.get("SeriesDescription") or ""),
            crdc_series_uuid=str(row["crdc_series_uuid"]), bucket=str(row["aws_bucket"] or "idc-open-data"),
            idc_collection_id=cid))
    unavailable = []
    for cid, name in sorted(requested.items()):
        if "CT" in modalities[cid]:
            continue
        if modalities[cid]:
            found = ", ".join(sorted(modalities[cid]))
            message = (f"IDC ({label}) holds no CT series for {name} (collection_id {cid}; it has {found}): "
                       f"its CT is only on TCIA, use --source tcia --collections {name}")
        else:
            close = difflib.get_close_matches(cid, _all_collection_ids(index), n=3)
            message = (f"IDC ({label}) has no collection {name} (collection_id {cid})"
                       + (f"; did you mean {', '.join(close)}?" if close else ""))
        unavailable.append((name, message))
    if not records:
        raise ArchiveError("no_ct_in_idc", "; ".join(message for _, message in unavailable))
    kept, dropped = filter_series(records, series_filter)
    return SeriesListing(kept, dropped, tuple(unavailable))


def collections_with_ct(collections: Iterable[str], index: str | None = None) -> tuple[str, ...]:
    """Those of `collections` (names as given) that have CT series in the IDC index; () when the
    index cannot be read. For advice only: listing is `list_idc_series`."""
    try:
        listing = list_idc_series(collections, index, SeriesFilter(min_slices=0, description_exclude=(),
                                                                    max_series_per_patient=0))
    except (ArchiveError, ValueError, OSError):
        return ()
    unavailable = {name for name, _ in listing.unavailable}
    return tuple(name for name in collection_names(collections) if name not in unavailable)


def series_root(series: IdcSeriesRecord, bucket_root: str | None = None) -> str:
    """`<bucket_root>/<crdc_series_uuid>`; default root: the GCS twin of the series' bucket."""
    if not series.crdc_series_uuid or "/" in series.crdc_series_uuid or series.crdc_series_uuid in (".", ".."):
        raise ArchiveError("bad_idc_index", f"series {series.series_uid} has no valid crdc_series_uuid "
                                            f"({series.crdc_series_uuid!r})")
    if bucket_root is None:
        if series.bucket not in GCS_TWIN:
            raise ArchiveError("unknown_idc_bucket", f"series {series.series_uid} lies in bucket {series.bucket!r}, which "
                                                     f"has no known gs:// twin; pass --idc_bucket_root")
        bucket_root = f"gs://{GCS_TWIN[series.bucket]}"
    return f"{bucket_root.rstrip('/')}/{series.crdc_series_uuid}"


def idc_series_files(series: IdcSeriesRecord, bucket_root: str | None = None) -> list[str]:
    """Sorted paths of the series' files under its root (see `series_root`).

    Raises ArchiveError: unsupported_bucket_scheme (no Beam file system for the root's scheme),
    missing_series_files (nothing there), incomplete_series (fewer files than the index lists).
    """
    root = series_root(series, bucket_root)
    try:
        FileSystems.get_filesystem(root)
    except ValueError as error:
        raise ArchiveError("unsupported_bucket_scheme",
                           f"cannot read {root}: {error}. Use gs://idc-open-data (the default), a local mirror, "
                           "or install apache-beam[aws] for s3://") from error
    try:
        matched = FileSystems.match([f"{root}/*"])[0].metadata_list
    except Exception as error:  # Beam raises BeamIOError or the storage client's own errors
        raise ArchiveError("missing_series_files", f"cannot list {root}/ for series {series.series_uid}: "
                                                   f"{type(error).__name__}: {error}") from error
    paths = sorted(meta.path for meta in matched if not meta.path.endswith("/"))
    if not paths:
        raise ArchiveError("missing_series_files", f"no files under {root}/ for series {series.series_uid} "
                                                   f"({series.collection}); check --idc_bucket_root")
    if len(paths) < series.image_count:
        raise ArchiveError("incomplete_series", f"{root}/ holds {len(paths)} files, the index lists {series.image_count} "
                                                f"for series {series.series_uid}")
    return paths
