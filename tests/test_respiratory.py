"""Respiratory motion: breathing traces, the volume's deformation, and fan/cone pairs of a thorax phantom."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from pipeline.phantom import _patient, anatomy_hu, phantom_series, slice_level_mm
from pipeline.projection import ProjectionConfig, attenuation_to_hu, filtered_back_projection, hu_to_attenuation, \
    project, scan_geometry
from pipeline.respiratory import (
    APEX_WEIGHT,
    CONE_STATE_STEP_MM,
    FAN_STATE_STEP_MM,
    INFERIOR_FALLOFF_MM,
    SUPERIOR_FALLOFF_MM,
    WALL_MARGIN_MM,
    BreathingTrace,
    RespiratoryConfig,
    breathing_anatomy,
    breathing_signal,
    breathing_trace,
    deform_volume,
    _smoothed,
    diaphragm_anatomy,
    reach_slices,
    respiratory_pair,
    sample_breathing,
    view_times_s,
)

SEED = 7
THORAX_PATIENT = 1
SLICES = 24
SIZE = 96
FAN = RespiratoryConfig(geometry="fan", views=90)
CONE = RespiratoryConfig(geometry="cone", views=90)


@pytest.fixture(scope="module")
def thorax():
    """(volume [24, 96, 96] HU, spacing (slice, row, column) mm, series) of the phantom thorax, slice 0 at the top:
    the anatomy's plane at each slice centre (no slab average or scanner PSF, to keep it fast)."""
    series = phantom_series(THORAX_PATIENT, SLICES, SIZE, SEED)
    assert series.body_site == "thorax"
    volume = np.stack([anatomy_hu(series, index) for index in range(SLICES)])
    slice_mm = slice_level_mm(series, 0) - slice_level_mm(series, 1)
    return volume, (slice_mm, series.pixel_spacing_mm, series.pixel_spacing_mm), series


def spine_region(series, slice_index, radius_mm=15.0):
    """Pixels within radius_mm of the phantom's vertebral body centre in that slice (from its 3-D model)."""
    y_mm = _patient("thorax", SEED, THORAX_PATIENT).spine.y_of_z(slice_level_mm(series, slice_index))
    axis = (np.arange(SIZE) - (SIZE - 1) / 2) * series.pixel_spacing_mm
    return axis[None, :] ** 2 + (axis[:, None] - y_mm) ** 2 < radius_mm**2


def still_trace(duration_s=70.0):
    return BreathingTrace(0.0, 0.0, 4.0, 1, 0.0, duration_s, (0.0,), (duration_s + 1.0,), (1.0,))


def test_same_seed_gives_identical_traces_and_pairs(thorax):
    volume, spacing, _ = thorax
    anatomy = breathing_anatomy(volume, spacing, "thorax")
    runs = []
    for _ in range(2):
        trace = sample_breathing(np.random.default_rng(11), RespiratoryConfig(), 61.0)
        sharp, blurry = respiratory_pair(volume, spacing, anatomy, 15, trace, CONE)
        runs.append((trace, sharp.tobytes(), blurry.tobytes()))
    assert runs[0] == runs[1]
    assert sample_breathing(np.random.default_rng(12), RespiratoryConfig(), 61.0) != runs[0][0]


