"""Projection-domain CT motion simulation: rigid in-plane motion during a parallel-beam scan, FBP, HU.

Pure functions. The random part is `sample_rigid_motion(rng, config)`; everything after it
(`motion_poses`, `project`, `filtered_back_projection`, `projection_pair`) is deterministic given
its arguments. docs/projection-motion.md explains the model, the units and the numerical choices.

Model:
- The slice [H, W] in HU becomes attenuation relative to water, mu / mu_water = (HU + 1000) / 1000
  (air 0, water 1; values below -1000 HU are raised to air), so the object is zero outside the
  body and moving it does not move the image borders. Pixel (row, col) is centred at
  x = (col - (W - 1) / 2) * column_spacing, y = (row - (H - 1) / 2) * row_spacing (mm); the object
  is the band-limited interpolation of the pixels.
- View i at angle theta_i measures line integrals along t = x cos(theta) + y sin(theta) (mm), with
  the object at pose i: rotated by angle_i about the image centre, then translated by (dx_i, dy_i).
  That view equals the static object's view at angle theta_i - angle_i shifted along the detector
  by dx_i cos(theta_i) + dy_i sin(theta_i), so rigid motion costs no per-view image warp.
- Projector: the Fourier slice theorem. The object's 2-D spectrum (2x oversampled FFT) is sampled
  along each view's central line by Kaiser-Bessel gridding, the detector shift is a phase ramp, and
  an inverse FFT gives the view. The detector samples the band limit of the image grid.
- FBP: Ram-Lak ramp filter (optionally apodised), then pixel-driven back-projection that reads the
  filtered views, upsampled 16x by FFT, at the nearest sub-bin position. `projection_pair` packs
  the sharp and the blurry views as real and imaginary parts and back-projects both in one pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft, special

from cli_shell.settings import setting

MOTION_KINDS = ("smooth", "breathing", "jerk", "none")
FBP_FILTERS = ("ramp", "shepp-logan", "hann")
AIR_HU = -1000.0

_GRID_OVERSAMPLING = 2
_KERNEL_TAPS = 6
_KERNEL_BETA = math.pi * math.sqrt((_KERNEL_TAPS / _GRID_OVERSAMPLING) ** 2 * (_GRID_OVERSAMPLING - 0.5) ** 2 - 0.8)
_GRIDDING_CHUNK = 16384
_DETECTOR_MARGIN_BINS = 16
_BP_UPSAMPLING = 16
_EXTENT_SAMPLES = 512



@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
    """Scan and motion settings of the projection-domain blur model (`--blur_model projection`)."""

    views: int = setting(360, "projections per slice, evenly spaced in angle and in time over scan_deg (count)")
    scan_deg: float = setting(360.0, "angular span of the scan: 360 (one gantry rotation, default) or 180 (degrees)",
                             choices=(180.0, 360.0))
    geometry: str = setting("parallel", "beam geometry: parallel is the one implemented (name)",
                           choices=("parallel",))
    fbp_filter: str = setting("ramp", "FBP filter: ramp = Ram-Lak, sharpest; shepp-logan or hann = smoother (name)",
                             choices=FBP_FILTERS)
    motion_types: tuple[str, ...] = setting(("smooth", "breathing", "jerk"),
                                           "motion kinds, one drawn uniformly per slice: smooth, breathing, jerk, "
                                           "none (names)")
    translation_mm_min: float = setting(1.0, "smallest translation extent of smooth and jerk motion: largest distance "
                                            "between two poses during the scan (mm)")
    translation_mm_max: float = setting(10.0, "largest translation extent of smooth and jerk motion (mm)")
    rotation_deg_max: float = setting(3.0, "largest rotation extent of smooth and jerk motion, drawn from [0, max] "
                                          "(degrees)")
    breathing_amplitude_mm_min: float = setting(2.0, "smallest breathing amplitude (mm)")
    breathing_amplitude_mm_max: float = setting(10.0, "largest breathing amplitude (mm)")
    breathing_cycles_min: float = setting(0.25, "fewest breathing cycles per scan, log-uniform (cycles; 0.25 = a 1 s "
                                               "rotation at 15 breaths/min)")
    breathing_cycles_max: float = setting(15.0, "most breathing cycles per scan (cycles; 15 = a 60 s cone-beam scan)")
    breathing_tilt_deg_max: float = setting(20.0, "largest angle between the breathing direction and the image's "
                                                 "vertical (anterior-posterior, y) axis (degrees)")
    jerk_time_min: float = setting(0.2, "earliest start of a jerk (fraction of the scan)")
    jerk_time_max: float = setting(0.8, "latest start of a jerk (fraction of the scan)")
    jerk_duration_max: float = setting(0.05, "longest jerk, drawn from [0, max]; 0 = instantaneous "
                                            "(fraction of the scan)")

    def validate(self) -> "ProjectionConfig":
        """Returns self, or raises ValueError naming the bad setting."""
        if self.views < 2:
            raise ValueError(f"projection views must be >= 2, got {self.views}")
        if self.scan_deg not in (180.0, 360.0):
            raise ValueError(f"projection scan_deg must be 180 or 360 degrees, got {self.scan_deg}")
        if self.geometry != "parallel":
            raise ValueError(f"projection geometry {self.geometry!r} is not implemented; use 'parallel'")
        if self.fbp_filter not in FBP_FILTERS:
            raise ValueError(f"fbp_filter must be one of {FBP_FILTERS}, got {self.fbp_filter!r}")
        unknown = [kind for kind in self.motion_types if kind not in MOTION_KINDS]
        if not self.motion_types or unknown:
            raise ValueError(f"motion_types must be a non-empty selection of {MOTION_KINDS}, got {self.motion_types}")
        for low, high in (("translation_mm_min", "translation_mm_max"),
                          ("breathing_amplitude_mm_min", "breathing_amplitude_mm_max"),
                          ("jerk_time_min", "jerk_time_max")):
            if not 0.0 <= getattr(self, low) <= getattr(self, high):
                raise ValueError(f"need 0 <= {low} <= {high}, got {getattr(self, low)}, {getattr(self, high)}")
        if not 0.0 < self.breathing_cycles_min <= self.breathing_cycles_max:
            raise ValueError(f"need 0 < breathing_cycles_min <= breathing_cycles_max, got "
                             f"{self.breathing_cycles_min}, {self.breathing_cycles_max}")
        if self.jerk_time_max > 1.0 or not 0.0 <= self.jerk_duration_max <= 1.0:
            raise ValueError(f"jerk times are fractions of the scan in [0, 1], got jerk_time_max={self.jerk_time_max}, "
                             f"jerk_duration_max={self.jerk_duration_max}")
        if self.rotation_deg_max < 0 or not 0 <= self.breathing_tilt_deg_max <= 90:
            raise ValueError(f"need rotation_deg_max >= 0 and breathing_tilt_deg_max in [0, 90], got "
                             f"{self.rotation_deg_max}, {self.breathing_tilt_deg_max}")
        return self


@dataclasses.dataclass(frozen=True)
class RigidMotion:
    """One slice's in-plane rigid motion during the scan.

    Translations in mm along x (image columns, to the right) and y (image rows, down); rotations in
    degrees about the image centre, positive turning +x towards +y (clockwise as displayed with row
    0 at the top). Times are fractions s of the scan (0 = start of the first view, 1 = end of the
    last). With a = (dx_mm, dy_mm, rotation_deg) and b = (dx2_mm, dy2_mm, rotation2_deg), the pose is
      smooth:    a cos(pi s) + b cos(2 pi s)                      (a drift and a back-and-forth)
      breathing: a cos(pi (breathing_cycles s + breathing_phase)) ** (2 breathing_power)
                 (Lujan et al. 1999; a along the breathing direction, no rotation)
      jerk:      a * 0 before jerk_time, 1 after jerk_time + jerk_duration, raised cosine between
      none:      no motion.
    `motion_poses` removes the mean pose, so the blurry image is not displaced from the target.
    """

    kind: str
    dx_mm: float = 0.0
    dy_mm: float = 0.0
    rotation_deg: float = 0.0
    dx2_mm: float = 0.0
    dy2_mm: float = 0.0
    rotation2_deg: float = 0.0
    breathing_cycles: float = 0.0
    breathing_phase: float = 0.0
    breathing_power: int = 1
    jerk_time: float = 0.0
    jerk_duration: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in MOTION_KINDS:
            raise ValueError(f"motion kind must be one of {MOTION_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.jerk_time <= 1.0 or not 0.0 <= self.jerk_duration <= 1.0:
            raise ValueError(f"jerk_time and jerk_duration are fractions of the scan in [0, 1], got "
                             f"{self.jerk_time}, {self.jerk_duration}")
        if self.breathing_power < 1 or self.breathing_cycles < 0:
            raise ValueError(f"need breathing_power >= 1 and breathing_cycles >= 0, got "
                             f"{self.breathing_power}, {self.breathing_cycles}")

    def as_record(self) -> dict[str, float]:
        """The parameters as floats under stable keys (all kinds, unused ones 0), plus the extents:
        `translation_extent_mm` (largest distance between two poses of the scan, mm) and
        `rotation_extent_deg` (largest minus smallest angle, degrees). The kind is `self.kind`."""
        record = {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "kind"}
        translation, rotation = motion_extents(self)
        record["translation_extent_mm"] = translation
        record["rotation_extent_deg"] = rotation
        return record

    @classmethod
    def from_record(cls, kind: str, record: dict[str, float]) -> "RigidMotion":
        """Rebuilds the motion of a stored pair from its kind and `as_record()` values."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "kind":
                continue
            if f.name not in record:
                raise ValueError(f"motion record lacks {f.name!r}; it has {sorted(record)}")
            values[f.name] = int(record[f.name]) if f.type in (int, "int") else float(record[f.name])
        return cls(kind=kind, **values)


