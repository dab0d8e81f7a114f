import dataclasses

import numpy as np
import pytest

from pipeline.config import PipelineConfig
from pipeline.slice_scan import SliceHeader
from pipeline.kernels import (
    MotionConfig,
    MotionParams,
    add_noise,
    blur_hu,
    motion_psf,
    motion_trajectory,
    path_length_px,
    sample_motion_params,
)
from pipeline.pairs import kernel_rng, make_pair
from pipeline.planning import PairTask


def psnr(a, b, data_range=2000.0):
    mse = np.mean((np.clip(a, -1000, 1000) - np.clip(b, -1000, 1000)) ** 2)
    return 10 * np.log10(data_range**2 / mse)


def textured_image(shape=(96, 128), seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    image = np.where((x // 8 + y // 8) % 2 == 0, -600.0, 400.0) + rng.normal(0, 30, shape)
    return image.astype(np.float32)


def test_psf_is_normalised_non_negative_and_bounded():
    config = MotionConfig()
    for seed in range(25):
        params = sample_motion_params(np.random.default_rng(seed), config)
        psf, scale = motion_psf(motion_trajectory(params), params.exposure, config.psf_max_size)
        assert psf.dtype == np.float32 and psf.ndim == 2 and psf.shape[0] == psf.shape[1]
        assert psf.shape[0] % 2 == 1 and psf.shape[0] <= 64
        assert psf.min() >= 0
        assert psf.sum() == pytest.approx(1.0, abs=1e-5)
        assert 0 < scale <= 1


def test_long_straight_path_is_scaled_to_fit():
    params = MotionParams(200.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 500, 1)
    trajectory = motion_trajectory(params)
    assert path_length_px(trajectory, 1.0, 1.0) == pytest.approx(200.0, rel=1e-6)
    psf, scale = motion_psf(trajectory, 1.0, 64)
    assert psf.shape == (63, 63)
    assert scale == pytest.approx(30.0 / 100.0, rel=1e-3)
    assert np.count_nonzero(psf.sum(axis=0)) > 55  # a horizontal line across the kernel


def test_psf_is_centred_on_its_centroid():
    params = MotionParams(20.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 400, 1)
    psf, _ = motion_psf(motion_trajectory(params), 1.0)
    radius = psf.shape[0] // 2
    rows, cols = np.mgrid[: psf.shape[0], : psf.shape[1]]
    assert (psf * cols).sum() == pytest.approx(radius, abs=1e-3)
    assert (psf * rows).sum() == pytest.approx(radius, abs=1e-3)


def test_delta_psf_leaves_image_unchanged():
    image = textured_image((40, 70))
    delta = np.zeros((5, 5), np.float32)
    delta[2, 2] = 1
    np.testing.assert_allclose(blur_hu(image, delta), image, atol=1e-3)


def test_blur_preserves_constant_image_and_its_mean():
    constant = np.full((50, 80), 37.0, np.float32)
    params = sample_motion_params(np.random.default_rng(4), MotionConfig(length_px_min=30, length_px_max=30))
    psf, _ = motion_psf(motion_trajectory(params), 1.0)
    blurred = blur_hu(constant, psf)
    np.testing.assert_allclose(blurred, 37.0, atol=1e-3)
    assert blurred.shape == constant.shape


def test_blur_handles_non_square_and_psf_larger_than_image():
    psf = np.full((31, 31), 1 / 31**2, np.float32)
    image = textured_image((12, 20))
    out = blur_hu(image, psf)
    assert out.shape == (12, 20)
    assert abs(out.mean() - image.mean()) < 60


def test_same_ids_give_same_psf_other_slice_gives_another():
    config = PipelineConfig()

    def psf_for(series_uid, slice_index, kernel_index=0):
        params = sample_motion_params(kernel_rng(config, series_uid, slice_index, kernel_index), config.motion)
        return motion_psf(motion_trajectory(params), params.exposure)[0]

    np.testing.assert_array_equal(psf_for("1.2.3", 7), psf_for("1.2.3", 7))
    assert not np.array_equal(psf_for("1.2.3", 7), psf_for("1.2.3", 8))
    assert not np.array_equal(psf_for("1.2.3", 7), psf_for("1.2.4", 7))
    assert not np.array_equal(psf_for("1.2.3", 7, 0), psf_for("1.2.3", 7, 1))


def test_longer_trajectories_blur_more_on_average():
    image = textured_image()
    means = []
    for length in (3.0, 12.0, 40.0):
        config = MotionConfig(length_px_min=length, length_px_max=length, exposures=(1.0,), samples=500)
        values = []
        for seed in range(12):
            params = sample_motion_params(np.random.default_rng(seed), config)
            psf, _ = motion_psf(motion_trajectory(params), 1.0)
            values.append(psnr(image, blur_hu(image, psf)))
        means.append(np.mean(values))
    assert means[0] > means[1] > means[2]


def test_noise_is_seeded_and_has_requested_strength():
    image = np.zeros((200, 200), np.float32)
    first = add_noise(image, np.random.default_rng(1), sigma_hu=20.0)
    again = add_noise(image, np.random.default_rng(1), sigma_hu=20.0)
    np.testing.assert_array_equal(first, again)
    assert np.std(first) == pytest.approx(20.0, rel=0.05)
    poisson = add_noise(np.full((200, 200), 976.0, np.float32), np.random.default_rng(2), poisson_counts_per_hu=0.5)
    assert np.std(poisson) == pytest.approx(np.sqrt(2000 * 0.5) / 0.5, rel=0.05)


def test_make_pair_records_parameters_and_keeps_hu():
    config = PipelineConfig()
    header = SliceHeader("f.dcm", "1.2.3", "1.2.3.9", "P1", 64, 80, (0.7, 0.7), 3.0, -30.0, 5, 0.5)
    task = PairTask("1.2.3/00005/00", "train", 2, 0, 0, 5, "phantom", "synthetic", "P1", header)
    image = textured_image((64, 80))
    pair = make_pair(task, image, config)
    np.testing.assert_array_equal(pair.sharp_hu, np.rint(image).astype(np.int16))
    assert pair.patient_id == "" and len(pair.patient_key) == 16 and "P1" not in pair.patient_key
    assert pair.motion["exposure"] in config.motion.exposures
    assert pair.psf.sum() == pytest.approx(1.0, abs=1e-5)
    raw = make_pair(task, image, dataclasses.replace(config, raw_patient_ids=True))
    assert raw.patient_id == "P1"
