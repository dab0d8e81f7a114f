"""CT-like image noise and its measurement: the measurement half of the pairs' forward model.

Motion blurs the object; noise comes from the measurement, after the motion. So a pair is
    blurry = blur(object) + noise_b,    sharp = object + noise_s,
with noise_b and noise_s independent draws of the same statistics. What the object is depends on
the input slice:
- a noise-free input (a procedural phantom, or any image whose measured noise is below
  `NoiseConfig.free_below_hu`): the object is the input; both images get `ct_hu` of CT
  noise (the sharp image none with `clean_target`);
- a scanner image, which already carries its noise: the sharp image is the input as it is, and
  the blurry image, whose noise the blur has averaged away, gets the noise it lacks to be as noisy
  as the sharp one (`match_archive`).

CT noise is not white: filtered back-projection shapes it with the ramp filter times the
reconstruction kernel's roll-off. The model here is a radially symmetric noise power spectrum
    NPS(f) ∝ f · exp(-f² / (2 f_peak²)),  f in cycles/mm,
which is 0 at f = 0, peaks at `nps_peak_cycles_per_mm` (0.2-0.4 cycles/mm for soft-tissue
kernels) and rolls off above; the noise is Gaussian with standard deviation `ct_hu` (HU).

Noise is measured (`highpass_noise_hu`) as the robust standard deviation of a second-difference
high-pass (Immerkær 1996) over the flattest soft-tissue pixels, where image structure contributes
little.
All functions are pure (numpy/scipy); randomness comes from the caller's generator.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import fft, ndimage

from cli_shell.settings import setting

HIGHPASS = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], np.float32)
"""Immerkær's noise-estimation kernel: the difference of two Laplacians, blind to planes and ramps."""
TISSUE_HU = (-300.0, 300.0)
"""HU range of the pixels whose high-pass measures the noise (soft tissue and fat)."""
MIN_MEASURED_PIXELS = 500
"""Fewer usable pixels than this and the noise is measured over the whole image."""
MAD_TO_STD = 1.4826
"""Median absolute deviation -> standard deviation of a Gaussian."""
FLATTEST_FRACTION = 0.25
STRUCTURE_SIGMA_PX = 2.0
"""The noise is measured on the quarter of the tissue pixels with the least structure at this scale."""


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """The pairs' noise forward model (see the module docstring)."""

    ct_hu: float = setting(10.0, "std of the CT noise (HU) added to noise-free inputs (phantoms): to the blurry image "
                                 "and, independently, to the sharp one; 0 = no noise on noise-free inputs")
    nps_peak_cycles_per_mm: float = setting(0.3, "frequency (cycles/mm) where the CT noise power spectrum peaks "
                                                 "(ramp x Gaussian roll-off; 0.2-0.4 for soft-tissue kernels)")
    clean_target: bool = setting(False, "noise-free inputs keep a noise-free sharp target (only the blurry image "
                                        "gets noise)")
    match_archive: bool = setting(True, "scanner images: add CT noise to the blurry image until its measured "
                                              "noise matches the sharp image's (the blur averages noise away)")
    free_below_hu: float = setting(2.0, "inputs whose measured noise (HU) is below this are treated as "
                                              "noise-free objects (phantoms)")

    def validate(self) -> None:
        if self.ct_hu < 0 or self.free_below_hu < 0:
            raise ValueError(f"noise ct_hu and free_below_hu must be >= 0, got {self.ct_hu}, {self.free_below_hu}")
        if self.nps_peak_cycles_per_mm <= 0:
            raise ValueError(f"noise nps_peak_cycles_per_mm must be > 0, got {self.nps_peak_cycles_per_mm}")


