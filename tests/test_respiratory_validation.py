"""Breathing-artifact measures (pipeline/respiratory_measures.py) against closed-form values on synthetic volumes."""

import math

import numpy as np
import pytest
from scipy import special

from pipeline.respiratory_measures import (
    anterior_wall_points,
    diaphragm_points,
    edge_normals,
    edge_profiles,
    edge_width_mm,
    edge_widths_mm,
    homogeneous_tissue_mask,
    hu_bias_hu,
    liver_mask,
    lung_base_mask,
    plateau_levels_hu,
    streak_energy_hu2,
)

STEP_MM = 0.25
OFFSETS_MM = np.arange(-20.0, 20.0 + STEP_MM / 2, STEP_MM)
LUNG, TISSUE = -850.0, 60.0


def erf_edge(sigma_mm, centre_mm=0.0):
    return LUNG + (TISSUE - LUNG) * 0.5 * (1 + special.erf((OFFSETS_MM - centre_mm) / (sigma_mm * math.sqrt(2))))


def test_edge_width_of_a_gaussian_blurred_step_is_2_56_sigma():
    for sigma in (1.0, 2.0, 5.0):
        assert edge_width_mm(erf_edge(sigma), STEP_MM, LUNG, TISSUE) == pytest.approx(2 * 1.2816 * sigma, rel=0.01)


def test_edge_width_of_a_linear_ramp_is_80_percent_of_it():
    ramp = np.interp(OFFSETS_MM, [-6.0, 6.0], [LUNG, TISSUE])
    assert edge_width_mm(ramp, STEP_MM, LUNG, TISSUE) == pytest.approx(0.8 * 12.0, abs=1e-6)


def test_a_doubled_edge_counts_whole_and_far_structures_do_not():
    ghost = 0.5 * (erf_edge(0.5, -5.0) + erf_edge(0.5, 5.0))
    half_step_10_percent = math.sqrt(2) * special.erfinv(0.6) * 0.5
    assert edge_width_mm(ghost, STEP_MM, LUNG, TISSUE) == pytest.approx(10.0 + 2 * half_step_10_percent, abs=0.05)
    vessel = erf_edge(1.0) + np.where(np.abs(OFFSETS_MM + 15.0) < 1.5, 700.0, 0.0)
    assert edge_width_mm(vessel, STEP_MM, LUNG, TISSUE) == pytest.approx(2.5632, abs=0.02)


def test_edge_width_is_nan_without_contrast_or_crossing():
    assert math.isnan(edge_width_mm(erf_edge(1.0), STEP_MM, 0.0, 100.0))
    assert math.isnan(edge_width_mm(np.full(OFFSETS_MM.size, LUNG), STEP_MM, LUNG, TISSUE))


def test_plateau_levels_are_the_tissues_either_side():
    assert plateau_levels_hu(erf_edge(1.0), STEP_MM) == pytest.approx((LUNG, TISSUE), abs=0.01)
    with pytest.raises(ValueError, match="does not reach"):
        plateau_levels_hu(erf_edge(1.0)[70:-70], STEP_MM)


def dome_volume(spacing=(2.0, 1.5, 1.5), shape=(40, 64, 64), top=20):
    """Slice 0 at the head: an air ring, a body disc, lung (-850) above slice `top`, tissue (60) from it down."""
    z, y, x = np.indices(shape)
    radius_mm = np.hypot((y - shape[1] / 2) * spacing[1], (x - shape[2] / 2) * spacing[2])
    volume = np.full(shape, -1000.0, dtype=np.float32)
    body = radius_mm < 40.0
    volume[body] = TISSUE
    volume[body & (z < top) & (radius_mm < 30.0)] = LUNG
    return volume, spacing