def test_breathing_trace_is_smooth_irregular_and_within_its_ranges():
    config = RespiratoryConfig()
    for seed in range(20):
        trace = sample_breathing(np.random.default_rng(seed), config, 60.0)
        assert 5.0 <= trace.si_amplitude_mm <= 20.0 and 1.0 <= trace.ap_amplitude_mm <= 5.0
        assert 3.0 <= trace.period_s <= 5.0 and trace.shape_power in (1, 2, 3)
        assert trace.cycle_starts_s[0] <= 0 < trace.cycle_starts_s[1] and trace.cycle_starts_s[-1] <= 60.0
        assert np.allclose(np.diff(trace.cycle_starts_s), trace.cycle_periods_s[:-1])
        times = np.linspace(0.0, 60.0, 60001)
        displacement = breathing_trace(trace, times)
        drift = trace.drift_mm_per_min / 60.0 * times
        assert np.allclose(displacement[:, 1] * trace.si_amplitude_mm, displacement[:, 0] * trace.ap_amplitude_mm)
        assert (displacement[:, 0] - drift).min() >= -1e-9
        assert (displacement[:, 0] - drift).max() <= trace.si_amplitude_mm * max(trace.cycle_amplitudes) + 1e-9
        # continuous: no step between samples 1 ms apart larger than the fastest slope allows
        slope = 2 * trace.shape_power * np.pi * trace.si_amplitude_mm * max(trace.cycle_amplitudes) / min(
            trace.cycle_periods_s)
        assert np.abs(np.diff(displacement[:, 0])).max() <= (slope + abs(trace.drift_mm_per_min) / 60) * 1e-3 * 1.01
        starts = np.array([t for t in trace.cycle_starts_s if t >= 0])
        assert np.allclose(breathing_signal(trace, starts), drift[np.rint(starts * 1000).astype(int)] /
                           trace.si_amplitude_mm, atol=1e-3)
    irregular = sample_breathing(np.random.default_rng(3), config, 60.0)
    assert np.std(irregular.cycle_periods_s) > 0 and np.std(irregular.cycle_amplitudes) > 0
    with pytest.raises(ValueError, match="times must lie"):
        breathing_trace(irregular, np.array([61.0]))


@pytest.mark.parametrize("config", [FAN, CONE, dataclasses.replace(CONE, cone_arc_deg=200.0)],
                         ids=["fan", "cone", "cone-short-scan"])
def test_no_motion_gives_bit_identical_blurry_and_sharp(thorax, config):
    volume, spacing, _ = thorax
    anatomy = breathing_anatomy(volume, spacing, "thorax")
    sharp, blurry = respiratory_pair(volume, spacing, anatomy, 16, still_trace(), config, start_s=2.0)
    assert sharp.dtype == blurry.dtype == np.float32 and sharp.shape == (SIZE, SIZE)
    assert sharp.tobytes() == blurry.tobytes()


def test_sharp_target_is_the_static_slice_through_the_projection_models_projector_and_fbp(thorax):
    volume, spacing, _ = thorax
    anatomy = breathing_anatomy(volume, spacing, "thorax")
    trace = sample_breathing(np.random.default_rng(5), RespiratoryConfig(), 61.0)
    sharp, blurry = respiratory_pair(volume, spacing, anatomy, 16, trace, CONE)
    geometry = scan_geometry((SIZE, SIZE), spacing[1:], ProjectionConfig(views=90))
    static = project(hu_to_attenuation(volume[16]), geometry, np.zeros((90, 3)))
    assert np.array_equal(sharp, attenuation_to_hu(filtered_back_projection(static, geometry)))
    assert not np.array_equal(sharp, blurry)


def test_head_does_not_move_unless_asked(thorax):
    volume, spacing, _ = thorax
    trace = sample_breathing(np.random.default_rng(5), RespiratoryConfig(), 61.0)
    head = breathing_anatomy(volume, spacing, "head")
    assert not head.moves
    assert np.array_equal(deform_volume(volume, spacing, head, (20.0, 5.0)), volume)
    sharp, blurry = respiratory_pair(volume, spacing, head, 16, trace, CONE)
    assert sharp.tobytes() == blurry.tobytes()
    moving_head = breathing_anatomy(volume, spacing, "head", move_head=True)
    assert moving_head.moves and np.abs(deform_volume(volume, spacing, moving_head, (20.0, 5.0)) - volume).max() > 100


