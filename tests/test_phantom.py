"""The procedural phantom's anatomy: deterministic, noise-free, realistic HU, structure where motion
blur shows (lung vessel trees, sulci, air cells, bowel gas levels) and smooth along z."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from pipeline import phantom
from pipeline.noise import highpass_noise_hu
from pipeline.phantom import phantom_hu, phantom_series, slice_level_mm

HEAD, THORAX, ABDOMEN = 0, 1, 2


def enclosed(mask: np.ndarray) -> np.ndarray:
    """The parts of `mask` not connected to the image border (air inside the body)."""
    labels, _ = ndimage.label(mask)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask & ~np.isin(labels, border)


def thin_sharp(series: phantom.PhantomSeries) -> phantom.PhantomSeries:
    """`series` reconstructed at the thin, sharp end of the scanner ranges: fine anatomy shows
    there, as on a thin-slice scan with a sharp kernel."""
    return dataclasses.replace(series, slice_thickness_mm=phantom.SLICE_THICKNESS_MM[0],
                               psf_fwhm_mm=phantom.PSF_FWHM_MM[0])


def components(mask: np.ndarray) -> np.ndarray:
    """Areas (pixels) of the connected components of `mask`."""
    labels, count = ndimage.label(mask)
    return np.bincount(labels.ravel(), minlength=count + 1)[1:]


@pytest.mark.parametrize("patient", [HEAD, THORAX, ABDOMEN])
def test_same_seed_gives_the_same_slice_and_another_seed_another(patient):
    series = phantom_series(patient, 12, 96, seed=4)
    first = phantom_hu(series, 5)
    phantom._patient.cache_clear()
    again = phantom_hu(phantom_series(patient, 12, 96, seed=4), 5)
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and first.shape == (96, 96)
    assert not np.array_equal(first, phantom_hu(phantom_series(patient, 12, 96, seed=5), 5))
    assert not np.array_equal(first, phantom_hu(phantom_series(patient + 3, 12, 96, seed=4), 5))


@pytest.mark.parametrize("patient", [HEAD, THORAX, ABDOMEN])
def test_slices_are_noise_free(patient):
    """The pipeline's noise estimator (white noise of std s measures s) finds well under the 2 HU
    below which it treats an image as noise-free, and a good part of the body is flat to 2 HU
    (noise of a few HU would leave no pixel that flat)."""
    hu = phantom_hu(phantom_series(patient, 40, 512, seed=0), 20).astype(np.float64)
    assert highpass_noise_hu(hu) < 0.5
    body = ndimage.binary_erosion(hu > -500, iterations=3)
    mean, mean_sq = ndimage.uniform_filter(hu, 5), ndimage.uniform_filter(hu * hu, 5)
    local_std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    assert np.mean(local_std[body] < 2.0) > 0.1


def test_hu_ranges_are_realistic():
    head = phantom_hu(phantom_series(HEAD, 40, 256, seed=0), 8)
    thorax = phantom_hu(phantom_series(THORAX, 40, 256, seed=0), 15)
    abdomen = phantom_hu(phantom_series(ABDOMEN, 40, 256, seed=0), 20)
    for hu in (head, thorax, abdomen):
        assert hu.min() >= -1000.5 and hu.max() < 2500
        assert hu[0, 0] == pytest.approx(-1000.0)
    brain = head[(head > 15) & (head < 60)]
    assert 22 < np.median(brain) < 42
    assert np.mean(head > 1200) > 0.005
    lungs = ndimage.binary_fill_holes(enclosed(thorax < -600))
    assert lungs.mean() > 0.05
    assert -880 < np.median(thorax[lungs]) < -760
    assert np.sum((thorax > 250) & (thorax < 450)) > 100        # contrast-enhanced blood
    assert np.sum((abdomen > 150) & (abdomen < 320)) > 50        # enhanced aorta / veins
    fat = abdomen[(abdomen > -150) & (abdomen < -50)]
    assert fat.size > 0.05 * abdomen.size and -115 < np.median(fat) < -80


def test_lungs_hold_branching_vessels_down_to_one_pixel():
    hu = phantom_hu(thin_sharp(phantom_series(THORAX, 40, 512, seed=0)), 18)
    lungs = ndimage.binary_fill_holes(enclosed(hu < -600))
    areas = components(lungs & (hu > -500))
    assert len(areas) > 80
    assert np.sum(areas <= 4) > 40      # vessels of 1-2 px diameter
    assert np.sum(areas >= 40) > 5      # large, in-plane branching trunks
    lumens = components(lungs & (hu < -930))   # parenchyma is -880..-760: darker is bronchial air
    assert np.sum(lumens >= 3) > 3


def test_head_has_sulci_grey_white_matter_diploe_and_air_cells():
    series = phantom_series(HEAD, 40, 512, seed=0)
    high = phantom_hu(series, 8)
    assert slice_level_mm(series, 8) > 100
    brain = ndimage.binary_erosion((high > -20) & (high < 80), iterations=2)
    csf = brain & (high > -5) & (high < 15)
    assert csf.sum() > 0.02 * brain.sum() and len(components(csf)) > 20
    tissue = high[brain & (high > 15)]
    assert np.mean(tissue < 31) > 0.2 and np.mean(tissue > 34) > 0.1   # white and grey matter
    skull = (high > 200) & ndimage.binary_dilation(high > 1200, iterations=4)
    assert np.mean((high[skull] > 250) & (high[skull] < 1000)) > 0.1    # diploe between the tables
    low = phantom_hu(series, 30)
    assert slice_level_mm(series, 30) < 40
    cells = components(enclosed(low < -900))
    assert np.sum((cells > 3) & (cells < 400)) > 10                   # mastoid / ethmoid cells


def test_abdomen_has_bowel_gas_with_sharp_fluid_levels():
    hu = phantom_hu(phantom_series(ABDOMEN, 40, 512, seed=0), 20)
    gas = enclosed(hu < -900)
    assert gas.sum() > 300
    levels = (hu[:-2] < -900) & (hu[2:] > -150)      # gas in front, fluid behind, within 2 px
    assert levels.sum() > 30


def test_bones_have_a_cortical_shell_around_trabecular_bone():
    hu = phantom_hu(thin_sharp(phantom_series(THORAX, 40, 512, seed=0)), 20)
    core = ndimage.binary_erosion(ndimage.binary_fill_holes(hu > 500) & (hu <= 500), iterations=1)
    assert core.sum() > 300
    assert 120 < hu[core].mean() < 300 and hu[core].std() > 25


@pytest.mark.parametrize("patient", [HEAD, THORAX, ABDOMEN])
def test_neighbouring_slices_look_alike(patient):
    series = phantom_series(patient, 40, 128, seed=0)
    stack = [np.clip(phantom_hu(series, index), -1000, 1000).ravel() for index in (14, 15, 16, 17, 28)]
    neighbours = [np.corrcoef(a, b)[0, 1] for a, b in zip(stack[:3], stack[1:4])]
    assert min(neighbours) > 0.9
    assert np.corrcoef(stack[0], stack[4])[0, 1] < min(neighbours)


def test_slices_carry_the_series_in_plane_psf():
    """The transfer function from the slab-averaged anatomy to the slice falls to 50% at the
    frequency where a Gaussian of the series' FWHM (mm) does."""
    series = phantom_series(THORAX, 40, 512, seed=0)
    slab = np.mean([phantom.anatomy_hu(series, 20, float(o)) for o in phantom.slab_offsets_mm(series)], axis=0)
    image = phantom_hu(series, 20)
    before, after = np.fft.rfft2(slab - slab.mean()), np.fft.rfft2(image - image.mean())
    fy = np.fft.fftfreq(512, series.pixel_spacing_mm)[:, None]
    fx = np.fft.rfftfreq(512, series.pixel_spacing_mm)[None, :]
    radius = np.hypot(fx, fy)
    sigma_mm = series.psf_fwhm_mm / phantom.FWHM_PER_SIGMA
    half = np.sqrt(np.log(2.0) / 2.0) / (np.pi * sigma_mm)          # MTF 0.5 of the Gaussian (cycles/mm)
    ring = np.abs(radius - half) < 0.02
    transfer = np.sum(np.abs(after[ring]) * np.abs(before[ring])) / np.sum(np.abs(before[ring]) ** 2)
    assert transfer == pytest.approx(0.5, abs=0.05)
    assert phantom.PSF_FWHM_MM[0] <= series.psf_fwhm_mm <= phantom.PSF_FWHM_MM[1]