def test_diaphragm_points_lie_on_the_flat_dome_with_normals_towards_the_feet():
    volume, spacing = dome_volume()
    points = diaphragm_points(volume, spacing, diaphragm_index=20)
    assert len(points) > 100 and set(points[:, 0]) == {20}
    normals = edge_normals(volume, spacing, points)
    assert np.median(normals[:, 0]) > 0.99 and np.all(normals[:, 0] >= math.cos(math.radians(30)))
    assert len(diaphragm_points(volume, spacing, diaphragm_index=0, within_mm=10.0)) == 0
    flipped = diaphragm_points(volume[::-1], spacing, diaphragm_index=19, head_first=False)
    assert set(flipped[:, 0]) == {19}


def test_edge_profiles_sample_along_the_normal_in_mm():
    volume, spacing = dome_volume()
    point = np.array([[20, 32, 32]])
    profile = edge_profiles(volume, spacing, point, np.array([[1.0, 0.0, 0.0]]), 8.0, 2.0)[0]
    np.testing.assert_allclose(profile, [LUNG] * 4 + [TISSUE] * 5)


def test_edge_widths_of_the_sharp_volume_and_of_a_z_smeared_copy():
    volume, spacing = dome_volume(spacing=(1.0, 1.5, 1.5), shape=(80, 64, 64), top=40)
    points = diaphragm_points(volume, spacing, diaphragm_index=40)
    smeared = np.mean([np.roll(volume, shift, axis=0) for shift in range(-5, 5)], axis=0)
    sharp_widths = edge_widths_mm(volume, volume, spacing, points, 15.0, 0.25)
    smeared_widths = edge_widths_mm(smeared, volume, spacing, points, 15.0, 0.25)
    assert np.nanmedian(sharp_widths) < 1.0
    assert np.nanmedian(smeared_widths) == pytest.approx(0.8 * 10.0, abs=0.5)


def test_anterior_wall_points_are_the_first_body_row_of_central_columns():
    volume, spacing = dome_volume()
    points = anterior_wall_points(volume[:1])
    front = np.argmax(volume[0] > -500, axis=0)
    assert len(points) > 10
    assert all(row == front[column] for _, row, column in points)


def test_streak_energy_and_bias_of_known_patterns():
    spacing = (2.0, 1.0, 1.0)
    flat = np.full((3, 64, 64), 40.0, dtype=np.float32)
    mask = np.zeros(flat.shape, dtype=bool)
    mask[:, 16:48, 16:48] = True
    assert streak_energy_hu2(flat, mask, spacing) == pytest.approx(0.0, abs=1e-6)
    checker = flat + 10.0 * (-1.0) ** np.indices(flat.shape)[1:].sum(axis=0)
    assert streak_energy_hu2(checker, mask, spacing) == pytest.approx(100.0, rel=0.01)
    assert math.isnan(streak_energy_hu2(flat, np.zeros_like(mask), spacing))
    assert hu_bias_hu(flat + 7.0, flat, mask) == pytest.approx(7.0)
    assert math.isnan(hu_bias_hu(flat, flat, np.zeros_like(mask)))


def test_homogeneous_tissue_keeps_away_from_edges():
    volume, spacing = dome_volume()
    mask = homogeneous_tissue_mask(volume, spacing, radius_mm=5.0)
    assert mask[35, 32, 32] and not mask[5, 32, 32]
    assert not mask[35, 32, 32 + int(38 / 1.5)]
    assert not mask[19, 32, 32] and not mask[20, 32, 32]


def test_lung_base_and_liver_masks_sit_either_side_of_the_diaphragm():
    volume, spacing = dome_volume()
    lung = lung_base_mask(volume, spacing, diaphragm_index=20, above_mm=10.0)
    assert set(np.flatnonzero(lung.any(axis=(1, 2)))) == {15, 16, 17, 18, 19}
    liver = liver_mask(volume, spacing, diaphragm_index=20, below_mm=20.0, erode_mm=3.0, depth_mm=5.0)
    slices = np.flatnonzero(liver.any(axis=(1, 2)))
    assert slices.min() == 20 and slices.max() == 30
    assert not liver[:, :, 32:].any()
    assert np.all(volume[liver] == TISSUE)
