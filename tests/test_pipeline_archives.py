"""End-to-end runs of the archive sources against stand-ins the tests start: a loopback NBIA server
(tcia), a directory laid out like the IDC bucket (idc), and DICOM FB/DIBH pairs (pairs)."""

import glob
import json
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
import SimpleITK as sitk

import tfrecords_schema as schema
from pipeline.archives.registration import read_series_volume
from pipeline.make_dataset import UserError, run
from pipeline.phantom import phantom_dataset, phantom_series
from pipeline.sources import write_phantom_series
from tests.conftest import dicom_bytes
from tests.nbia_standin import NON_DICOM_NAME, NbiaStandin, phantom_standin_series
from tests.test_archive_registration import known_rigid

SMALL = ["--preset", "tiny", "--subdatasets", "2", "--series_filter_min_slices", "3"]


def dead_letters(output):
    problems = [json.loads(line) for line in open(os.path.join(output, schema.DEAD_LETTER_NAME))]
    unselected = [json.loads(line) for line in open(os.path.join(output, schema.UNSELECTED_NAME))]
    return problems, unselected


def all_pairs(output):
    return [schema.decode_pair(r) for path in sorted(glob.glob(os.path.join(output, "*", "pairs-*")))
            for r in schema.read_records(open(path, "rb"))]


def test_tcia_source_writes_good_series_dead_letters_faults_and_reuses_the_cache(tmp_path):
    good = [phantom_standin_series("CPTAC-LUAD", i, slices=6, size=64) for i in range(3)]
    faulty = {fault: phantom_standin_series("CPTAC-LUAD", 10 + i, slices=6, size=64, fault=fault)
              for i, fault in enumerate(("always_503", "zip_slip", "404", "non_dicom", "503_once"))}
    scout = phantom_standin_series("CPTAC-LUAD", 30, slices=2, size=64, description="SCOUT")
    cache, work = tmp_path / "cache", tmp_path / "work"
    with NbiaStandin([*good, *faulty.values(), scout], retry_after_s=1) as server:
        argv = SMALL + ["--source", "tcia", "--tcia_base_url", server.base_url, "--collections", "CPTAC-LUAD",
                        "--tcia_cache_dir", str(cache), "--tcia_work_dir", str(work), "--tcia_timeout_s", "2",
                        "--tcia_max_attempts", "2", "--tcia_backoff_initial_s", "0.01", "--tcia_backoff_max_s", "0.05",
                        "--series_filter_max_series_per_patient", "0", "--target_pairs", "20", "--test_pairs", "4"]
        output = str(tmp_path / "ds")
        manifest = run(argv + ["--output", output])
        fetched = [*good, faulty["non_dicom"], faulty["503_once"]]
        downloads = [server.hits("getImageWithMD5Hash", s.series_uid) for s in fetched]
        failed = server.hits("getImageWithMD5Hash", faulty["404"].series_uid)
        again = str(tmp_path / "ds2")
        run(argv + ["--output", again])
        assert [server.hits("getImageWithMD5Hash", s.series_uid) for s in fetched] == downloads
        assert server.hits("getImageWithMD5Hash", faulty["404"].series_uid) == 2 * failed

    assert manifest["written"]["pairs"] == 20 and manifest["splits"]["test"]["pairs"] == 4
    assert manifest["accounting"]["balanced"]
    problems, unselected = dead_letters(output)
    by_series = {line["series_uid"]: line for line in problems if line["unit"] == "series"}
    assert by_series[faulty["always_503"].series_uid]["reason"] == "http_503_exhausted"
    assert "HTTP 503" in by_series[faulty["always_503"].series_uid]["detail"]
    assert by_series[faulty["zip_slip"].series_uid]["reason"] == "zip_slip"
    assert by_series[faulty["404"].series_uid]["reason"] == "http_404"
    assert [line["reason"] for line in problems if line["path"].endswith(NON_DICOM_NAME)] == ["not_dicom"]
    assert {line["series_uid"]: line["reason"] for line in unselected if line["unit"] == "series"} == {
        scout.series_uid: "filtered_too_few_slices"}
    assert manifest["rejected_series"] == {"filtered_too_few_slices": 1, "http_404": 1, "http_503_exhausted": 1,
                                           "zip_slip": 1}
    written_series = {p.series_uid for p in all_pairs(output)}
    assert written_series <= {s.series_uid for s in (*good, faulty["non_dicom"], faulty["503_once"])}
    assert {p.collection for p in all_pairs(output)} == {"CPTAC-LUAD"}
    assert not glob.glob(str(tmp_path.parent / "**" / "escaped-by-zip-slip.dcm"), recursive=True)
    assert not os.path.exists("/tmp/ctdeblur-absolute-zip-slip.dcm")
    assert all_pairs(again) and [p.record_key for p in all_pairs(again)] == [p.record_key for p in all_pairs(output)]


def write_idc_bucket(root, rows_out):
    for patient, collection in ((0, "cptac_luad"), (1, "cptac_luad"), (2, "tcga_sarc")):
        series = phantom_series(patient, 6, 64, seed=3)
        crdc = str(uuid.uuid5(uuid.NAMESPACE_OID, f"idc-{patient}"))
        for index in range(series.slices):
            dataset = phantom_dataset(series, index)
            (root / crdc).mkdir(parents=True, exist_ok=True)
            (root / crdc / f"{dataset.SOPInstanceUID}.dcm").write_bytes(dicom_bytes(dataset))
        rows_out.append({"collection_id": collection, "PatientID": series.patient_id,
                         "SeriesInstanceUID": series.uid("series"), "Modality": "CT", "instanceCount": 6,
                         "crdc_series_uuid": crdc, "aws_bucket": "idc-open-data",
                         "SeriesDescription": "phantom", "series_aws_url": f"s3://idc-open-data/{crdc}/*"})
    rows_out.append({**rows_out[0], "PatientID": "GONE", "SeriesInstanceUID": "1.2.3.404",
                     "crdc_series_uuid": str(uuid.uuid5(uuid.NAMESPACE_OID, "missing"))})