def test_longitudinal_weight_is_one_at_the_diaphragm_and_falls_towards_apex_and_pelvis(thorax):
    volume, spacing, series = thorax
    anatomy = breathing_anatomy(volume, spacing, "thorax")
    # the phantom's diaphragm domes rise to 70-90 mm above the thorax's lower end (slice 23)
    assert 60.0 <= slice_level_mm(series, round(anatomy.diaphragm_mm / spacing[0])) <= 100.0
    d = anatomy.diaphragm_mm
    weights = anatomy.longitudinal_weight(np.array([d, d - SUPERIOR_FALLOFF_MM / 2, d - SUPERIOR_FALLOFF_MM - 1,
                                                    d + INFERIOR_FALLOFF_MM / 2, d + INFERIOR_FALLOFF_MM + 1]))
    assert np.allclose(weights, [1.0, (1 + APEX_WEIGHT) / 2, APEX_WEIGHT, 0.5, 0.0])
    feet_first = dataclasses.replace(anatomy, head_first=False)
    assert np.allclose(feet_first.longitudinal_weight(np.array([d + 100.0, d - 100.0])),
                       anatomy.longitudinal_weight(np.array([d - 100.0, d + 100.0])))


def test_a_volume_without_lungs_has_its_diaphragm_just_above_its_superior_end():
    rows, cols = np.mgrid[:32, :32] - 15.5
    abdomen = np.where((rows / 12) ** 2 + (cols / 14) ** 2 < 1, 40.0, -1000.0).astype(np.float32)
    volume = np.repeat(abdomen[None], 6, axis=0)
    head_first = breathing_anatomy(volume, (5.0, 2.0, 2.0), "abdomen")
    feet_first = breathing_anatomy(volume, (5.0, 2.0, 2.0), "abdomen", head_first=False)
    assert head_first.moves and head_first.diaphragm_mm == -5.0 and feet_first.diaphragm_mm == 30.0
    weights = head_first.longitudinal_weight(np.arange(6) * 5.0)
    assert np.all(np.diff(weights) < 0) and weights[0] > 0.99
    assert np.allclose(feet_first.longitudinal_weight(np.arange(6) * 5.0), weights[::-1])


def test_bowel_gas_below_the_lungs_does_not_pull_the_diaphragm_down():
    # head first: lungs in slices 0-4 (largest at 2), liver 5-8, bowel gas at 9-10 above half the peak
    air = np.array([0.20, 0.30, 0.32, 0.28, 0.17, 0.02, 0.0, 0.0, 0.01, 0.18, 0.17])
    head_first = diaphragm_anatomy(air, 5.0, "thorax")
    feet_first = diaphragm_anatomy(air[::-1], 5.0, "thorax", head_first=False)
    assert head_first.diaphragm_mm == 4 * 5.0 and feet_first.diaphragm_mm == 6 * 5.0


def test_deformation_is_largest_near_the_diaphragm_and_spares_the_spine_and_the_air_around(thorax):
    volume, spacing, series = thorax
    anatomy = breathing_anatomy(volume, spacing, "thorax")
    diaphragm = round(anatomy.diaphragm_mm / spacing[0])
    deformed = deform_volume(volume, spacing, anatomy, (15.0, 4.0))
    change = np.abs(deformed - volume)
    per_slice = change.mean(axis=(1, 2))
    assert abs(int(np.argmax(per_slice)) - diaphragm) <= 2, per_slice
    assert per_slice[diaphragm] > 2 * per_slice[0]
    body = volume > -500
    far = ndimage.distance_transform_edt(~body, sampling=spacing) > WALL_MARGIN_MM + 5.0
    assert change[far].max() == 0.0
    for index in range(diaphragm - 6, min(diaphragm + 5, SLICES)):
        assert change[index][spine_region(series, index, 10.0)].max() < 1.0, index
    rows = np.flatnonzero(body[diaphragm].any(axis=1))
    assert change[diaphragm, : (rows.min() + rows.max()) // 2].mean() > 5 * change[diaphragm][
        spine_region(series, diaphragm)].mean()


