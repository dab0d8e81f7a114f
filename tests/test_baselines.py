"""Wiener and Richardson-Lucy with the true PSF: the pipeline's blur operator and its adjoint,
improvement over blurry on CT phantom pairs, closed-form cases and the choice of settings."""

import numpy as np
import pytest
from scipy import ndimage

from model import baselines, metrics
from pipeline.kernels import (
    MotionConfig,
    blur_hu,
    motion_psf,
    motion_trajectory,
    sample_motion_params,
)
from pipeline.pairs import NO_PSF, to_int16_hu
from pipeline.phantom import phantom_hu, phantom_series


def kernel_pair(patient: int, size: int = 96, length_px: float = 12.0):
    """(blurry, sharp, psf): a phantom slice blurred exactly as the pipeline blurs (int16 HU)."""
    sharp = to_int16_hu(phantom_hu(phantom_series(patient, 6, size, seed=5), 2))
    params = sample_motion_params(np.random.default_rng(patient), MotionConfig(
        samples=400, length_px_min=length_px, length_px_max=length_px, psf_max_size=21, exposures=(1.0,)))
    psf, _ = motion_psf(motion_trajectory(params), params.exposure, 21)
    return to_int16_hu(blur_hu(sharp.astype(np.float32), psf)), sharp, psf


@pytest.fixture(scope="module")
def pairs():
    return [kernel_pair(patient) for patient in range(3)]


def test_reflect_blur_is_the_pipelines_blur_and_has_an_exact_adjoint():
    rng = np.random.default_rng(0)
    for shape, size in (((40, 52), 9), ((24, 30), 21), ((64, 64), 1)):
        psf = rng.random((size, size)).astype(np.float32)
        psf /= psf.sum()
        image = rng.normal(0, 300, shape)
        operator = baselines.ReflectBlur(psf, shape, np.float64)
        np.testing.assert_allclose(operator.blur(image), blur_hu(image.astype(np.float32), psf), atol=2e-3)
        other = rng.normal(0, 1, shape)
        assert np.vdot(operator.blur(image), other) == pytest.approx(np.vdot(image, operator.adjoint(other)), rel=1e-10)


def test_even_psf_keeps_the_scipy_centre_convention():
    rng = np.random.default_rng(1)
    psf = rng.random((4, 4))
    psf /= psf.sum()
    image = rng.normal(0, 100, (30, 30))
    blurred = baselines.ReflectBlur(psf, image.shape, np.float64).blur(image)
    expected = ndimage.convolve(image, psf, mode="mirror")
    np.testing.assert_allclose(blurred[4:-4, 4:-4], expected[4:-4, 4:-4], atol=1e-9)


@pytest.mark.parametrize("method", ["wiener", "richardson_lucy"])
def test_oracles_improve_psnr_over_blurry_on_phantom_pairs(pairs, method):
    for blurry, sharp, psf in pairs:
        if method == "wiener":
            restored = baselines.wiener_deconvolve(blurry, psf, 1e-2)
        else:
            restored = baselines.richardson_lucy(blurry, psf, 30)
        assert restored.shape == sharp.shape
        before, after = metrics.psnr(blurry, sharp), metrics.psnr(restored, sharp)
        assert after > before + 3.0, (method, before, after)
        assert metrics.ssim(restored, sharp) > metrics.ssim(blurry, sharp)


def test_delta_psf_leaves_the_image_unchanged(pairs):
    sharp = pairs[0][1].copy()
    sharp[:4, :4] = -2000
    delta = np.ones((1, 1), np.float32)
    np.testing.assert_allclose(baselines.richardson_lucy(sharp, delta, 3), np.maximum(sharp, -1024), atol=1e-2)
    np.testing.assert_allclose(baselines.wiener_deconvolve(sharp, delta, 1e-6), sharp, atol=1e-2)


def test_richardson_lucy_snapshots_equal_separate_runs(pairs):
    blurry, _, psf = pairs[1]
    snapshots = baselines.richardson_lucy_all(blurry, psf, [3, 7])
    assert sorted(snapshots) == [3, 7]
    np.testing.assert_array_equal(snapshots[7], baselines.richardson_lucy(blurry, psf, 7))
    assert np.abs(snapshots[7] - snapshots[3]).max() > 1.0


def test_records_without_an_image_space_psf_have_no_oracle():
    assert not baselines.has_psf(NO_PSF)
    assert baselines.has_psf(np.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match="sum to 1"):
        baselines.odd_psf(np.full((3, 3), 0.5))
    with pytest.raises(ValueError, match="square"):
        baselines.odd_psf(np.ones((2, 3)) / 6)


def test_tuning_picks_the_grid_value_with_the_best_mean_psnr(pairs):
    settings = baselines.tune_baselines(pairs, [1e-4, 1e-2, 1.0], [2, 25], metrics.DEFAULT_WINDOW_HU)
    assert settings.tuning_pairs == 3
    assert settings.wiener_nsr == max(settings.wiener_psnr, key=settings.wiener_psnr.get)
    assert settings.wiener_nsr != 1.0
    assert settings.rl_iterations == 25
    expected = np.mean([metrics.psnr(baselines.richardson_lucy(b, p, 25), s) for b, s, p in pairs])
    assert settings.rl_psnr[25] == pytest.approx(expected, abs=1e-9)
    restored = settings.restore(*pairs[0][::2])
    assert sorted(restored) == ["rl_oracle", "wiener_oracle"]


def test_single_values_are_used_as_given_without_reading_pairs():
    def untouchable():
        raise AssertionError("pairs were read")
        yield

    settings = baselines.tune_baselines(untouchable(), [3e-3], [40])
    assert (settings.wiener_nsr, settings.rl_iterations, settings.tuning_pairs) == (3e-3, 40, 0)
    with pytest.raises(ValueError, match="no pairs"):
        baselines.tune_baselines(iter([]), [1e-3, 1e-2], [10])


def test_richardson_lucy_stays_finite_where_no_blurred_pixel_sees_the_image():
    """A diagonal two-point PSF leaves two corners seen by no blurred pixel (A^T 1 = 0 there): RL
    keeps their estimate instead of dividing by zero, and still deblurs the rest."""
    psf = np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]], np.float32)
    sharp = np.full((32, 32), -900.0)
    sharp[8:24, 10:20] = 300.0
    blurry = baselines.ReflectBlur(psf, sharp.shape, np.float64).blur(sharp + baselines.AIR_OFFSET_HU)
    blurry = blurry - baselines.AIR_OFFSET_HU
    restored = baselines.richardson_lucy_all(blurry, psf, [5, 50])
    for estimate in restored.values():
        assert np.all(np.isfinite(estimate))
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(restored[50] - sharp)[inner].mean() < np.abs(blurry - sharp)[inner].mean()
