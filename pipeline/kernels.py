"""Motion-blur kernels (Boracchi & Foi 2012, as used by DeblurGAN) and blurring in HU.

Pure functions. The random part is `sample_motion_params(rng, config)`; everything after it
(`motion_trajectory`, `motion_psf`, `blur_hu`) is deterministic given its arguments.

Model: the camera (here: the patient relative to the scanner) follows a 2-D random walk with
inertia. At each of `samples` steps the velocity gets a Gaussian shake, a pull back towards the
start (centripetal), and with a small probability an impulsive jump that roughly reverses it; the
speed is kept constant so the whole path has length `length_px`. Integrating the first `exposure`
fraction of the path on a sub-pixel grid gives the point-spread function (PSF).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import signal

from cli_shell.settings import setting


@dataclasses.dataclass(frozen=True)
class MotionConfig:
    """Ranges of the random-trajectory motion kernels (DeblurGAN's generator by default)."""

    samples: int = setting(2000, "trajectory samples (steps of the random walk)")
    length_px_min: float = setting(60.0, "shortest trajectory path length (pixels)")
    length_px_max: float = setting(60.0, "longest trajectory path length (pixels)")
    anxiety_min: float = setting(0.003, "lower bound of the shake strength ('exploration'), drawn uniformly")
    anxiety_max: float = setting(0.01, "upper bound of the shake strength ('exploration'); DeblurGAN draws it from 0.003-0.01")
    centripetal_max: float = setting(0.7, "upper bound of the pull back to the start, drawn uniformly")
    jump_probability_max: float = setting(0.2, "upper bound of the impulsive-jump factor (x anxiety = per-step probability)")
    gaussian_shake_max: float = setting(10.0, "upper bound of the Gaussian velocity shake, drawn uniformly")
    exposures: tuple[float, ...] = setting((0.1, 0.5, 1.0), "exposure fractions of the path to integrate, one drawn per kernel (DeblurGAN's)")
    psf_max_size: int = setting(64, "largest PSF side (pixels); longer paths are scaled down to fit")

    def validate(self) -> None:
        if self.samples < 2:
            raise ValueError(f"motion samples must be >= 2, got {self.samples}")
        if not 0 <= self.length_px_min <= self.length_px_max:
            raise ValueError(f"need 0 <= length_px_min <= length_px_max, got {self.length_px_min}, {self.length_px_max}")
        if not 0 <= self.anxiety_min <= self.anxiety_max:
            raise ValueError(f"need 0 <= anxiety_min <= anxiety_max, got {self.anxiety_min}, {self.anxiety_max}")
        if not self.exposures or any(not 0 < e <= 1 for e in self.exposures):
            raise ValueError(f"exposures must be fractions in (0, 1], got {self.exposures}")
        if not 3 <= self.psf_max_size <= 64:
            raise ValueError(f"psf_max_size must be in [3, 64] pixels, got {self.psf_max_size}")


@dataclasses.dataclass(frozen=True)
class MotionParams:
    """Parameters of one motion trajectory (units: pixels, radians, fractions)."""

    length_px: float
    anxiety: float
    centripetal: float
    jump_probability: float
    gaussian_shake: float
    exposure: float
    initial_angle_rad: float
    samples: int
    walk_seed: int


def sample_motion_params(rng: np.random.Generator, config: MotionConfig) -> MotionParams:
    """Draws trajectory parameters from the ranges in `config` (DeblurGAN's by default)."""
    anxiety = rng.uniform(config.anxiety_min, config.anxiety_max)
    return MotionParams(
        length_px=float(rng.uniform(config.length_px_min, config.length_px_max)),
        anxiety=float(anxiety),
        centripetal=float(config.centripetal_max * rng.uniform()),
        jump_probability=float(config.jump_probability_max * rng.uniform() * anxiety),
        gaussian_shake=float(config.gaussian_shake_max * rng.uniform()),
        exposure=float(rng.choice(np.asarray(config.exposures, dtype=np.float64))),
        initial_angle_rad=float(2.0 * math.pi * rng.uniform()),
        samples=int(config.samples),
        walk_seed=int(rng.integers(0, 2**63 - 1)),
    )


def motion_trajectory(params: MotionParams) -> np.ndarray:
    """Positions of the random walk as complex numbers x + iy (pixels), shape [samples].

    Starts at 0; consecutive positions are `length_px / (samples - 1)` apart.
    """
    if params.samples < 2:
        raise ValueError(f"samples must be >= 2, got {params.samples}")
    rng = np.random.default_rng(params.walk_seed)
    steps = params.samples - 1
    speed = params.length_px / steps
    shakes = (rng.standard_normal(steps) + 1j * rng.standard_normal(steps)).tolist()
    jumps = (rng.uniform(size=steps) < params.jump_probability).tolist()
    jump_turns = np.exp(1j * (math.pi + rng.uniform(-0.5, 0.5, size=steps))).tolist()

    positions = [0j] * params.samples
    velocity = speed * complex(math.cos(params.initial_angle_rad), math.sin(params.initial_angle_rad))
    position = 0j
    drift_scale = params.anxiety * speed
    for t in range(steps):
        change = drift_scale * (params.gaussian_shake * shakes[t] - params.centripetal * position)
        if jumps[t]:
            change += 2.0 * velocity * jump_turns[t]
        velocity += change
        magnitude = abs(velocity)
        velocity = velocity * (speed / magnitude) if magnitude > 0 else speed + 0j
        position += velocity
        positions[t + 1] = position
    return np.asarray(positions, dtype=np.complex128)


def motion_psf(trajectory: np.ndarray, exposure: float, max_size: int = 64) -> tuple[np.ndarray, float]:
    """Integrates the first `exposure` fraction of `trajectory` into a PSF.

    Returns (psf, scale): psf is float32 [k, k], k odd and <= `max_size`, non-negative, sums to 1,
    centred on the trajectory's centroid so that blurring does not shift the image; scale (<= 1)
    is the factor by which the path was shrunk to fit `max_size` (1 when it fitted).
    """
    if not 0.0 < exposure <= 1.0:
        raise ValueError(f"exposure must be in (0, 1], got {exposure}")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1 pixel, got {max_size}")
    used = trajectory[: max(2, int(math.ceil(exposure * len(trajectory))))]
    centred = used - used.mean()
    reach = float(max(np.abs(centred.real).max(), np.abs(centred.imag).max()))
    max_radius = (max_size - 1) // 2
    scale = 1.0
    if reach > max_radius - 1 and reach > 0:
        scale = (max_radius - 1) / reach
        centred = centred * scale
        reach = max_radius - 1
    radius = min(max_radius, int(math.ceil(reach)) + 1)
    size = 2 * radius + 1

    cols = centred.real + radius
    rows = centred.imag + radius
    col0 = np.floor(cols).astype(np.int64)
    row0 = np.floor(rows).astype(np.int64)
    fc = cols - col0
    fr = rows - row0
    psf = np.zeros((size, size), dtype=np.float64)
    for d_row, d_col, weight in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        np.add.at(psf, (np.clip(row0 + d_row, 0, size - 1), np.clip(col0 + d_col, 0, size - 1)), weight)
    psf /= psf.sum()
    return psf.astype(np.float32), float(scale)


def path_length_px(trajectory: np.ndarray, exposure: float, scale: float) -> float:
    """Length (pixels) of the part of `trajectory` that `motion_psf` integrates, after scaling."""
    used = trajectory[: max(2, int(math.ceil(exposure * len(trajectory))))]
    return float(np.abs(np.diff(used)).sum() * scale)


def blur_hu(hu: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Convolves an image [H, W] (HU) with an odd-sized PSF [k, k]; float32 [H, W] out.

    Borders are extended by reflection (no dark frame from zero padding); convolution by FFT in
    float32 (error ~1e-4 HU, far below the int16 rounding of stored pairs, twice as fast as float64).
    """
    if hu.ndim != 2:
        raise ValueError(f"hu must be [H, W], got shape {hu.shape}")
    if psf.ndim != 2 or psf.shape[0] != psf.shape[1] or psf.shape[0] % 2 == 0:
        raise ValueError(f"psf must be odd-sized square [k, k], got shape {psf.shape}")
    radius = psf.shape[0] // 2
    padded = np.pad(hu.astype(np.float32), radius, mode="reflect")
    return signal.fftconvolve(padded, psf.astype(np.float32), mode="valid").astype(np.float32)


def add_noise(
    hu: np.ndarray, rng: np.random.Generator, sigma_hu: float = 0.0, poisson_counts_per_hu: float = 0.0
) -> np.ndarray:
    """Optional acquisition noise on an image [H, W] in HU; float32 out.

    poisson_counts_per_hu > 0: signal-dependent noise, (HU + 1024) * c is drawn as a Poisson count
    and mapped back (higher c = less noise). sigma_hu > 0: additive Gaussian noise (HU).
    """
    noisy = hu.astype(np.float64)
    if poisson_counts_per_hu > 0:
        counts = np.clip(noisy + 1024.0, 0.0, None) * poisson_counts_per_hu
        noisy = rng.poisson(counts) / poisson_counts_per_hu - 1024.0
    if sigma_hu > 0:
        noisy = noisy + rng.normal(0.0, sigma_hu, size=noisy.shape)
    return noisy.astype(np.float32)
