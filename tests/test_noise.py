"""The pairs' noise forward model (`pipeline.noise`) against measured values, its settings, its
use in `make_pair`, and the schema's version 3 noise parameters (older records read as 0)."""

import argparse
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from test_schema import make_pair as schema_pair

import tfrecords_schema as schema
from pipeline.config import PipelineConfig, add_config_flags, config_from_args, config_from_dict
from pipeline.slice_scan import SliceHeader
from pipeline.kernels import MotionParams, blur_hu, motion_psf, motion_trajectory
from pipeline.noise import NoiseConfig, add_pair_noise, ct_noise, flattest_tissue, highpass_gain, highpass_noise_hu
from pipeline.pairs import make_pair
from pipeline.planning import PairTask
from pipeline.projection import ProjectionConfig, RigidMotion, projection_pair

SPACING = (0.7, 0.7)
SHAPE = (256, 256)


def radial_power(noise_images: list[np.ndarray], spacing: tuple[float, float], width: float = 0.05):
    """(bin centres in cycles/mm, mean |FFT|^2 per annulus) of the images' average power spectrum."""
    power = np.mean([np.abs(np.fft.fft2(n)) ** 2 for n in noise_images], axis=0)
    fy = np.fft.fftfreq(power.shape[0], spacing[0])[:, None]
    fx = np.fft.fftfreq(power.shape[1], spacing[1])[None, :]
    radius = np.hypot(fy, fx)
    edges = np.arange(0.0, 0.7, width)
    profile = np.array([power[(radius >= low) & (radius < low + width)].mean() for low in edges])
    return edges + width / 2, profile, power


