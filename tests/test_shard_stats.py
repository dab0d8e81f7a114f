"""ctdeblur-shard-stats on small datasets written here with encode_pair + write_records.

Every expected number is computed in this file from the decoded records (numpy, scipy and
scikit-image), independently of the tf.data path under test.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy.signal import fftconvolve
from skimage.metrics import structural_similarity

from pipeline.stats.cli import main
from tfrecords_schema import (
    MANIFEST_NAME,
    MOTION_PARAM_NAMES,
    RESPIRATORY_CYCLE_NAMES,
    RESPIRATORY_PARAM_NAMES,
    SCHEMA_VERSION,
    Pair,
    decode_pair,
    encode_pair,
    frame_record,
    read_records,
    shard_name,
    write_records,
)

WINDOW = (-1000, 1000)
PERCENTILES = (1.0, 5.0, 50.0, 95.0, 99.0)

# (directory, shard sizes); every shard holds distinct patients of its directory.
LAYOUT = {"test": (3, 2), "train-0": (3, 3), "train-1": (2,)}


def _psf(rng: np.random.Generator, size: int) -> np.ndarray:
    """A normalised line-shaped PSF in a size x size kernel (pixels)."""
    psf = np.zeros((size, size), np.float32)
    length = int(rng.integers(1, size + 1))
    row = int(rng.integers(0, size))
    start = int(rng.integers(0, size - length + 1))
    psf[row, start : start + length] = rng.uniform(0.5, 1.0, length)
    return psf / psf.sum()


def _pair(rng, *, directory, patient, series, index, collection, blur_model, shape, identical=False) -> Pair:
    height, width = shape
    rows, cols = np.mgrid[:height, :width]
    body = ((rows - height / 2) / (0.4 * height)) ** 2 + ((cols - width / 2) / (0.45 * width)) ** 2 < 1
    sharp = np.where(body, rng.normal(40, 300, shape), -1024.0)
    sharp[rng.random(shape) < 0.03] = 2400.0
    sharp = np.clip(np.round(sharp), -1024, 3071).astype(np.int16)
    projection = {}
    if identical:
        psf = np.zeros((3, 3), np.float32)
        psf[1, 1] = 1.0
        blurry = sharp.copy()
        length = 0.0
    elif blur_model == "kernel":
        psf = _psf(rng, int(rng.choice([5, 7, 9])))
        blurry = fftconvolve(sharp.astype(np.float64), psf, mode="same") + rng.normal(0, 5, shape)
        blurry = np.clip(np.round(blurry), -1024, 3071).astype(np.int16)
        length = float(rng.uniform(1, 30))
    else:
        psf = np.zeros((1, 1), np.float32)
        blurry = np.clip(sharp + rng.normal(0, 40, shape).round(), -1024, 3071).astype(np.int16)
        length = 0.0
        if blur_model == "projection":
            projection = {"translation_extent_mm": float(rng.uniform(1, 8)), "rotation_extent_deg": float(rng.uniform(0, 3))}
    split = "test" if directory == "test" else "train"
    return Pair(
        sharp_hu=sharp,
        blurry_hu=blurry,
        psf=psf,
        record_key=f"{series}/{index}/0",
        pixel_spacing_mm=(0.7, 0.7),
        slice_thickness_mm=1.0,
        slice_position_mm=float(index),
        collection=collection,
        patient_key=patient,
        patient_id="",
        series_uid=series,
        sop_instance_uid=f"{series}.{index}",
        slice_index=index,
        kernel_index=0,
        source_kind="registered" if blur_model == "none" else "synthetic",
        split=split,
        subdataset=-1 if split == "test" else int(directory.split("-")[1]),
        motion={name: (length if name == "length_px" else 0.5) for name in MOTION_PARAM_NAMES},
        blur_model=blur_model,
        projection_kind="smooth" if blur_model == "projection" else "",
        projection=projection,
    )


def _blur_model(directory: str, shard_index: int, index: int) -> str:
    if directory == "train-0" and index == 1:
        return "none"
    if directory == "test" and shard_index == 1 and index == 1:
        return "projection"
    return "kernel"


def write_shard(path: str, records: list[bytes], compression: str = "none") -> None:
    opener = gzip.open if compression == "gzip" else open
    with opener(path, "wb") as handle:
        write_records(handle, records)


def make_dataset(root: str, compression: str = "none", seed: int = 0) -> None:
    """A dataset with the LAYOUT above: two image sizes; kernel-blurred, projection-blurred and
    registered pairs; two collections; one pair whose blurry image equals the sharp one; and a
    manifest."""
    rng = np.random.default_rng(seed)
    manifest = {"schema_version": SCHEMA_VERSION, "compression": compression, "config": {}, "splits": {}}
    patient_number = 0
    total = 0
    for directory, sizes in LAYOUT.items():
        os.makedirs(os.path.join(root, directory))
        split_entry = {"pairs": 0, "patients": 0, "series": 0, "shards": []}
        for shard_index, size in enumerate(sizes):
            patient = f"patient{patient_number:02d}"
            patient_number += 1
            records = []
            for index in range(size):
                records.append(
                    encode_pair(
                        _pair(
                            rng,
                            directory=directory,
                            patient=patient,
                            series=f"1.2.{patient_number}.{index % 2}",
                            index=index,
                            collection="PHANTOM" if index % 3 else "LIDC",
                            blur_model=_blur_model(directory, shard_index, index),
                            shape=(40, 48) if index % 2 == 0 else (24, 32),
                            identical=(directory == "test" and shard_index == 0 and index == 2),
                        )
                    )
                )
            name = shard_name(shard_index, len(sizes), compression)
            path = os.path.join(root, directory, name)
            write_shard(path, records, compression)
            sha256 = hashlib.sha256(open(path, "rb").read()).hexdigest()
            split_entry["shards"].append({"file": f"{directory}/{name}", "pairs": size, "sha256": sha256})
            split_entry["pairs"] += size
            split_entry["patients"] += 1
            split_entry["series"] += min(size, 2)
            total += size
        manifest["splits"][directory] = split_entry
    manifest["written"] = {"pairs": total, "slices": total}
    with open(os.path.join(root, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


def decoded(path: str) -> list[Pair]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return [decode_pair(record) for record in read_records(handle)]


# ---- expected numbers, computed directly from decoded pairs ---------------------------------


def _describe(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "p50": None, "max": None}
    return {
        "count": int(values.size),
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "p50": float(np.median(values)),
        "max": float(np.max(values)),
    }


def _psf_extent(psf: np.ndarray) -> int:
    rows, cols = np.nonzero(psf > 0)
    if rows.size == 0:
        return 0
    return int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def _psnr(pair: Pair) -> float:
    sharp = np.clip(pair.sharp_hu.astype(np.float64), *WINDOW)
    blurry = np.clip(pair.blurry_hu.astype(np.float64), *WINDOW)
    mse = np.mean((sharp - blurry) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10((WINDOW[1] - WINDOW[0]) ** 2 / mse))


def _ssim(pair: Pair) -> float:
    return float(
        structural_similarity(
            np.clip(pair.sharp_hu.astype(np.float64), *WINDOW) - WINDOW[0],
            np.clip(pair.blurry_hu.astype(np.float64), *WINDOW) - WINDOW[0],
            data_range=WINDOW[1] - WINDOW[0],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def _count(values) -> dict:
    result: dict[str, int] = {}
    for value in values:
        result[value] = result.get(value, 0) + 1
    return dict(sorted(result.items()))


def expected_group(pairs: list[Pair], measured: list[Pair] | None = None) -> dict:
    """The numbers `summarise` must report for `pairs` (image numbers over `measured`)."""
    measured = pairs if measured is None else measured
    kernel = [p for p in pairs if p.source_kind == "synthetic" and p.blur_model == "kernel"]
    projection = [p for p in pairs if p.blur_model == "projection"]
    psnr = [_psnr(p) for p in measured]

    def percentiles(images):
        if not images:
            return {f"p{q:g}": None for q in PERCENTILES}
        values = np.concatenate([image.ravel() for image in images])
        return {f"p{q:g}": float(v) for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}

    return {
        "pairs": len(pairs),
        "patients": len({p.patient_key for p in pairs}),
        "series": len({p.series_uid for p in pairs}),
        "collections": _count(p.collection for p in pairs),
        "source_kinds": _count(p.source_kind for p in pairs),
        "blur_models": _count(p.blur_model for p in pairs),
        "image_sizes": _count(f"{p.height}x{p.width}" for p in pairs),
        "image_pairs": len(measured),
        "sharp_hu_percentiles": percentiles([p.sharp_hu for p in measured]),
        "blurry_hu_percentiles": percentiles([p.blurry_hu for p in measured]),
        "psf_extent_px": _describe([_psf_extent(p.psf) for p in kernel]),
        "trajectory_length_px": _describe([p.motion["length_px"] for p in kernel]),
        "projection_translation_extent_mm": _describe([p.projection["translation_extent_mm"] for p in projection]),
        "projection_rotation_extent_deg": _describe([p.projection["rotation_extent_deg"] for p in projection]),
        "psnr_db": {**_describe(psnr), "identical_pairs": sum(np.isposinf(psnr))},
        "ssim": _describe([_ssim(p) for p in measured]),
    }


def assert_numbers_equal(actual, expected, path="", ssim_tolerance=2e-6):
    """Recursive equality: ints and strings exact, floats to 1e-9 relative (SSIM: float32 maths)."""
    if isinstance(expected, dict):
        assert set(actual) >= set(expected), f"{path}: missing keys {set(expected) - set(actual)}"
        for key, value in expected.items():
            assert_numbers_equal(actual[key], value, f"{path}.{key}", ssim_tolerance)
    elif isinstance(expected, float):
        tolerance = ssim_tolerance if ".ssim." in path + "." else 1e-9 * max(1.0, abs(expected))
        assert actual == pytest.approx(expected, abs=tolerance), path
    else:
        assert actual == expected, path


def expected_report(root: str) -> tuple[dict, dict, dict]:
    """(per split, per shard file, totals) expected groups of the dataset at `root`."""
    splits, shards = {}, {}
    for directory in LAYOUT:
        pairs_in_split = []
        for name in sorted(os.listdir(os.path.join(root, directory))):
            pairs = decoded(os.path.join(root, directory, name))
            shards[f"{directory}/{name}"] = expected_group(pairs)
            pairs_in_split += pairs
        splits[directory] = (pairs_in_split, expected_group(pairs_in_split))
    train = [p for d, (pairs, _) in splits.items() if d != "test" for p in pairs]
    everything = [p for pairs, _ in splits.values() for p in pairs]
    totals = {"train": expected_group(train), "all": expected_group(everything)}
    return {d: group for d, (_, group) in splits.items()}, shards, totals


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("stats") / "dataset")
    make_dataset(root)
    return root


def copy_dataset(dataset: str, tmp_path) -> str:
    target = str(tmp_path / "copy")
    shutil.copytree(dataset, target)
    return target


def run(args: list[str], tmp_path) -> tuple[int, dict]:
    report_path = str(tmp_path / "report.json")
    code = main([*args, "--json", report_path])
    with open(report_path, encoding="utf-8") as handle:
        return code, json.load(handle)


# ---- tests -----------------------------------------------------------------------------------


def test_every_json_number_equals_direct_computation(dataset, tmp_path, capsys):
    code, report = run([dataset], tmp_path)
    out = capsys.readouterr().out

    assert code == 0, out
    assert report["ok"] is True and report["errors"] == []
    assert report["leakage"] == {"patients_in_test_and_train": 0, "patient_keys": [], "by_subdataset": {"train-0": 0, "train-1": 0},
                                 "patients_in_validation_and_train": 0, "validation_patient_keys": []}
    assert report["protocol"]["window_hu"] == list(WINDOW) and report["protocol"]["data_range"] == 2000
    splits, shards, totals = expected_report(dataset)
    assert list(report["splits"]) == ["test", "train-0", "train-1"]
    for directory, expected in splits.items():
        assert_numbers_equal(report["splits"][directory], expected, directory)
        files = [shard["file"] for shard in report["splits"][directory]["shards"]]
        assert files == [f for f in shards if f.startswith(directory + "/")]
        for shard in report["splits"][directory]["shards"]:
            assert shard["complete"] is True
            assert_numbers_equal(shard, shards[shard["file"]], shard["file"])
    for name, expected in totals.items():
        assert_numbers_equal(report["totals"][name], expected, name)
    assert report["totals"]["all"]["psnr_db"]["identical_pairs"] == 1
    assert report["totals"]["all"]["source_kinds"] == {"registered": 2, "synthetic": 11}
    assert report["totals"]["all"]["blur_models"] == {"kernel": 10, "none": 2, "projection": 1}
    assert report["totals"]["all"]["projection_translation_extent_mm"]["count"] == 1

    for directory in LAYOUT:
        assert directory in out
    assert "pairs-00001-of-00002.tfrecord" in out
    assert "No problems found" in out
    assert "all (test + train)" in out
    assert "Patients in test and train: 0" in out
    assert "projection shift mm / rotation deg" in out and "measured pairs" not in out


def test_gzip_shards_give_the_same_numbers(dataset, tmp_path):
    root = str(tmp_path / "gz")
    make_dataset(root, compression="gzip")
    code, report = run([root], tmp_path)
    _, plain = run([dataset], tmp_path)

    assert code == 0, report["errors"]
    for directory in LAYOUT:
        for shard_gz, shard in zip(report["splits"][directory]["shards"], plain["splits"][directory]["shards"]):
            assert shard_gz["file"] == shard["file"] + ".gz"
    assert report["totals"] == plain["totals"]


def test_train_shard_copied_into_validation_leaks_and_fails(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    os.makedirs(os.path.join(root, "validation"))
    leaked = os.path.join(root, "validation", "pairs-00000-of-00001.tfrecord")
    shutil.copy(sorted(glob.glob(os.path.join(root, "train-0", "pairs-*")))[0], leaked)
    train_patients = {p.patient_key for p in decoded(leaked)}

    code, report = run([root], tmp_path)

    assert code == 1 and report["ok"] is False
    assert report["leakage"]["patients_in_validation_and_train"] == len(train_patients) > 0
    assert report["leakage"]["validation_patient_keys"] == sorted(train_patients)
    leakage = [e for e in report["errors"] if e["kind"] == "patient_leakage"]
    assert [e["split"] for e in leakage] == ["validation"]
    misplaced = [e for e in report["errors"] if e["kind"] == "misplaced_records"]
    assert [e["file"] for e in misplaced] == ["validation/pairs-00000-of-00001.tfrecord"]


def test_test_shard_copied_into_train_leaks_and_fails(dataset, tmp_path, capsys):
    root = copy_dataset(dataset, tmp_path)
    leaked = os.path.join(root, "train-0", "pairs-00002-of-00003.tfrecord")
    shutil.copy(os.path.join(root, "test", "pairs-00000-of-00002.tfrecord"), leaked)
    test_patients = {p.patient_key for p in decoded(leaked)}

    code, report = run([root], tmp_path)
    out = capsys.readouterr().out

    assert code == 1
    assert report["ok"] is False
    assert report["leakage"]["patients_in_test_and_train"] == len(test_patients) == 1
    assert report["leakage"]["patient_keys"] == sorted(test_patients)
    assert report["leakage"]["by_subdataset"] == {"train-0": 1, "train-1": 0}
    leakage = [e for e in report["errors"] if e["kind"] == "patient_leakage"]
    assert len(leakage) == 1 and leakage[0]["patient_keys"] == sorted(test_patients)
    misplaced = [e for e in report["errors"] if e["kind"] == "misplaced_records"]
    assert [e["file"] for e in misplaced] == ["train-0/pairs-00002-of-00003.tfrecord"]
    assert "Patients in test and train: 1" in out
    for key in test_patients:
        assert key in out


def test_flipped_bytes_name_file_and_record_and_other_shards_still_count(dataset, tmp_path, capsys):
    root = copy_dataset(dataset, tmp_path)
    relative = "train-0/pairs-00000-of-00002.tfrecord"
    path = os.path.join(root, relative)
    with open(path, "rb") as handle:
        records = list(read_records(handle))
    data = bytearray(open(path, "rb").read())
    record_1_start = len(frame_record(records[0]))
    middle = record_1_start + 12 + len(records[1]) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    with open(path, "wb") as handle:
        handle.write(bytes(data))

    code, report = run([root], tmp_path)
    out = capsys.readouterr().out

    assert code == 1
    corrupt = [e for e in report["errors"] if e["kind"] == "corrupt_record"]
    assert len(corrupt) == 1
    assert corrupt[0]["file"] == relative and corrupt[0]["record_index"] == 1
    assert f"{relative} record 1" in out
    shard = next(s for s in report["splits"]["train-0"]["shards"] if s["file"] == relative)
    assert shard["complete"] is False
    assert_numbers_equal(shard, expected_group([decode_pair(records[0])]), relative)
    _, shards, _ = expected_report(dataset)
    for directory in LAYOUT:
        for other in report["splits"][directory]["shards"]:
            if other["file"] != relative:
                assert_numbers_equal(other, shards[other["file"]], other["file"])
    mismatches = {(e.get("split"), e.get("file")) for e in report["errors"] if e["kind"] == "count_mismatch"}
    assert (None, relative) in mismatches and ("train-0", None) in mismatches


def test_undecodable_and_foreign_schema_records_are_skipped_and_named(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    relative = "train-1/pairs-00000-of-00001.tfrecord"
    path = os.path.join(root, relative)
    good = [encode_pair(p) for p in decoded(path)]
    newer = tf.train.Example.FromString(good[0])
    newer.features.feature["schema_version"].int64_list.value[0] = SCHEMA_VERSION + 1
    write_shard(path, [good[0], b"this is not a tf.train.Example", newer.SerializeToString(), good[1]])

    code, report = run([root], tmp_path)

    assert code == 1
    by_kind = {e["kind"]: e for e in report["errors"] if e.get("file") == relative}
    assert by_kind["undecodable_record"]["record_index"] == 1
    assert by_kind["schema_version"]["record_index"] == 2
    assert "newer than this reader" in by_kind["schema_version"]["message"]
    shard = report["splits"]["train-1"]["shards"][0]
    assert shard["pairs"] == 2 and shard["complete"] is True
    assert_numbers_equal(shard, expected_group([decode_pair(r) for r in good]), relative)


def test_manifest_differences_are_reported(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path)
    manifest_path = os.path.join(root, MANIFEST_NAME)
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest["splits"]["test"]["pairs"] = 99
    manifest["splits"]["train-1"]["shards"].append({"file": "train-1/pairs-00001-of-00001.tfrecord", "pairs": 4})
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)

    code, report = run([root], tmp_path)

    assert code == 1
    assert {"kind": "count_mismatch", "message": "manifest.json states 99 pairs, the shards hold 5", "split": "test"} in report["errors"]
    missing = [e for e in report["errors"] if e["kind"] == "manifest"]
    assert missing == [
        {"kind": "manifest", "message": "listed in manifest.json but missing on disk", "file": "train-1/pairs-00001-of-00001.tfrecord"}
    ]

    os.remove(manifest_path)
    code, report = run([root], tmp_path)
    assert code == 1
    assert [e["kind"] for e in report["errors"]] == ["manifest"]
    assert report["totals"]["all"]["pairs"] == 13


def test_stray_files_in_split_directories_fail(dataset, tmp_path, capsys):
    """Files the manifest does not list: a copied shard under a shard name, a renamed copy and a
    note. Readers that glob would read the first two; every one is reported."""
    root = copy_dataset(dataset, tmp_path)
    source = os.path.join(root, "train-1", "pairs-00000-of-00001.tfrecord")
    shutil.copy(source, os.path.join(root, "train-1", "pairs-00001-of-00002.tfrecord"))
    shutil.copy(source, os.path.join(root, "test", "extra.tfrecord"))
    with open(os.path.join(root, "test", "notes.txt"), "w", encoding="utf-8") as handle:
        handle.write("kept for later\n")

    code, report = run([root], tmp_path)
    out = capsys.readouterr().out

    assert code == 1 and report["ok"] is False
    strays = sorted(e["file"] for e in report["errors"] if e["kind"] == "stray_file")
    assert strays == ["test/extra.tfrecord", "test/notes.txt", "train-1/pairs-00001-of-00002.tfrecord"]
    note = next(e for e in report["errors"] if e.get("file") == "test/notes.txt")
    assert "manifest.json does not list it" in note["message"] and "glob" in note["message"]
    assert "test/extra.tfrecord" in out
    assert report["splits"]["test"]["pairs"] == 5


def test_altered_shard_fails_on_its_sha256(dataset, tmp_path, capsys):
    """Records reordered: every CRC, count and field is still right; only the sha256 tells."""
    root = copy_dataset(dataset, tmp_path)
    relative = "train-0/pairs-00000-of-00002.tfrecord"
    path = os.path.join(root, relative)
    with open(path, "rb") as handle:
        records = list(read_records(handle))
    write_shard(path, records[::-1])

    code, report = run([root], tmp_path)
    out = capsys.readouterr().out

    assert code == 1
    assert [(e["kind"], e["file"]) for e in report["errors"]] == [("checksum_mismatch", relative)]
    assert "altered or damaged after it was written" in report["errors"][0]["message"]
    assert relative in out
    shard = next(s for s in report["splits"]["train-0"]["shards"] if s["file"] == relative)
    assert shard["pairs"] == 3 and shard["complete"] is True


def test_console_script_prints_no_library_noise(dataset):
    """The installed command prints its table and none of the TensorFlow / XLA / absl /
    FutureWarning lines its libraries print (tests/test_cli_quiet.py: --verbose brings them back)."""
    script = os.path.join(os.path.dirname(sys.executable), "ctdeblur-shard-stats")
    if not os.path.exists(script):
        pytest.skip(f"{script} is not installed (pip install -e . installs the console scripts)")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    noise = ("XLA", "absl", "FutureWarning", "cuda", "tensorflow/", "I0000", "TensorRT")
    result = subprocess.run([script, dataset, "--image_stride", "4"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "No problems found" in result.stdout and "train-1" in result.stdout
    assert [line for line in result.stderr.splitlines() if any(word in line for word in noise)] == []


def test_image_stride_measures_every_nth_record_and_counts_all(dataset, tmp_path, capsys):
    code, report = run([dataset, "--image_stride", "2"], tmp_path)

    assert code == 0
    assert "measured pairs" in capsys.readouterr().out
    for directory in LAYOUT:
        for shard in report["splits"][directory]["shards"]:
            pairs = decoded(os.path.join(dataset, shard["file"]))
            assert_numbers_equal(shard, expected_group(pairs, measured=pairs[::2]), shard["file"])


def test_html_report_embeds_images_and_grid_of_n_examples(dataset, tmp_path, capsys):
    html_path = str(tmp_path / "report.html")
    code = main([dataset, "--html", html_path, "--examples", "3", "--display_window_hu", "-160", "240"])
    out = capsys.readouterr().out

    assert code == 0
    assert f"HTML report: {html_path}" in out
    page = open(html_path, encoding="utf-8").read()
    assert page.count('<figure class="example">') == 3
    assert page.count('src="data:image/png;base64,') == 4 + 3
    assert "src=\"http" not in page and "<script" not in page
    assert "display window [-160, 240] HU" in page
    for caption in ("test/pairs-00000-of-00002.tfrecord record 0", "train-0/pairs-00000-of-00002.tfrecord record 1", "train-1/pairs-00000-of-00001.tfrecord record 1"):
        assert caption in page

    main([dataset, "--html", html_path, "--examples", "50"])
    assert open(html_path, encoding="utf-8").read().count('<figure class="example">') == 13


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "is not a directory"),
        (["{empty}"], "no shards found"),
        (["{dataset}", "--examples", "2"], "add --html FILE"),
        (["{dataset}", "--window_hu", "100", "-100"], "window_hu must be two integers LOW < HIGH"),
        (["{dataset}", "--json", "{missing}/out.json"], "does not exist"),
    ],
)
def test_usage_errors_exit_2_with_a_message(dataset, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    values = {"dataset": dataset, "missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty")}

    code = main([arg.format(**values) for arg in args])

    assert code == 2
    assert message in capsys.readouterr().err


def test_breathing_histograms_of_respiratory_pairs_and_none_for_other_blur_models(dataset, tmp_path, capsys):
    code, report = run([dataset], tmp_path)
    assert code == 0 and "breathing amplitude" not in capsys.readouterr().out
    assert report["totals"]["all"]["respiratory_si_amplitude_mm_histogram"] == {"bin_width": 1.0, "bins": []}
    assert report["totals"]["all"]["respiratory_period_s"]["count"] == 0

    root = copy_dataset(dataset, tmp_path)
    path = os.path.join(root, "train-1", shard_name(0, 1, "none"))
    breathing = [(7.5, 3.6), (12.25, 4.1)]
    records = []
    for pair, (amplitude, period) in zip(decoded(path), breathing, strict=True):
        values = dict.fromkeys(RESPIRATORY_PARAM_NAMES, 1.0) | {"si_amplitude_mm": amplitude, "period_s": period}
        cycles = {name: (0.5, 1.0) for name in RESPIRATORY_CYCLE_NAMES}
        records.append(encode_pair(dataclasses.replace(
            pair, blur_model="respiratory", source_kind="synthetic", psf=np.zeros((1, 1), np.float32),
            respiratory_geometry="fan", body_site="thorax", respiratory=values, respiratory_cycles=cycles)))
    write_shard(path, records)
    with open(os.path.join(root, MANIFEST_NAME), encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest["splits"]["train-1"]["shards"][0]["sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    with open(os.path.join(root, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)

    code, report = run([root, "--html", str(tmp_path / "report.html")], tmp_path)
    out = capsys.readouterr().out
    assert code == 0, out
    for group in (report["totals"]["all"], report["splits"]["train-1"]):
        assert group["blur_models"].get("respiratory") == 2
        assert group["respiratory_si_amplitude_mm_histogram"] == {"bin_width": 1.0, "bins": [[7.0, 1], [12.0, 1]]}
        assert group["respiratory_period_s_histogram"] == {"bin_width": 0.25, "bins": [[3.5, 1], [4.0, 1]]}
        assert group["respiratory_si_amplitude_mm"]["mean"] == pytest.approx(9.875)
        assert group["respiratory_period_s"]["max"] == pytest.approx(4.1, rel=1e-6)
    assert report["splits"]["test"]["respiratory_period_s_histogram"]["bins"] == []
    assert "breathing amplitude mm / period s" in out and "9.9 / 3.85" in out
    html = open(tmp_path / "report.html", encoding="utf-8").read()
    assert "fan beam, thorax, diaphragm 12.2 mm, period 4.1 s" in html or "fan beam, thorax, diaphragm 7.5 mm" in html