def _pose_waveforms(motion: RigidMotion, times: np.ndarray) -> np.ndarray:
    """Poses [len(times), 3] (dx_mm, dy_mm, angle_deg) at scan times `times`, before centring."""
    a = np.array([motion.dx_mm, motion.dy_mm, motion.rotation_deg])
    if motion.kind == "smooth":
        b = np.array([motion.dx2_mm, motion.dy2_mm, motion.rotation2_deg])
        return np.cos(np.pi * times)[:, None] * a + np.cos(2 * np.pi * times)[:, None] * b
    if motion.kind == "breathing":
        phase = np.pi * (motion.breathing_cycles * times + motion.breathing_phase)
        return (np.cos(phase) ** (2 * motion.breathing_power))[:, None] * a
    if motion.kind == "jerk":
        if motion.jerk_duration == 0:
            weight = (times >= motion.jerk_time).astype(np.float64)
        else:
            progress = np.clip((times - motion.jerk_time) / motion.jerk_duration, 0.0, 1.0)
            weight = 0.5 - 0.5 * np.cos(np.pi * progress)
        return weight[:, None] * a
    return np.zeros((len(times), 3))


def motion_poses(motion: RigidMotion, views: int) -> np.ndarray:
    """Pose of the object during each view, float64 [views, 3]: dx_mm, dy_mm, angle_deg.

    View i covers scan times [i / views, (i + 1) / views) and takes the pose at its middle; the mean
    pose over the views is subtracted (the kernel PSFs are centred on their centroid likewise).
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    poses = _pose_waveforms(motion, (np.arange(views) + 0.5) / views)
    return poses - poses.mean(axis=0)


def _extents(poses: np.ndarray) -> tuple[float, float]:
    shifts = poses[:, :2]
    distances = np.sqrt(((shifts[:, None, :] - shifts[None, :, :]) ** 2).sum(axis=-1))
    return float(distances.max()), float(np.ptp(poses[:, 2]))


def motion_extents(motion: RigidMotion) -> tuple[float, float]:
    """(translation extent in mm, rotation extent in degrees) over the scan, from 512 time samples."""
    return _extents(_pose_waveforms(motion, (np.arange(_EXTENT_SAMPLES) + 0.5) / _EXTENT_SAMPLES))


def sample_rigid_motion(rng: np.random.Generator, config: ProjectionConfig) -> RigidMotion:
    """Draws one slice's motion: a kind from `config.motion_types`, then its parameters.

    smooth: random cosine coefficients scaled to a translation extent drawn from
    [translation_mm_min, translation_mm_max] and a rotation extent from [0, rotation_deg_max].
    jerk: a step of that size in a uniform random direction with a rotation from
    [-rotation_deg_max, rotation_deg_max]. breathing: an amplitude from the breathing range along
    the vertical (anterior-posterior, y) axis tilted by up to breathing_tilt_deg_max, cycles per
    scan log-uniform, random phase, shape power 1, 2 or 3, no rotation.
    """
    kind = config.motion_types[int(rng.integers(len(config.motion_types)))]
    if kind == "none":
        return RigidMotion(kind="none")
    if kind == "smooth":
        coefficients = rng.standard_normal(6)
        draft = RigidMotion("smooth", *coefficients.tolist())
        translation, rotation = motion_extents(draft)
        wanted_translation = rng.uniform(config.translation_mm_min, config.translation_mm_max)
        wanted_rotation = rng.uniform(0.0, config.rotation_deg_max)
        t_scale = wanted_translation / translation
        r_scale = wanted_rotation / rotation
        scaled = coefficients * np.array([t_scale, t_scale, r_scale, t_scale, t_scale, r_scale])
        return RigidMotion("smooth", *scaled.tolist())
    if kind == "jerk":
        direction = rng.uniform(0.0, 2 * math.pi)
        size = rng.uniform(config.translation_mm_min, config.translation_mm_max)
        rotation = rng.uniform(-config.rotation_deg_max, config.rotation_deg_max)
        return RigidMotion("jerk", dx_mm=float(size * math.cos(direction)), dy_mm=float(size * math.sin(direction)),
                           rotation_deg=float(rotation),
                           jerk_time=float(rng.uniform(config.jerk_time_min, config.jerk_time_max)),
                           jerk_duration=float(rng.uniform(0.0, config.jerk_duration_max)))
    amplitude = rng.uniform(config.breathing_amplitude_mm_min, config.breathing_amplitude_mm_max)
    tilt = math.radians(rng.uniform(-config.breathing_tilt_deg_max, config.breathing_tilt_deg_max))
    cycles = math.exp(rng.uniform(math.log(config.breathing_cycles_min), math.log(config.breathing_cycles_max)))
    return RigidMotion("breathing", dx_mm=float(amplitude * math.sin(tilt)), dy_mm=float(amplitude * math.cos(tilt)),
                       breathing_cycles=float(cycles), breathing_phase=float(rng.uniform()),
                       breathing_power=int(rng.integers(1, 4)))


def _even_fast_len(minimum: int) -> int:
    n = fft.next_fast_len(max(2, int(minimum)), real=True)
    while n % 2:
        n = fft.next_fast_len(n + 1, real=True)
    return n


@dataclasses.dataclass(frozen=True)
class ScanGeometry:
    """A parallel-beam scan of an image grid.

    shape [H, W] pixels; pixel_spacing_mm (row, column) as DICOM PixelSpacing; `views` angles
    i * scan_deg / views; `detector_bins` bins of `detector_spacing_mm`, bin j at
    t = (j - detector_bins / 2) * detector_spacing_mm.
    """

    shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    views: int
    scan_deg: float
    detector_bins: int
    detector_spacing_mm: float

    @property
    def angles_rad(self) -> np.ndarray:
        return np.deg2rad(np.arange(self.views) * (self.scan_deg / self.views))


def scan_geometry(shape: tuple[int, int], pixel_spacing_mm: tuple[float, float], config: ProjectionConfig,
                  reach_mm: float = 0.0) -> ScanGeometry:
    """The scan of an image [H, W] whose object moves up to `reach_mm` from its place.

    Detector bins are as wide as the finer pixel spacing and cover the image diagonal plus twice
    `reach_mm` plus a margin of 16 bins on each side for the band-limited projections' tails.
    """
    height, width = (int(n) for n in shape)
    row_mm, col_mm = (float(s) for s in pixel_spacing_mm)
    if height < 8 or width < 8:
        raise ValueError(f"image must be at least 8 x 8 pixels, got {height} x {width}")
    if not (math.isfinite(row_mm) and math.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
        raise ValueError(f"pixel spacing must be two positive mm values (row, column), got {pixel_spacing_mm}")
    spacing = min(row_mm, col_mm)
    diagonal = math.hypot(height * row_mm, width * col_mm)
    bins = _even_fast_len(math.ceil((diagonal + 2 * reach_mm) / spacing) + 2 * _DETECTOR_MARGIN_BINS)
    return ScanGeometry((height, width), (row_mm, col_mm), config.views, float(config.scan_deg), bins, spacing)


def hu_to_attenuation(hu: np.ndarray) -> np.ndarray:
    """Attenuation relative to water, mu / mu_water = (HU + 1000) / 1000, float64; below -1000 HU -> 0."""
    return (np.maximum(np.asarray(hu, dtype=np.float64), AIR_HU) - AIR_HU) / -AIR_HU


def attenuation_to_hu(attenuation: np.ndarray) -> np.ndarray:
    """HU from attenuation relative to water, float32 (the inverse of `hu_to_attenuation` above air)."""
    return (np.asarray(attenuation, dtype=np.float64) * -AIR_HU + AIR_HU).astype(np.float32)


def _kaiser_bessel(distance: np.ndarray) -> np.ndarray:
    """The gridding kernel (peak 1) at `distance` from a grid point (grid units, |distance| <= taps / 2)."""
    ratio = 2.0 * distance / _KERNEL_TAPS
    return special.i0(_KERNEL_BETA * np.sqrt(np.maximum(1.0 - ratio * ratio, 0.0))) / special.i0(_KERNEL_BETA)


def _kaiser_bessel_transform(frequency: np.ndarray) -> np.ndarray:
    """Continuous Fourier transform of `_kaiser_bessel` at `frequency` (cycles per grid unit)."""
    root = np.sqrt(_KERNEL_BETA**2 - (math.pi * _KERNEL_TAPS * frequency) ** 2 + 0j)
    return (_KERNEL_TAPS * np.sinh(root) / root).real / special.i0(_KERNEL_BETA)


_KERNEL_TABLE_DENSITY = 4096


def _kernel_table() -> tuple[np.ndarray, np.ndarray]:
    """(values, slopes to the next entry), float32, of the kernel from -taps/2 to taps/2 in steps of 1/4096."""
    half = _KERNEL_TAPS // 2 * _KERNEL_TABLE_DENSITY
    samples = _kaiser_bessel(np.arange(-half, half + 2) / _KERNEL_TABLE_DENSITY)
    return samples[:-1].astype(np.float32), np.diff(samples).astype(np.float32)


_KERNEL_TABLE, _KERNEL_TABLE_SLOPE = _kernel_table()
_KERNEL_TAP_OFFSETS = (_KERNEL_TAPS - 1 - np.arange(_KERNEL_TAPS)) * _KERNEL_TABLE_DENSITY


def _kernel_weights(fraction: np.ndarray) -> np.ndarray:
    """Kernel weights float32 [n, taps] of the grid points floor(u) - taps/2 + 1 .. floor(u) + taps/2
    for the fractional parts `fraction` [n] of positions u (linear interpolation in a table of step
    1/4096: error < 1e-7)."""
    position = fraction * _KERNEL_TABLE_DENSITY
    below = np.floor(position)
    index = below.astype(np.intp)[:, None] + _KERNEL_TAP_OFFSETS
    weight = (position - below).astype(np.float32)[:, None]
    return _KERNEL_TABLE[index] + weight * _KERNEL_TABLE_SLOPE[index]


@dataclasses.dataclass(frozen=True)
class _ObjectSpectrum:
    """The object's spectrum on a 2x oversampled grid, ky >= 0 half plane, edges extended for gridding.

    `grid[m + 3, l + 3]` holds frequency (l / (grid_x * col_mm), m / (grid_y * row_mm)) cycles/mm
    of the kernel-compensated image placed with pixel (H // 2, W // 2) at the origin. That pixel
    lies `origin_mm` (x, y) from the image centre: half a pixel along an even-sized axis.
    """

    grid: np.ndarray
    grid_shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    origin_mm: tuple[float, float]


@functools.lru_cache(maxsize=8)
def _compensation(height: int, width: int, grid_y: int, grid_x: int) -> np.ndarray:
    """The gridding kernel's transform at the pixels of an image [H, W] on a [grid_y, grid_x] grid (read-only)."""
    rows = np.arange(height) - height // 2
    cols = np.arange(width) - width // 2
    compensation = _kaiser_bessel_transform(rows / grid_y)[:, None] * _kaiser_bessel_transform(cols / grid_x)[None, :]
    compensation.flags.writeable = False
    return compensation


def _grid_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """(grid_y, grid_x): the oversampled spectrum grid of an image of `shape` [H, W]."""
    return _even_fast_len(_GRID_OVERSAMPLING * shape[0]), _even_fast_len(_GRID_OVERSAMPLING * shape[1])


def _grid_origin_mm(shape: tuple[int, int], pixel_spacing_mm: tuple[float, float]) -> tuple[float, float]:
    """(x, y) mm of pixel (H // 2, W // 2), the spectrum's origin, from the image centre."""
    height, width = shape
    row_mm, col_mm = pixel_spacing_mm
    return (width // 2 - (width - 1) / 2) * col_mm, (height // 2 - (height - 1) / 2) * row_mm


def _object_spectrum(attenuation: np.ndarray, pixel_spacing_mm: tuple[float, float]) -> _ObjectSpectrum:
    """The gridding-ready spectrum of an attenuation image [H, W] (one real FFT of the padded grid;
    its first pass skips the grid's all-zero columns, whose transform is zero)."""
    height, width = attenuation.shape
    grid_y, grid_x = _grid_shape(attenuation.shape)
    rows = (np.arange(height) - height // 2) % grid_y
    padded = np.zeros((grid_y, width), dtype=np.float32)
    padded[rows] = attenuation / _compensation(height, width, grid_y, grid_x)
    pad = _KERNEL_TAPS // 2
    extended = np.empty((grid_y // 2 + 1 + 2 * pad, grid_x + 2 * pad), dtype=np.complex64)
    core = extended[:, pad: pad + grid_x]
    half = core[pad: pad + grid_y // 2 + 1]
    columns = fft.rfft(padded, axis=0)
    right = width - width // 2
    half[:, :right] = columns[:, width // 2:]
    half[:, right: grid_x - width // 2] = 0
    half[:, grid_x - width // 2:] = columns[:, : width // 2]
    transformed = fft.fft(half, axis=1, overwrite_x=True)
    if not np.shares_memory(transformed, half):
        half[...] = transformed
    mirrored_cols = (-np.arange(grid_x)) % grid_x
    core[:pad] = np.conj(half[pad:0:-1][:, mirrored_cols])
    core[pad + half.shape[0]:] = np.conj(half[grid_y // 2 - 1: grid_y // 2 - 1 - pad: -1][:, mirrored_cols])
    extended[:, :pad] = core[:, -pad:]
    extended[:, pad + grid_x:] = core[:, :pad]
    return _ObjectSpectrum(extended, (grid_y, grid_x), pixel_spacing_mm,
                           _grid_origin_mm(attenuation.shape, pixel_spacing_mm))


@dataclasses.dataclass(frozen=True)
class _Gridding:
    """Kaiser-Bessel gridding of Fourier samples: the top-left corner (row, column) of each sample's
    taps x taps block of an `_ObjectSpectrum` grid and its kernel weights float32 [m, taps^2]."""

    rows: np.ndarray
    cols: np.ndarray
    weights: np.ndarray

    def take(self, samples: np.ndarray) -> "_Gridding":
        return _Gridding(self.rows[samples], self.cols[samples], self.weights[samples])


def _gridding(grid_shape: tuple[int, int], pixel_spacing_mm: tuple[float, float], kx: np.ndarray,
              ky: np.ndarray) -> _Gridding:
    """The gridding of frequencies kx, ky >= 0 (cycles/mm, 1-D arrays) on a spectrum grid of `grid_shape`."""
    grid_y, grid_x = grid_shape
    row_mm, col_mm = pixel_spacing_mm
    rows = np.empty(kx.shape, dtype=np.intp)
    cols = np.empty(kx.shape, dtype=np.intp)
    weights = np.empty((kx.size, _KERNEL_TAPS * _KERNEL_TAPS), dtype=np.float32)
    for start in range(0, kx.size, _GRIDDING_CHUNK):
        part = slice(start, start + _GRIDDING_CHUNK)
        u_y = ky[part] * (row_mm * grid_y)
        u_x = np.mod(kx[part] * (col_mm * grid_x), grid_x)
        i_y = np.floor(u_y)
        i_x = np.floor(u_x)
        w_y = _kernel_weights(u_y - i_y)
        w_x = _kernel_weights(u_x - i_x)
        weights[part] = (w_y[:, :, None] * w_x[:, None, :]).reshape(len(w_y), -1)
        rows[part] = i_y.astype(np.intp) + 1
        cols[part] = i_x.astype(np.intp) + 1
    return _Gridding(rows, cols, weights)


def _grid(spectrum: _ObjectSpectrum, gridding: _Gridding, upper: _ObjectSpectrum | None = None,
          upper_weight: np.ndarray | None = None) -> np.ndarray:
    """Fourier transform (attenuation * mm^2) of the object with pixel (H // 2, W // 2) at the origin
    at the samples of `gridding`, complex64 [m]. With `upper` (a spectrum of the same grid), sample
    j is the blend (1 - w_j) * spectrum + w_j * upper, w = `upper_weight` [m]."""
    row_mm, col_mm = spectrum.pixel_spacing_mm
    windows = sliding_window_view(spectrum.grid, (_KERNEL_TAPS, _KERNEL_TAPS))
    upper_windows = None if upper is None else sliding_window_view(upper.grid, (_KERNEL_TAPS, _KERNEL_TAPS))
    out = np.empty(gridding.rows.shape, dtype=np.complex64)
    for start in range(0, out.size, _GRIDDING_CHUNK):
        part = slice(start, start + _GRIDDING_CHUNK)
        at = (gridding.rows[part], gridding.cols[part])
        weights = gridding.weights[part]
        out[part] = np.einsum("mk,mk->m", windows[at].reshape(len(weights), -1), weights)
        if upper_windows is not None:
            above = np.einsum("mk,mk->m", upper_windows[at].reshape(len(weights), -1), weights)
            out[part] += upper_weight[part].astype(np.float32) * (above - out[part])
    return out * (row_mm * col_mm)


def _line_frequencies(geometry: ScanGeometry, angles_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(inside, flip, kx, ky) of the Fourier lines of views at `angles_rad`: `inside` [views, bins/2 + 1]
    marks the samples within the image grid's band limit, `flip` those taken at -k (ky < 0) and
    conjugated; kx, ky (cycles/mm) of the inside samples, row by row, with ky >= 0."""
    bins = geometry.detector_bins
    k = np.arange(bins // 2 + 1) / (bins * geometry.detector_spacing_mm)
    kx = np.cos(angles_rad)[:, None] * k
    ky = np.sin(angles_rad)[:, None] * k
    row_mm, col_mm = geometry.pixel_spacing_mm
    inside = (np.abs(kx) <= 0.5 / col_mm) & (np.abs(ky) <= 0.5 / row_mm)
    flip = (np.sin(angles_rad) < 0)[:, None] & inside
    sign = np.where(flip, -1.0, 1.0)
    return inside, flip, (kx * sign)[inside], (ky * sign)[inside]


def _lines_from_samples(samples: np.ndarray, inside: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Line spectra complex128 [views, bins/2 + 1] from the inside samples (zero elsewhere), flipped ones conjugated."""
    values = np.zeros(inside.shape, dtype=np.complex128)
    values[inside] = samples
    values[flip] = np.conj(values[flip])
    return values


def _line_spectra(spectrum: _ObjectSpectrum, geometry: ScanGeometry, angles_rad: np.ndarray) -> np.ndarray:
    """Fourier transforms of the static object's views at `angles_rad`, complex128 [views, bins/2 + 1],
    with pixel (H // 2, W // 2) at the origin (`_views_from_spectra` shifts them by `origin_mm`).

    Sample m is at m / (bins * detector spacing) cycles/mm; frequencies beyond the image grid's
    band limit along either axis are zero.
    """
    inside, flip, kx, ky = _line_frequencies(geometry, angles_rad)
    gridding = _gridding(spectrum.grid_shape, spectrum.pixel_spacing_mm, kx, ky)
    return _lines_from_samples(_grid(spectrum, gridding), inside, flip)


@dataclasses.dataclass(frozen=True)
class _ScanLines:
    """The gridding of the Fourier lines of a scan's own views, made once per geometry (`_scan_lines`).

    In a 360 degree scan with an even number of views, view i + views/2 is view i reversed, whose
    line is the complex conjugate: only the first half (`base` views) is gridded. `starts` [base + 1]
    gives each base view's first sample in `gridding`.
    """

    base: int
    inside: np.ndarray
    flip: np.ndarray
    gridding: _Gridding
    starts: np.ndarray

    def lines(self, spectrum: _ObjectSpectrum, views: np.ndarray, upper: _ObjectSpectrum | None = None,
              upper_weight: np.ndarray | None = None) -> np.ndarray:
        """Line spectra complex128 [len(views), bins/2 + 1] of the scan's views `views` (ints); with
        `upper`, view i's line is the blend (1 - w_i) * spectrum's + w_i * upper's (`upper_weight` [views])."""
        views = np.asarray(views, dtype=np.intp)
        base, mirrored = views % self.base, views >= self.base
        counts = self.starts[base + 1] - self.starts[base]
        if np.array_equal(base, np.arange(self.base)):
            gridding = self.gridding
        else:
            first = np.repeat(self.starts[base] - np.cumsum(counts) + counts, counts)
            gridding = self.gridding.take(first + np.arange(counts.sum()))
        blend = None if upper is None else np.repeat(np.asarray(upper_weight, dtype=np.float64), counts)
        values = _lines_from_samples(_grid(spectrum, gridding, upper, blend), self.inside[base], self.flip[base])
        values[mirrored] = np.conj(values[mirrored])
        return values


@functools.lru_cache(maxsize=4)
def _scan_lines(geometry: ScanGeometry) -> _ScanLines:
    """The `_ScanLines` of a geometry (cached: every slice of a series shares its geometry)."""
    angles = geometry.angles_rad
    base = geometry.views // 2 if geometry.scan_deg == 360.0 and geometry.views % 2 == 0 else geometry.views
    inside, flip, kx, ky = _line_frequencies(geometry, angles[:base])
    gridding = _gridding(_grid_shape(geometry.shape), geometry.pixel_spacing_mm, kx, ky)
    for array in (inside, flip, gridding.rows, gridding.cols, gridding.weights):
        array.flags.writeable = False
    starts = np.concatenate([[0], np.cumsum(inside.sum(axis=1))])
    return _ScanLines(base, inside, flip, gridding, starts)


def _static_line_spectra(spectrum: _ObjectSpectrum, geometry: ScanGeometry) -> np.ndarray:
    """`_line_spectra` at the scan's own angles (`_ScanLines`: a 360 degree scan with an even number
    of views grids its first half, and the second half is its conjugate)."""
    scan_lines = _scan_lines(geometry)
    lines = scan_lines.lines(spectrum, np.arange(scan_lines.base))
    return lines if scan_lines.base == geometry.views else np.concatenate([lines, np.conj(lines)])


def _views_from_spectra(lines: np.ndarray, geometry: ScanGeometry, shifts_mm: np.ndarray) -> np.ndarray:
    """Views float64 [views, bins] (attenuation * mm) from line spectra, shifted by `shifts_mm` along t."""
    bins = geometry.detector_bins
    m = np.arange(bins // 2 + 1)
    k = m / (bins * geometry.detector_spacing_mm)
    phase = np.exp(-2j * np.pi * shifts_mm[:, None] * k) * np.where(m % 2, -1.0, 1.0)
    return fft.irfft(lines * phase, n=bins, axis=1) / geometry.detector_spacing_mm


def project(attenuation: np.ndarray, geometry: ScanGeometry, poses: np.ndarray) -> np.ndarray:
    """Parallel-beam sinogram float64 [views, bins] (attenuation * mm) of an object [H, W] that
    has pose i (dx_mm, dy_mm, angle_deg; `poses` [views, 3]) during view i."""
    return _sinograms(attenuation, geometry, [poses])[0]


def interpolated_sinogram(image_at: Callable[[int], np.ndarray], lower: np.ndarray, upper_weight: np.ndarray,
                          geometry: ScanGeometry) -> np.ndarray:
    """Sinogram float64 [views, bins] (attenuation * mm) where view i sees the blend
    (1 - w_i) * image_at(lower_i) + w_i * image_at(lower_i + 1) of two attenuation images [H, W]
    (`lower` ints, `upper_weight` w in [0, 1], both [views]). Projection is linear, so this is the
    blend of the two images' views: each image's spectrum is computed once (only the images some view
    needs), each view is gridded once against both, and all views are formed by one inverse FFT."""
    lower = np.asarray(lower, dtype=np.intp)
    upper_weight = np.asarray(upper_weight, dtype=np.float64)
    if lower.shape != (geometry.views,) or upper_weight.shape != (geometry.views,):
        raise ValueError(f"lower and upper_weight must be [{geometry.views}], got {lower.shape}, {upper_weight.shape}")
    angles = geometry.angles_rad
    lines = np.zeros((geometry.views, geometry.detector_bins // 2 + 1), dtype=np.complex128)
    spectra: dict[int, _ObjectSpectrum] = {}

    def spectrum_of(index: int) -> _ObjectSpectrum:
        if index not in spectra:
            attenuation = image_at(index)
            if attenuation.shape != geometry.shape:
                raise ValueError(f"image shape {attenuation.shape} does not match the scan geometry {geometry.shape}")
            spectra[index] = _object_spectrum(attenuation, geometry.pixel_spacing_mm)
        return spectra[index]

    scan_lines = _scan_lines(geometry)
    for index in np.unique(lower):
        views = np.flatnonzero(lower == index)
        below = spectrum_of(int(index))
        above = spectrum_of(int(index) + 1) if upper_weight[views].any() else None
        lines[views] = scan_lines.lines(below, views, above, upper_weight[views])
        spectra.pop(int(index))
    origin_x, origin_y = _grid_origin_mm(geometry.shape, geometry.pixel_spacing_mm)
    return _views_from_spectra(lines, geometry, origin_x * np.cos(angles) + origin_y * np.sin(angles))


def _sinograms(attenuation: np.ndarray, geometry: ScanGeometry, pose_sets: list[np.ndarray]) -> list[np.ndarray]:
    """Sinograms of one object under several pose sets, sharing its spectrum and unrotated views."""
    if attenuation.shape != geometry.shape:
        raise ValueError(f"image shape {attenuation.shape} does not match the scan geometry {geometry.shape}")
    spectrum = _object_spectrum(attenuation, geometry.pixel_spacing_mm)
    angles = geometry.angles_rad
    static: np.ndarray | None = None
    sinograms = []
    for poses in pose_sets:
        if poses.shape != (geometry.views, 3):
            raise ValueError(f"poses must be [{geometry.views}, 3] (dx_mm, dy_mm, angle_deg), got {poses.shape}")
        rotated = poses[:, 2] != 0
        line_angles = angles - np.deg2rad(poses[:, 2])
        if static is None and not rotated.all():
            static = _static_line_spectra(spectrum, geometry)
        lines = np.empty((geometry.views, geometry.detector_bins // 2 + 1), dtype=np.complex128)
        if static is not None:
            lines[~rotated] = static[~rotated]
        if rotated.any():
            lines[rotated] = _line_spectra(spectrum, geometry, line_angles[rotated])
        shifts = (poses[:, 0] * np.cos(angles) + poses[:, 1] * np.sin(angles)
                  + spectrum.origin_mm[0] * np.cos(line_angles) + spectrum.origin_mm[1] * np.sin(line_angles))
        sinograms.append(_views_from_spectra(lines, geometry, shifts))
    return sinograms


def _filter_response(length: int, spacing_mm: float, name: str) -> np.ndarray:
    """rfft of the band-limited ramp kernel (Ram-Lak, spatial form) times the apodisation window."""
    offsets = np.arange(length)
    offsets = np.minimum(offsets, length - offsets)
    kernel = np.zeros(length)
    kernel[0] = 0.25 / spacing_mm**2
    odd = offsets % 2 == 1
    kernel[odd] = -1.0 / (np.pi * offsets[odd] * spacing_mm) ** 2
    response = fft.rfft(kernel).real * spacing_mm
    frequency = np.arange(length // 2 + 1) / length
    if name == "shepp-logan":
        response *= np.sinc(frequency)
    elif name == "hann":
        response *= 0.5 + 0.5 * np.cos(2 * np.pi * frequency)
    elif name != "ramp":
        raise ValueError(f"fbp_filter must be one of {FBP_FILTERS}, got {name!r}")
    return response


def _filtered_views(sinogram: np.ndarray, geometry: ScanGeometry, fbp_filter: str) -> tuple[np.ndarray, np.ndarray]:
    """(angles in radians, table float32 [views', (bins + 1) * 16]) of ramp-filtered views upsampled 16x.

    Views are filtered with zero padding to twice their length. In a 360 degree scan with an even
    number of views, view i + views/2 looks along view i reversed: the two are added (mirrored)
    here and back-projected once, which halves the work and changes nothing else.
    """
    if sinogram.shape != (geometry.views, geometry.detector_bins):
        raise ValueError(f"sinogram must be [{geometry.views}, {geometry.detector_bins}], got {sinogram.shape}")
    bins = geometry.detector_bins
    length = _even_fast_len(2 * bins)
    spectrum = fft.rfft(sinogram, n=length, axis=1) * _filter_response(length, geometry.detector_spacing_mm, fbp_filter)
    angles = geometry.angles_rad
    if geometry.scan_deg == 360.0 and geometry.views % 2 == 0:
        half = geometry.views // 2
        mirror = np.exp(-2j * np.pi * np.arange(length // 2 + 1) * bins / length)
        spectrum = spectrum[:half] + np.conj(spectrum[half:]) * mirror
        angles = angles[:half]
    spectrum[:, -1] *= 0.5
    spectrum = (spectrum * _BP_UPSAMPLING).astype(np.complex64)
    table = fft.irfft(spectrum, n=length * _BP_UPSAMPLING, axis=1)[:, : (bins + 1) * _BP_UPSAMPLING]
    return angles, np.ascontiguousarray(table)


def _back_project(table: np.ndarray, angles_rad: np.ndarray, geometry: ScanGeometry) -> np.ndarray:
    """Sum over views of `table` [views', n] read at each pixel's nearest sub-bin (error <= 1/16 bin),
    times pi / views: [H, W] of the table's dtype (complex64 tables carry two images at once)."""
    bins = geometry.detector_bins
    height, width = geometry.shape
    row_mm, col_mm = geometry.pixel_spacing_mm
    scale = _BP_UPSAMPLING / geometry.detector_spacing_mm
    x = (np.arange(width) - (width - 1) / 2) * (col_mm * scale)
    y = (np.arange(height) - (height - 1) / 2) * (row_mm * scale)
    centre = bins // 2 * _BP_UPSAMPLING
    image = np.zeros((height, width), dtype=table.dtype)
    index = np.empty((height, width), dtype=np.intp)
    values = np.empty((height, width), dtype=table.dtype)
    for view, angle in enumerate(angles_rad):
        along_x = np.rint(x * math.cos(angle) + centre).astype(np.intp)
        along_y = np.rint(y * math.sin(angle)).astype(np.intp)
        np.add(along_y[:, None], along_x[None, :], out=index)
        np.take(table[view], index, out=values, mode="clip")
        image += values
    image *= math.pi / geometry.views
    return image


def filtered_back_projection(sinogram: np.ndarray, geometry: ScanGeometry, fbp_filter: str = "ramp") -> np.ndarray:
    """FBP of a sinogram [views, bins] (attenuation * mm) into an image float32 [H, W] (attenuation).

    Ram-Lak ramp filter (optionally apodised), views upsampled 16x by FFT, pixel-driven
    back-projection from the nearest sub-bin.
    """
    angles, table = _filtered_views(sinogram, geometry, fbp_filter)
    return _back_project(table, angles, geometry)


def projection_pair(hu: np.ndarray, pixel_spacing_mm: tuple[float, float], motion: RigidMotion,
                    config: ProjectionConfig) -> tuple[np.ndarray, np.ndarray]:
    """(sharp_hu, blurry_hu), float32 [H, W] in HU, of a slice `hu` [H, W] (HU) with pixel spacing
    (row, column) in mm: FBP of the static object, and FBP where view i sees the object at pose i
    of `motion` (`motion_poses`). Both use the same projector and FBP: no motion gives blurry ==
    sharp exactly."""
    config.validate()
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"hu must be a 2-D slice [H, W], got shape {hu.shape}")
    if not np.isfinite(hu).all():
        raise ValueError("hu holds NaN or infinite values; replace them (e.g. by air, -1000 HU) first")
    poses = motion_poses(motion, config.views)
    reach = float(np.hypot(poses[:, 0], poses[:, 1]).max())
    geometry = scan_geometry(hu.shape, pixel_spacing_mm, config, reach)
    static, moving = _sinograms(hu_to_attenuation(hu), geometry, [np.zeros_like(poses), poses])
    return reconstruct_pair(static, moving, geometry, config.fbp_filter)


def reconstruct_pair(static: np.ndarray, moving: np.ndarray, geometry: ScanGeometry,
                     fbp_filter: str = "ramp") -> tuple[np.ndarray, np.ndarray]:
    """(sharp_hu, blurry_hu), float32 [H, W] in HU: FBP of the static and of the moving sinogram
    [views, bins] (attenuation * mm), back-projected in one pass (real and imaginary parts of one
    table). Equal sinograms give bit-identical images."""
    angles, static_table = _filtered_views(static, geometry, fbp_filter)
    if np.array_equal(moving, static):
        sharp = attenuation_to_hu(_back_project(static_table, angles, geometry))
        return sharp, sharp.copy()
    _, moving_table = _filtered_views(moving, geometry, fbp_filter)
    both = np.empty(static_table.shape, dtype=np.complex64)
    both.real = static_table
    both.imag = moving_table
    images = _back_project(both, angles, geometry)
    return attenuation_to_hu(images.real), attenuation_to_hu(images.imag)
