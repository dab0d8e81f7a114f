"""Free-breathing (FB) CT registered onto breath-hold (DIBH) CT, with a quality gate.

- `read_series_volume`: DICOM files of one series -> SimpleITK HU volume (float32), read as the
  pipeline reads every slice (`pipeline.slice_scan`, `ct_io`: padding and out-of-field values
  become air), slices ordered along the slice normal (`ct_io.series.check_series`), geometry
  (origin, spacing, direction) from the DICOM headers.
- `register_fb_to_dibh`: rigid (Euler 3-D, centred initialiser), then optionally affine, both
  with Mattes mutual information over a multi-resolution pyramid, on HU clamped to a window
  (metal does not squeeze the histogram). Or, when a transform file is given (any ITK transform
  file, mapping DIBH points to FB points as ITK registration does), that transform is applied.
  FB is then resampled onto the DIBH grid (linear, air outside FB).
- Quality gate: normalised cross-correlation of the two volumes inside the DIBH body (HU >
  `body_hu_threshold`) where FB has data; pairs below `min_ncc`, or whose FB covers too little
  of that body, are rejected with the value in the reason.

Metric sampling uses a fixed seed and, by default, one thread, so the same inputs give the same
transform and the same resampled voxels on every machine. SimpleITK's thread count is a process-wide
setting (the pyramid filters and the metric read it), so registrations in one process take turns
holding it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import threading
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from cli_shell.settings import setting
from ct_io.dicom import frames_hu
from ct_io.errors import CTInputError
from ct_io.hu import AIR_HU, with_air
from ct_io.series import CTSeries, check_series
from pipeline.files import read_bytes
from pipeline.slice_scan import read_ct_frames


@dataclasses.dataclass(frozen=True)
class RegistrationConfig:
    """How FB is registered onto DIBH and when a pair is good enough. Lengths in mm."""

    affine: bool = setting(False, "after the rigid stage, refine with a 12-parameter affine transform")
    metric_bins: int = setting(50, "histogram bins of Mattes mutual information")
    metric_sampling_fraction: float = setting(0.05, "fraction of DIBH voxels sampled (random, fixed seed) per metric evaluation")
    sampling_seed: int = setting(20240611, "seed of the metric sampling (must be > 0: 0 means wall-clock in ITK)")
    iterations: int = setting(200, "optimizer iterations per resolution level (rigid stage)")
    affine_iterations: int = setting(100, "optimizer iterations per resolution level (affine stage)")
    learning_rate: float = setting(1.0, "initial step of the regular-step gradient descent (mm-equivalent)")
    min_step: float = setting(1e-3, "step below which a level stops")
    shrink_factors: tuple[int, ...] = setting((4, 2, 1), "pyramid downsampling per level (voxels)")
    smoothing_sigmas_mm: tuple[float, ...] = setting((2.0, 1.0, 0.0), "Gaussian smoothing per level (mm)")
    clamp_hu: tuple[float, float] = setting((-1000.0, 2000.0), "HU window the metric and the gate see")
    body_hu_threshold: float = setting(-500.0, "DIBH voxels above this HU form the body mask of the gate")
    min_ncc: float = setting(0.7, "reject pairs whose normalised cross-correlation inside the body is below this")
    min_body_overlap: float = setting(0.5, "reject pairs where FB covers less than this fraction of the DIBH body")
    min_slice_coverage: float = setting(0.99, "a DIBH slice is usable when FB covers this fraction of its body voxels")
    threads: int = setting(1, "SimpleITK threads for registration and resampling (1 = identical results on every "
                             "machine; more are faster but may change the last bits)")

    def validate(self) -> "RegistrationConfig":
        """Returns self, or raises ValueError naming the bad setting."""
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm) or not self.shrink_factors:
            raise ValueError(f"shrink_factors {self.shrink_factors} and smoothing_sigmas_mm {self.smoothing_sigmas_mm} "
                             "need one entry per resolution level")
        if any(int(f) < 1 for f in self.shrink_factors) or any(s < 0 for s in self.smoothing_sigmas_mm):
            raise ValueError("shrink factors must be >= 1 and smoothing sigmas >= 0")
        if not 0 < self.metric_sampling_fraction <= 1:
            raise ValueError(f"metric_sampling_fraction must be in (0, 1], got {self.metric_sampling_fraction}")
        if self.sampling_seed <= 0:
            raise ValueError(f"sampling_seed must be > 0 (0 makes ITK seed from the clock), got {self.sampling_seed}")
        if self.iterations < 1 or self.affine_iterations < 1 or self.metric_bins < 4 or self.threads < 1:
            raise ValueError("iterations, affine_iterations and threads must be >= 1, metric_bins >= 4")
        if len(self.clamp_hu) != 2 or self.clamp_hu[0] >= self.clamp_hu[1]:
            raise ValueError(f"clamp_hu must be (low, high) with low < high, got {self.clamp_hu}")
        for name in ("min_body_overlap", "min_slice_coverage"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not -1 <= self.min_ncc <= 1:
            raise ValueError(f"min_ncc must be in [-1, 1], got {self.min_ncc}")
        return self


@dataclasses.dataclass(frozen=True)
class RegistrationResult:
    """What registration found and whether the pair passes the gate.

    `translation_mm` is the displacement of the DIBH volume centre (x, y, z in patient mm) and
    `rotation_deg` the Euler angles (x, y, z; ITK Euler3D convention) of the rotation nearest to
    the transform's linear part: for a rigid transform exactly its parameters.
    """

    transform_kind: str
    """`rigid`, `affine` or `file:<ITK transform class>`."""
    transform_parameters: tuple[float, ...]
    transform_fixed_parameters: tuple[float, ...]
    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    metric_value: float | None
    """Final Mattes mutual information (negative; lower is better); None for a given transform."""
    ncc_body: float
    body_overlap: float
    """Fraction of DIBH body voxels where FB has data."""
    usable_slices: tuple[int, ...]
    """DIBH slice indices (z) whose body FB covers (>= min_slice_coverage)."""
    accepted: bool
    reason: str
    """Empty when accepted, else e.g. `low_ncc 0.42 < 0.70`."""


class SeriesVolumeError(Exception):
    """A series cannot form one volume; `reason` is a stable code, `detail` names the file."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        return SeriesVolumeError, (self.reason, self.detail)


