"""Pure pieces of the shard statistics: metrics against closed forms and reference libraries,
summaries, checks and the config."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from pipeline.stats.config import (
    PRESETS,
    StatsConfig,
    add_config_flags,
    config_from_args,
    config_from_dict,
)
from pipeline.stats.metrics import (
    HU_BINS,
    HU_OFFSET,
    describe,
    gaussian_window,
    hu_histogram,
    pair_ssim,
    percentiles_from_histogram,
    psf_extent_px,
    psnr_db,
    rebin_histogram,
    squared_error_sum,
)
from pipeline.stats.summary import COLUMNS, Measurements
from pipeline.stats.validate import find_leakage


def _histogram(values: np.ndarray) -> np.ndarray:
    return np.bincount(values.astype(np.int64) + HU_OFFSET, minlength=HU_BINS)


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_percentiles_from_histogram_equal_numpy(size):
    rng = np.random.default_rng(size)
    values = rng.integers(-1024, 3072, size).astype(np.int16)
    values[: size // 3] = -1000
    q = [0, 0.5, 1, 5, 25, 33.3, 50, 66.7, 95, 99, 99.9, 100]

    np.testing.assert_array_equal(percentiles_from_histogram(_histogram(values), q), np.percentile(values, q))


def test_percentiles_of_empty_histogram_are_nan():
    assert np.isnan(percentiles_from_histogram(np.zeros(HU_BINS, np.int64), [50])).all()


def test_hu_histogram_counts_every_int16_value():
    values = np.array([[-32768, -1000, -1000], [0, 3071, 32767]], np.int16)

    histogram = hu_histogram(values)

    assert histogram.shape == (HU_BINS,) and histogram.sum() == 6
    assert histogram[0] == 1 and histogram[-1] == 1
    assert histogram[HU_OFFSET - 1000] == 2 and histogram[HU_OFFSET + 3071] == 1
    values = np.random.default_rng(0).integers(-32768, 32768, (37, 41)).astype(np.int16)
    np.testing.assert_array_equal(hu_histogram(values), _histogram(values.ravel()))


def _clipped(image: np.ndarray, window) -> np.ndarray:
    return np.clip(image.astype(np.float64), *window) - window[0]


@pytest.mark.parametrize("shape", [(11, 11), (12, 40), (64, 48), (37, 83)])
@pytest.mark.parametrize("window", [(-1000, 1000), (-1024, 3071)])
def test_ssim_equals_scikit_image_gaussian_ssim(shape, window):
    rng = np.random.default_rng(shape[0] * shape[1])
    sharp = rng.integers(-1100, 2500, shape).astype(np.int16)
    blurry = (gaussian_filter(sharp.astype(np.float64), 1.2) + rng.normal(0, 20, shape)).astype(np.int16)
    expected = structural_similarity(
        _clipped(sharp, window),
        _clipped(blurry, window),
        data_range=window[1] - window[0],
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )

    assert float(pair_ssim(tf.constant(sharp), tf.constant(blurry), window)) == pytest.approx(expected, abs=2e-6)


def test_ssim_of_identical_images_is_one_and_of_too_small_images_nan():
    image = np.random.default_rng(0).integers(-1000, 1000, (20, 30)).astype(np.int16)

    assert float(pair_ssim(image, image, (-1000, 1000))) == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(float(pair_ssim(image[:10], image[:10], (-1000, 1000))))


def test_gaussian_window_is_normalised_and_symmetric():
    taps = gaussian_window(11, 1.5)

    assert taps.shape == (11,) and taps.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(taps, taps[::-1])
    assert taps[5] == taps.max()


def test_squared_error_sum_is_exact_inside_the_window_and_psnr_closed_form():
    sharp = np.array([[-2000, -1000, 0], [500, 1000, 3000]], np.int16)
    blurry = np.array([[-1000, -900, 10], [500, 1500, -3000]], np.int16)

    sse = int(squared_error_sum(sharp, blurry, (-1000, 1000)))

    assert sse == 0 + 100**2 + 10**2 + 0 + 0 + 2000**2
    assert psnr_db(np.array([sse]), np.array([6]), 2000)[0] == pytest.approx(10 * np.log10(2000**2 * 6 / sse))
    assert np.isposinf(psnr_db(np.array([0]), np.array([6]), 2000)[0])


@pytest.mark.parametrize(
    "psf, extent",
    [
        (np.zeros((1, 1)), 0),
        (np.ones((1, 1)), 1),
        (np.pad(np.ones((1, 5)), ((3, 4), (2, 1))), 5),
        (np.pad(np.eye(4), ((0, 3), (3, 0))), 4),
        (np.pad(np.ones((6, 2)), ((1, 2), (4, 3))), 6),
    ],
)
def test_psf_extent_is_the_longer_side_of_the_support(psf, extent):
    assert int(psf_extent_px(tf.constant(psf, tf.float32))) == extent


def test_describe_ignores_non_finite_values():
    assert describe(np.array([1.0, 3.0, np.inf, np.nan])) == {"count": 2, "mean": 2.0, "std": 1.0, "min": 1.0, "p50": 2.0, "max": 3.0}
    assert describe(np.array([]))["mean"] is None


def test_rebin_histogram_keeps_every_count_and_clips_to_edge_bins():
    values = np.array([-3000, -1024, -1009, 0, 15, 16, 3071, 5000])

    counts, edges = rebin_histogram(_histogram(values), (-1024, 3071), 16)

    assert counts.sum() == values.size and len(edges) == len(counts) + 1 == 257
    assert counts[0] == 3 and counts[-1] == 2 and counts[64] == 2 and counts[65] == 1


def _measurements(patients: list[str]) -> Measurements:
    """A table of one kernel-blurred pair per entry of `patients` (other columns constant)."""
    constant = {
        "series_uid": "s", "collection": "c", "source_kind": "synthetic", "split": "train", "subdataset": 0,
        "height": 16, "width": 16, "psf_extent_px": 3, "trajectory_length_px": 2.0, "squared_error_sum": 0,
        "ssim": 1.0, "image_measured": True, "blur_model": "kernel", "translation_extent_mm": 0.0,
        "rotation_extent_deg": 0.0, "si_amplitude_mm": 0.0, "period_s": 0.0,
    }
    rows = {name: [constant[name]] * len(patients) for name in constant}
    rows.update(record_index=list(range(len(patients))), patient_key=patients)
    assert set(rows) == set(COLUMNS)
    return Measurements.from_rows(rows, np.zeros(HU_BINS), np.zeros(HU_BINS))


def test_leakage_lists_test_patients_found_in_any_train_subdataset():
    leakage = find_leakage(
        {"test": _measurements(["a", "b", "c"]), "train-0": _measurements(["c", "d"]), "train-1": _measurements(["a", "c"])}
    )

    assert leakage.patient_keys == ("a", "c")
    assert leakage.by_subdataset == {"train-0": 1, "train-1": 2}


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return parser.parse_args(argv)


def test_config_precedence_preset_then_yaml_then_flags(tmp_path):
    yaml_path = tmp_path / "stats.yaml"
    yaml_path.write_text("window_hu: [-160, 240]\nexamples: 3\nhu_percentiles: [10, 90]\n")

    config = config_from_args(_args(["--preset", "full-range", "--config", str(yaml_path), "--examples", "5"]))

    assert config.window_hu == (-160, 240) and config.data_range == 400
    assert config.examples == 5 and config.hu_percentiles == (10.0, 90.0)
    assert config_from_args(_args(["--preset", "full-range"])).window_hu == (-1024, 3071)
    assert config_from_args(_args([])) == StatsConfig() == config_from_dict(PRESETS["paper"])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"window_size": 3}, "unknown setting 'window_size'"),
        ({"window_hu": (1000, -1000)}, "window_hu must be two integers LOW < HIGH"),
        ({"ssim_filter_size": 10}, "positive odd"),
        ({"hu_percentiles": (50, 101)}, "hu_percentiles must be values in [0, 100]"),
        ({"image_stride": 0}, "image_stride=0 is out of range"),
    ],
)
def test_bad_settings_are_refused_with_their_name(values, message):
    with pytest.raises(ValueError) as error:
        config_from_dict(values, "test.yaml")
    assert message in str(error.value) and "test.yaml" in str(error.value)