@dataclasses.dataclass(frozen=True)
class PairNoise:
    """The noise of one pair, all in HU: what the input carried and what was added to each image."""

    input_measured_hu: float
    sharp_added_hu: float
    blurry_added_hu: float
    nps_peak_cycles_per_mm: float

    def as_record(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _rfft_weights(shape: tuple[int, int]) -> np.ndarray:
    """How often each rfft2 coefficient of a real [H, W] image stands in the full spectrum (1 or 2),
    so that sums over the half spectrum equal sums over the whole one."""
    weights = np.full((shape[0], shape[1] // 2 + 1), 2.0)
    weights[:, 0] = 1.0
    if shape[1] % 2 == 0:
        weights[:, -1] = 1.0
    return weights


@functools.lru_cache(maxsize=16)
def _nps_amplitude(shape: tuple[int, int], spacing_mm: tuple[float, float], peak_cycles_per_mm: float) -> np.ndarray:
    """sqrt(NPS) on the rfft2 grid of `shape`, scaled so that the noise it shapes has unit variance
    (read-only and cached: a series shares one shape and spacing)."""
    fy = np.fft.fftfreq(shape[0], d=spacing_mm[0])[:, None]
    fx = np.fft.rfftfreq(shape[1], d=spacing_mm[1])[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    nps = f * np.exp(-0.5 * (f / peak_cycles_per_mm) ** 2)
    total = float(np.sum(_rfft_weights(shape) * nps))
    amplitude = np.sqrt(nps * (shape[0] * shape[1] / total)) if total > 0 else np.zeros_like(nps)
    amplitude.setflags(write=False)
    return amplitude


def ct_noise(shape: tuple[int, int], sigma_hu: float, spacing_mm: tuple[float, float], peak_cycles_per_mm: float,
             rng: np.random.Generator) -> np.ndarray:
    """Gaussian CT-like noise float32 [H, W] of expected std `sigma_hu` (HU), NPS peaking at
    `peak_cycles_per_mm`; `spacing_mm` is the (row, column) pixel spacing."""
    if sigma_hu <= 0:
        return np.zeros(shape, np.float32)
    white = rng.standard_normal(shape)
    shaped = fft.irfft2(fft.rfft2(white) * _nps_amplitude(shape, spacing_mm, peak_cycles_per_mm), s=shape)
    return (shaped * sigma_hu).astype(np.float32)


@functools.lru_cache(maxsize=16)
def highpass_gain(shape: tuple[int, int], spacing_mm: tuple[float, float], peak_cycles_per_mm: float) -> float:
    """What `highpass_noise_hu` measures on unit-std CT noise of this spectrum (< 1: the measure sees
    the fine grain, not the coarse part of correlated noise; cached like `_nps_amplitude`)."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    response = (2.0 - 2.0 * np.cos(2 * np.pi * ky)) * (2.0 - 2.0 * np.cos(2 * np.pi * kx))
    amplitude = _nps_amplitude(shape, spacing_mm, peak_cycles_per_mm)
    variance = float(np.sum(_rfft_weights(shape) * (amplitude * response) ** 2)) / (shape[0] * shape[1])
    return float(np.sqrt(variance) / np.linalg.norm(HIGHPASS))


def flattest_tissue(reference_hu: np.ndarray) -> np.ndarray:
    """Where noise is measured in an image [H, W] (HU) shaped like `reference_hu`, bool [H, W]: pixels
    whose 3x3 neighbourhood in `reference_hu` lies within `TISSUE_HU` (with fewer than
    `MIN_MEASURED_PIXELS` of them, every pixel), and of those only the `FLATTEST_FRACTION` with the
    least structure (gradient magnitude of `reference_hu` smoothed by a Gaussian of
    `STRUCTURE_SIGMA_PX`): fine anatomy is not noise."""
    reference = np.asarray(reference_hu, dtype=np.float32)
    inside = (reference > TISSUE_HU[0]) & (reference < TISSUE_HU[1])
    flat = ndimage.binary_erosion(inside, np.ones((3, 3), bool))
    if np.count_nonzero(flat) < MIN_MEASURED_PIXELS:
        flat = np.ones_like(flat)
    structure = ndimage.gaussian_gradient_magnitude(reference, STRUCTURE_SIGMA_PX)
    return flat & (structure <= np.quantile(structure[flat], FLATTEST_FRACTION))


def highpass_noise_hu(hu: np.ndarray, flattest: np.ndarray | None = None) -> float:
    """Noise of an image [H, W] (HU): robust std of its high-pass over the flattest soft tissue.

    The high-pass is normalised so that white noise of std s measures s. It is measured where
    `flattest` is set (default: `flattest_tissue` of the image itself; pass that of another image,
    e.g. the sharp one of a pair, to measure both where that image is flat). Below ~256 pixels
    across a body, anatomy is fine everywhere and a noise-free image may measure a few HU.
    """
    image = hu.astype(np.float32)
    residual = ndimage.convolve(image, HIGHPASS, mode="reflect") / np.linalg.norm(HIGHPASS)
    if flattest is None:
        flattest = flattest_tissue(image)
    return float(MAD_TO_STD * np.median(np.abs(residual[flattest])))


def add_pair_noise(sharp_hu: np.ndarray, blurry_hu: np.ndarray, spacing_mm: tuple[float, float],
                   config: NoiseConfig, rng: np.random.Generator,
                   input_hu: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, PairNoise]:
    """The noisy (sharp, blurry) float32 [H, W] HU of a pair made from `sharp_hu` (the input slice,
    or the static reconstruction of the projection and respiratory models) and its noise-free blur
    `blurry_hu`. Whether the input is noise-free is measured on `input_hu`, the input slice (default
    `sharp_hu`): a static reconstruction of a noise-free phantom is still noise-free, though its
    sampling texture measures a few HU."""
    shape = sharp_hu.shape
    peak = config.nps_peak_cycles_per_mm
    flattest = flattest_tissue(sharp_hu)
    reference = sharp_hu if input_hu is None else input_hu
    measured = highpass_noise_hu(reference, flattest=flattest if reference is sharp_hu else None)
    if measured < config.free_below_hu:
        sharp_sigma = 0.0 if config.clean_target else config.ct_hu
        blurry_sigma = config.ct_hu
    else:
        sharp_sigma = 0.0
        blurry_sigma = 0.0
        if config.match_archive:
            target = measured if reference is sharp_hu else highpass_noise_hu(sharp_hu, flattest=flattest)
            lacking = target ** 2 - highpass_noise_hu(blurry_hu, flattest=flattest) ** 2
            blurry_sigma = float(np.sqrt(max(lacking, 0.0))) / highpass_gain(shape, spacing_mm, peak)
    blurry_noise = ct_noise(shape, blurry_sigma, spacing_mm, peak, rng)
    sharp_noise = ct_noise(shape, sharp_sigma, spacing_mm, peak, rng)
    noise = PairNoise(measured, sharp_sigma, blurry_sigma, peak)
    return sharp_hu.astype(np.float32) + sharp_noise, blurry_hu.astype(np.float32) + blurry_noise, noise
