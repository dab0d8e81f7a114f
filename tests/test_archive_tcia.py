"""TCIA client against the loopback NBIA stand-in: listing, filters, cache, retries, faults."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import zipfile

import pytest

from pipeline.archives.safe_zip import ZipLimits, extract_zip, safe_member_name
from pipeline.archives.series import SeriesFilter, SeriesRecord, filter_series
from pipeline.archives.tcia import (
    COMPLETE_MARKER,
    ArchiveError,
    TciaConfig,
    backoff_s,
    cached_series,
    fetch_series,
    list_series,
    retry_after_s,
)
from pipeline.dicom_hu import SliceRejected, read_slice_hu
from pipeline.phantom import phantom_dataset
from tests.conftest import dicom_bytes
from tests.nbia_standin import (
    NON_DICOM_NAME,
    ZIP_SLIP_NAMES,
    NbiaStandin,
    phantom_standin_series,
)

MAX_ATTEMPTS = 3

GOOD = phantom_standin_series("CPTAC-LUAD", 0)
FAULTY = {fault: phantom_standin_series("CPTAC-LUAD", index, fault=fault)
          for index, fault in enumerate(("503_once", "429_retry_after", "always_503", "truncated_zip", "zip_slip",
                                         "non_dicom", "zip_bomb", "md5_mismatch", "slow", "404"), start=1)}
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


def test_good_series_is_fetched_verified_and_then_served_from_the_cache(standin, config, tmp_path):
    before = standin.hits("getImageWithMD5Hash", GOOD.series_uid)
    paths = fetch_series(record_of(GOOD), config)
    assert standin.hits("getImageWithMD5Hash", GOOD.series_uid) == before + 1
    assert len(paths) == 6 and all(p.startswith(str(tmp_path / "cache" / GOOD.series_uid)) for p in paths)
    expected = {hashlib.md5(dicom_bytes(phantom_dataset(GOOD.phantom, i))).hexdigest() for i in range(6)}
    assert {hashlib.md5(open(p, "rb").read()).hexdigest() for p in paths} == expected
    assert read_slice_hu(open(paths[0], "rb").read(), paths[0]).shape == (64, 64)
    assert os.path.isfile(tmp_path / "cache" / GOOD.series_uid / COMPLETE_MARKER)
    assert files_under(tmp_path / "work") == set()

    again = fetch_series(record_of(GOOD), config)
    assert again == paths
    assert standin.hits("getImageWithMD5Hash", GOOD.series_uid) == before + 1


def test_get_image_without_md5_uses_new_file_names(standin, config):
    plain = dataclasses.replace(config, verify_md5=False)
    paths = fetch_series(record_of(SARC_THIN), plain)
    assert standin.hits("getImage", SARC_THIN.series_uid) == 1
    assert sorted(os.path.basename(p) for p in paths) == [f"1-{i:03d}.dcm" for i in range(1, 13)]


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
    ("404", "http_404", 404, 1),
    ("truncated_zip", "bad_zip", None, MAX_ATTEMPTS),
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
    assert files_under(tmp_path / "work") == set()
    assert not os.path.exists(tmp_path / "cache" / item.series_uid / COMPLETE_MARKER)


def test_zip_slip_writes_nothing_outside_the_work_dir(standin, config, tmp_path):
    root = tmp_path.parent
    before = files_under(root)
    with pytest.raises(ArchiveError):
        fetch_series(record_of(FAULTY["zip_slip"]), config)
    assert files_under(root) == before
    assert not os.path.exists(ZIP_SLIP_NAMES[1])


def test_non_dicom_member_is_extracted_for_the_pipeline_to_dead_letter(standin, config):
    paths = fetch_series(record_of(FAULTY["non_dicom"]), config)
    assert len(paths) == 7
    note = next(p for p in paths if p.endswith(NON_DICOM_NAME))
    with pytest.raises(SliceRejected) as caught:
        read_slice_hu(open(note, "rb").read(), note)
    assert caught.value.reason == "not_dicom"


def test_series_listed_with_more_images_than_sent_is_incomplete(standin, config):
    short = dataclasses.replace(record_of(SARC_THIN), image_count=13)
    with pytest.raises(ArchiveError) as caught:
        fetch_series(short, dataclasses.replace(config, verify_md5=False))
    assert caught.value.reason == "incomplete_series" and "12 files" in caught.value.detail


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


def test_safe_zip_refuses_escapes_duplicates_and_bombs(tmp_path):
    assert safe_member_name("a/./b\\c.dcm") == "a/b/c.dcm"
    for name in ("../x.dcm", "a/../../x.dcm", "/etc/x", "C:/x.dcm", "..\\x.dcm"):
        with pytest.raises(ArchiveError) as caught:
            safe_member_name(name)
        assert caught.value.reason == "zip_slip"
    duplicate = tmp_path / "dup.zip"
    with zipfile.ZipFile(duplicate, "w") as archive:
        archive.writestr("a.dcm", b"1")
        archive.writestr("./a.dcm", b"2")
    with pytest.raises(ArchiveError, match="twice"):
        extract_zip(str(duplicate), str(tmp_path / "out1"), ZipLimits())
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as archive:
        for index in range(5):
            archive.writestr(f"{index}.dcm", b"x")
    with pytest.raises(ArchiveError) as caught:
        extract_zip(str(many), str(tmp_path / "out2"), ZipLimits(max_files=4))
    assert caught.value.reason == "zip_bomb"
    files = extract_zip(str(many), str(tmp_path / "out3"), ZipLimits(max_files=5))
    assert [f.name for f in files] == [f"{i}.dcm" for i in range(5)] and files[0].md5 == hashlib.md5(b"x").hexdigest()
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ArchiveError) as caught:
        extract_zip(str(tmp_path / "junk.zip"), str(tmp_path / "out4"), ZipLimits())
    assert caught.value.reason == "bad_zip"


def test_config_validation_names_the_bad_setting():
    with pytest.raises(ValueError, match="max_attempts"):
        TciaConfig(max_attempts=0).validate()
    with pytest.raises(ValueError, match="base_url"):
        TciaConfig(base_url="ftp://x/").validate()
    assert TciaConfig().validate().collections == ("CPTAC-GBM", "TCGA-SARC", "CPTAC-LUAD", "CPTAC-HNSCC")
