"""A registered FB/DIBH pair's outputs: the pure `registered_pair` on given registration results,
and `RegisterPairFn` (reads the series, registers, stores the npz) on a `TestPipeline`."""

import dataclasses

import apache_beam as beam
import numpy as np
import pytest
import SimpleITK as sitk
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.archive_sources import (
    REJECTED,
    PairRow,
    RegisterPairFn,
    fb_slices_npz,
    fb_slices_of_npz,
    registered_pair,
)
from pipeline.archives.registration import RegistrationResult, read_ct_series, register_fb_to_dibh, series_volume
from pipeline.config import PRESETS, config_from_dict
from pipeline.pairs import to_int16_hu
from pipeline.phantom import phantom_series
from pipeline.planning import InputFile
from pipeline.sources import write_phantom_series
from tests.conftest import dicom_bytes
from tests.ct_files import enhanced_ct

TINY = config_from_dict(dict(PRESETS["tiny"]))
CONFIG = dataclasses.replace(TINY, registration=dataclasses.replace(TINY.registration, min_ncc=0.0))
"""The gate passes the shifted phantom (its slices differ more than a patient's would)."""
SLICES = 8
ACCEPTED = RegistrationResult(
    transform_kind="rigid", transform_parameters=(0.0,) * 6, transform_fixed_parameters=(0.0,) * 3,
    translation_mm=(1.234, 0.0, -2.5), rotation_deg=(0.0, 0.5, 0.0), metric_value=-0.5, ncc_body=0.9,
    body_overlap=0.95, usable_slices=(1, 2, 5), accepted=True, reason="")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A DIBH phantom series, the same series as FB, and a transform file shifting DIBH points
    two slices along z (so the FB scan misses the DIBH slices at one end)."""
    root = tmp_path_factory.mktemp("pair")
    paths = write_phantom_series(phantom_series(1, SLICES, 64, seed=0), str(root / "dibh"))
    series, hu = read_ct_series(paths)
    shift = sitk.TranslationTransform(3, (0.0, 0.0, 2.0 * float(np.median(series.slice_spacing_mm))))
    sitk.WriteTransform(shift, str(root / "shift.tfm"))
    row = PairRow("P1", str(root / "dibh"), str(root / "dibh"), str(root / "shift.tfm"))
    return row, series, hu, root


def test_accepted_pair_gives_usable_slices_and_their_fb_in_an_npz(pair):
    row, series, hu, _ = pair
    outcome = registered_pair(row, series, hu + 0.4, ACCEPTED, "fb-dibh", "work/p.npz")
    frames = series.frames
    assert outcome.files == tuple(InputFile(frames[z].source, "fb-dibh", "registered", "work/p.npz") for z in (1, 2, 5))
    assert [(r.path, r.reason, r.sop_instance_uid, r.slice_index, r.unselected, r.unit) for r in outcome.rejections] == [
        (frames[z].source, "outside_registered_fb", frames[z].sop_instance_uid, z, True, "file") for z in (0, 3, 4, 6, 7)]
    stored = fb_slices_of_npz(outcome.npz)
    assert list(stored) == [frames[z].sop_instance_uid for z in (1, 2, 5)]
    for z in (1, 2, 5):
        np.testing.assert_array_equal(stored[frames[z].sop_instance_uid], to_int16_hu(hu[z] + 0.4))


def test_fb_slices_npz_round_trips():
    fb_hu = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    stored = fb_slices_of_npz(fb_slices_npz(["1.2.3", "1.2.4"], fb_hu))
    assert list(stored) == ["1.2.3", "1.2.4"] and stored["1.2.4"].dtype == np.int16
    np.testing.assert_array_equal(stored["1.2.4"], fb_hu[1])


def test_rejected_pair_is_one_series_rejection_with_the_gate_reason_and_summary(pair):
    row, series, hu, _ = pair
    rejected = dataclasses.replace(ACCEPTED, accepted=False, reason="low_ncc 0.42 < 0.70", ncc_body=0.42)
    outcome = registered_pair(row, series, hu, rejected, "fb-dibh", "work/p.npz")
    assert outcome.files == () and outcome.npz is None
    (rejection,) = outcome.rejections
    assert (rejection.path, rejection.reason, rejection.stage, rejection.unit) == (
        row.dibh_series, "registration_rejected", "register", "series")
    assert rejection.detail == (f"pair P1: FB {row.fb_series} -> DIBH {row.dibh_series}: low_ncc 0.42 < 0.70; "
                                "NCC inside body 0.420, body overlap 0.95, translation [1.23, 0.0, -2.5] mm, "
                                "rotation [0.0, 0.5, 0.0] deg")


def test_multiframe_dibh_is_rejected_whatever_the_registration(tmp_path):
    path = tmp_path / "enhanced.dcm"
    path.write_bytes(dicom_bytes(enhanced_ct(2, 3)))
    series, hu = read_ct_series([str(path)])
    row = PairRow("P2", "fb", str(tmp_path))
    outcome = registered_pair(row, series, hu, ACCEPTED, "fb-dibh", "work/p.npz")
    assert outcome.files == () and outcome.npz is None
    assert [(r.reason, r.unit) for r in outcome.rejections] == [("multiframe_dibh", "series")]


def test_register_pair_fn_gives_what_registered_pair_gives_and_stores_the_npz(pair, tmp_path):
    row, series, hu, root = pair
    fb_hu, result = register_fb_to_dibh(series_volume(series, hu), series_volume(series, hu), CONFIG.registration,
                                        row.transform)
    volume_path = str(tmp_path / f"{row.pair_id}.npz")
    expected = registered_pair(row, series, fb_hu, result, CONFIG.registered_collection, volume_path)
    assert expected.files and expected.rejections, "the shift should leave slices on both sides of the gate"
    missing = PairRow("P3", str(root / "nowhere"), str(root / "dibh"))
    with TestPipeline() as pipeline:
        outputs = (pipeline | beam.Create([row, missing])
                   | beam.ParDo(RegisterPairFn(CONFIG, str(tmp_path))).with_outputs(REJECTED, main="files"))
        assert_that(outputs.files, equal_to(list(expected.files)))
        reasons = outputs[REJECTED] | beam.Map(lambda r: (r.path, r.reason, r.slice_index, r.unit))
        assert_that(reasons, equal_to([(r.path, r.reason, r.slice_index, r.unit) for r in expected.rejections]
                                      + [(row.dibh_series, "unreadable_pair", -1, "series")]), label="rejections")
    assert open(volume_path, "rb").read() == expected.npz
