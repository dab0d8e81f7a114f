"""Evaluation maths: numpy PSNR/SSIM against scikit-image and the trainer's tf metrics, masked
metrics, the body mask, and the summaries (mean, Student-t CI, +inf and n/a handling)."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from model import metrics
from model.evaluation_report import markdown_table, mean_ci, summarise, table_notes
from pipeline.config import MotionConfig
from pipeline.kernels import (
    blur_hu,
    motion_psf,
    motion_trajectory,
    sample_motion_params,
)
from pipeline.phantom import phantom_hu, phantom_series

WINDOWS = [metrics.DEFAULT_WINDOW_HU, metrics.FULL_RANGE_WINDOW_HU]


def ct_pair(patient: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(sharp, blurry) int16 HU of a phantom slice (head, thorax or abdomen) and its motion blur."""
    sharp = np.rint(phantom_hu(phantom_series(patient, 6, size, seed=3), 3)).astype(np.int16)
    rng = np.random.default_rng(patient)
    params = sample_motion_params(rng, MotionConfig(samples=300, length_px_min=6, length_px_max=10, psf_max_size=17))
    psf, _ = motion_psf(motion_trajectory(params), params.exposure, 17)
    blurry = np.rint(blur_hu(sharp.astype(np.float32), psf) + rng.normal(0, 5, sharp.shape)).astype(np.int16)
    return sharp, blurry


@pytest.fixture(scope="module")
def pairs():
    return [ct_pair(patient) for patient in range(3)]


