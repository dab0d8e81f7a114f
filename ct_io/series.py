"""Slices of one CT series: where each lies along the slice normal, their order, and whether
they form one consistent stack (pure numpy).

Conventions. ImageOrientationPatient holds the row direction cosines (the direction in which
column index grows, ITK's x) then the column direction cosines (row index grows, ITK's y);
PixelSpacing is (between rows, between columns) = (y, x) in ITK's terms. The slice normal is
row x column; a slice's position along it is the signed distance ImagePositionPatient . normal
(mm), which grows from feet to head for axial slices in the usual orientation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence

import numpy as np

from ct_io.errors import CTInputError

ORIENTATION_TOLERANCE = 1e-3
"""Largest difference of direction cosines between images of one series."""
SPACING_TOLERANCE_MM = 1e-3
TILT_TOLERANCE_DEG = 0.1
"""Angles between the slice stacking direction and the slice normal above this are gantry tilt."""
REGULAR_SPACING_TOLERANCE = 0.01
"""Relative spread of the distances between slices above which a stack is not a regular grid."""


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal (row x column) of ImageOrientationPatient's six direction cosines, or a zero
    vector when they are degenerate."""
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 0 else normal


def position_along_normal(position_mm: Sequence[float], orientation: Sequence[float] | None) -> float:
    """Signed distance (mm) of ImagePositionPatient along the slice normal; along patient z when
    the orientation is unknown or degenerate."""
    normal = slice_normal(orientation) if orientation is not None else np.zeros(3)
    if not normal.any():
        normal = np.array([0.0, 0.0, 1.0])
    return float(np.dot(np.asarray(position_mm, float), normal))


def slice_order_key(along_normal_mm: float | None, instance_number: int | None, name: str,
                    frame_index: int | None = None) -> tuple:
    """Sort key of a slice in its series: position along the normal, then InstanceNumber, then
    file name and frame; unknown positions and numbers sort last."""
    return (math.inf if along_normal_mm is None else along_normal_mm,
            math.inf if instance_number is None else instance_number, name, frame_index or 0)


