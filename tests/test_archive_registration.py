"""FB -> DIBH registration on phantom volumes with a known rigid motion and a breathing-like warp."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.archives.registration import (
    RegistrationConfig,
    SeriesVolumeError,
    ncc,
    read_series_volume,
    register_fb_to_dibh,
    rigid_summary,
)
from pipeline.phantom import phantom_series
from pipeline.sources import write_phantom_series

TRANSLATION_MM = (4.0, -3.0, 2.0)
"""|t| = 5.4 mm."""
ROTATION_DEG = (1.0, -1.5, 3.0)
CONFIG = RegistrationConfig(metric_sampling_fraction=0.1)


def volume_centre(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))


def known_rigid(image: sitk.Image) -> sitk.Euler3DTransform:
    """Maps DIBH points to FB points (the direction ITK registration estimates)."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(volume_centre(image)))
    transform.SetRotation(*(math.radians(a) for a in ROTATION_DEG))
    transform.SetTranslation(TRANSLATION_MM)
    return transform


def breathing_field(image: sitk.Image) -> sitk.DisplacementFieldTransform:
    """Smooth breathing-like warp: the body widens in-plane by up to 2 % mid-volume (4 mm at the
    chest wall) and stretches 2 % along z near the axis. Symmetric about the centre, so it adds
    no rigid motion of its own."""
    z_size = image.GetSize()[2]
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in reversed(image.GetSize())), indexing="ij")
    points = np.asarray(image.GetOrigin()) + np.stack([xx, yy, zz], -1) * np.asarray(image.GetSpacing())
    rel = points - volume_centre(image)
    weight = 0.5 * (1 + np.cos(np.pi * (2 * zz / (z_size - 1) - 1)))
    displacement = np.zeros_like(rel)
    displacement[..., 0] = 0.02 * rel[..., 0] * weight
    displacement[..., 1] = 0.02 * rel[..., 1] * weight
    displacement[..., 2] = 0.02 * rel[..., 2] * np.exp(-(rel[..., 0] ** 2 + rel[..., 1] ** 2) / (2 * 80.0 ** 2))
    field = sitk.GetImageFromArray(displacement, isVector=True)
    field.CopyInformation(image)
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """DIBH = thorax phantom 96x96x36 read from DICOM; FB = DIBH moved rigidly, warped, re-noised;
    unrelated = an abdomen phantom of another patient."""
    root = tmp_path_factory.mktemp("registration")
    dibh = read_series_volume(write_phantom_series(phantom_series(1, 36, 96, seed=0), str(root / "dibh")))
    rigid = known_rigid(dibh)
    moved = sitk.Resample(dibh, dibh, sitk.CompositeTransform([breathing_field(dibh), rigid.GetInverse()]),
                          sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    noisy = sitk.GetArrayFromImage(moved) + np.random.default_rng(5).normal(0, 15, moved.GetSize()[::-1]).astype(np.float32)
    fb = sitk.GetImageFromArray(noisy)
    fb.CopyInformation(moved)
    unrelated = read_series_volume(write_phantom_series(phantom_series(2, 36, 96, seed=1), str(root / "other")))
    return dibh, fb, unrelated, rigid, root


def rotation_error_deg(rotation_deg, truth: sitk.Euler3DTransform) -> float:
    estimate = sitk.Euler3DTransform()
    estimate.SetRotation(*(math.radians(a) for a in rotation_deg))
    relative = np.asarray(estimate.GetMatrix()).reshape(3, 3) @ np.asarray(truth.GetMatrix()).reshape(3, 3).T
    return math.degrees(math.acos(min(1.0, (np.trace(relative) - 1) / 2)))


def test_series_volume_has_dicom_geometry_and_hu(volumes, tmp_path):
    dibh = volumes[0]
    series = phantom_series(1, 36, 96, seed=0)
    assert dibh.GetSize() == (96, 96, 36)
    assert dibh.GetSpacing() == pytest.approx((series.pixel_spacing_mm, series.pixel_spacing_mm, 280.0 / 35), rel=1e-5)
    assert dibh.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert dibh.GetOrigin()[2] == pytest.approx(0.0, abs=1e-3)  # the lowest slice: the thorax's lower end
    hu = sitk.GetArrayFromImage(dibh)
    assert hu.dtype == np.float32 and hu.min() >= -1024 and np.percentile(hu, 99) > 200
    mixed = write_phantom_series(phantom_series(1, 3, 32, seed=0), str(tmp_path / "a"))
    mixed += write_phantom_series(phantom_series(4, 3, 32, seed=0), str(tmp_path / "b"))
    with pytest.raises(SeriesVolumeError) as caught:
        read_series_volume(mixed)
    assert caught.value.reason == "mixed_series"
    gappy = write_phantom_series(phantom_series(1, 5, 32, seed=0), str(tmp_path / "c"))
    with pytest.raises(SeriesVolumeError) as caught:
        read_series_volume(gappy[:2] + gappy[3:])
    assert caught.value.reason == "non_uniform_spacing"


def test_registration_recovers_the_rigid_motion_and_the_gate_accepts(volumes):
    dibh, fb, _, rigid, _ = volumes
    resampled, result = register_fb_to_dibh(fb, dibh, CONFIG)
    assert resampled.shape == (36, 96, 96) and resampled.dtype == np.float32
    assert result.transform_kind == "rigid" and len(result.transform_parameters) == 6
    assert np.linalg.norm(np.subtract(result.translation_mm, TRANSLATION_MM)) < 1.0
    assert rotation_error_deg(result.rotation_deg, rigid) < 0.5
    assert result.accepted and result.reason == "" and result.ncc_body > CONFIG.min_ncc
    assert result.body_overlap > 0.9 and len(result.usable_slices) >= 30
    dibh_hu = sitk.GetArrayFromImage(dibh)
    body = dibh_hu > -500
    before = ncc(sitk.GetArrayFromImage(fb)[body], dibh_hu[body])
    assert result.ncc_body > before + 0.2

    again, repeated = register_fb_to_dibh(fb, dibh, CONFIG)
    assert repeated == result and np.array_equal(again, resampled)


def test_gate_rejects_an_unrelated_series_with_the_metric_value(volumes):
    dibh, _, unrelated, _, _ = volumes
    _, result = register_fb_to_dibh(unrelated, dibh, CONFIG)
    assert not result.accepted
    assert result.reason.startswith(("low_ncc", "low_overlap"))
    if result.reason.startswith("low_ncc"):
        assert result.reason == f"low_ncc {result.ncc_body:.2f} < {CONFIG.min_ncc:.2f}" and result.ncc_body < 0.6


def test_given_transform_file_is_applied_without_registration(volumes):
    dibh, fb, _, rigid, root = volumes
    path = str(root / "fb_to_dibh.tfm")
    sitk.WriteTransform(rigid, path)
    resampled, result = register_fb_to_dibh(fb, dibh, CONFIG, transform_file=path)
    assert result.transform_kind == "file:Euler3DTransform" and result.metric_value is None
    assert result.translation_mm == pytest.approx(TRANSLATION_MM, abs=1e-6)
    assert result.rotation_deg == pytest.approx(ROTATION_DEG, abs=1e-6)
    expected = sitk.GetArrayFromImage(sitk.Resample(fb, dibh, rigid, sitk.sitkLinear, -1000.0, sitk.sitkFloat32))
    np.testing.assert_array_equal(resampled, expected)
    assert result.accepted
    (root / "broken.tfm").write_text("not a transform")
    with pytest.raises(ValueError, match="broken.tfm"):
        register_fb_to_dibh(fb, dibh, CONFIG, transform_file=str(root / "broken.tfm"))


def test_affine_refinement_follows_the_breathing_warp_better(volumes):
    dibh, fb, _, rigid, _ = volumes
    _, rigid_result = register_fb_to_dibh(fb, dibh, CONFIG)
    _, affine_result = register_fb_to_dibh(fb, dibh, dataclasses.replace(CONFIG, affine=True, affine_iterations=60))
    assert affine_result.transform_kind == "affine" and len(affine_result.transform_parameters) == 12
    assert affine_result.ncc_body > rigid_result.ncc_body
    assert np.linalg.norm(np.subtract(affine_result.translation_mm, TRANSLATION_MM)) < 1.5


def test_rigid_summary_and_config_checks():
    transform = sitk.Euler3DTransform((10.0, 0.0, 0.0), 0.0, 0.0, math.radians(2.0), (1.0, 2.0, 3.0))
    translation, rotation = rigid_summary(transform, (10.0, 0.0, 0.0))
    assert translation == pytest.approx((1.0, 2.0, 3.0)) and rotation == pytest.approx((0.0, 0.0, 2.0))
    assert ncc(np.arange(5.0), 2 * np.arange(5.0) + 1) == pytest.approx(1.0)
    assert ncc(np.ones(4), np.arange(4.0)) == 0.0
    with pytest.raises(ValueError, match="sampling_seed"):
        RegistrationConfig(sampling_seed=0).validate()
    with pytest.raises(ValueError, match="one entry per resolution level"):
        RegistrationConfig(shrink_factors=(4, 2, 1), smoothing_sigmas_mm=(1.0,)).validate()
