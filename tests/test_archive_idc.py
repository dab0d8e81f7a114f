"""IDC source: the bundled idc-index listing (offline) and a bucket-like local directory."""

from __future__ import annotations

import dataclasses
import sys
import uuid

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from pipeline.archives.idc import (
    IdcSeriesRecord,
    bundled_index_version,
    collections_with_ct,
    idc_collection_id,
    idc_series_files,
    list_idc_series,
    series_root,
)
from pipeline.archives.series import ArchiveError, SeriesFilter
from pipeline.slice_scan import read_file_hu, scan_file
from pipeline.files import read_bytes
from pipeline.phantom import phantom_dataset, phantom_series
from tests.conftest import dicom_bytes

PAPER_COLLECTIONS = ("CPTAC-GBM", "TCGA-SARC", "CPTAC-LUAD", "CPTAC-HNSCC")


def _uuid(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, parts))))


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """`<tmp>/idc-open-data/<crdc_series_uuid>/<instance uuid>.dcm` for three phantom series, and
    an index subset with idc-index's columns (one more series listed whose files are missing)."""
    root = tmp_path_factory.mktemp("mirror") / "idc-open-data"
    rows = []
    for patient, collection in ((0, "cptac_luad"), (1, "cptac_luad"), (2, "tcga_sarc")):
        series = phantom_series(patient, 5, 48, seed=7)
        series_uuid = _uuid("series", patient)
        for index in range(series.slices):
            path = root / series_uuid / f"{_uuid('instance', patient, index)}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(dicom_bytes(phantom_dataset(series, index)))
        rows.append({"collection_id": collection, "PatientID": series.patient_id,
                     "SeriesInstanceUID": series.uid("series"), "Modality": "CT", "instanceCount": series.slices,
                     "crdc_series_uuid": series_uuid, "aws_bucket": "idc-open-data",
                     "SeriesDescription": f"phantom {series.body_site}",
                     "series_aws_url": f"s3://idc-open-data/{series_uuid}/*"})
    rows.append({**rows[0], "SeriesInstanceUID": "1.2.3.999", "PatientID": "PHANTOM-404",
                 "crdc_series_uuid": _uuid("series", "missing"), "series_aws_url": ""})
    rows.append({**rows[0], "SeriesInstanceUID": "1.2.3.998", "Modality": "SM", "instanceCount": 1})
    index = root.parent / "index_subset.parquet"
    pq.write_table(pa.Table.from_pylist(rows), index)
    csv_index = root.parent / "index_subset.csv"
    pa_csv.write_csv(pa.Table.from_pylist(rows), csv_index)
    return root, index, csv_index, rows


def test_collection_names_map_to_idc_ids():
    assert [idc_collection_id(c) for c in PAPER_COLLECTIONS] == ["cptac_gbm", "tcga_sarc", "cptac_luad", "cptac_hnscc"]
    assert idc_collection_id("tcga_sarc") == "tcga_sarc"


def test_index_subset_lists_ct_series_and_files_are_read_through_the_bucket_root(bucket):
    root, index, _, rows = bucket
    listing = list_idc_series(["CPTAC-LUAD", "tcga_sarc"], index=str(index), series_filter=SeriesFilter(min_slices=2))
    assert [(r.collection, r.patient_id) for r in listing.kept] == [
        ("CPTAC-LUAD", "PHANTOM-000"), ("CPTAC-LUAD", "PHANTOM-001"), ("CPTAC-LUAD", "PHANTOM-404"),
        ("tcga_sarc", "PHANTOM-002")]
    assert listing.dropped == () and listing.unavailable == ()
    first = listing.kept[0]
    assert isinstance(first, IdcSeriesRecord)
    assert (first.crdc_series_uuid, first.idc_collection_id, first.image_count) == (rows[0]["crdc_series_uuid"], "cptac_luad", 5)

    paths = idc_series_files(first, bucket_root=str(root))
    assert len(paths) == 5 and all(p.startswith(f"{root}/{first.crdc_series_uuid}/") for p in paths)
    headers = [scan_file(read_bytes(p), p, -500.0)[0] for p in paths]
    assert {h.series_uid for h in headers} == {first.series_uid}
    expected = phantom_series(0, 5, 48, seed=7)
    by_sop = {h.sop_instance_uid: p for h, p in zip(headers, paths)}
    for index in range(5):
        data = read_bytes(by_sop[expected.uid("sop", index)])
        assert data == dicom_bytes(phantom_dataset(expected, index))
    assert read_file_hu(read_bytes(paths[0]), paths[0]).shape == (1, 48, 48)

    with pytest.raises(ArchiveError) as caught:
        idc_series_files(listing.kept[2], bucket_root=str(root))
    assert caught.value.reason == "missing_series_files" and "1.2.3.999" in caught.value.detail
    short = dataclasses.replace(first, image_count=6)
    with pytest.raises(ArchiveError) as caught:
        idc_series_files(short, bucket_root=str(root))
    assert caught.value.reason == "incomplete_series"


