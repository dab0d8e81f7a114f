"""`--blur_model respiratory` through the pipeline: planning of the breathing context (pure
functions), then tiny end-to-end runs (64 x 64 phantom series of 20 slices, 7.4 mm apart in the
head, 14.7 in the thorax and 18.9 in the abdomen, 90 views, diaphragm motion at most 8 mm, noise
model off so a still slice gives blurry == sharp bytes)."""

import json
import os

import numpy as np
import pytest

from pipeline.config import config_from_dict
from pipeline.hashing import derive_rng
from pipeline.make_dataset import run
from pipeline.phantom import phantom_dataset, phantom_series
from pipeline.planning import InputFile, assemble_series, breathing_rejections, series_breathing
from pipeline.respiratory import body_site_of, sample_breathing, trace_duration_s
from pipeline.slice_scan import SliceHeader
from tests.conftest import dicom_bytes
from tfrecords_schema import DEAD_LETTER_NAME
from tests.test_pipeline_e2e import read_split, shard_bytes

SMALL = ["--preset", "tiny", "--phantom_patients", "3", "--phantom_slices", "20", "--phantom_size", "64",
         "--target_pairs", "6", "--test_pairs", "2", "--subdatasets", "1", "--pairs_per_shard", "2",
         "--noise_ct_hu", "0", "--no-noise_match_archive", "--blur_model", "respiratory",
         "--respiratory_si_amplitude_mm_max", "8"]
STILL = ["--respiratory_si_amplitude_mm_min", "0", "--respiratory_si_amplitude_mm_max", "0",
         "--respiratory_ap_amplitude_mm_min", "0", "--respiratory_ap_amplitude_mm_max", "0",
         "--respiratory_drift_mm_per_min_max", "0"]


def series_of(positions, body_part="", air=0.3):
    members = [(InputFile(f"f{i}", "c"), SliceHeader(f"f{i}", "S1", f"1.{i}", "P1", 64, 64, (1.0, 1.0), 3.0, position,
                                                     i + 1, 0.5, None, position, body_part, air))
               for i, position in enumerate(positions)]
    series, _ = assemble_series("S1", members, 0.1)
    return series


def test_unusable_series_are_rejected_with_a_reason_for_every_eligible_slice():
    config = config_from_dict({"blur_model": "respiratory", "respiratory": {"si_amplitude_mm_max": 8.0}})
    assert breathing_rejections(series_of([3.0 * i for i in range(20)]), config) == []
    gap = breathing_rejections(series_of([3.0 * i for i in range(20) if i != 9]), config)
    assert len(gap) == 19 and {r.reason for r in gap} == {"breathing_irregular_volume"}
    assert "not uniform" in gap[0].detail and gap[0].stage == "series" and not gap[0].unselected
    short = breathing_rejections(series_of([3.0 * i for i in range(8)]), config)
    assert len(short) == 8 and {r.reason for r in short} == {"breathing_too_few_slices"}
    unplaced = breathing_rejections(series_of([None] * 20), config)
    assert {r.reason for r in unplaced} == {"breathing_irregular_volume"}


def test_series_breathing_gives_each_slice_its_slab_start_time_and_the_series_anatomy():
    config = config_from_dict({"blur_model": "respiratory", "respiratory": {"si_amplitude_mm_max": 8.0}})
    contexts = series_breathing(series_of([3.0 * i for i in range(20)], "CHEST"), config)
    trace = sample_breathing(derive_rng(0, "breathing", "S1"), config.respiratory, 20 * 0.5)
    assert all(c.trace == trace and c.anatomy.body_site == "thorax" for c in contexts)
    assert not contexts[0].anatomy.head_first  # positions rise towards the head: slice 0 is the lowest
    assert [c.start_s for c in contexts[:3]] == [9.5, 9.0, 8.5]  # scanned head to feet, 0.5 s per rotation
    middle = contexts[10]
    assert middle.slab[10 - middle.first_slice].sop_instance_uid == "1.10"
    assert len(middle.slab) == 2 * (10 - middle.first_slice) + 1 and contexts[0].first_slice == 0
    cone = config_from_dict({"blur_model": "respiratory", "respiratory": {"geometry": "cone"}})
    assert {c.start_s for c in series_breathing(series_of([3.0 * i for i in range(40)]), cone)} == {0.0}
    assert trace_duration_s(cone.respiratory, 40) == 60.0


def test_body_site_from_dicom_else_from_the_lungs():
    abdomen_mm2, head_mm2 = [45000.0, 52000.0], [21000.0, 24000.0]
    assert body_site_of("CHEST", [0.0], head_mm2) == "thorax" and body_site_of("Abdomen/Pelvis", [0.5], head_mm2) == "abdomen"
    assert body_site_of("HEAD", [0.0], abdomen_mm2) == body_site_of("BRAIN", [0.0], abdomen_mm2) == "head"
    assert body_site_of("", [0.02, 0.4], head_mm2) == "thorax" and body_site_of("", [0.02, 0.05], abdomen_mm2) == "abdomen"
    assert body_site_of("", [0.0, 0.01], head_mm2) == "head"