def body_phantom(size: int = 256) -> np.ndarray:
    """A noise-free slice (HU): air, a soft-tissue body, bone, lung and a contrast band."""
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((size, size), -1000.0)
    hu[((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 < 1] = 40.0
    hu[(yy - 100) ** 2 + (xx - 90) ** 2 < 400] = 1000.0
    hu[(yy - 160) ** 2 + (xx - 150) ** 2 < 600] = -800.0
    hu[120:130, 60:200] = 200.0
    return hu.astype(np.float32)


def motion_blurred(hu: np.ndarray) -> np.ndarray:
    params = MotionParams(length_px=10.0, anxiety=0.005, centripetal=0.0, jump_probability=0.0, gaussian_shake=0.0,
                          exposure=1.0, initial_angle_rad=0.3, samples=200, walk_seed=1)
    psf, _ = motion_psf(motion_trajectory(params), 1.0, 33)
    return blur_hu(hu, psf)


# --- CT noise and its measurement -----------------------------------------------------------------


def test_ct_noise_has_the_asked_std_and_zero_mean():
    for seed in range(3):
        noise = ct_noise(SHAPE, 10.0, SPACING, 0.3, np.random.default_rng(seed))
        assert noise.shape == SHAPE and noise.dtype == np.float32
        assert float(noise.std()) == pytest.approx(10.0, rel=0.03)
        assert abs(float(noise.mean())) < 1e-3  # no power at f = 0
    rectangular = ct_noise((96, 160), 4.0, (0.5, 0.9), 0.2, np.random.default_rng(0))
    assert rectangular.shape == (96, 160) and float(rectangular.std()) == pytest.approx(4.0, rel=0.05)
    assert not np.any(ct_noise(SHAPE, 0.0, SPACING, 0.3, np.random.default_rng(0)))


@pytest.mark.parametrize("peak", [0.15, 0.3])
def test_ct_noise_spectrum_is_zero_at_dc_and_peaks_at_the_set_frequency(peak):
    images = [ct_noise(SHAPE, 10.0, SPACING, peak, np.random.default_rng(seed)) for seed in range(4)]
    centres, profile, power = radial_power(images, SPACING)
    assert abs(centres[int(np.argmax(profile))] - peak) <= 0.05, profile / profile.max()
    assert power[0, 0] < 1e-6 * profile.max()  # DC
    assert profile[0] < 0.4 * profile.max()  # the lowest band (< 0.05 cycles/mm) is weak


def test_highpass_noise_measures_white_noise_and_ignores_smooth_images():
    rng = np.random.default_rng(0)
    assert highpass_noise_hu(40.0 + rng.normal(0.0, 7.0, SHAPE)) == pytest.approx(7.0, rel=0.05)
    yy, xx = np.mgrid[:256, :256]
    smooth = 40.0 + 150.0 * np.exp(-((yy - 128) ** 2 + (xx - 100) ** 2) / (2 * 60.0**2))
    assert highpass_noise_hu(smooth) < 0.01
    assert highpass_noise_hu(smooth + 3.0 * xx - 2.0 * yy) < 0.01  # blind to ramps
    assert highpass_noise_hu(body_phantom()) == 0.0  # edges are not noise (median over flat tissue)
    noisy_bone = np.full(SHAPE, 1000.0) + rng.normal(0.0, 5.0, SHAPE)  # no tissue pixels: the whole image
    assert highpass_noise_hu(noisy_bone) == pytest.approx(5.0, rel=0.05)


def test_highpass_gain_is_what_the_measure_sees_of_ct_noise():
    gain = highpass_gain(SHAPE, SPACING, 0.3)
    assert 0.3 < gain < 0.9  # correlated noise: the measure sees its fine grain only
    measured = [highpass_noise_hu(40.0 + ct_noise(SHAPE, 10.0, SPACING, 0.3, np.random.default_rng(s))) for s in range(3)]
    assert np.mean(measured) == pytest.approx(10.0 * gain, rel=0.03)
    assert highpass_gain(SHAPE, SPACING, 0.15) < gain  # coarser noise, less of it seen


# --- the pair's noise ---------------------------------------------------------------------------


def test_noise_free_input_gets_independent_ct_noise_on_both_images():
    sharp = body_phantom()
    blurry = motion_blurred(sharp)
    noisy_sharp, noisy_blurry, noise = add_pair_noise(sharp, blurry, SPACING, NoiseConfig(ct_hu=10.0),
                                                      np.random.default_rng(1))
    added_sharp, added_blurry = noisy_sharp - sharp, noisy_blurry - blurry
    assert float(added_sharp.std()) == pytest.approx(10.0, rel=0.05)
    assert float(added_blurry.std()) == pytest.approx(10.0, rel=0.05)
    assert abs(np.corrcoef(added_sharp.ravel(), added_blurry.ravel())[0, 1]) < 0.05  # independent draws
    assert noise.as_record() == {"input_measured_hu": 0.0, "sharp_added_hu": 10.0, "blurry_added_hu": 10.0,
                                 "nps_peak_cycles_per_mm": 0.3}
    assert set(noise.as_record()) == set(schema.NOISE_PARAM_NAMES)
    clean_sharp, clean_blurry, clean = add_pair_noise(sharp, blurry, SPACING, NoiseConfig(ct_hu=6.0, clean_target=True),
                                                      np.random.default_rng(1))
    np.testing.assert_array_equal(clean_sharp, sharp)
    assert float((clean_blurry - blurry).std()) == pytest.approx(6.0, rel=0.05)
    assert (clean.sharp_added_hu, clean.blurry_added_hu) == (0.0, 6.0)
    silent = add_pair_noise(sharp, blurry, SPACING, NoiseConfig(ct_hu=0.0), np.random.default_rng(1))
    np.testing.assert_array_equal(silent[0], sharp)
    np.testing.assert_array_equal(silent[1], blurry)


@pytest.mark.parametrize("archive_noise", ["ct", "white"])
def test_scanner_input_keeps_its_sharp_image_and_gets_a_blurry_one_as_noisy(archive_noise):
    rng = np.random.default_rng(5)
    clean = body_phantom()
    noise = ct_noise(SHAPE, 15.0, SPACING, 0.3, rng) if archive_noise == "ct" else rng.normal(0.0, 15.0, SHAPE)
    archive = (clean + noise).astype(np.float32)
    blurred = motion_blurred(archive)
    sharp_noise = highpass_noise_hu(archive)
    flattest = flattest_tissue(archive)
    assert highpass_noise_hu(blurred, flattest=flattest) < 0.2 * sharp_noise  # the blur averaged the noise away
    tissue = (archive > -300) & (archive < 300)
    assert not flattest[~tissue].any() and 0.2 < np.count_nonzero(flattest) / np.count_nonzero(tissue) < 0.26
    assert highpass_noise_hu(archive, flattest=flattest) == sharp_noise  # the default: the image's own flat tissue
    sharp, blurry, info = add_pair_noise(archive, blurred, SPACING, NoiseConfig(), np.random.default_rng(2))
    np.testing.assert_array_equal(sharp, archive)
    assert highpass_noise_hu(blurry, flattest=flattest) == pytest.approx(sharp_noise, rel=0.1)
    assert info.input_measured_hu == pytest.approx(sharp_noise) and info.sharp_added_hu == 0.0
    assert info.blurry_added_hu > sharp_noise  # (std of correlated noise the measure sees only part of)
    unmatched = add_pair_noise(archive, blurred, SPACING, NoiseConfig(match_archive=False), np.random.default_rng(2))
    np.testing.assert_array_equal(unmatched[1], blurred)
    assert unmatched[2].blurry_added_hu == 0.0


def test_a_static_reconstruction_of_a_noise_free_phantom_counts_as_noise_free():
    """Projection and respiratory pairs: the sharp target is the phantom's static FBP, whose sampling
    texture measures a few HU; the decision is made on the input slice, so both images get CT noise."""
    phantom = body_phantom(128)
    reconstruction, moved = projection_pair(phantom, SPACING, RigidMotion("smooth", dx_mm=2.0, rotation_deg=1.0),
                                            ProjectionConfig(views=180))
    assert highpass_noise_hu(reconstruction) >= NoiseConfig().free_below_hu  # read alone, it would pass for a scan
    sharp, blurry, info = add_pair_noise(reconstruction, moved, SPACING, NoiseConfig(ct_hu=10.0),
                                         np.random.default_rng(1), input_hu=phantom)
    assert (info.input_measured_hu, info.sharp_added_hu, info.blurry_added_hu) == (0.0, 10.0, 10.0)
    assert float((sharp - reconstruction).std()) == pytest.approx(10.0, rel=0.05)
    assert float((blurry - moved).std()) == pytest.approx(10.0, rel=0.05)


def test_pair_noise_is_deterministic_for_a_seeded_generator():
    sharp = body_phantom(128)
    blurry = motion_blurred(sharp)
    first, again, other = (add_pair_noise(sharp, blurry, SPACING, NoiseConfig(), np.random.default_rng(seed))
                           for seed in (3, 3, 4))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


def test_make_pair_applies_the_noise_model_and_records_it():
    header = SliceHeader("f.dcm", "1.2.3", "1.2.3.9", "P1", 128, 128, SPACING, 3.0, -30.0, 5, 0.5)
    task = PairTask("1.2.3/00005/00", "train", 2, 0, 0, 5, "phantom", "synthetic", "P1", header)
    image = body_phantom(128)
    config = config_from_dict({"noise": {"ct_hu": 8.0}})
    pair = make_pair(task, image, config)
    assert float((pair.sharp_hu - image).std()) == pytest.approx(8.0, rel=0.1)
    assert pair.noise == {"input_measured_hu": 0.0, "sharp_added_hu": 8.0, "blurry_added_hu": 8.0,
                          "nps_peak_cycles_per_mm": 0.3}
    decoded = schema.decode_pair(schema.encode_pair(pair))
    assert decoded.noise == pytest.approx(pair.noise) and decoded.schema_version == 3
    clean = make_pair(task, image, dataclasses.replace(config, noise=NoiseConfig(ct_hu=8.0, clean_target=True)))
    np.testing.assert_array_equal(clean.sharp_hu, image.astype(np.int16))
    np.testing.assert_array_equal(clean.blurry_hu, pair.blurry_hu)  # same seeded draw for the blurry image


# --- settings -------------------------------------------------------------------------------------


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(argv))


def test_noise_settings_from_flags_and_yaml(tmp_path):
    assert PipelineConfig().noise == NoiseConfig() and NoiseConfig().ct_hu > 0 and not NoiseConfig().clean_target
    config = parse(["--noise_ct_hu", "5", "--noise_clean_target", "--noise_nps_peak_cycles_per_mm", "0.25",
                    "--no-noise_match_archive", "--noise_free_below_hu", "1.5"])
    assert config.noise == NoiseConfig(ct_hu=5.0, nps_peak_cycles_per_mm=0.25, clean_target=True, match_archive=False,
                                       free_below_hu=1.5)
    path = tmp_path / "c.yaml"
    path.write_text("noise:\n  ct_hu: 3.5\n")
    assert parse(["--config", str(path)]).noise.ct_hu == 3.5
    with pytest.raises(ValueError, match="noise ct_hu and free_below_hu must be >= 0, got -1"):
        config_from_dict({"noise": {"ct_hu": -1.0}})
    with pytest.raises(ValueError, match="nps_peak_cycles_per_mm must be > 0, got 0"):
        config_from_dict({"noise": {"nps_peak_cycles_per_mm": 0.0}})
    with pytest.raises(ValueError, match="unknown setting 'sigma'"):
        config_from_dict({"noise": {"sigma": 3.0}})


# --- schema version 3 ---------------------------------------------------------------------------


def test_noise_parameters_round_trip_in_version_3():
    noise = {name: 0.5 * (i + 1) for i, name in enumerate(schema.NOISE_PARAM_NAMES)}
    encoded = schema.encode_pair(schema_pair(noise=noise))
    decoded = schema.decode_pair(encoded)
    assert schema.SCHEMA_VERSION >= 3 and decoded.schema_version == 3  # the version 3 layout of non-respiratory pairs
    assert decoded.noise == pytest.approx(noise)
    (tensors,) = list(tf.data.Dataset.from_tensors(encoded).map(schema.parse_pair_tensors))
    assert {name: float(tensors[f"noise/{name}"]) for name in schema.NOISE_PARAM_NAMES} == pytest.approx(noise)
    assert schema.decode_pair(schema.encode_pair(schema_pair())).noise == dict.fromkeys(schema.NOISE_PARAM_NAMES, 0.0)
    with pytest.raises(ValueError, match="unknown noise parameters: \\['sigma'\\]"):
        schema.encode_pair(schema_pair(noise={"sigma": 1.0}))


def version_2_record(pair: schema.Pair) -> bytes:
    """A record as schema version 2 wrote it: no noise parameters."""
    example = tf.train.Example.FromString(schema.encode_pair(pair))
    features = example.features.feature
    for name in list(features):
        if name.startswith("noise/"):
            del features[name]
    features["schema_version"].int64_list.value[:] = [2]
    return example.SerializeToString(deterministic=True)


def test_version_2_records_decode_with_zero_noise_parameters():
    noise = dict.fromkeys(schema.NOISE_PARAM_NAMES, 9.0)
    old = version_2_record(schema_pair(seed=6, noise=noise))
    assert b"noise/" not in old
    decoded = schema.decode_pair(old)
    assert decoded.schema_version == 2 and decoded.noise == dict.fromkeys(schema.NOISE_PARAM_NAMES, 0.0)
    np.testing.assert_array_equal(decoded.sharp_hu, schema_pair(seed=6).sharp_hu)
    (tensors,) = list(tf.data.Dataset.from_tensors(old).map(schema.parse_pair_tensors))
    assert int(tensors["schema_version"]) == 2
    assert all(float(tensors[f"noise/{name}"]) == 0.0 for name in schema.NOISE_PARAM_NAMES)
    assert 2 in schema.READABLE_VERSIONS and 3 in schema.READABLE_VERSIONS