def test_csv_index_gives_the_same_listing_and_filters_apply(bucket):
    _, index, csv_index, _ = bucket
    strict = SeriesFilter(min_slices=2, max_series_per_patient=1, description_exclude=("abdomen",))
    from_parquet = list_idc_series(["CPTAC-LUAD", "TCGA-SARC"], index=str(index), series_filter=strict)
    from_csv = list_idc_series(["CPTAC-LUAD", "TCGA-SARC"], index=str(csv_index), series_filter=strict)
    assert from_csv == from_parquet
    assert [(r.patient_id, reason) for r, reason in from_parquet.dropped] == [("PHANTOM-002", "description_excluded")]


def test_index_file_without_the_needed_columns_is_refused(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"collection_id": ["cptac_luad"], "Modality": ["CT"]}), path)
    with pytest.raises(ArchiveError) as caught:
        list_idc_series(["CPTAC-LUAD"], index=str(path))
    assert caught.value.reason == "bad_idc_index" and "crdc_series_uuid" in caught.value.detail


def test_default_root_is_the_public_gcs_twin_and_unknown_schemes_are_named():
    record = IdcSeriesRecord("1.2", "P", "CPTAC-LUAD", "CT", 3, crdc_series_uuid="abc-1", bucket="idc-open-data-two")
    assert series_root(record) == "gs://idc-open-idc1/abc-1"
    assert series_root(dataclasses.replace(record, bucket="idc-open-data")) == "gs://idc-open-data/abc-1"
    assert series_root(record, "/mirror/idc-open-data/") == "/mirror/idc-open-data/abc-1"
    with pytest.raises(ArchiveError) as caught:
        idc_series_files(record, bucket_root="nosuchscheme://bucket")
    assert caught.value.reason == "unsupported_bucket_scheme"


def test_bundled_index_lists_paper_ct_offline_and_names_tcia_only_collections():
    listing = list_idc_series(PAPER_COLLECTIONS, series_filter=SeriesFilter(min_slices=0, description_exclude=(),
                                                                                max_series_per_patient=0))
    by_collection = {c: [r for r in listing.kept if r.collection == c] for c in PAPER_COLLECTIONS}
    assert len(by_collection["CPTAC-LUAD"]) > 100 and len(by_collection["TCGA-SARC"]) >= 5
    assert by_collection["CPTAC-GBM"] == [] and by_collection["CPTAC-HNSCC"] == []
    assert {r.modality for r in listing.kept} == {"CT"}
    assert all(len(r.crdc_series_uuid) == 36 and r.bucket for r in listing.kept)
    unavailable = dict(listing.unavailable)
    assert set(unavailable) == {"CPTAC-GBM", "CPTAC-HNSCC"}
    assert all("only on TCIA" in message and bundled_index_version() in message for message in unavailable.values())

    with pytest.raises(ArchiveError) as caught:
        list_idc_series(["CPTAC-GBM", "CPTAC-HNSCC"])
    assert caught.value.reason == "no_ct_in_idc" and "--source tcia" in caught.value.detail
    with pytest.raises(ArchiveError) as caught:
        list_idc_series(["CPTAC-LAUD"])
    assert "did you mean cptac_luad" in caught.value.detail


def test_missing_index_package_names_the_package_to_install(monkeypatch, bucket):
    """Without idc-index-data (its import blocked), the hint names it, not idc-index, whose pin of
    idc-index-data is older than ours; a local index file still works."""
    monkeypatch.setitem(sys.modules, "idc_index_data", None)
    with pytest.raises(ArchiveError) as caught:
        list_idc_series(["CPTAC-LUAD"])
    assert caught.value.reason == "idc_index_missing"
    assert "pip install -c constraints.txt idc-index-data" in caught.value.detail
    assert "--idc_index" in caught.value.detail
    _, index, _, _ = bucket
    assert len(list_idc_series(["CPTAC-LUAD"], str(index), SeriesFilter(min_slices=1)).kept) == 3


def test_collections_with_ct_in_the_bundled_index():
    """What `--source idc --source tcia` routes to IDC: the paper's collections whose CT IDC holds."""
    assert collections_with_ct(PAPER_COLLECTIONS) == ("TCGA-SARC", "CPTAC-LUAD")
    assert collections_with_ct(["CPTAC-GBM"]) == ()
