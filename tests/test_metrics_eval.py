"""Evaluation maths: numpy PSNR/SSIM against scikit-image and the trainer's tf metrics, masked
metrics, the body mask, and the summaries (mean, patient-clustered bootstrap CI, +inf and n/a
handling, paired gains)."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from model import metrics
from model.evaluation_protocol import CI_METHOD
from model.evaluation_report import (
    ClusteredBootstrap,
    aggregate,
    markdown_table,
    summarise,
    table_notes,
)
from pipeline.kernels import (
    MotionConfig,
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
    summary = summarise([30.0, 32.0, math.inf, math.nan, 34.0], ["a", "b", "c", "d", "e"])
    assert summary.mean == pytest.approx(32.0)
    assert (summary.n, summary.n_infinite, summary.n_na, summary.patients) == (4, 1, 1, 3)
    assert summary.ci == ClusteredBootstrap().interval([30.0, 32.0, 34.0], ["a", "b", "e"])
    assert 30.0 <= summary.ci[0] < 32.0 < summary.ci[1] <= 34.0

    nothing = summarise([math.nan, math.nan], ["a", "b"])
    assert (nothing.mean, nothing.ci, nothing.n, nothing.n_na, nothing.patients) == (None, None, 0, 2, 0)


def clustered_values(patients: int = 4, pairs: int = 10) -> tuple[np.ndarray, list[str]]:
    """Pairs whose values are their patient's level (30, 32, 34, ...) plus a little noise: strongly
    correlated within a patient, as CT slices of one scan are."""
    rng = np.random.default_rng(7)
    values = np.concatenate([30.0 + 2.0 * p + rng.normal(0.0, 0.1, pairs) for p in range(patients)])
    return values, [f"patient{p}" for p in range(patients) for _ in range(pairs)]


def test_clustered_interval_is_wider_than_the_pair_level_one():
    values, patients = clustered_values()
    low, high = ClusteredBootstrap().interval(values, patients)
    t_half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    assert t_half == pytest.approx(0.72, abs=0.02)
    assert high - low > 2.5 * (2 * t_half)
    assert 29.5 < low < values.mean() - 1.0 and values.mean() + 1.0 < high < 36.5
    pair_level_low, pair_level_high = ClusteredBootstrap().interval(values, [f"pair{i}" for i in range(values.size)])
    assert (pair_level_high - pair_level_low) == pytest.approx(2 * t_half, rel=0.1)


def test_two_patients_take_all_their_pairs_and_span_the_two_patients_means():
    bootstrap = ClusteredBootstrap()
    means = bootstrap.resample_means([0.0, 4.0, 4.0, 4.0], ["a", "b", "b", "b"])
    assert means.shape == (2000,)
    levels, counts = np.unique(np.round(means, 9), return_counts=True)
    np.testing.assert_array_equal(levels, [0.0, 3.0, 4.0])
    np.testing.assert_allclose(counts / means.size, [0.25, 0.5, 0.25], atol=0.04)
    summary = summarise([0.0, 4.0, 4.0, 4.0], ["a", "b", "b", "b"])
    assert summary.mean == 3.0 and summary.ci == (0.0, 4.0) and summary.patients == 2


def test_bootstrap_is_reproducible_and_ignores_the_rows_order():
    values, patients = clustered_values(patients=6, pairs=3)
    first = ClusteredBootstrap(resamples=500, seed=3).interval(values, patients)
    assert ClusteredBootstrap(resamples=500, seed=3).interval(values, patients) == first
    order = np.random.default_rng(0).permutation(values.size)
    shuffled = ClusteredBootstrap(resamples=500, seed=3).interval(values[order], [patients[i] for i in order])
    assert shuffled == pytest.approx(first, abs=1e-12)
    assert ClusteredBootstrap(resamples=500, seed=4).interval(values, patients) != first


def test_a_single_patient_has_no_interval():
    summary = summarise([30.0, 31.0, 35.0], ["p"] * 3)
    assert (summary.mean, summary.ci, summary.n, summary.patients) == (32.0, None, 3, 1)
    assert summary.to_json() == {"mean": 32.0, "ci95": None, "ci_method": CI_METHOD, "patients": 1, "n": 3,
                                 "n_infinite": 0, "n_na": 0}
    result = {"blurry": {"psnr": summary, "ssim": summarise([0.9, 0.8, 0.7], ["p"] * 3)}}
    table = markdown_table(result, ["blurry"])
    assert "| PSNR (dB) | 32.00 (CI n/a: 1 patient) |" in table and "| patients | 1 |" in table
    assert any("single patient" in note for note in table_notes(result))


def score_rows(values: dict[str, list[tuple[float, float]]], patients: list[str]) -> list[dict]:
    """Evaluation rows (main window, full field only) of {method: [(psnr, ssim) per pair]}."""
    return [{"pair_index": i, "patient_key": patients[i], "method": method, "psnr_db": psnr, "ssim": ssim}
            for method, scores in values.items() for i, (psnr, ssim) in enumerate(scores)]


def test_gains_are_per_pair_differences_with_a_patient_clustered_interval():
    patients = ["a", "a", "b", "b"]
    rows = score_rows({"blurry": [(30.0, 0.80), (32.0, 0.90), (34.0, 0.70), (math.inf, 1.00)],
                       "ours": [(31.0, 0.85), (34.0, 0.92), (35.0, 0.70), (40.0, 0.96)]}, patients)
    result = aggregate(rows, ["blurry", "ours"], "window", "full")
    assert set(result["blurry"]) == {"psnr", "ssim"}
    ssim_gain = result["ours"]["ssim_gain"]
    assert ssim_gain.mean == pytest.approx((0.05 + 0.02 + 0.0 - 0.04) / 4)
    assert ssim_gain.ci == pytest.approx((-0.02, 0.035)) and (ssim_gain.n, ssim_gain.patients) == (4, 2)
    psnr_gain = result["ours"]["psnr_gain"]
    assert psnr_gain.mean == pytest.approx(4.0 / 3)
    assert psnr_gain.ci == pytest.approx((1.0, 1.5)) and (psnr_gain.n, psnr_gain.n_na, psnr_gain.patients) == (3, 1, 2)
    table = markdown_table(result, ["blurry", "ours"])
    assert "| ΔSSIM vs blurry | — | +0.0075 [-0.0200, +0.0350] |" in table
    assert "| ΔPSNR vs blurry (dB) | — | +1.33 [+1.00, +1.50] |" in table


def test_table_marks_infinite_and_not_applicable_pairs():
    result = {
        "blurry": {"psnr": summarise([30.0, 32.0, math.inf], ["a", "b", "b"]),
                   "ssim": summarise([0.9, 0.8, 1.0], ["a", "b", "b"])},
        "rl_oracle": {"psnr": summarise([35.0, math.nan, 37.0], ["a", "b", "b"]),
                      "ssim": summarise([0.95, math.nan, 0.97], ["a", "b", "b"]),
                      "psnr_gain": summarise([5.0], ["a"]), "ssim_gain": summarise([0.05], ["a"])},
    }
    table = markdown_table(result, ["blurry", "rl_oracle"])
    assert "| PSNR (dB) | 31.00 [30.00, 32.00] | 36.00 [35.00, 37.00] |" in table
    assert "| pairs | 3 (1 ∞) | 2 (1 n/a) |" in table
    assert "| patients | 2 | 2 |" in table
    assert "| ΔPSNR vs blurry (dB) | — | +5.00 (CI n/a: 1 patient) |" in table
    notes = " ".join(table_notes(result))
    assert "n/a" in notes and "PSNR +inf" in notes and "single patient" in notes
