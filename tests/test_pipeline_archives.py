"""End-to-end runs of the archive sources against stand-ins the tests start: a loopback NBIA server
(tcia), a directory laid out like the IDC bucket (idc), and DICOM FB/DIBH pairs (pairs)."""

import glob
import io
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
from pipeline.make_dataset import UserError, main, print_summary, run, zero_pairs_message
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
              for i, fault in enumerate(("always_503", "zip_slip", "not_public", "non_dicom", "503_once",
                                         "missing_on_server"))}
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
        failed = server.hits("getImageWithMD5Hash", faulty["not_public"].series_uid)
        short = server.hits("getImageWithMD5Hash", faulty["missing_on_server"].series_uid)
        again = str(tmp_path / "ds2")
        run(argv + ["--output", again])
        assert [server.hits("getImageWithMD5Hash", s.series_uid) for s in fetched] == downloads
        assert server.hits("getImageWithMD5Hash", faulty["not_public"].series_uid) == 2 * failed == 2
        assert short == 2

    assert manifest["written"]["pairs"] == 20 and manifest["splits"]["test"]["pairs"] == 4
    assert manifest["accounting"]["balanced"], (manifest["accounting"], manifest["written"], manifest["rejected"], manifest["inputs"])
    problems, unselected = dead_letters(output)
    by_series = {line["series_uid"]: line for line in problems if line["unit"] == "series"}
    assert by_series[faulty["always_503"].series_uid]["reason"] == "http_503_exhausted"
    assert "HTTP 503" in by_series[faulty["always_503"].series_uid]["detail"]
    assert by_series[faulty["zip_slip"].series_uid]["reason"] == "zip_slip"
    assert by_series[faulty["not_public"].series_uid]["reason"] == "http_400"
    assert "HTTP 400" in by_series[faulty["not_public"].series_uid]["detail"]
    assert "not been granted the access" in by_series[faulty["not_public"].series_uid]["detail"]
    assert by_series[faulty["missing_on_server"].series_uid]["reason"] == "short_on_server"
    assert [line["reason"] for line in problems if line["path"].endswith(NON_DICOM_NAME)] == ["not_dicom"]
    assert {line["series_uid"]: line["reason"] for line in unselected if line["unit"] == "series"} == {
        scout.series_uid: "filtered_too_few_slices"}
    assert manifest["rejected_series"] == {"filtered_too_few_slices": 1, "http_400": 1, "http_503_exhausted": 1,
                                           "short_on_server": 1, "zip_slip": 1}
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
    assert manifest["accounting"]["balanced"], (manifest["accounting"], manifest["written"], manifest["rejected"], manifest["inputs"])


def test_idc_source_names_collections_without_ct(tmp_path):
    with pytest.raises(UserError, match="only on TCIA"):
        run(SMALL + ["--source", "idc", "--collections", "CPTAC-GBM", "CPTAC-HNSCC", "--output", str(tmp_path / "x")])


def test_idc_and_tcia_together_take_each_collection_from_one_archive(tmp_path, capsys):
    """`--collections CPTAC-LUAD,CPTAC-GBM` (one word, commas): LUAD has CT in the IDC index, so it
    comes from the bucket and TCIA is never asked for it; GBM comes from TCIA, by getImage, whose
    zips carry a LICENSE that must reach neither the dead letter nor the pairs."""
    bucket, rows = tmp_path / "idc-open-data", []
    write_idc_bucket(bucket, rows)
    index = tmp_path / "index.parquet"
    pq.write_table(pa.Table.from_pylist(rows), index)
    gbm = [phantom_standin_series("CPTAC-GBM", 50 + i, slices=6, size=64) for i in range(2)]
    luad_on_tcia = phantom_standin_series("CPTAC-LUAD", 52, slices=6, size=64)
    output = str(tmp_path / "ds")
    with NbiaStandin([*gbm, luad_on_tcia]) as server:
        manifest = run(SMALL + ["--source", "idc", "--source", "tcia", "--collections", "CPTAC-LUAD,CPTAC-GBM",
                                "--idc_index", str(index), "--idc_bucket_root", str(bucket),
                                "--tcia_base_url", server.base_url, "--no-tcia_verify_md5",
                                "--tcia_cache_dir", str(tmp_path / "cache"), "--tcia_work_dir", str(tmp_path / "work"),
                                "--target_pairs", "16", "--test_pairs", "4", "--output", output])
        assert server.hits("getSeries") == 1
        assert server.hits("getImage", luad_on_tcia.series_uid) == 0
        assert [server.hits("getImage", s.series_uid) for s in gbm] == [1, 1]
    assert "collections from IDC: CPTAC-LUAD; from TCIA: CPTAC-GBM" in capsys.readouterr().err
    assert manifest["config"]["collections"] == ["CPTAC-LUAD", "CPTAC-GBM"]
    assert manifest["written"]["pairs"] == 16 and manifest["accounting"]["balanced"]
    pairs = all_pairs(output)
    assert {p.collection for p in pairs} == {"CPTAC-LUAD", "CPTAC-GBM"}
    assert {p.series_uid for p in pairs if p.collection == "CPTAC-GBM"} <= {s.series_uid for s in gbm}
    problems, unselected = dead_letters(output)
    assert not [line for line in problems + unselected if "LICENSE" in line["path"] + line["detail"]]
    assert [line["reason"] for line in problems] == ["missing_series_files"]
    assert manifest["inputs"]["files"] == 2 * 6 + 2 * 6