def read_ct_series(paths: Sequence[str], spacing_tolerance: float = 0.01) -> tuple[CTSeries, np.ndarray]:
    """One CT series from its files (single- or multi-frame): its frames in stack order and their
    HU float32 [Z, H, W] (the air rule applied).

    `paths` are local or remote files of a single SeriesInstanceUID; the slices must form a
    regular stack (steps along the normal equal within `spacing_tolerance`, relative). Raises
    SeriesVolumeError: unreadable_slice, mixed_series, inconsistent_geometry,
    duplicate_positions, non_uniform_spacing, too_few_slices.
    """
    frames, hu_of, series_uids = [], {}, {}
    for path in paths:
        try:
            dataset, file_frames = read_ct_frames(read_bytes(path), path)
            hu, padding = frames_hu(dataset, file_frames, path)
        except CTInputError as error:
            raise SeriesVolumeError("unreadable_slice", f"{error.reason}: {error.detail}") from error
        series_uids[path] = str(dataset.SeriesInstanceUID)
        for frame, frame_hu, frame_padding in zip(file_frames, hu, padding):
            frames.append(frame)
            hu_of[(path, frame.frame_index)] = with_air(frame_hu, frame_padding)
    if len(frames) < 2:
        raise SeriesVolumeError("too_few_slices", f"a volume needs >= 2 slices, got {len(frames)} ({list(paths)[:1]})")
    first_path, series_uid = next(iter(series_uids.items()))
    for path, uid in series_uids.items():
        if uid != series_uid:
            raise SeriesVolumeError("mixed_series", f"{path} belongs to series {uid}, {first_path} to {series_uid}")
    try:
        series = check_series(series_uid, frames)
    except CTInputError as error:
        raise SeriesVolumeError("inconsistent_geometry", error.detail) from error
    steps = np.asarray(series.slice_spacing_mm)
    if np.any(steps < 1e-3):
        raise SeriesVolumeError("duplicate_positions", f"series {series_uid} has two slices at the same position")
    step = float(np.median(steps))
    if np.max(np.abs(steps - step)) > spacing_tolerance * step + 1e-3:
        raise SeriesVolumeError("non_uniform_spacing", f"series {series_uid}: slice steps range {steps.min():.3f}.."
                                                       f"{steps.max():.3f} mm (gaps or mixed stacks)")
    return series, np.stack([hu_of[(frame.source, frame.frame_index)] for frame in series.frames])