@pytest.fixture(scope="module")
def fan_run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("fan") / "ds")
    return output, run(SMALL + ["--source", "phantom", "--geometry", "fan", "--output", output])


def all_pairs(output, manifest):
    return [p for split in manifest["splits"] for p in read_split(output, split)]


def test_fan_beam_pairs_decode_with_their_breathing_recorded(fan_run):
    output, manifest = fan_run
    assert manifest["written"]["pairs"] == 6 and manifest["accounting"]["balanced"]
    assert manifest["config"]["respiratory"]["geometry"] == "fan" and not manifest["rejected"].get("breathing_too_few_slices")
    pairs = all_pairs(output, manifest)
    assert {p.schema_version for p in pairs} == {4} and {p.blur_model for p in pairs} == {"respiratory"}
    assert {p.respiratory_geometry for p in pairs} == {"fan"} and {p.body_site for p in pairs} == {"head", "thorax", "abdomen"}
    config = config_from_dict({"respiratory": {"si_amplitude_mm_max": 8.0}}).respiratory
    for pair in pairs:
        breathing = pair.respiratory
        trace = sample_breathing(derive_rng(0, "breathing", pair.series_uid), config, 20 * 0.5)
        assert breathing["si_amplitude_mm"] == pytest.approx(trace.si_amplitude_mm, rel=1e-6)
        assert breathing["period_s"] == pytest.approx(trace.period_s, rel=1e-6)
        assert pair.respiratory_cycles["cycle_periods_s"] == pytest.approx(trace.cycle_periods_s, rel=1e-6)
        assert 5.0 <= breathing["si_amplitude_mm"] <= 8.0 and 3.0 <= breathing["period_s"] <= 5.0
        assert breathing["scan_s"] == 0.5 and breathing["views"] == 90 and breathing["trace_duration_s"] == 10.0
        assert breathing["start_s"] == pytest.approx(0.5 * (19 - pair.slice_index))
        if pair.body_site == "head":
            assert breathing["slice_motion_mm"] == 0 and np.array_equal(pair.blurry_hu, pair.sharp_hu)
    moved = sorted((p for p in pairs if p.respiratory["slice_motion_mm"] > 0.5), key=lambda p: p.respiratory["slice_motion_mm"])
    assert moved and all(np.abs(p.blurry_hu.astype(int) - p.sharp_hu).max() > 5 for p in moved)
    assert moved[-1].respiratory["slice_motion_mm"] > 2 and np.abs(moved[-1].blurry_hu.astype(int) - moved[-1].sharp_hu).max() > 30


def test_cone_beam_shards_are_byte_identical_with_one_or_two_workers(fan_run, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    manifest = run(SMALL + ["--source", "phantom", "--geometry", "cone", "--output", one, "--direct_num_workers", "1"])
    run(SMALL + ["--source", "phantom", "--respiratory_geometry", "cone", "--output", two, "--direct_num_workers", "2",
                 "--direct_running_mode", "multi_processing", "--phantom_dir", one + "/phantom_dicom_copy"])
    assert shard_bytes(one) == shard_bytes(two) != shard_bytes(fan_run[0])
    pairs = all_pairs(one, manifest)
    assert {p.respiratory_geometry for p in pairs} == {"cone"} and {p.respiratory["start_s"] for p in pairs} == {0.0}
    assert {p.respiratory["scan_s"] for p in pairs} == {60.0}


def test_no_motion_gives_identical_images_and_an_irregular_series_goes_to_the_dead_letter(tmp_path):
    source = tmp_path / "dicom"
    for patient in range(4):
        series = phantom_series(patient, 20, 64, seed=0)
        for index in range(series.slices):
            if patient == 3 and index == 9:
                continue
            path = source / f"p{patient}" / f"{index:02d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(dicom_bytes(phantom_dataset(series, index)))
    output = str(tmp_path / "ds")
    manifest = run(SMALL + STILL + ["--source", "dicom-dir", "--input", str(source), "--output", output])
    pairs = all_pairs(output, manifest)
    assert len(pairs) == 6 and all(np.array_equal(p.blurry_hu, p.sharp_hu) for p in pairs)
    assert {p.body_site for p in pairs} == {"head", "thorax", "abdomen"}
    with open(os.path.join(output, DEAD_LETTER_NAME)) as handle:
        dead = [json.loads(line) for line in handle]
    assert {d["reason"] for d in dead} == {"breathing_irregular_volume"} and len(dead) >= 10
    assert {d["series_uid"] for d in dead} == {phantom_series(3, 20, 64, seed=0).uid("series")}
    assert manifest["rejected"]["breathing_irregular_volume"] == len(dead) and manifest["accounting"]["balanced"]
    assert manifest["counters"]["rejected_breathing_irregular_volume"] == len(dead)