def test_a_slice_is_a_slab_so_oblique_surfaces_are_partial_volume_ramps():
    """Near the vertex the skull crosses the slice obliquely: averaging over the slab changes
    pixels there by hundreds of HU against the blurred centre plane, and almost nothing elsewhere."""
    series = phantom_series(HEAD, 40, 512, seed=0)
    sigma = series.psf_fwhm_mm / phantom.FWHM_PER_SIGMA / series.pixel_spacing_mm
    centre = ndimage.gaussian_filter(phantom.anatomy_hu(series, 2), sigma, mode="nearest")
    difference = np.abs(phantom_hu(series, 2) - centre)
    body = centre > -500
    assert np.sum(difference > 100) > 200
    assert np.mean(difference[body] < 5) > 0.6


def test_series_draw_thin_to_thick_slices_averaged_over_one_plane_per_mm():
    series = [phantom_series(patient, 8, 64, seed=1) for patient in range(30)]
    thicknesses = np.array([s.slice_thickness_mm for s in series])
    low, high = phantom.SLICE_THICKNESS_MM
    assert np.all((thicknesses >= low) & (thicknesses <= high))
    assert thicknesses.min() < low + 0.5 and thicknesses.max() > high - 0.5
    for each in series:
        offsets = phantom.slab_offsets_mm(each)
        assert len(offsets) == max(3, int(np.ceil(each.slice_thickness_mm)))
        assert offsets[0] == pytest.approx(-offsets[-1])
        assert offsets[-1] - offsets[0] == pytest.approx(each.slice_thickness_mm * (1 - 1 / len(offsets)))
    assert phantom_series(4, 8, 64, seed=1).slice_thickness_mm == series[4].slice_thickness_mm