@dataclasses.dataclass(frozen=True)
class Frame:
    """One CT slice: a single-frame object, or frame `frame_index` of a multi-frame object.

    source: what the reader opens again to decode the pixels (a path, a zip member, ...).
    name: the file (or `archive.zip!member`) in messages.
    sop_instance_uid: of the object holding the frame.
    position_mm: ImagePositionPatient (x, y, z) of the first pixel (mm), None if absent.
    orientation: ImageOrientationPatient (row cosines, column cosines), None if absent.
    pixel_spacing_mm: (between rows, between columns) (mm).
    rescale: (slope, intercept): HU = stored * slope + intercept.
    """

    source: Hashable
    name: str
    sop_instance_uid: str
    frame_index: int | None
    rows: int
    columns: int
    position_mm: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float | None
    instance_number: int | None
    rescale: tuple[float, float]

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row x column)."""
        return slice_normal(self.orientation)

    @property
    def along_normal_mm(self) -> float | None:
        """Signed position along the slice normal (mm), None without ImagePositionPatient."""
        return None if self.position_mm is None else position_along_normal(self.position_mm, self.orientation)

    @property
    def where(self) -> str:
        """The file, and the frame of a multi-frame object, for messages."""
        return self.name if self.frame_index is None else f"{self.name} (frame {self.frame_index + 1})"


def require_geometry(frame: Frame) -> None:
    """Raises CTInputError(missing_geometry) if the frame lacks ImagePositionPatient or
    ImageOrientationPatient (its place in a volume is then unknown)."""
    for value, tag in ((frame.position_mm, "ImagePositionPatient"), (frame.orientation, "ImageOrientationPatient")):
        if value is None:
            raise CTInputError("missing_geometry", f"{frame.where} has no {tag}: its place in the volume is unknown")


@dataclasses.dataclass(frozen=True)
class CTSeries:
    """A CT series: frames sorted along the slice normal, consistent in size and geometry.

    tilt_deg: angle between the slice stacking direction and the slice normal (gantry tilt), 0 for
    one slice. slice_spacing_mm: distances between consecutive slices along the normal (mm).
    """

    series_uid: str
    description: str
    series_number: int | None
    frames: tuple[Frame, ...]
    tilt_deg: float
    slice_spacing_mm: tuple[float, ...]

    @property
    def rows(self) -> int:
        return self.frames[0].rows

    @property
    def columns(self) -> int:
        return self.frames[0].columns

    @property
    def multiframe(self) -> bool:
        return self.frames[0].frame_index is not None

    @property
    def normal(self) -> np.ndarray:
        return self.frames[0].normal

    def objects(self) -> list[tuple[Hashable, list[Frame]]]:
        """The objects holding the frames, ordered by their first frame's place in the stack;
        each with its frames in object order."""
        by_source: dict[Hashable, list[Frame]] = {}
        for frame in self.frames:
            by_source.setdefault(frame.source, []).append(frame)
        return [(source, sorted(frames, key=lambda f: f.frame_index or 0)) for source, frames in by_source.items()]

    def regular_grid_problem(self) -> str | None:
        """Why the slices do not form a regular 3-D grid (tilt, uneven or repeated positions), or None."""
        if self.tilt_deg > TILT_TOLERANCE_DEG:
            return f"the slices are stacked {self.tilt_deg:.1f} degrees off their normal (gantry tilt)"
        if not self.slice_spacing_mm:
            return None
        low, high = min(self.slice_spacing_mm), max(self.slice_spacing_mm)
        if low <= SPACING_TOLERANCE_MM:
            return "two or more slices share one position"
        if high - low > REGULAR_SPACING_TOLERANCE * high:
            return f"the distance between slices varies from {low:.3f} to {high:.3f} mm"
        return None


def _groups_text(frames: Sequence[Frame], key, label) -> str:
    groups: dict = {}
    for frame in frames:
        groups.setdefault(key(frame), []).append(frame)
    return ", ".join(f"{label(value)} ({len(members)} images, e.g. {members[0].name})"
                     for value, members in sorted(groups.items(), key=lambda item: -len(item[1])))


def check_series(series_uid: str, frames: Sequence[Frame], description: str = "",
                 series_number: int | None = None) -> CTSeries:
    """Checks one kind of object, one size, one orientation and one pixel spacing; sorts the
    frames along the normal. Every frame needs its geometry (`require_geometry`).

    Raises CTInputError (mixed_frame_kinds, mixed_matrix_sizes, mixed_orientations,
    mixed_pixel_spacings, missing_geometry) naming the groups of images that disagree.
    """
    frames = list(frames)
    for frame in frames:
        require_geometry(frame)
    if len({frame.frame_index is None for frame in frames}) > 1:
        raise CTInputError("mixed_frame_kinds", f"series {series_uid} mixes single-frame and multi-frame CT images; "
                                                "read them separately")
    if len({(f.rows, f.columns) for f in frames}) > 1:
        raise CTInputError("mixed_matrix_sizes", f"series {series_uid} mixes image sizes: "
                           f"{_groups_text(frames, lambda f: (f.rows, f.columns), lambda v: f'{v[0]}x{v[1]}')}; "
                           "put the images of one size in a directory of their own")
    reference = np.asarray(frames[0].orientation)
    if any(np.max(np.abs(np.asarray(f.orientation) - reference)) > ORIENTATION_TOLERANCE for f in frames):
        raise CTInputError("mixed_orientations", f"series {series_uid} mixes image orientations: "
                           f"{_groups_text(frames, lambda f: tuple(round(v, 3) for v in f.orientation), list)}")
    spacing = np.asarray(frames[0].pixel_spacing_mm)
    if any(np.max(np.abs(np.asarray(f.pixel_spacing_mm) - spacing)) > SPACING_TOLERANCE_MM for f in frames):
        raise CTInputError("mixed_pixel_spacings", f"series {series_uid} mixes pixel spacings: "
                           f"{_groups_text(frames, lambda f: tuple(round(v, 4) for v in f.pixel_spacing_mm), list)}")
    normal = frames[0].normal
    ordered = sorted(frames, key=lambda f: slice_order_key(float(np.dot(f.position_mm, normal)), f.instance_number,
                                                            f.name, f.frame_index))
    positions = np.asarray([f.position_mm for f in ordered])
    along = positions @ normal
    tilt = 0.0
    stack = positions[-1] - positions[0]
    if np.linalg.norm(stack) > SPACING_TOLERANCE_MM:
        tilt = math.degrees(math.acos(min(1.0, abs(float(np.dot(stack, normal))) / float(np.linalg.norm(stack)))))
    return CTSeries(series_uid, description, series_number, tuple(ordered), tilt,
                    tuple(float(d) for d in np.diff(along)))
