"""End-to-end runs of `run([...])` on the DirectRunner with tiny inputs the tests create."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import tfrecords_schema as schema
from pipeline.make_dataset import UserError, main, run
from pipeline.phantom import phantom_dataset, phantom_series
from tests.conftest import dicom_bytes

TINY = ["--preset", "tiny", "--subdatasets", "3"]


def shard_bytes(root):
    return {os.path.relpath(p, root): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(root, "t*", "pairs-*")))}


def read_split(root, split):
    pairs = []
    for path in sorted(glob.glob(os.path.join(root, split, "pairs-*"))):
        pairs += [schema.decode_pair(r) for r in schema.read_records(open(path, "rb"))]
    return pairs


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("phantom") / "ds")
    manifest = run(TINY + ["--source", "phantom", "--output", output])
    return output, manifest


def test_phantom_run_has_exact_counts_and_disjoint_patients(phantom_run):
    output, manifest = phantom_run
    assert manifest["splits"]["test"]["pairs"] == 6
    assert sum(s["pairs"] for s in manifest["splits"].values()) == 24
    assert sorted(manifest["splits"]) == ["test", "train-0", "train-1", "train-2"]
    counts = [manifest["splits"][f"train-{i}"]["pairs"] for i in range(3)]
    assert counts == [6, 6, 6]
    test = read_split(output, "test")
    train = [p for i in range(3) for p in read_split(output, f"train-{i}")]
    assert len(test) == 6 and len(train) == 18
    assert not {p.patient_key for p in test} & {p.patient_key for p in train}
    assert all(p.split == "test" and p.subdataset == -1 for p in test)
    assert {p.subdataset for p in train} == {0, 1, 2}
    assert all(p.sharp_hu.shape == (96, 96) for p in test + train)
    assert manifest["inputs"] == {"files": 32, "slices": 32, "series": 4, "readable_slices": 32}
    assert manifest["accounting"]["balanced"] and manifest["leakage"]["patients_in_test_and_train"] == 0
    assert manifest["counters"]["pairs_written"] == 24
    keys = [p.record_key for p in read_split(output, "train-0")]
    assert keys == sorted(keys) or len(glob.glob(os.path.join(output, "train-0", "pairs-*"))) > 1


def test_tf_data_reads_the_dataset(phantom_run):
    output, manifest = phantom_run
    files = sorted(glob.glob(os.path.join(output, "train-*", "*.tfrecord")))
    dataset = tf.data.TFRecordDataset(files, compression_type=schema.tf_compression_type(manifest["compression"]))
    decoded = [f for f in dataset.map(schema.parse_pair_tensors)]
    assert len(decoded) == 18
    assert all(f["sharp_hu"].dtype == tf.int16 and abs(float(tf.reduce_sum(f["psf"])) - 1) < 1e-4 for f in decoded)


def test_rerun_needs_overwrite_and_reproduces_bytes(phantom_run, tmp_path):
    output, _ = phantom_run
    with pytest.raises(UserError, match="--overwrite"):
        run(TINY + ["--source", "phantom", "--output", output])
    copy = str(tmp_path / "copy")
    shutil.copytree(output, copy)
    run(TINY + ["--source", "phantom", "--output", copy, "--overwrite"])
    assert shard_bytes(copy) == shard_bytes(output)
    other = str(tmp_path / "seed1")
    run(TINY + ["--source", "phantom", "--output", other, "--seed", "1"])
    assert shard_bytes(other) != shard_bytes(output)


def test_bytes_identical_with_one_or_two_workers_and_gzip_readable(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    common = TINY + ["--source", "phantom", "--compression", "gzip"]
    run(common + ["--output", one, "--direct_num_workers", "1"])
    run(common + ["--output", two, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing",
                  "--phantom_dir", one + "/phantom_dicom_copy"])
    first, second = shard_bytes(one), shard_bytes(two)
    assert len(first) == 2 + 3 * 2 and first == second
    files = [os.path.join(one, name) for name in first]
    assert sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP")) == 24


def write_bad_corpus(root):
    """Two good phantom series plus one file of each kind of bad input."""
    good = {}
    for patient in (0, 1, 2):
        series = phantom_series(patient, 6, 48, seed=5)
        for index in range(series.slices):
            path = root / f"good{patient}" / f"{index}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(dicom_bytes(phantom_dataset(series, index)))
            good[(patient, index)] = path
    base = phantom_dataset(phantom_series(3, 3, 48, seed=5), 0)
    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.dcm").write_bytes(b"")
    (bad / "notes.txt").write_text("This is a text file, not DICOM.\n" * 20)
    data = dicom_bytes(base)
    (bad / "truncated.dcm").write_bytes(data[: len(data) - 2000])
    mr = phantom_dataset(phantom_series(3, 3, 48, seed=5), 1)
    mr.Modality = "MR"
    (bad / "mr.dcm").write_bytes(dicom_bytes(mr))
    no_pixels = phantom_dataset(phantom_series(3, 3, 48, seed=5), 2)
    del no_pixels.PixelData
    (bad / "nopixels.dcm").write_bytes(dicom_bytes(no_pixels))
    no_rescale = phantom_dataset(phantom_series(0, 6, 48, seed=9), 0)
    del no_rescale.RescaleSlope
    (bad / "norescale.dcm").write_bytes(dicom_bytes(no_rescale))
    for index, size in enumerate((48, 48, 40)):
        mixed = phantom_dataset(phantom_series(4, 3, size, seed=5), index)
        mixed.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.999"
        (bad / f"mixed{index}.dcm").write_bytes(dicom_bytes(mixed))
    shutil.copy(good[(0, 3)], root / "good0" / "zz_duplicate_of_3.dcm")
    return 18 + 9 + 1


def test_bad_inputs_are_dead_lettered_with_distinct_reasons(tmp_path):
    expected_files = write_bad_corpus(tmp_path / "in")
    output = str(tmp_path / "ds")
    manifest = run(TINY + ["--source", "dicom-dir", "--input", str(tmp_path / "in"), "--output", output,
                           "--target_pairs", "9", "--test_pairs", "3", "--collection", "corpus"])
    lines = [json.loads(line) for line in open(os.path.join(output, schema.DEAD_LETTER_NAME))]
    by_file = {os.path.basename(line["path"]): line["reason"] for line in lines}
    assert by_file == {
        "zero.dcm": "empty_file",
        "notes.txt": "not_dicom",
        "truncated.dcm": "truncated_file",
        "mr.dcm": "non_ct_modality",
        "nopixels.dcm": "missing_pixel_data",
        "norescale.dcm": "missing_rescale",
        "mixed0.dcm": "mixed_matrix_sizes",
        "mixed1.dcm": "mixed_matrix_sizes",
        "mixed2.dcm": "mixed_matrix_sizes",
        "zz_duplicate_of_3.dcm": "duplicate_sop_instance",
    }
    assert all(line["detail"] for line in lines)
    unselected = [json.loads(line) for line in open(os.path.join(output, schema.UNSELECTED_NAME))]
    accounting = manifest["accounting"]
    assert manifest["inputs"]["files"] == expected_files
    assert accounting["slices_read"] == accounting["slices_written"] + accounting["slices_rejected"]
    assert accounting["slices_written"] == 9 and len(lines) + len(unselected) == expected_files - 9
    assert manifest["rejected"]["mixed_matrix_sizes"] == 3
    assert sum(manifest["rejected"].values()) == len(lines) + len(unselected)
    assert {p.collection for p in read_split(output, "test")} == {"corpus"}


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    assert main(["--source", "dicom-dir", "--output", str(tmp_path / "x")]) == 2
    assert "needs --input" in capsys.readouterr().err
    assert main(["--source", "dicom-dir", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--preset", "tiny", "--test_pairs", "5000", "--output", str(tmp_path / "z")]) == 2
    assert "test_pairs" in capsys.readouterr().err


def test_projection_blur_model_end_to_end(tmp_path):
    output = str(tmp_path / "proj")
    manifest = run(TINY + ["--source", "phantom", "--blur_model", "projection", "--output", output])
    assert manifest["config"]["blur_model"] == "projection" and manifest["written"]["pairs"] == 24
    pairs = [p for split in manifest["splits"] for p in read_split(output, split)]
    assert {p.blur_model for p in pairs} == {"projection"} and all(p.schema_version == 3 for p in pairs)
    assert all(p.noise["nps_peak_cycles_per_mm"] == pytest.approx(0.3) for p in pairs)  # the noise model's default
    assert all(p.psf.shape == (1, 1) for p in pairs)
    assert {p.projection_kind for p in pairs} <= {"smooth", "breathing", "jerk"}
    moved = [p for p in pairs if p.projection["translation_extent_mm"] > 0.5]
    assert moved and all(np.abs(p.blurry_hu.astype(int) - p.sharp_hu).max() > 20 for p in moved)
    again = str(tmp_path / "proj2")
    run(TINY + ["--source", "phantom", "--blur_model", "projection", "--output", again])
    assert shard_bytes(again) == shard_bytes(output)
