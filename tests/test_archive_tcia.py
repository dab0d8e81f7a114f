"""TCIA client against the loopback NBIA stand-in (which copies the real server: streamed zips
without Content-Length, a LICENSE entry in getImage zips, HTTP 400 for series that are not
public, short well-formed zips for series broken on the server): listing, filters, cache,
retries, faults, the parallel-download cap."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import time
import urllib.request
import zipfile

import pytest

from ct_io.errors import CTInputError

from pipeline.archives.series import SeriesFilter, SeriesRecord, collection_names, filter_series
from pipeline.archives.tcia import (
    COMPLETE_MARKER,
    DEFAULT_BASE_URL,
    ArchiveError,
    TciaConfig,
    backoff_s,
    cached_series,
    fetch_series,
    list_series,
    retry_after_s,
)
from pipeline.slice_scan import read_file_hu
from pipeline.phantom import phantom_dataset
from tests.conftest import dicom_bytes
from tests.nbia_standin import (
    LICENSE_TEXT,
    MISSING_ON_SERVER_AT,
    NON_DICOM_NAME,
    ZIP_SLIP_NAMES,
    NbiaStandin,
    phantom_standin_series,
)

MAX_ATTEMPTS = 3

GOOD = phantom_standin_series("CPTAC-LUAD", 0)
FAULTY = {fault: phantom_standin_series("CPTAC-LUAD", index, fault=fault)
          for index, fault in enumerate(("503_once", "429_retry_after", "always_503", "cut_stream", "zip_slip",
                                         "non_dicom", "zip_bomb", "md5_mismatch", "slow", "not_public",
                                         "missing_on_server"), start=1)}
SCOUT = phantom_standin_series("TCGA-SARC", 20, slices=2, description="SCOUT")
LOCALIZER = phantom_standin_series("TCGA-SARC", 21, slices=12, description="Localizer")
SARC_THIN = phantom_standin_series("TCGA-SARC", 22, slices=12, description="AXIAL 1.25mm")


@pytest.fixture(scope="module")
def standin():
    with NbiaStandin([GOOD, *FAULTY.values(), SCOUT, LOCALIZER, SARC_THIN], retry_after_s=1, slow_s=1.5) as server:
        yield server


@pytest.fixture
def config(standin, tmp_path) -> TciaConfig:
    return TciaConfig(base_url=standin.base_url, collections=("CPTAC-LUAD", "TCGA-SARC"), timeout_s=1.0,
                      max_attempts=MAX_ATTEMPTS, backoff_initial_s=0.01, backoff_max_s=0.05, min_slices=3,
                      max_series_per_patient=1, max_uncompressed_bytes=16 << 20,
                      cache_dir=str(tmp_path / "cache"), work_dir=str(tmp_path / "work"))


def record_of(item) -> SeriesRecord:
    row = item.listing_row()
    return SeriesRecord(row["SeriesInstanceUID"], row["PatientID"], row["Collection"], "CT", row["ImageCount"],
                        row["SeriesDescription"])


def files_under(root) -> set[str]:
    return {os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names}


def scratch_left(work) -> set[str]:
    """Files left in the work directory, except the download-slot lock files that stay."""
    return {path for path in files_under(work) if os.path.basename(os.path.dirname(path)) != "download-slots"}


def test_listing_keeps_or_drops_every_series_with_a_reason(standin, config):
    listing = list_series(dataclasses.replace(config, collections=("CPTAC-LUAD", "TCGA-SARC", "NO-SUCH-COLLECTION")))
    kept = {r.series_uid for r in listing.kept}
    assert GOOD.series_uid in kept and SARC_THIN.series_uid in kept
    assert all(item.series_uid in kept for item in FAULTY.values())
    assert {(r.series_uid, reason) for r, reason in listing.dropped} == {
        (SCOUT.series_uid, "too_few_slices"), (LOCALIZER.series_uid, "description_excluded")}
    assert len(listing.kept) + len(listing.dropped) == 2 + len(FAULTY) + 2
    record = next(r for r in listing.kept if r.series_uid == GOOD.series_uid)
    assert record == record_of(GOOD) and record.image_count == 6 and record.patient_id == "PHANTOM-000"
    assert [name for name, _ in listing.unavailable] == ["NO-SUCH-COLLECTION"]
    assert "check the name" in listing.unavailable[0][1]
    assert standin.hits("getSeries") >= 3


def test_listing_of_only_unknown_collections_raises(config):
    with pytest.raises(ArchiveError) as caught:
        list_series(dataclasses.replace(config, collections=("CPTAC-TYPO",)))
    assert caught.value.reason == "no_series" and "CPTAC-TYPO" in caught.value.detail


def test_filters_include_exclude_min_slices_and_patient_limit():
    records = [
        SeriesRecord("1.1", "P1", "C", "CT", 200, "AXIAL 5mm"),
        SeriesRecord("1.2", "P1", "C", "CT", 400, "AXIAL 1.25mm"),
        SeriesRecord("1.3", "P1", "C", "CT", 100, "AXIAL lung"),
        SeriesRecord("1.4", "P1", "C", "CT", 2, "Topogram 0.6 T20f"),
        SeriesRecord("2.1", "P2", "C", "CT", 90, "CORONAL reformat"),
        SeriesRecord("2.2", "P2", "C", "MR", 90, "T1 AXIAL"),
        SeriesRecord("2.3", "P2", "C", "CT", 15, "AXIAL"),
        SeriesRecord("3.1", "P3", "C", "CT", 60, "LOW DOSE AXIAL"),
        SeriesRecord("3.2", "P3", "C", "CT", 1, "Dose Report"),
        SeriesRecord("1.2", "P1", "C", "CT", 400, "AXIAL 1.25mm"),
    ]
    kept, dropped = filter_series(records, SeriesFilter(min_slices=20, description_include=(r"axial",),
                                                         max_series_per_patient=2))
    assert [r.series_uid for r in kept] == ["1.1", "1.2", "3.1"]
    assert sorted((r.series_uid, reason) for r, reason in dropped) == [
        ("1.2", "duplicate_series"), ("1.3", "over_patient_limit"), ("1.4", "too_few_slices"),
        ("2.1", "description_not_included"), ("2.2", "not_ct"), ("2.3", "too_few_slices"), ("3.2", "too_few_slices")]
    kept_all, _ = filter_series(records, SeriesFilter(min_slices=0, description_exclude=(), max_series_per_patient=0))
    assert len(kept_all) == 8
    kept_default, dropped_default = filter_series(records, SeriesFilter(min_slices=0, max_series_per_patient=0))
    assert {r.series_uid for r, reason in dropped_default if reason == "description_excluded"} == {"1.4", "3.2"}
    assert "3.1" in {r.series_uid for r in kept_default}
    with pytest.raises(ValueError, match="regular expression"):
        SeriesFilter(description_exclude=("(",)).validate()


def test_collection_names_as_people_type_them(standin, config):
    assert collection_names("CPTAC-GBM,TCGA-SARC") == ("CPTAC-GBM", "TCGA-SARC")
    assert collection_names(["CPTAC-GBM,", "TCGA-SARC"]) == ("CPTAC-GBM", "TCGA-SARC")
    assert collection_names(["CPTAC-GBM , TCGA-SARC,,CPTAC-GBM"]) == ("CPTAC-GBM", "TCGA-SARC")
    assert collection_names(["CT  COLONOGRAPHY", "QIN LUNG CT"]) == ("CT COLONOGRAPHY", "QIN LUNG CT")
    assert collection_names(" , ") == ()
    listing = list_series(dataclasses.replace(config, collections=("CPTAC-LUAD,TCGA-SARC",)))
    assert {record.collection for record in listing.kept} == {"CPTAC-LUAD", "TCGA-SARC"} and not listing.unavailable
    with pytest.raises(ValueError, match="collections is empty"):
        dataclasses.replace(config, collections=(",",)).validate()


def test_good_series_is_fetched_verified_and_then_served_from_the_cache(standin, config, tmp_path):
    before = standin.hits("getImageWithMD5Hash", GOOD.series_uid)
    paths = fetch_series(record_of(GOOD), config)
    assert standin.hits("getImageWithMD5Hash", GOOD.series_uid) == before + 1
    assert len(paths) == 6 and all(p.startswith(str(tmp_path / "cache" / GOOD.series_uid)) for p in paths)
    expected = {hashlib.md5(dicom_bytes(phantom_dataset(GOOD.phantom, i))).hexdigest() for i in range(6)}
    assert {hashlib.md5(open(p, "rb").read()).hexdigest() for p in paths} == expected
    assert read_file_hu(open(paths[0], "rb").read(), paths[0]).shape == (1, 64, 64)
    assert os.path.isfile(tmp_path / "cache" / GOOD.series_uid / COMPLETE_MARKER)
    assert scratch_left(tmp_path / "work") == set()

    again = fetch_series(record_of(GOOD), config)
    assert again == paths
    assert standin.hits("getImageWithMD5Hash", GOOD.series_uid) == before + 1


def test_get_image_without_md5_uses_new_file_names_and_never_keeps_the_license(standin, config, tmp_path):
    plain = dataclasses.replace(config, verify_md5=False)
    paths = fetch_series(record_of(SARC_THIN), plain)
    assert standin.hits("getImage", SARC_THIN.series_uid) == 1
    assert sorted(os.path.basename(p) for p in paths) == [f"1-{i:03d}.dcm" for i in range(1, 13)]
    cached = {os.path.basename(p) for p in files_under(tmp_path / "cache" / SARC_THIN.series_uid)}
    assert cached == {f"1-{i:03d}.dcm" for i in range(1, 13)} | {COMPLETE_MARKER}
    assert "LICENSE" not in open(tmp_path / "cache" / SARC_THIN.series_uid / COMPLETE_MARKER).read()


def test_the_standin_streams_like_nbia(standin):
    """What the client is tested against: no Content-Length, chunked, a LICENSE entry first."""
    url = f"{standin.base_url}getImage?SeriesInstanceUID={GOOD.series_uid}"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers.get("Content-Length") is None
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert response.headers.get("Content-Disposition") == f'attachment; filename="{GOOD.series_uid}.zip"'
        body = response.read()
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = archive.namelist()
        assert names[0] == "LICENSE" and archive.read("LICENSE").decode() == LICENSE_TEXT
        assert names[1:] == [f"{i:08d}.dcm" for i in range(1, 7)]
        assert all(info.flag_bits & 0x08 for info in archive.infolist())


def test_partial_download_never_counts_as_cached(standin, config, tmp_path):
    stale = tmp_path / "cache" / SARC_THIN.series_uid
    stale.mkdir(parents=True)
    (stale / "00000001.dcm").write_bytes(b"half a file from a killed run")
    assert cached_series(record_of(SARC_THIN), config) is None
    before = standin.hits("getImageWithMD5Hash", SARC_THIN.series_uid)
    paths = fetch_series(record_of(SARC_THIN), config)
    assert standin.hits("getImageWithMD5Hash", SARC_THIN.series_uid) == before + 1
    assert len(paths) == 12 and (stale / "00000001.dcm").read_bytes()[128:132] == b"DICM"


def test_503_then_success_is_retried(standin, config):
    paths = fetch_series(record_of(FAULTY["503_once"]), config)
    assert len(paths) == 6
    assert standin.hits("getImageWithMD5Hash", FAULTY["503_once"].series_uid) == 2


def test_429_waits_for_retry_after(standin, config):
    started = time.monotonic()
    paths = fetch_series(record_of(FAULTY["429_retry_after"]), config)
    waited = time.monotonic() - started
    assert len(paths) == 6
    assert standin.hits("getImageWithMD5Hash", FAULTY["429_retry_after"].series_uid) == 2
    assert 1.0 <= waited < 5.0


@pytest.mark.parametrize("fault, reason, status, requests", [
    ("always_503", "http_503_exhausted", 503, MAX_ATTEMPTS),
    ("not_public", "http_400", 400, 1),
    ("cut_stream", "truncated_download", None, MAX_ATTEMPTS),
    ("missing_on_server", "short_on_server", None, 2),
    ("md5_mismatch", "md5_mismatch", None, MAX_ATTEMPTS),
    ("zip_slip", "zip_slip", None, 1),
    ("zip_bomb", "zip_bomb", None, 1),
    ("slow", "timeout", None, MAX_ATTEMPTS),
])
def test_faulty_series_raise_their_reason_after_bounded_attempts(standin, config, tmp_path, fault, reason, status,
                                                                 requests):
    item = FAULTY[fault]
    started = time.monotonic()
    with pytest.raises(ArchiveError) as caught:
        fetch_series(record_of(item), config)
    assert caught.value.reason == reason and caught.value.status == status
    assert item.series_uid in caught.value.detail
    assert standin.hits("getImageWithMD5Hash", item.series_uid) == requests
    assert time.monotonic() - started < MAX_ATTEMPTS * (config.timeout_s + config.backoff_max_s) + 2.0
    assert cached_series(record_of(item), config) is None
    assert scratch_left(tmp_path / "work") == set()
    assert not os.path.exists(tmp_path / "cache" / item.series_uid / COMPLETE_MARKER)


def test_not_public_and_unknown_series_quote_the_servers_400(standin, config):
    with pytest.raises(ArchiveError) as caught:
        fetch_series(record_of(FAULTY["not_public"]), config)
    detail = caught.value.detail
    assert f"'The user has not been granted the access to image with given SeriesInstanceUID,{FAULTY['not_public'].series_uid}." in detail
    assert "not public or does not exist" in detail
    unknown = dataclasses.replace(record_of(GOOD), series_uid="1.2.3.4.5.404")
    with pytest.raises(ArchiveError) as caught:
        fetch_series(unknown, config)
    assert (caught.value.reason, caught.value.status) == ("http_400", 400)
    assert standin.hits("getImageWithMD5Hash", "1.2.3.4.5.404") == 1


def test_a_wrong_base_url_is_404_with_a_hint(standin, config):
    with pytest.raises(ArchiveError) as caught:
        list_series(dataclasses.replace(config, base_url=standin.base_url.replace("/v4/", "/v3/")))
    assert caught.value.reason == "http_404" and "--tcia_base_url" in caught.value.detail


@pytest.mark.parametrize("verify_md5, endpoint", [(True, "getImageWithMD5Hash"), (False, "getImage")])
def test_a_series_short_on_the_server_is_downloaded_twice_then_given_up(standin, config, verify_md5, endpoint):
    item = FAULTY["missing_on_server"]
    before = standin.hits(endpoint, item.series_uid)
    with pytest.raises(ArchiveError) as caught:
        fetch_series(record_of(item), dataclasses.replace(config, verify_md5=verify_md5, max_attempts=6))
    assert caught.value.reason == "short_on_server"
    assert f"{MISSING_ON_SERVER_AT} of 6 images" in caught.value.detail
    assert "the same archive twice" in caught.value.detail
    assert standin.hits(endpoint, item.series_uid) - before == 2


def test_size_limit_holds_without_content_length(standin, config):
    with pytest.raises(ArchiveError) as caught:
        fetch_series(record_of(SARC_THIN), dataclasses.replace(config, max_zip_bytes=4096))
    assert caught.value.reason == "zip_too_large" and "sent more than max_zip_bytes=4096" in caught.value.detail


def test_parallel_downloads_are_capped_per_machine(tmp_path):
    series = [phantom_standin_series("CPTAC-LUAD", 40 + i, slices=2, size=32) for i in range(4)]
    with NbiaStandin(series, image_delay_s=0.2) as server:
        for cap in (1, 2):
            config = TciaConfig(base_url=server.base_url, collections=("CPTAC-LUAD",), min_slices=1,
                                max_parallel_downloads=cap, cache_dir=str(tmp_path / f"cache{cap}"),
                                work_dir=str(tmp_path / "work"))
            server.max_parallel_downloads = 0
            with concurrent.futures.ThreadPoolExecutor(len(series)) as pool:
                results = list(pool.map(lambda item: fetch_series(record_of(item), config), series))
            assert [len(paths) for paths in results] == [2] * len(series)
            assert server.max_parallel_downloads == cap
    with pytest.raises(ValueError, match="max_parallel_downloads"):
        TciaConfig(max_parallel_downloads=0).validate()


def test_zip_slip_writes_nothing_outside_the_work_dir(standin, config, tmp_path):
    root = tmp_path.parent
    before = files_under(root)
    with pytest.raises(ArchiveError):
        fetch_series(record_of(FAULTY["zip_slip"]), config)
    assert files_under(root) - before == files_under(tmp_path / "work") - scratch_left(tmp_path / "work")
    assert not os.path.exists(ZIP_SLIP_NAMES[1])


def test_non_dicom_member_is_extracted_for_the_pipeline_to_dead_letter(standin, config):
    paths = fetch_series(record_of(FAULTY["non_dicom"]), config)
    assert len(paths) == 7
    note = next(p for p in paths if p.endswith(NON_DICOM_NAME))
    with pytest.raises(CTInputError) as caught:
        read_file_hu(open(note, "rb").read(), note)
    assert caught.value.reason == "not_dicom"


def test_license_is_no_image_a_series_listed_with_more_images_is_short(standin, config):
    """getImage sends LICENSE + 12 images: with 13 listed, the LICENSE must not make up the count."""
    short = dataclasses.replace(record_of(SARC_THIN), image_count=13)
    with pytest.raises(ArchiveError) as caught:
        fetch_series(short, dataclasses.replace(config, verify_md5=False))
    assert caught.value.reason == "short_on_server" and "12 of 13 images" in caught.value.detail


def test_retry_after_and_backoff_arithmetic():
    assert retry_after_s("7") == 7.0 and retry_after_s(None) == 0.0 and retry_after_s("soon") == 0.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    config = TciaConfig(backoff_initial_s=1.0, backoff_max_s=8.0)

    class Fixed:
        def __init__(self, value):
            self.value = value

        def random(self):
            return self.value

    assert [backoff_s(a, config, Fixed(1.0)) for a in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff_s(3, config, Fixed(0.0)) == 2.0


def test_config_validation_names_the_bad_setting():
    with pytest.raises(ValueError, match="max_attempts"):
        TciaConfig(max_attempts=0).validate()
    with pytest.raises(ValueError, match="base_url"):
        TciaConfig(base_url="ftp://x/").validate()
    assert TciaConfig().validate().collections == ("CPTAC-GBM", "TCGA-SARC", "CPTAC-LUAD", "CPTAC-HNSCC")
    assert TciaConfig().base_url == DEFAULT_BASE_URL == "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/"