def skimage_scores(restored, sharp, window):
    low, high = window
    x = np.clip(restored.astype(np.float64), low, high) - low
    y = np.clip(sharp.astype(np.float64), low, high) - low
    ssim = structural_similarity(x, y, data_range=high - low, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    return peak_signal_noise_ratio(y, x, data_range=high - low), ssim


@pytest.mark.parametrize("window", WINDOWS)
def test_psnr_and_ssim_agree_with_scikit_image_on_ct_images(pairs, window):
    for sharp, blurry in pairs:
        expected_psnr, expected_ssim = skimage_scores(blurry, sharp, window)
        assert metrics.psnr(blurry, sharp, window) == pytest.approx(expected_psnr, abs=1e-3)
        assert metrics.ssim(blurry, sharp, window) == pytest.approx(expected_ssim, abs=1e-3)
        assert 15 < expected_psnr < 60 and 0.3 < expected_ssim < 0.999


@pytest.mark.parametrize("window", WINDOWS)
def test_numpy_metrics_agree_with_the_trainers_tf_metrics(pairs, window):
    sharp, blurry = pairs[1]

    def as_tensor(hu):
        return tf.constant(hu[np.newaxis, ..., np.newaxis], tf.float32)

    assert metrics.psnr(blurry, sharp, window) == pytest.approx(
        float(metrics.psnr_hu(as_tensor(blurry), as_tensor(sharp), window)[0]), abs=1e-3)
    assert metrics.ssim(blurry, sharp, window) == pytest.approx(
        float(metrics.ssim_hu(as_tensor(blurry), as_tensor(sharp), window)[0]), abs=1e-4)


def test_identical_images_have_infinite_psnr_and_ssim_one(pairs):
    sharp, _ = pairs[0]
    mask = metrics.body_mask(sharp)
    assert metrics.psnr(sharp, sharp) == math.inf
    assert metrics.psnr(sharp, sharp, mask=mask) == math.inf
    assert metrics.ssim(sharp, sharp) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(sharp, sharp, mask=mask) == pytest.approx(1.0, abs=1e-12)
    assert metrics.psnr_from_mse(0.0, 2000.0) == math.inf


def test_windowing_clips_and_shifts_so_values_outside_the_window_do_not_count():
    sharp = np.full((16, 16), -1024, np.int16)
    darker = np.full((16, 16), -3000, np.int16)
    assert metrics.psnr(darker, sharp) == math.inf
    np.testing.assert_array_equal(metrics.windowed_hu(np.array([[-2000, 0, 2500]]), (-1000, 1000)), [[0, 1000, 2000]])
    with pytest.raises(ValueError, match="low < high"):
        metrics.psnr(sharp, sharp, (100, 100))


def test_masked_metrics_average_over_the_mask_pixels(pairs):
    sharp, blurry = pairs[2]
    everything = np.ones(sharp.shape, bool)
    assert metrics.psnr(blurry, sharp, mask=everything) == metrics.psnr(blurry, sharp)
    assert metrics.ssim(blurry, sharp, mask=everything) == pytest.approx(metrics.ssim(blurry, sharp), abs=1e-12)

    mask = metrics.body_mask(sharp)
    error = (metrics.windowed_hu(blurry, metrics.DEFAULT_WINDOW_HU) - metrics.windowed_hu(sharp, metrics.DEFAULT_WINDOW_HU)) ** 2
    assert metrics.psnr(blurry, sharp, mask=mask) == pytest.approx(10 * math.log10(2000.0**2 / error[mask].mean()), abs=1e-9)
    local = metrics.ssim_map(blurry, sharp)
    assert local.shape == (sharp.shape[0] - 10, sharp.shape[1] - 10)
    assert metrics.ssim(blurry, sharp, mask=mask) == pytest.approx(local[mask[5:-5, 5:-5]].mean(), abs=1e-12)
    assert math.isnan(metrics.psnr(blurry, sharp, mask=np.zeros(sharp.shape, bool)))
    assert math.isnan(metrics.ssim(blurry, sharp, mask=np.zeros(sharp.shape, bool)))


def test_body_mask_fills_lungs_and_drops_the_table_and_specks():
    yy, xx = np.mgrid[:120, :160]
    hu = np.full((120, 160), -1000, np.int16)
    trunk = ((yy - 50) / 40.0) ** 2 + ((xx - 80) / 60.0) ** 2 < 1
    lung = ((yy - 50) / 20.0) ** 2 + ((xx - 55) / 15.0) ** 2 < 1
    hu[trunk] = 40
    hu[lung] = -850
    hu[100:104, 10:150] = 150
    hu[5:7, 5:7] = 300
    mask = metrics.body_mask(hu)
    np.testing.assert_array_equal(mask, trunk)

    legs = np.full((60, 100), -1000, np.int16)
    legs[10:50, 10:40] = 30
    legs[10:50, 55:88] = 30
    assert metrics.body_mask(legs).sum() == 40 * 30 + 40 * 33
    assert not metrics.body_mask(np.full((32, 32), -1024, np.int16)).any()


def test_ssim_needs_an_11_pixel_window():
    with pytest.raises(ValueError, match="at least 11 x 11"):
        metrics.ssim(np.zeros((10, 40)), np.zeros((10, 40)))


def test_summary_leaves_infinite_psnr_out_of_the_mean_and_counts_it():
    summary = summarise([30.0, 32.0, math.inf, math.nan, 34.0])
    assert summary.mean == pytest.approx(32.0)
    assert (summary.n, summary.n_infinite, summary.n_na) == (4, 1, 1)
    half = stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)
    assert summary.ci == pytest.approx((32.0 - half, 32.0 + half))

    nothing = summarise([math.nan, math.nan])
    assert (nothing.mean, nothing.ci, nothing.n, nothing.n_na) == (None, None, 0, 2)
    assert mean_ci([5.0]) == (5.0, None)


def test_mean_ci_is_the_student_t_interval():
    values = [1.0, 2.0, 3.0, 4.0]
    mean, (low, high) = mean_ci(values)
    assert mean == 2.5
    assert (high - low) / 2 == pytest.approx(3.182446305 * np.std(values, ddof=1) / 2, rel=1e-6)


def test_table_marks_infinite_and_not_applicable_pairs():
    result = {
        "blurry": {"psnr": summarise([30.0, math.inf]), "ssim": summarise([0.9, 1.0])},
        "rl_oracle": {"psnr": summarise([35.0, math.nan]), "ssim": summarise([0.95, math.nan]),
                      "psnr_gain": summarise([5.0])},
    }
    table = markdown_table(result, ["blurry", "rl_oracle"])
    assert "| PSNR (dB) | 30.00 | 35.00 |" in table
    assert "| pairs | 2 (1 ∞) | 1 (1 n/a) |" in table
    assert "| ΔPSNR vs blurry (dB) | — | +5.00 |" in table
    notes = " ".join(table_notes(result))
    assert "n/a" in notes and "PSNR +inf" in notes