def series_volume(series: CTSeries, hu: np.ndarray) -> sitk.Image:
    """SimpleITK volume of `read_ct_series`' result: spacing (column, row, slice step) in mm,
    origin at the first slice's first pixel, direction (row, column, normal)."""
    first = series.frames[0]
    orientation = np.asarray(first.orientation, float)
    row, column = orientation[:3] / np.linalg.norm(orientation[:3]), orientation[3:] / np.linalg.norm(orientation[3:])
    volume = sitk.GetImageFromArray(hu.astype(np.float32))
    volume.SetSpacing((first.pixel_spacing_mm[1], first.pixel_spacing_mm[0], float(np.median(series.slice_spacing_mm))))
    volume.SetOrigin(tuple(float(v) for v in first.position_mm))
    volume.SetDirection(tuple(float(v) for v in np.column_stack([row, column, series.normal]).ravel()))
    return volume


def read_series_volume(paths: Sequence[str], spacing_tolerance: float = 0.01) -> sitk.Image:
    """HU volume (float32, SimpleITK [x, y, z]; as an array [Z, H, W]) of one CT series
    (`read_ct_series`)."""
    return series_volume(*read_ct_series(paths, spacing_tolerance))


_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def _sitk_threads(threads: int):
    """SimpleITK's global default thread count set to `threads` while the block runs."""
    with _THREADS_LOCK:
        previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _clamped(image: sitk.Image, config: RegistrationConfig) -> sitk.Image:
    return sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, *config.clamp_hu)


