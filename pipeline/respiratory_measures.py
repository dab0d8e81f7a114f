"""Measures a physicist uses to judge breathing artifacts in CT, as pure functions on HU volumes.

Volumes are [Z, H, W] in HU with spacing (slice, row, column) in mm, rows running anterior to
posterior (supine patient, front at row 0). docs/respiratory-validation.md uses them to compare
the simulated respiratory pairs (pipeline/respiratory.py) with free-breathing-like references and
with registered free-breathing / breath-hold (FB/DIBH) pairs.

- Edge spread: the 10-90% width (mm) of profiles sampled normal to an edge (diaphragm dome:
  liver below lung; anterior wall: air in front of the body), the profiles placed on the
  reference image and sampled in any image of the same grid.
- Streak energy: mean squared in-plane high-pass (HU^2) over homogeneous soft tissue.
- HU bias: mean difference (HU) of an image against its reference inside a region of interest
  (lung parenchyma near the diaphragm, liver under the right dome) defined on the reference.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from pipeline.respiratory import body_of_slice

LUNG_HU = -400.0
"""Lung (air in the body) lies below this HU, tissue above `TISSUE_HU`."""
TISSUE_HU = -100.0
PARENCHYMA_HU = -700.0
"""Lung parenchyma ROI: lung below this HU (excludes vessels and partial volume at the pleura)."""
LIVER_HU = (0.0, 200.0)
"""Liver ROI: soft tissue in this HU window (excludes fat and bone)."""
SOFT_TISSUE_HU = (-150.0, 200.0)
EDGE_LEVELS = (0.1, 0.9)
PLATEAU_MM = (4.0, 10.0)
"""The tissue levels either side of an edge are the medians from 4 to 10 mm off its centre."""
MIN_EDGE_CONTRAST_HU = 300.0


def plateau_levels_hu(profile_hu: np.ndarray, step_mm: float,
                      plateau_mm: tuple[float, float] = PLATEAU_MM) -> tuple[float, float]:
    """(low, high) HU of an edge profile [L] sampled `step_mm` apart and centred on the edge: the
    medians of the samples `plateau_mm` = (near, far) mm before and after its centre (the tissues
    on either side, clear of the edge's own ramp and of structures further away)."""
    profile = np.asarray(profile_hu, dtype=np.float64)
    offsets = (np.arange(profile.size) - (profile.size - 1) / 2.0) * step_mm
    near, far = plateau_mm
    before = profile[(offsets <= -near) & (offsets >= -far)]
    after = profile[(offsets >= near) & (offsets <= far)]
    if not before.size or not after.size:
        raise ValueError(f"a profile of {profile.size} samples {step_mm} mm apart does not reach {far} mm")
    return float(np.median(before)), float(np.median(after))


def edge_width_mm(profile_hu: np.ndarray, step_mm: float, low_hu: float, high_hu: float) -> float:
    """The 10-90% width (mm) of an edge profile [L] (HU) sampled `step_mm` apart from its low side to
    its high side, between the levels `low_hu` and `high_hu` (`plateau_levels_hu` of the reference):
    from the 50% crossing nearest the centre, down to where the profile last rose above 10% and up
    to where it first reaches 90%, so a doubled or smeared edge counts whole; up to the profile's
    ends when it never gets there. NaN when the levels differ by less than `MIN_EDGE_CONTRAST_HU`
    or the profile never crosses 50%."""
    profile = np.asarray(profile_hu, dtype=np.float64)
    if profile.ndim != 1 or profile.size < 3:
        raise ValueError(f"profile_hu must be 1-D with >= 3 samples, got shape {profile.shape}")
    if not step_mm > 0:
        raise ValueError(f"step_mm must be > 0, got {step_mm}")
    if high_hu - low_hu < MIN_EDGE_CONTRAST_HU:
        return math.nan
    level = (profile - low_hu) / (high_hu - low_hu)
    rises = np.flatnonzero((level[:-1] < 0.5) & (level[1:] >= 0.5))
    if not rises.size:
        return math.nan
    middle = rises[np.argmin(np.abs(rises + 0.5 - (profile.size - 1) / 2.0))]
    lower, upper = EDGE_LEVELS
    below = np.flatnonzero(level[: middle + 1] < lower)
    if below.size:
        i = below[-1]
        start = i + (lower - level[i]) / (level[i + 1] - level[i])
    else:
        start = 0.0
    above = np.flatnonzero(level[middle + 1:] >= upper)
    if above.size:
        j = middle + 1 + above[0]
        end = j - 1 + (upper - level[j - 1]) / (level[j] - level[j - 1])
    else:
        end = profile.size - 1.0
    return float((end - start) * step_mm)


def edge_normals(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], points: np.ndarray,
                 sigma_mm: float = 2.0) -> np.ndarray:
    """Unit normals float64 [N, 3] (slice, row, column components, in mm space) pointing from low to
    high HU at voxel `points` [N, 3] (integer indices), from the gradient of the volume smoothed by a
    Gaussian of `sigma_mm`; rows of zeros where the smoothed volume is flat."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    smooth = ndimage.gaussian_filter(np.asarray(volume_hu, dtype=np.float32), sigma_mm / spacing)
    index = tuple(np.asarray(points, dtype=np.intp).T)
    gradient = np.stack([np.gradient(smooth, axis=axis)[index] / spacing[axis] for axis in range(3)], axis=1)
    norm = np.linalg.norm(gradient, axis=1, keepdims=True)
    return np.divide(gradient, norm, out=np.zeros_like(gradient), where=norm > 0)


def edge_profiles(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], points: np.ndarray,
                  normals: np.ndarray, half_length_mm: float, step_mm: float) -> np.ndarray:
    """Profiles float32 [N, L] (HU) of the volume along `normals` [N, 3] (unit, mm space) through
    `points` [N, 3] (voxel indices), from -half_length_mm to +half_length_mm in steps of `step_mm`;
    trilinear, clamped at the volume's faces."""
    offsets = np.arange(-half_length_mm, half_length_mm + step_mm / 2, step_mm)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    coordinates = (np.asarray(points, dtype=np.float64)[:, None, :]
                   + offsets[None, :, None] * np.asarray(normals, dtype=np.float64)[:, None, :] / spacing)
    return ndimage.map_coordinates(np.asarray(volume_hu, dtype=np.float32), coordinates.transpose(2, 0, 1),
                                   order=1, mode="nearest").astype(np.float32)


