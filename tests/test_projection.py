"""Projection-domain motion simulation: geometry, units, HU, determinism and the issue's checks."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import iradon, radon

from pipeline.hashing import derive_rng
from pipeline.projection import (
    MOTION_KINDS,
    ProjectionConfig,
    RigidMotion,
    filtered_back_projection,
    hu_to_attenuation,
    interpolated_sinogram,
    motion_extents,
    motion_poses,
    project,
    projection_pair,
    sample_rigid_motion,
    scan_geometry,
)

SMALL = ProjectionConfig(views=180)


def psnr(a, b, window=(-1000.0, 1000.0)):
    """PSNR (dB) on HU clipped to `window`, data range = window width (the evaluation protocol)."""
    low, high = window
    mse = np.mean((np.clip(a, low, high) - np.clip(b, low, high)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10((high - low) ** 2 / mse)


def coordinates_mm(shape, spacing):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (cols - (shape[1] - 1) / 2) * spacing[1], (rows - (shape[0] - 1) / 2) * spacing[0]


def disc_hu(shape, spacing, radius_mm, centre_mm=(0.0, 0.0), inside=0.0, outside=-1000.0):
    x, y = coordinates_mm(shape, spacing)
    return np.where((x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 < radius_mm**2, inside, outside)


def body_phantom(shape=(96, 96), spacing=(2.0, 2.0)):
    """A smooth-edged thorax-like slice (HU): soft-tissue ellipse, fat rim, lungs, spine, vessel."""
    x, y = coordinates_mm(shape, spacing)
    hu = np.full(shape, -1000.0)

    def ellipse(cx, cy, a, b):
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1

    hu[ellipse(0, 0, 80, 60)] = -100.0
    hu[ellipse(0, 0, 72, 53)] = 40.0
    hu[ellipse(-32, -5, 26, 34)] = -850.0
    hu[ellipse(32, -5, 26, 34)] = -850.0
    hu[ellipse(0, 38, 11, 11)] = 900.0
    hu[ellipse(8, -12, 9, 9)] = 200.0
    return ndimage.gaussian_filter(hu, 0.6).astype(np.float32)


def edge_crossings(profile, positions_mm, low, high):
    """Positions (mm) where a falling profile first drops below low + 75% and low + 25% of the step."""
    found = []
    for fraction in (0.75, 0.25):
        level = low + fraction * (high - low)
        i = int(np.argmax(profile < level))
        t = (profile[i - 1] - level) / (profile[i - 1] - profile[i])
        found.append(positions_mm[i - 1] + t * (positions_mm[i] - positions_mm[i - 1]))
    return found


def scaled(motion, factor):
    return dataclasses.replace(motion, **{name: getattr(motion, name) * factor for name in
                                          ("dx_mm", "dy_mm", "rotation_deg", "dx2_mm", "dy2_mm", "rotation2_deg")})


@pytest.mark.parametrize("motion", [
    RigidMotion("none"),
    RigidMotion("jerk", jerk_time=0.5),
    RigidMotion("smooth"),
    RigidMotion("breathing", breathing_cycles=2.0),
])
def test_zero_motion_gives_blurry_equal_to_sharp(motion):
    hu = body_phantom()
    sharp, blurry = projection_pair(hu, (2.0, 2.0), motion, SMALL)
    assert sharp.dtype == blurry.dtype == np.float32 and sharp.shape == hu.shape
    assert np.array_equal(sharp, blurry)
    assert psnr(blurry, sharp) > 50


def test_tiny_motion_stays_above_50_db_but_real_motion_does_not():
    hu = body_phantom()
    sharp, tiny = projection_pair(hu, (2.0, 2.0), RigidMotion("jerk", dx_mm=0.01, jerk_time=0.5), SMALL)
    _, moved = projection_pair(hu, (2.0, 2.0), RigidMotion("jerk", dx_mm=6.0, jerk_time=0.5), SMALL)
    assert not np.array_equal(sharp, tiny)
    assert psnr(tiny, sharp) > 50
    assert psnr(moved, sharp) < 35


def test_sharp_target_is_the_input_in_hu_and_as_good_as_scikit_image():
    hu = body_phantom()
    sharp, _ = projection_pair(hu, (2.0, 2.0), RigidMotion("none"), ProjectionConfig(views=360))
    soft = ndimage.binary_erosion(np.abs(hu - 40.0) < 1.0, iterations=2)
    air = ndimage.binary_erosion(hu < -999.0, iterations=2)
    assert np.mean(sharp[soft]) == pytest.approx(40.0, abs=5)
    assert np.mean(sharp[air]) == pytest.approx(-1000.0, abs=5)
    theta = np.arange(180) * 1.0
    reference = iradon(radon(hu_to_attenuation(hu), theta, circle=False), theta, output_size=hu.shape[0],
                       filter_name="ramp", circle=False) * 1000 - 1000
    assert psnr(sharp, hu) > 35
    assert psnr(sharp, hu) > psnr(reference, hu)


def test_projector_matches_the_analytic_views_of_a_moving_gaussian():
    """View i sees the object at pose i: +dx moves it to +x (columns), +dy to +y (rows, down), and
    +angle turns +x towards +y about the image centre. Non-square image, anisotropic pixels."""
    shape, spacing, sigma, centre = (80, 100), (0.7, 0.9), 4.0, np.array([6.0, -4.0])
    x, y = coordinates_mm(shape, spacing)
    attenuation = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))
    views = 8
    geometry = scan_geometry(shape, spacing, ProjectionConfig(views=views), reach_mm=6.0)
    poses = np.array([[0, 0, 0], [3, 0, 0], [0, -2, 0], [0, 0, 10], [0, 0, -25], [2, 1, 5], [-4, 3, 0], [1, -1, -8.0]])
    sinogram = project(attenuation, geometry, poses)
    t = (np.arange(geometry.detector_bins) - geometry.detector_bins / 2) * geometry.detector_spacing_mm
    assert geometry.detector_spacing_mm == 0.7
    for view, (dx, dy, angle_deg) in enumerate(poses):
        turn = math.radians(angle_deg)
        moved = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]]) @ centre + (dx, dy)
        theta = geometry.angles_rad[view]
        expected = math.sqrt(2 * math.pi) * sigma * np.exp(-(t - moved @ (math.cos(theta), math.sin(theta))) ** 2
                                                           / (2 * sigma**2))
        np.testing.assert_allclose(sinogram[view], expected, atol=1e-4 * expected.max())


def test_projector_follows_the_fourier_slice_theorem_for_any_image():
    """Each view's spectrum is the image's 2-D Fourier transform (a direct DFT) along the view's line,
    within the image grid's band limit, and zero beyond it (anisotropic pixels, non-square image)."""
    shape, spacing = (24, 30), (0.7, 0.9)
    attenuation = np.random.default_rng(0).uniform(0.0, 2.0, shape)
    geometry = scan_geometry(shape, spacing, ProjectionConfig(views=5))
    sinogram = project(attenuation, geometry, np.zeros((5, 3)))
    x, y = coordinates_mm(shape, spacing)
    bins, step = geometry.detector_bins, geometry.detector_spacing_mm
    m = np.arange(bins // 2 + 1)
    k = m / (bins * step)
    for view, angle in enumerate(geometry.angles_rad):
        kx, ky = k * math.cos(angle), k * math.sin(angle)
        inside = (np.abs(kx) <= 0.5 / spacing[1]) & (np.abs(ky) <= 0.5 / spacing[0])
        direct = np.array([(attenuation * np.exp(-2j * np.pi * (a * x + b * y))).sum() for a, b in zip(kx, ky)])
        direct *= spacing[0] * spacing[1] * inside
        measured = np.fft.rfft(sinogram[view]) * step * np.where(m % 2, -1.0, 1.0)
        below_nyquist = slice(0, bins // 2)  # a real view keeps only the real part at the Nyquist bin
        assert np.abs(measured - direct)[below_nyquist].max() < 2e-5 * np.abs(direct).max()


def test_interpolated_sinogram_is_the_per_view_blend_of_the_images_views():
    """View i of `interpolated_sinogram` is (1 - w_i) x image(lower_i)'s view + w_i x image(lower_i + 1)'s,
    as `project` makes them; each image is made once, and one that no view needs is never asked for."""
    shape, spacing = (40, 36), (0.8, 0.7)
    rng = np.random.default_rng(3)
    images = [rng.uniform(0.0, 2.0, shape) for _ in range(5)]
    geometry = scan_geometry(shape, spacing, ProjectionConfig(views=24))
    lower = np.repeat([0, 2, 3], 8)
    weight = rng.uniform(0.0, 1.0, 24)
    weight[:8] = 0.0
    asked = []

    def image_at(index):
        asked.append(index)
        return images[index]

    blended = interpolated_sinogram(image_at, lower, weight, geometry)
    views = [project(image, geometry, np.zeros((24, 3))) for image in images]
    expected = np.array([(1 - w) * views[k][i] + w * views[k + 1][i] for i, (k, w) in enumerate(zip(lower, weight))])
    assert blended.shape == expected.shape
    assert np.abs(blended - expected).max() < 1e-5 * np.abs(expected).max()
    assert sorted(asked) == [0, 2, 3, 4]  # each once; image 1 only a zero-weight neighbour
    with pytest.raises(ValueError, match="lower and upper_weight must be"):
        interpolated_sinogram(image_at, lower[:5], weight, geometry)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_translation_in_second_half_doubles_the_edge_by_d_mm(axis):
    """Non-square image, anisotropic pixels (0.6 mm rows, 0.9 mm columns), one sharp disc."""
    shape, spacing, radius, d = (192, 128), (0.6, 0.9), 35.0, 8.0
    hu = disc_hu(shape, spacing, radius)
    motion = RigidMotion("jerk", dx_mm=d if axis == "x" else 0.0, dy_mm=d if axis == "y" else 0.0, jerk_time=0.5)
    sharp, blurry = projection_pair(hu, spacing, motion, ProjectionConfig(views=360))
    along = 1 if axis == "x" else 0
    pixel_mm, across_mm = spacing[along], spacing[1 - along]
    positions = (np.arange(shape[along]) - (shape[along] - 1) / 2) * pixel_mm
    centre = shape[1 - along] // 2
    profiles = (sharp[centre], blurry[centre]) if axis == "x" else (sharp[:, centre], blurry[:, centre])
    half_chord = math.sqrt(radius**2 - (across_mm / 2) ** 2)  # the profile runs half a pixel off the centre
    outward = positions > 0
    sharp_edges = edge_crossings(profiles[0][outward], positions[outward], -1000.0, 0.0)
    inner, outer = edge_crossings(profiles[1][outward], positions[outward], -1000.0, 0.0)
    assert abs(sharp_edges[1] - sharp_edges[0]) < pixel_mm
    assert np.mean(sharp_edges) == pytest.approx(half_chord, abs=pixel_mm)
    assert outer - inner == pytest.approx(d, abs=pixel_mm)
    assert (inner + outer) / 2 == pytest.approx(half_chord, abs=pixel_mm)
    between = (positions > inner + pixel_mm) & (positions < outer - pixel_mm)
    assert np.median(profiles[1][between]) == pytest.approx(-500.0, abs=60)


def test_more_motion_gives_lower_psnr_on_average():
    hu = body_phantom()
    factors = (0.25, 0.5, 1.0, 2.0)
    scores = np.zeros((4, len(factors)))
    for seed in range(4):
        motion = sample_rigid_motion(np.random.default_rng(seed), ProjectionConfig())
        for j, factor in enumerate(factors):
            sharp, blurry = projection_pair(hu, (2.0, 2.0), scaled(motion, factor), SMALL)
            scores[seed, j] = psnr(blurry, sharp)
    mean = scores.mean(axis=0)
    assert np.all(np.diff(mean) < -1.0), mean
    assert np.all(scores < 60)


def test_same_seed_and_ids_give_identical_bytes():
    hu = body_phantom()
    config = ProjectionConfig(views=120)
    runs = []
    for _ in range(2):
        motion = sample_rigid_motion(derive_rng(0, "projection", "1.2.840.1", 7), config)
        sharp, blurry = projection_pair(hu, (2.0, 2.0), motion, config)
        runs.append((motion, motion.as_record(), sharp.tobytes(), blurry.tobytes()))
    assert runs[0] == runs[1]
    other = sample_rigid_motion(derive_rng(0, "projection", "1.2.840.1", 8), config)
    assert other != runs[0][0]


def test_records_have_stable_float_keys_and_rebuild_the_motion():
    config = ProjectionConfig(motion_types=MOTION_KINDS)
    keys = None
    seen = set()
    for seed in range(40):
        motion = sample_rigid_motion(np.random.default_rng(seed), config)
        record = motion.as_record()
        seen.add(motion.kind)
        assert all(isinstance(value, float) for value in record.values())
        assert keys is None or sorted(record) == keys
        keys = sorted(record)
        assert RigidMotion.from_record(motion.kind, record) == motion
    assert seen == set(MOTION_KINDS)
    assert "translation_extent_mm" in keys and "rotation_extent_deg" in keys
    with pytest.raises(ValueError, match="dx_mm"):
        RigidMotion.from_record("jerk", {"dy_mm": 1.0})


def test_sampled_motion_respects_the_configured_ranges():
    config = ProjectionConfig(motion_types=("smooth", "jerk", "breathing"))
    for seed in range(60):
        motion = sample_rigid_motion(np.random.default_rng(seed), config)
        translation, rotation = motion_extents(motion)
        if motion.kind in ("smooth", "jerk"):
            assert config.translation_mm_min - 1e-9 <= translation <= config.translation_mm_max + 1e-9
            assert rotation <= config.rotation_deg_max + 1e-9
        else:
            assert math.hypot(motion.dx_mm, motion.dy_mm) <= config.breathing_amplitude_mm_max + 1e-9
            assert abs(math.degrees(math.atan2(motion.dx_mm, motion.dy_mm))) <= config.breathing_tilt_deg_max + 1e-9
            assert config.breathing_cycles_min <= motion.breathing_cycles <= config.breathing_cycles_max
            assert motion.rotation_deg == 0.0
        if motion.kind == "jerk":
            assert translation == pytest.approx(math.hypot(motion.dx_mm, motion.dy_mm))
            assert config.jerk_time_min <= motion.jerk_time <= config.jerk_time_max
    only_jerk = sample_rigid_motion(np.random.default_rng(0), ProjectionConfig(motion_types=("jerk",)))
    assert only_jerk.kind == "jerk"


def test_motion_poses_are_centred_and_follow_the_kind():
    jerk = motion_poses(RigidMotion("jerk", dx_mm=4.0, dy_mm=-2.0, rotation_deg=1.5, jerk_time=0.5), 100)
    assert jerk.shape == (100, 3)
    np.testing.assert_allclose(jerk.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(jerk[:50], [[-2.0, 1.0, -0.75]] * 50)
    np.testing.assert_allclose(jerk[50:], [[2.0, -1.0, 0.75]] * 50)
    ramp = motion_poses(RigidMotion("jerk", dx_mm=1.0, jerk_time=0.4, jerk_duration=0.2), 1000)[:, 0]
    assert np.all(np.diff(ramp) >= 0) and np.ptp(ramp) == pytest.approx(1.0)
    assert np.count_nonzero(np.diff(ramp)) == pytest.approx(200, abs=2)
    breathing = motion_poses(RigidMotion("breathing", dy_mm=5.0, breathing_cycles=3.0), 600)
    assert np.all(breathing[:, [0, 2]] == 0)
    assert np.ptp(breathing[:, 1]) == pytest.approx(5.0, abs=1e-3)
    spectrum = np.abs(np.fft.rfft(breathing[:, 1]))
    assert int(np.argmax(spectrum[1:])) + 1 == 3
    assert np.all(motion_poses(RigidMotion("none"), 10) == 0)


def test_full_rotation_equals_half_rotation_with_half_the_views_when_static():
    hu = body_phantom((64, 80), (1.5, 1.2))
    attenuation = hu_to_attenuation(hu)
    full = scan_geometry(hu.shape, (1.5, 1.2), ProjectionConfig(views=120, scan_deg=360.0))
    half = scan_geometry(hu.shape, (1.5, 1.2), ProjectionConfig(views=60, scan_deg=180.0))
    assert full.detector_bins == half.detector_bins
    image_full = filtered_back_projection(project(attenuation, full, np.zeros((120, 3))), full)
    image_half = filtered_back_projection(project(attenuation, half, np.zeros((60, 3))), half)
    np.testing.assert_allclose(image_full, image_half, atol=1e-3)  # 1 HU: the outermost detector bin has no mirror


@pytest.mark.parametrize("config", [ProjectionConfig(views=91), ProjectionConfig(views=90, scan_deg=180.0),
                                    ProjectionConfig(views=90, fbp_filter="hann")])
def test_other_scans_and_filters_keep_the_pair_consistent(config):
    hu = body_phantom((64, 64), (3.0, 3.0))
    sharp, same = projection_pair(hu, (3.0, 3.0), RigidMotion("smooth"), config)
    assert np.array_equal(sharp, same)
    assert psnr(sharp, hu) > 25
    _, blurry = projection_pair(hu, (3.0, 3.0), RigidMotion("smooth", dx_mm=4.0, rotation_deg=2.0), config)
    assert psnr(blurry, sharp) < psnr(sharp, hu)


def test_bad_inputs_and_settings_are_refused_with_the_reason():
    hu = body_phantom((32, 32), (2.0, 2.0))
    with pytest.raises(ValueError, match="2-D"):
        projection_pair(np.zeros((2, 32, 32)), (1.0, 1.0), RigidMotion("none"), SMALL)
    with pytest.raises(ValueError, match="NaN"):
        projection_pair(np.where(hu > 0, np.nan, hu), (1.0, 1.0), RigidMotion("none"), SMALL)
    with pytest.raises(ValueError, match="pixel spacing"):
        projection_pair(hu, (0.0, 1.0), RigidMotion("none"), SMALL)
    with pytest.raises(ValueError, match="at least 8"):
        projection_pair(hu[:4], (1.0, 1.0), RigidMotion("none"), SMALL)
    with pytest.raises(ValueError, match="motion kind"):
        RigidMotion("wobble")
    for bad, match in (({"scan_deg": 90.0}, "scan_deg"), ({"geometry": "fan"}, "not implemented"),
                       ({"motion_types": ("wobble",)}, "motion_types"), ({"views": 1}, "views"),
                       ({"translation_mm_min": 5.0, "translation_mm_max": 1.0}, "translation_mm_min"),
                       ({"breathing_cycles_min": 0.0}, "breathing_cycles_min"),
                       ({"fbp_filter": "cosine"}, "fbp_filter")):
        with pytest.raises(ValueError, match=match):
            projection_pair(hu, (2.0, 2.0), RigidMotion("none"), ProjectionConfig(**bad))


def test_every_setting_documents_its_meaning_and_unit():
    for field in dataclasses.fields(ProjectionConfig):
        assert "(" in field.metadata["help"] and field.metadata["help"].endswith(")"), field.name
    assert ProjectionConfig().validate() == ProjectionConfig()