@pytest.mark.parametrize("config", [FAN, CONE], ids=["fan", "cone"])
def test_artifacts_sit_at_the_diaphragm_and_chest_wall_and_not_at_the_spine(thorax, config):
    volume, spacing, series = thorax
    anatomy = breathing_anatomy(volume, spacing, "thorax")
    diaphragm = round(anatomy.diaphragm_mm / spacing[0])
    trace = sample_breathing(np.random.default_rng(3), RespiratoryConfig(), 61.0)
    energy = {}
    for index in (0, diaphragm):
        sharp, blurry = respiratory_pair(volume, spacing, anatomy, index, trace, config, start_s=0.3)
        body = ndimage.binary_fill_holes(volume[index] > -500)
        rows = np.flatnonzero(body.any(axis=1))
        anterior_wall = body & ~ndimage.binary_erosion(body, iterations=3)
        anterior_wall[(rows.min() + rows.max()) // 2:] = False
        squared = (blurry - sharp) ** 2
        energy[index] = (squared[body].mean(), squared[spine_region(series, index)].mean(),
                         squared[anterior_wall].mean())
    body_at_diaphragm, spine, wall = energy[diaphragm]
    assert body_at_diaphragm > 5 * energy[0][0], energy
    assert spine < 0.2 * body_at_diaphragm and wall > 3 * spine, energy


def test_view_times_follow_the_gantry():
    fan = view_times_s(RespiratoryConfig(geometry="fan", views=360, fan_rotation_s=0.5), start_s=3.0)
    assert np.all(np.diff(fan) > 0) and 3.0 < fan[0] < fan[-1] < 3.5 and np.isclose(fan.mean(), 3.25)
    short = view_times_s(RespiratoryConfig(geometry="cone", views=180, cone_arc_deg=200.0, cone_arc_s=60.0))
    assert np.isclose(short.mean(), 30.0) and np.isclose(short[-1] - short[0], 60.0 * 179 / 200)
    full = view_times_s(RespiratoryConfig(geometry="cone", views=180))
    assert np.isclose(full[0], 60.0 / 360) and np.isclose(full[-1], 60.0 * 359 / 360)


def test_bad_settings_are_refused_and_every_setting_has_its_unit():
    for bad, match in (({"geometry": "helical"}, "geometry"), ({"views": 1}, "views"),
                       ({"cone_arc_deg": 270.0}, "cone_arc_deg"), ({"period_s_min": 6.0}, "period_s_min"),
                       ({"state_step_mm": -1.0}, "state_step_mm"), ({"drift_mm_per_min_max": -1.0}, "drift")):
        with pytest.raises(ValueError, match=match):
            RespiratoryConfig(**bad).validate()
    for field in dataclasses.fields(RespiratoryConfig):
        assert "(" in field.metadata["help"] and field.metadata["help"].endswith(")"), field.name
    assert RespiratoryConfig().validate() == RespiratoryConfig()
    assert (FAN.state_step, CONE.state_step) == (FAN_STATE_STEP_MM, CONE_STATE_STEP_MM) == (1.0, 2.0)
    assert RespiratoryConfig(geometry="cone", state_step_mm=0.5).state_step == 0.5


def test_a_volume_with_nan_in_the_planes_a_pair_reads_is_refused(thorax):
    volume, spacing, _ = thorax
    anatomy = breathing_anatomy(volume, spacing, "thorax")
    trace = sample_breathing(np.random.default_rng(5), FAN, 61.0)
    reach = reach_slices(trace, spacing[0])
    assert reach < 10
    near, far = volume.copy(), volume.copy()
    near[16 + reach, 40, 40] = np.nan
    far[16 + reach + 1:, 40, 40] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        respiratory_pair(near, spacing, anatomy, 16, trace, FAN)
    assert np.array_equal(respiratory_pair(far, spacing, anatomy, 16, trace, FAN),
                          respiratory_pair(volume, spacing, anatomy, 16, trace, FAN))
    with pytest.raises(ValueError, match="NaN or infinite"):
        breathing_anatomy(far, spacing, "thorax")


def test_the_body_mask_is_smoothed_as_by_the_exact_gaussian():
    body = np.zeros((200, 150), dtype=bool)
    body[30:170, 20:130] = True
    body[60:90, 40:60] = False
    for sigma in ((12.3, 12.3), (7.0, 10.5), (2.0, 2.0)):
        exact = ndimage.gaussian_filter(body.astype(np.float32), sigma, mode="constant")
        assert np.abs(_smoothed(body, sigma) - exact).max() < 0.01, sigma
    assert np.array_equal(_smoothed(body, (2.0, 2.0)), ndimage.gaussian_filter(body.astype(np.float32), 2.0,
                                                                              mode="constant"))