def test_a_run_that_writes_no_pair_fails_naming_the_reason_and_its_flag(tmp_path, capsys):
    series = [phantom_standin_series("CPTAC-GBM", 60 + i, slices=6, size=64) for i in range(2)]
    output = str(tmp_path / "ds")
    with NbiaStandin(series) as server:
        code = main(SMALL + ["--source", "tcia", "--collections", "CPTAC-GBM", "--tcia_base_url", server.base_url,
                             "--tcia_cache_dir", str(tmp_path / "cache"), "--series_filter_min_slices", "100",
                             "--output", output])
        assert server.hits("getImageWithMD5Hash") == 0
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.splitlines() == [
        "ctdeblur-make-dataset: error: no pairs written: the biggest rejection reason is filtered_too_few_slices "
        "(2 of 2 series rejected); --series_filter_min_slices controls it (now 100); "
        f"details in {output}/manifest.json"]
    manifest = json.load(open(os.path.join(output, schema.MANIFEST_NAME)))
    assert manifest["written"]["pairs"] == 0 and manifest["rejected_series"] == {"filtered_too_few_slices": 2}


def test_zero_pairs_message_prefers_slice_reasons_and_quotes_the_setting():
    manifest = {"rejected": {"low_body_fraction": 30, "not_selected_z_stride": 2, "not_dicom": 1},
                "rejected_series": {"filtered_too_few_slices": 40},
                "config": {"min_body_fraction": 0.9, "series_filter": {"min_slices": 20}}}
    assert zero_pairs_message(manifest, "out") == (
        "no pairs written: the biggest rejection reason is low_body_fraction (30 of 33 slices rejected); "
        "--min_body_fraction controls it (now 0.9); details in out/manifest.json")
    network = {"rejected": {}, "rejected_series": {"http_503_exhausted": 3, "timeout": 1}, "config": {}}
    assert zero_pairs_message(network, "out") == (
        "no pairs written: the biggest rejection reason is http_503_exhausted (3 of 4 series rejected); "
        "details in out/manifest.json")
    assert "no input was found" in zero_pairs_message({"rejected": {}, "rejected_series": {}}, "out")
    one_patient = {"rejected": {"non_ct_modality": 3, "not_selected_z_stride": 1}, "config": {"target_pairs": 8},
                   "warnings": ["test split is empty: a patient-disjoint test split needs >= 2 patients, found 1"]}
    assert zero_pairs_message(one_patient, "out") == (
        "no pairs written: the biggest rejection reason is non_ct_modality (3 of 4 slices rejected); "
        "test split is empty: a patient-disjoint test split needs >= 2 patients, found 1; details in out/manifest.json")


@pytest.mark.parametrize("compression, words", [("none", "uncompressed TFRecord shards"),
                                                ("gzip", "gzip TFRecord shards")])
def test_summary_names_the_compression_in_words(compression, words):
    manifest = {"schema_version": schema.SCHEMA_VERSION, "compression": compression, "config": {"seed": 0},
                "sources": ["phantom"], "splits": {"test": {"pairs": 2, "patients": 1, "series": 1, "shards": [{}]}},
                "written": {"pairs": 2}, "inputs": {"files": 3, "series": 1},
                "accounting": {"slices_read": 3, "slices_written": 2, "slices_rejected": 1, "balanced": True},
                "rejected": {"low_body_fraction": 1}, "rejected_series": {},
                "leakage": {"patients_in_test_and_train": 0}, "warnings": [], "run_seconds": 1.0}
    stream = io.StringIO()
    print_summary(manifest, "out", stream)
    assert f"schema v{schema.SCHEMA_VERSION}, {words}, seed 0" in stream.getvalue()
    assert "none TFRecord" not in stream.getvalue()


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
    dibh_hu, moved_hu = sitk.GetArrayFromImage(dibh), sitk.GetArrayFromImage(moved)
    unregistered = float(np.median(np.abs(moved_hu - dibh_hu)[dibh_hu > -500]))
    write_phantom_series(phantom_series(2, 24, 96, seed=4), str(root / "unrelated"))
    dibh2_paths = write_phantom_series(phantom_series(4, 24, 96, seed=0), str(root / "dibh2"))
    manifest = root / "pairs.csv"
    manifest.write_text(
        "patient_id,fb_series,dibh_series,transform\n"
        f"P1,{root / 'fb'},{root / 'dibh'},\n"
        f"P2,{root / 'unrelated'},{root / 'dibh2'},\n"
        f"P3,{root / 'fb'},{root / 'dibh'},{root / 'known.tfm'}\n")
    return root, manifest, unregistered


def test_pairs_source_registers_fb_onto_dibh_and_gates_bad_pairs(fb_dibh_pairs, tmp_path):
    root, manifest_csv, unregistered = fb_dibh_pairs
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
        difference = np.median(np.abs(pair.blurry_hu.astype(float) - pair.sharp_hu)[inside])
        assert difference < 0.8 * unregistered, (difference, unregistered)
    problems, _ = dead_letters(output)
    rejected = [line for line in problems if line["reason"] == "registration_rejected"]
    assert len(rejected) == 1 and "P2" in rejected[0]["detail"] and "low_" in rejected[0]["detail"]
    assert manifest["counters"]["pairs_registered"] == 2
    assert manifest["accounting"]["balanced"], (manifest["accounting"], manifest["written"], manifest["rejected"], manifest["inputs"])
    assert not os.path.exists(os.path.join(output, "_registered"))


def test_pairs_manifest_errors_are_user_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,fb,dibh\nP1,a,b\n")
    with pytest.raises(UserError, match="header must name"):
        run(SMALL + ["--source", "pairs", "--pairs_manifest", str(bad), "--output", str(tmp_path / "x")])
    with pytest.raises(UserError, match="go together"):
        run(SMALL + ["--source", "phantom", "--pairs_manifest", str(bad), "--output", str(tmp_path / "y")])