def test_idc_source_reads_a_bucket_laid_out_directory(tmp_path):
    bucket = tmp_path / "idc-open-data"
    rows = []
    write_idc_bucket(bucket, rows)
    index = tmp_path / "index.parquet"
    pq.write_table(pa.Table.from_pylist(rows), index)
    output = str(tmp_path / "ds")
    manifest = run(SMALL + ["--source", "idc", "--idc_index", str(index), "--idc_bucket_root", str(bucket),
                            "--collections", "CPTAC-LUAD", "TCGA-SARC", "--target_pairs", "12", "--test_pairs", "3",
                            "--output", output])
    assert manifest["written"]["pairs"] == 12 and manifest["inputs"]["series"] == 3
    assert {p.collection for p in all_pairs(output)} == {"CPTAC-LUAD", "TCGA-SARC"}
    problems, _ = dead_letters(output)
    assert [(line["series_uid"], line["unit"]) for line in problems] == [("1.2.3.404", "series")]
    assert manifest["accounting"]["balanced"]


def test_idc_source_names_collections_without_ct(tmp_path):
    with pytest.raises(UserError, match="only on TCIA"):
        run(SMALL + ["--source", "idc", "--collections", "CPTAC-GBM", "CPTAC-HNSCC", "--output", str(tmp_path / "x")])


def write_series(volume: sitk.Image, template_paths, directory, series_uid):
    """Writes `volume` (HU) as DICOM files using `template_paths` (same grid) for the headers."""
    directory.mkdir(parents=True)
    hu = sitk.GetArrayFromImage(volume)
    ordered = sorted(template_paths, key=lambda p: -float(pydicom.dcmread(p).ImagePositionPatient[2]))
    for z, path in enumerate(reversed(ordered)):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = f"{series_uid}.{z + 1}"
        dataset.PixelData = np.clip(np.rint(hu[z] + 1024), -1024, 32767).astype("<i2").tobytes()
        dataset.save_as(directory / f"{z}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def fb_dibh_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    dibh_paths = write_phantom_series(phantom_series(1, 24, 96, seed=0), str(root / "dibh"))
    dibh = read_series_volume(dibh_paths)
    rigid = known_rigid(dibh)
    moved = sitk.Resample(dibh, dibh, rigid.GetInverse(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    write_series(moved, dibh_paths, root / "fb", "1.2.826.0.1.3680043.8.498.424242")
    sitk.WriteTransform(rigid, str(root / "known.tfm"))
    write_phantom_series(phantom_series(2, 24, 96, seed=4), str(root / "unrelated"))
    dibh2_paths = write_phantom_series(phantom_series(4, 24, 96, seed=0), str(root / "dibh2"))
    manifest = root / "pairs.csv"
    manifest.write_text(
        "patient_id,fb_series,dibh_series,transform\n"
        f"P1,{root / 'fb'},{root / 'dibh'},\n"
        f"P2,{root / 'unrelated'},{root / 'dibh2'},\n"
        f"P3,{root / 'fb'},{root / 'dibh'},{root / 'known.tfm'}\n")
    return root, manifest, len(dibh2_paths)


def test_pairs_source_registers_fb_onto_dibh_and_gates_bad_pairs(fb_dibh_pairs, tmp_path):
    root, manifest_csv, _ = fb_dibh_pairs
    output = str(tmp_path / "ds")
    manifest = run(SMALL + ["--source", "pairs", "--pairs_manifest", str(manifest_csv), "--source", "phantom",
                            "--target_pairs", "20", "--test_pairs", "4", "--kernels_per_slice", "2",
                            "--output", output])
    pairs = all_pairs(output)
    registered = [p for p in pairs if p.source_kind == "registered"]
    assert registered and all(p.blur_model == "none" and p.kernel_index == 0 for p in registered)
    assert {p.collection for p in registered} == {"fb-dibh"}
    synthetic_from_dibh = [p for p in pairs if p.collection == "fb-dibh" and p.source_kind == "synthetic"]
    assert synthetic_from_dibh and all(p.kernel_index == 1 and p.blur_model == "kernel" for p in synthetic_from_dibh)
    for pair in registered:
        inside = pair.sharp_hu > -500
        difference = np.abs(pair.blurry_hu.astype(float) - pair.sharp_hu)[inside]
        assert np.median(difference) < 40
    problems, _ = dead_letters(output)
    rejected = [line for line in problems if line["reason"] == "registration_rejected"]
    assert len(rejected) == 1 and "P2" in rejected[0]["detail"] and "low_" in rejected[0]["detail"]
    assert manifest["counters"]["pairs_registered"] == 2
    assert manifest["accounting"]["balanced"]
    assert not os.path.exists(os.path.join(output, "_registered"))


def test_pairs_manifest_errors_are_user_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,fb,dibh\nP1,a,b\n")
    with pytest.raises(UserError, match="header must name"):
        run(SMALL + ["--source", "pairs", "--pairs_manifest", str(bad), "--output", str(tmp_path / "x")])
    with pytest.raises(UserError, match="go together"):
        run(SMALL + ["--source", "phantom", "--pairs_manifest", str(bad), "--output", str(tmp_path / "y")])