def body_mask(volume_hu: np.ndarray) -> np.ndarray:
    """Bool [Z, H, W]: per slice, `body_of_slice` (the largest region above -500 HU, holes such as the lungs filled)."""
    return np.stack([body_of_slice(plane) for plane in np.asarray(volume_hu)])


def diaphragm_points(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], diaphragm_index: float,
                     head_first: bool = True, within_mm: float = 40.0, max_tilt_deg: float = 30.0,
                     sigma_mm: float = 2.0) -> np.ndarray:
    """Voxel indices int [N, 3] of the diaphragm's upper surface: tissue voxels (> `TISSUE_HU`) with
    lung (< `LUNG_HU`, inside the body) in the next slice towards the head, within `within_mm` of
    the diaphragm slice `diaphragm_index` (so not the heart's or a vessel's lower side), whose edge
    normal (`edge_normals`) is within `max_tilt_deg` of the body's long axis."""
    volume = np.asarray(volume_hu, dtype=np.float32)
    lung = (volume < LUNG_HU) & body_mask(volume)
    tissue = volume > TISSUE_HU
    tissue &= (np.abs(np.arange(len(volume)) - diaphragm_index) * spacing_mm[0] <= within_mm)[:, None, None]
    above = np.zeros_like(lung)
    if head_first:
        above[1:] = lung[:-1]
    else:
        above[:-1] = lung[1:]
    points = np.argwhere(tissue & above)
    if not len(points):
        return points
    normals = edge_normals(volume, spacing_mm, points, sigma_mm)
    towards_feet = normals[:, 0] * (1.0 if head_first else -1.0)
    return points[towards_feet >= math.cos(math.radians(max_tilt_deg))]


def anterior_wall_points(volume_hu: np.ndarray, central_fraction: float = 0.5) -> np.ndarray:
    """Voxel indices int [N, 3] of the anterior skin: per slice and per column in the central
    `central_fraction` of the body's width, the first body row from the front."""
    body = body_mask(volume_hu)
    points = []
    for index, plane in enumerate(body):
        columns = np.flatnonzero(plane.any(axis=0))
        if not columns.size:
            continue
        middle, half = (columns.min() + columns.max()) / 2.0, (columns.max() - columns.min()) / 2.0
        for column in range(int(math.ceil(middle - central_fraction * half)), int(middle + central_fraction * half) + 1):
            if plane[:, column].any():
                points.append((index, int(np.argmax(plane[:, column])), column))
    return np.asarray(points, dtype=np.intp).reshape(-1, 3)


def edge_widths_mm(image_hu: np.ndarray, reference_hu: np.ndarray, spacing_mm: tuple[float, float, float],
                   points: np.ndarray, half_length_mm: float, step_mm: float = 0.5) -> np.ndarray:
    """10-90% widths float64 [N] (mm) of `image_hu` along the reference's edge normals at `points`,
    between the reference's tissue levels (`plateau_levels_hu`): NaN where the reference's own
    profile is no clean edge (its own width NaN)."""
    normals = edge_normals(reference_hu, spacing_mm, points)
    reference = edge_profiles(reference_hu, spacing_mm, points, normals, half_length_mm, step_mm)
    image = edge_profiles(image_hu, spacing_mm, points, normals, half_length_mm, step_mm)
    widths = np.full(len(points), math.nan)
    for number, (own, measured) in enumerate(zip(reference, image)):
        levels = plateau_levels_hu(own, step_mm)
        if math.isfinite(edge_width_mm(own, step_mm, *levels)):
            widths[number] = edge_width_mm(measured, step_mm, *levels)
    return widths