def _registration(config: RegistrationConfig, iterations: int) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(config.threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.metric_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(config.metric_sampling_fraction, config.sampling_seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=config.learning_rate, minStep=config.min_step, numberOfIterations=iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([int(f) for f in config.shrink_factors])
    method.SetSmoothingSigmasPerLevel([float(s) for s in config.smoothing_sigmas_mm])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _optimised(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """The optimised transform itself (Execute wraps it in a one-element composite)."""
    result = method.Execute(fixed, moving).Downcast()
    if isinstance(result, sitk.CompositeTransform) and result.GetNumberOfTransforms() == 1:
        result = result.GetNthTransform(0).Downcast()
    return result


def _register(fixed: sitk.Image, moving: sitk.Image, config: RegistrationConfig) -> tuple[sitk.Transform, str, float]:
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = _registration(config, config.iterations)
    method.SetInitialTransform(initial, inPlace=False)
    rigid = sitk.Euler3DTransform(_optimised(method, fixed, moving))
    metric = method.GetMetricValue()
    if not config.affine:
        return rigid, "rigid", metric
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    method = _registration(config, config.affine_iterations)
    method.SetInitialTransform(affine, inPlace=False)
    result = sitk.AffineTransform(_optimised(method, fixed, moving))
    return result, "affine", method.GetMetricValue()


def read_transform(path: str) -> sitk.Transform:
    """An ITK transform file (.tfm, .txt, .h5, .mat; local or remote) as a SimpleITK transform."""
    suffix = os.path.splitext(path)[1] or ".tfm"
    with tempfile.TemporaryDirectory(prefix="ctdeblur-tfm-") as scratch:
        local = os.path.join(scratch, f"transform{suffix}")
        with open(local, "wb") as handle:
            handle.write(read_bytes(path))
        try:
            return sitk.ReadTransform(local)
        except RuntimeError as error:
            raise ValueError(f"{path} is not a readable ITK transform file: {str(error).strip().splitlines()[-1]}") from error


def _volume_centre(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))


def rigid_summary(transform: sitk.Transform, centre_mm: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(translation of `centre_mm`, Euler angles in degrees) of the rotation nearest to the
    transform's local linear part at `centre_mm` (finite differences over 10 mm)."""
    centre = np.asarray(centre_mm, float)
    moved = np.asarray(transform.TransformPoint(tuple(centre)))
    step = 10.0
    jacobian = np.column_stack([
        (np.asarray(transform.TransformPoint(tuple(centre + step * axis))) -
         np.asarray(transform.TransformPoint(tuple(centre - step * axis)))) / (2 * step)
        for axis in np.eye(3)])
    u, _, vt = np.linalg.svd(jacobian)
    rotation = u @ np.diag([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt)))]) @ vt
    euler = sitk.Euler3DTransform()
    euler.SetMatrix(tuple(rotation.ravel()), 1e-6)
    angles = tuple(math.degrees(a) for a in (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ()))
    return tuple(float(v) for v in moved - centre), angles


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two equally long 1-D samples (0 when either is constant)."""
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denominator = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b) / denominator) if denominator > 0 else 0.0


def register_fb_to_dibh(fb: sitk.Image, dibh: sitk.Image, config: RegistrationConfig = RegistrationConfig(),
                        transform_file: str | None = None) -> tuple[np.ndarray, RegistrationResult]:
    """FB resampled on the DIBH grid (HU float32 [Z, H, W], air where FB has no data) and the
    registration result with its quality-gate verdict."""
    config.validate()
    transform = read_transform(transform_file) if transform_file is not None else None
    with _sitk_threads(config.threads):
        if transform is not None:
            kind, metric = f"file:{transform.GetName()}", None
        else:
            transform, kind, metric = _register(_clamped(dibh, config), _clamped(fb, config), config)
        resampled = sitk.Resample(sitk.Cast(fb, sitk.sitkFloat32), dibh, transform, sitk.sitkLinear, AIR_HU,
                                  sitk.sitkFloat32)
        inside = sitk.Image(fb.GetSize(), sitk.sitkUInt8) + 1
        inside.CopyInformation(fb)
        covered = sitk.GetArrayFromImage(
            sitk.Resample(inside, dibh, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0

    fb_hu = sitk.GetArrayFromImage(resampled).astype(np.float32)
    dibh_hu = sitk.GetArrayFromImage(sitk.Cast(dibh, sitk.sitkFloat32))
    body = dibh_hu > config.body_hu_threshold
    body_voxels = int(body.sum())
    overlap = float((body & covered).sum()) / body_voxels if body_voxels else 0.0
    gate = body & covered
    low, high = config.clamp_hu
    value = ncc(np.clip(fb_hu[gate], low, high), np.clip(dibh_hu[gate], low, high)) if gate.any() else 0.0
    body_per_slice = body.sum(axis=(1, 2))
    covered_per_slice = gate.sum(axis=(1, 2))
    usable = tuple(int(z) for z in np.flatnonzero(
        (body_per_slice > 0) & (covered_per_slice >= config.min_slice_coverage * body_per_slice)))

    if overlap < config.min_body_overlap:
        reason = f"low_overlap {overlap:.2f} < {config.min_body_overlap:.2f}"
    elif value < config.min_ncc:
        reason = f"low_ncc {value:.2f} < {config.min_ncc:.2f}"
    else:
        reason = ""
    translation, rotation = rigid_summary(transform, _volume_centre(dibh))
    result = RegistrationResult(
        transform_kind=kind,
        transform_parameters=tuple(float(p) for p in transform.GetParameters()),
        transform_fixed_parameters=tuple(float(p) for p in transform.GetFixedParameters()),
        translation_mm=translation, rotation_deg=rotation, metric_value=metric, ncc_body=value,
        body_overlap=overlap, usable_slices=usable, accepted=not reason, reason=reason)
    return fb_hu, result