def homogeneous_tissue_mask(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float],
                            radius_mm: float = 5.0, max_range_hu: float = 150.0) -> np.ndarray:
    """Bool [Z, H, W]: body voxels in `SOFT_TISSUE_HU` whose neighbourhood (a box of +-radius_mm, at
    least one voxel, along each axis) spans less than `max_range_hu`: soft tissue away from edges,
    where any high frequency is texture, noise or streaks."""
    volume = np.asarray(volume_hu, dtype=np.float32)
    size = tuple(2 * max(1, int(round(radius_mm / s))) + 1 for s in spacing_mm)
    spread = ndimage.maximum_filter(volume, size) - ndimage.minimum_filter(volume, size)
    low, high = SOFT_TISSUE_HU
    return body_mask(volume) & (volume > low) & (volume < high) & (spread < max_range_hu)


def streak_energy_hu2(image_hu: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float],
                      sigma_mm: float = 3.0) -> float:
    """Mean squared in-plane high-pass (HU^2) of `image_hu` over `mask`: the image minus its
    Gaussian smoothing of `sigma_mm` within each slice. NaN for an empty mask."""
    image = np.asarray(image_hu, dtype=np.float32)
    sigma = (0.0, *(sigma_mm / s for s in spacing_mm[1:]))
    high = image - ndimage.gaussian_filter(image, sigma)
    return float(np.mean(np.square(high[mask], dtype=np.float64))) if mask.any() else math.nan


def hu_bias_hu(image_hu: np.ndarray, reference_hu: np.ndarray, mask: np.ndarray) -> float:
    """Mean of image - reference (HU) over `mask`; NaN for an empty mask."""
    if not mask.any():
        return math.nan
    return float(np.mean(np.asarray(image_hu, np.float64)[mask] - np.asarray(reference_hu, np.float64)[mask]))


def _slab(shape: tuple[int, ...], spacing_mm: tuple[float, float, float], diaphragm_index: float, head_first: bool,
          above_mm: float, below_mm: float) -> np.ndarray:
    """Bool [Z, 1, 1]: slices from `below_mm` under the diaphragm to `above_mm` over it."""
    superior_mm = (diaphragm_index - np.arange(shape[0])) * spacing_mm[0] * (1.0 if head_first else -1.0)
    return ((superior_mm <= above_mm) & (superior_mm >= -below_mm))[:, None, None]


def lung_base_mask(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], diaphragm_index: float,
                   head_first: bool = True, above_mm: float = 40.0, erode_mm: float = 3.0) -> np.ndarray:
    """Bool [Z, H, W]: lung parenchyma (< `PARENCHYMA_HU`, in the body, eroded in-plane by
    `erode_mm`) from one slice under the diaphragm slice `diaphragm_index` (a mid-dome level: lung
    still lies beside the dome there) to `above_mm` above it, where breathing moves the lung most."""
    volume = np.asarray(volume_hu, dtype=np.float32)
    lung = (volume < PARENCHYMA_HU) & body_mask(volume)
    structure = np.ones((1, *(2 * max(1, int(round(erode_mm / s))) + 1 for s in spacing_mm[1:])), dtype=bool)
    lung = ndimage.binary_erosion(lung, structure)
    return lung & _slab(volume.shape, spacing_mm, diaphragm_index, head_first, above_mm, spacing_mm[0])


def liver_mask(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], diaphragm_index: float,
               head_first: bool = True, below_mm: float = 60.0, erode_mm: float = 5.0,
               depth_mm: float = 20.0) -> np.ndarray:
    """Bool [Z, H, W]: liver-like tissue under the right dome: voxels in `LIVER_HU`, in the image's
    left half (the patient's right), at least `depth_mm` inside the body, eroded in 3-D by
    `erode_mm`, from the diaphragm slice to `below_mm` under it."""
    volume = np.asarray(volume_hu, dtype=np.float32)
    body = body_mask(volume)
    depth = ndimage.distance_transform_edt(body, sampling=(1e6, *spacing_mm[1:]))
    low, high = LIVER_HU
    tissue = (volume > low) & (volume < high) & (depth >= depth_mm)
    columns = np.flatnonzero(body.any(axis=(0, 1)))
    if columns.size:
        tissue[:, :, int(round((columns.min() + columns.max()) / 2.0)):] = False
    radius = [max(1, int(round(erode_mm / s))) for s in spacing_mm]
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g * s) ** 2 for g, s in zip(grid, spacing_mm)) <= erode_mm ** 2
    tissue = ndimage.binary_erosion(tissue, ball)
    return tissue & _slab(volume.shape, spacing_mm, diaphragm_index, head_first, 0.0, below_mm)
