"""CT series in and out for `ctdeblur-deblur`: find, check and sort CT images; HU; derived series.

Reading. INPUT is a directory (searched recursively; symlinked directories are not followed), a
single file or a zip archive (members are read into memory one at a time, never extracted, so
member names cannot write anywhere; sizes and compression ratios are bounded, see `ZipLimits`).
Every file is parsed by pydicom (files without the 128-byte preamble and 'DICM' prefix too).
What is not a CT image is skipped and counted by reason: not DICOM (README, .DS_Store),
DICOMDIR, other modalities, CT objects without pixels (dose reports), localizer (scout) images,
repeated SOP instances. CT images are grouped by SeriesInstanceUID; one series is deblurred.
Single-frame CT Image Storage and multi-frame Enhanced (and Legacy Converted Enhanced) CT are
read, per-frame functional groups included. Slices are sorted by ImagePositionPatient along the
slice normal (row x column direction cosines), not by InstanceNumber or file name.

HU. HU = stored * RescaleSlope + RescaleIntercept (any real slope and intercept, signed or
unsigned stored values, compressed transfer syntaxes decoded by pydicom with pylibjpeg).
Pixels equal to PixelPaddingValue (or inside PixelPaddingRangeLimit) are flagged as padding.

Writing. The derived dataset is a copy of the input dataset with new SOP Instance and Series
Instance UIDs, ImageType DERIVED\\SECONDARY (DERIVED\\PRIMARY for Enhanced CT; other values kept),
a SeriesDescription suffix, a DerivationDescription, a new SeriesNumber, a SourceImageSequence
pointing at the input image, signed 16-bit pixels with the input's rescale, in Explicit VR Little
Endian; see `derived_dataset`.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import datetime
import io
import math
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
    generate_uid,
)

CT_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})
MULTIFRAME_CT_SOP_CLASSES = frozenset({EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})
INT16_MIN, INT16_MAX = -32768, 32767
IMPLEMENTATION_VERSION_NAME = "CTDEBLUR_0_1"
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference of direction cosines between images of one series."""
SPACING_TOLERANCE_MM = 1e-3
TILT_TOLERANCE_DEG = 0.1
"""Angles between the slice stacking direction and the slice normal above this are gantry tilt."""
REGULAR_SPACING_TOLERANCE = 0.01
"""Relative spread of the distances between slices above which a stack is not a regular grid."""

LOSSY_TRANSFER_SYNTAXES = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1",
                           JPEGLSNearLossless: "ISO_14495_1"}
"""Transfer syntaxes that are always lossy -> LossyImageCompressionMethod (JPEG 2000 may be either)."""
PIXEL_DEPENDENT_TAGS = (
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries",
    "PixelPaddingRangeLimit", "IconImageSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "PixelDataProviderURL", "DigitalSignaturesSequence", "MACParametersSequence", "EncryptedAttributesSequence",
    "PlanarConfiguration", "PixelPaddingValue",
)
"""Removed from derived datasets: they describe the input's pixel bytes (or sign them)."""


class SeriesError(ValueError):
    """The input cannot be deblurred as asked; the message names the file or series and what to do."""


@dataclasses.dataclass(frozen=True)
class ZipLimits:
    """Bounds on a zip INPUT, checked on the declared sizes and again while reading (bytes).

    Members larger than `member_bytes`, archives whose members sum to more than `total_bytes`,
    and members of more than 1 MiB that expand more than `max_ratio` times are refused.
    """

    member_bytes: int = 2 << 30
    total_bytes: int = 64 << 30
    max_ratio: float = 250.0


@dataclasses.dataclass(frozen=True)
class Source:
    """One input file: `name` for messages (a path, or `archive.zip!member`); `member` for zips."""

    name: str
    path: str
    member: str | None = None


class InputFiles(contextlib.AbstractContextManager):
    """The files of INPUT (directory, file or zip) and their bytes; a zip stays open while in use."""

    def __init__(self, input_path: str, limits: ZipLimits = ZipLimits()):
        self.input_path = input_path
        self.limits = limits
        self._zip: zipfile.ZipFile | None = None
        self.skipped: collections.Counter = collections.Counter()
        try:
            self.sources: list[Source] = self._list()
        except SeriesError:
            self.__exit__(None, None, None)
            raise

    def _list(self) -> list[Source]:
        path = self.input_path
        if os.path.isdir(path):
            sources = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                sources += [Source(os.path.join(root, name), os.path.join(root, name)) for name in sorted(files)]
            return sources
        if not os.path.exists(path):
            raise SeriesError(f"INPUT {path} does not exist")
        if not os.path.isfile(path):
            raise SeriesError(f"INPUT {path} is neither a directory nor a file")
        if zipfile.is_zipfile(path) and not _has_dicom_prefix(path):
            return self._list_zip(path)
        return [Source(path, path)]

    def _list_zip(self, path: str) -> list[Source]:
        try:
            self._zip = zipfile.ZipFile(path)
            members = [info for info in self._zip.infolist() if not info.is_dir()]
        except (zipfile.BadZipFile, OSError) as error:
            raise SeriesError(f"cannot read the zip archive {path}: {error}") from error
        total = 0
        sources = []
        for info in members:
            name = f"{path}!{info.filename}"
            if info.flag_bits & 0x1:
                self.skipped["encrypted zip member"] += 1
                continue
            if info.file_size > self.limits.member_bytes:
                raise SeriesError(f"{name} expands to {info.file_size} bytes, more than the "
                                  f"{self.limits.member_bytes} allowed for one zip member")
            if info.file_size > (1 << 20) and info.file_size > self.limits.max_ratio * max(info.compress_size, 1):
                raise SeriesError(f"{name} expands {info.file_size / max(info.compress_size, 1):.0f} times "
                                  f"(more than {self.limits.max_ratio:.0f}): refusing a possible zip bomb")
            total += info.file_size
            sources.append(Source(name, path, info.filename))
        if total > self.limits.total_bytes:
            raise SeriesError(f"the zip archive {path} expands to {total} bytes, more than the "
                              f"{self.limits.total_bytes} allowed")
        return sources

    def open(self, source: Source) -> BinaryIO:
        """A readable, seekable file object of `source` (zip members are read into memory, bounded)."""
        if source.member is None:
            return open(source.path, "rb")
        assert self._zip is not None
        info = self._zip.getinfo(source.member)
        try:
            with self._zip.open(info) as handle:
                data = handle.read(self.limits.member_bytes + 1)
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as error:
            raise SeriesError(f"cannot read {source.name}: {error}") from error
        if len(data) > self.limits.member_bytes:
            raise SeriesError(f"{source.name} holds more than {self.limits.member_bytes} bytes")
        return io.BytesIO(data)

    def __exit__(self, *exc_info) -> None:
        if self._zip is not None:
            self._zip.close()


def _has_dicom_prefix(path: str) -> bool:
    """True if the file has the DICOM Part 10 prefix ('DICM' after the 128-byte preamble)."""
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _original_transfer_syntax(dataset: Dataset) -> UID:
    implicit, little = getattr(dataset, "original_encoding", (False, True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def parse_dicom(handle: BinaryIO, *, defer_pixels: bool) -> Dataset | None:
    """The dataset in `handle`, or None if it is not DICOM. Files without preamble are read too;
    a missing Transfer Syntax UID is filled in from the encoding pydicom detected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        defer = 4096 if defer_pixels else None
        try:
            try:
                dataset = pydicom.dcmread(handle, defer_size=defer)
            except InvalidDicomError:
                handle.seek(0)
                dataset = pydicom.dcmread(handle, defer_size=defer, force=True)
            sop_class, modality = str(dataset.get("SOPClassUID", "") or ""), str(dataset.get("Modality", "") or "")
            if not sop_class and not modality:
                return None
        except Exception:  # noqa: BLE001 - pydicom raises many types on garbage; reading the values parses them
            return None
    if not hasattr(dataset, "file_meta"):
        dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = _original_transfer_syntax(dataset)
    return dataset


def skip_reason(dataset: Dataset) -> str | None:
    """Why a DICOM dataset is not a CT image to deblur (a short count key), or None if it is one."""
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    if sop_class == MediaStorageDirectoryStorage:
        return "DICOMDIR"
    modality = str(dataset.get("Modality", "") or "").strip()
    if modality != "CT" and not (not modality and sop_class in CT_SOP_CLASSES):
        kind = "image" if "PixelData" in dataset else "object"
        return f"non-CT {kind} (Modality {modality or 'missing'})"
    if sop_class and sop_class not in CT_SOP_CLASSES:
        return f"CT object that is not a CT image ({UID(sop_class).name})"
    if "PixelData" not in dataset:
        return "CT object without pixel data"
    image_type = [str(v).upper() for v in _values(dataset.get("ImageType"))]
    if len(image_type) > 2 and image_type[2] == "LOCALIZER":
        return "localizer (scout) image"
    return None


def _values(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


@dataclasses.dataclass(frozen=True)
class Frame:
    """One CT slice to deblur: a single-frame file, or frame `frame_index` of a multi-frame file.

    position_mm: ImagePositionPatient (x, y, z) of the first pixel (mm).
    orientation: ImageOrientationPatient (row cosines, column cosines).
    pixel_spacing_mm: (between rows, between columns) (mm).
    rescale: (slope, intercept): HU = stored * slope + intercept.
    """

    source: Source
    frame_index: int | None
    rows: int
    columns: int
    position_mm: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float | None
    instance_number: int | None
    rescale: tuple[float, float]

    @property
    def normal(self) -> np.ndarray:
        row, column = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        return np.cross(row, column)


def _functional_item(dataset: Dataset, frame_index: int, sequence: str) -> Dataset | None:
    """The item of functional group `sequence` for a frame: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame_index), ("SharedFunctionalGroupsSequence", 0)):
        items = dataset.get(groups)
        if items is not None and len(items) > index:
            group = items[index].get(sequence)
            if group is not None and len(group) > 0:
                return group[0]
    return None


def _floats(value, count: int, name: str, tag: str) -> tuple[float, ...]:
    values = _values(value)
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError) as error:
        raise SeriesError(f"{name} has an unreadable {tag} {values!r}") from error
    if len(floats) != count or not all(math.isfinite(v) for v in floats):
        raise SeriesError(f"{name} has {tag} {values!r}; {count} numbers are needed")
    return floats


def _rescale(item: Dataset | None, name: str, missing_rescale: str) -> tuple[float, float]:
    slope = item.get("RescaleSlope") if item is not None else None
    intercept = item.get("RescaleIntercept") if item is not None else None
    if slope in (None, "") or intercept in (None, ""):
        if missing_rescale == "identity":
            return 1.0, 0.0
        raise SeriesError(f"{name} has no RescaleSlope/RescaleIntercept, so its HU are unknown; if its stored "
                          "values are HU already, pass --missing_rescale identity")
    values = _floats([slope, intercept], 2, name, "RescaleSlope/RescaleIntercept")
    if values[0] == 0:
        raise SeriesError(f"{name} has RescaleSlope 0")
    return values


def _optional_float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _optional_int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def dataset_frames(dataset: Dataset, source: Source, missing_rescale: str = "error") -> list[Frame]:
    """The frames of a CT image dataset with their geometry and rescale (SeriesError if missing)."""
    name = source.name
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesError(f"{name} is a CT image with {dataset.SamplesPerPixel} samples per pixel; grayscale is needed")
    if "ModalityLUTSequence" in dataset:
        raise SeriesError(f"{name} maps stored values to HU with a Modality LUT, which is not supported")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        raise SeriesError(f"{name} has no Rows/Columns")
    if not dataset.get("SOPInstanceUID"):
        raise SeriesError(f"{name} has no SOPInstanceUID")
    instance = _optional_int(dataset.get("InstanceNumber"))
    frames_count = _optional_int(dataset.get("NumberOfFrames")) or 1
    multiframe = str(dataset.get("SOPClassUID", "")) in MULTIFRAME_CT_SOP_CLASSES or "PerFrameFunctionalGroupsSequence" in dataset
    frames = []
    for index in range(frames_count):
        if multiframe:
            position_item = _functional_item(dataset, index, "PlanePositionSequence")
            orientation_item = _functional_item(dataset, index, "PlaneOrientationSequence")
            measures_item = _functional_item(dataset, index, "PixelMeasuresSequence")
            rescale_item = _functional_item(dataset, index, "PixelValueTransformationSequence") or dataset
            where = f"{name} (frame {index + 1})"
        elif frames_count > 1:
            raise SeriesError(f"{name} has {frames_count} frames but no per-frame functional groups "
                              f"(SOP class {UID(str(dataset.get('SOPClassUID', ''))).name}); cannot place its frames")
        else:
            position_item = orientation_item = measures_item = rescale_item = dataset
            where = name
        for item, tag in ((position_item, "ImagePositionPatient"), (orientation_item, "ImageOrientationPatient"),
                          (measures_item, "PixelSpacing")):
            if item is None or item.get(tag) is None:
                raise SeriesError(f"{where} has no {tag}: its geometry is unknown, so no derived series with the "
                                  "same geometry can be written")
        orientation = _floats(orientation_item.ImageOrientationPatient, 6, where, "ImageOrientationPatient")
        normal = np.cross(orientation[:3], orientation[3:])
        if not 0.99 < float(np.linalg.norm(normal)) < 1.01:
            raise SeriesError(f"{where} has ImageOrientationPatient {list(orientation)} whose row and column "
                              "directions are not orthogonal unit vectors")
        spacing = _floats(measures_item.PixelSpacing, 2, where, "PixelSpacing")
        if min(spacing) <= 0:
            raise SeriesError(f"{where} has PixelSpacing {list(spacing)}; positive values are needed")
        frames.append(Frame(
            source=source,
            frame_index=index if multiframe else None,
            rows=rows,
            columns=columns,
            position_mm=_floats(position_item.ImagePositionPatient, 3, where, "ImagePositionPatient"),
            orientation=orientation,
            pixel_spacing_mm=spacing,
            slice_thickness_mm=_optional_float(measures_item.get("SliceThickness")),
            instance_number=instance,
            rescale=_rescale(rescale_item, where, missing_rescale),
        ))
    return frames


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """What the scan saw of one CT series in the input (for listings)."""

    series_uid: str
    description: str
    series_number: int | None
    frames: tuple[Frame, ...]


@dataclasses.dataclass(frozen=True)
class CTSeries:
    """The CT series to deblur: frames sorted along the slice normal, consistent in size and geometry.

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

    def objects(self) -> list[tuple[Source, list[Frame]]]:
        """The input files holding the frames, ordered by their first frame's place in the stack;
        each with its frames in file order."""
        by_source: dict[Source, list[Frame]] = {}
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


@dataclasses.dataclass
class ScanReport:
    """What the scan of INPUT found: file count and skipped files by reason (with one example each)."""

    files: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, name: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, name)

    def skipped_text(self) -> str:
        if not self.skipped:
            return "none"
        return "; ".join(f"{count} {reason} (e.g. {self.examples.get(reason, '?')})"
                         for reason, count in sorted(self.skipped.items()))


def scan_input(files: InputFiles, missing_rescale: str = "error", progress=None) -> tuple[list[SeriesInfo], ScanReport]:
    """Reads the headers of all input files (not the pixels); returns the CT series found and
    the counts of skipped files. `progress` is called once per file."""
    report = ScanReport(files=len(files.sources))
    for reason, count in files.skipped.items():
        report.skipped[reason] += count
    by_series: dict[str, list[Frame]] = {}
    descriptions: dict[str, tuple[str, int | None]] = {}
    seen_sops: set[str] = set()
    for source in files.sources:
        if progress is not None:
            progress()
        with files.open(source) as handle:
            dataset = parse_dicom(handle, defer_pixels=True)
            if dataset is None:
                report.skip("not DICOM", source.name)
                continue
            reason = skip_reason(dataset)
            if reason is not None:
                report.skip(reason, source.name)
                continue
            series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
            if not series_uid:
                raise SeriesError(f"{source.name} is a CT image without SeriesInstanceUID")
            sop_uid = str(dataset.get("SOPInstanceUID", "") or "")
            if sop_uid in seen_sops:
                report.skip("repeated SOP Instance UID (same image twice)", source.name)
                continue
            seen_sops.add(sop_uid)
            by_series.setdefault(series_uid, []).extend(dataset_frames(dataset, source, missing_rescale))
            descriptions.setdefault(series_uid, (str(dataset.get("SeriesDescription", "") or ""),
                                                 _optional_int(dataset.get("SeriesNumber"))))
    series = [SeriesInfo(uid, descriptions[uid][0], descriptions[uid][1], tuple(frames))
              for uid, frames in by_series.items()]
    return series, report


def series_listing(series: Sequence[SeriesInfo]) -> str:
    """One line per series: UID, slice count, number and description."""
    lines = []
    for info in sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid)):
        number = f"series number {info.series_number}, " if info.series_number is not None else ""
        lines.append(f"  {info.series_uid}  ({len(info.frames)} slices, {number}{info.description or 'no description'!r})")
    return "\n".join(lines)


def select_series(series: Sequence[SeriesInfo], report: ScanReport, input_path: str, series_uid: str | None) -> SeriesInfo:
    """The one series to deblur: the only one, or the one named by `series_uid` (else SeriesError)."""
    if not series:
        what = f"{report.files} file(s)" if report.files else "no files"
        raise SeriesError(f"{input_path} holds no CT image to deblur ({what}; skipped: {report.skipped_text()})")
    if series_uid:
        for info in series:
            if info.series_uid == series_uid:
                return info
        raise SeriesError(f"--series_uid {series_uid} is not among the CT series in {input_path}:\n{series_listing(series)}")
    if len(series) > 1:
        raise SeriesError(f"{input_path} holds {len(series)} CT series; choose one with --series_uid UID:\n"
                          f"{series_listing(series)}")
    return series[0]


def _groups_text(frames: Sequence[Frame], key, label) -> str:
    groups: dict = {}
    for frame in frames:
        groups.setdefault(key(frame), []).append(frame)
    return ", ".join(f"{label(value)} ({len(members)} images, e.g. {members[0].source.name})"
                     for value, members in sorted(groups.items(), key=lambda item: -len(item[1])))


def check_series(info: SeriesInfo) -> CTSeries:
    """Checks one size, one orientation and one pixel spacing; sorts the frames along the normal.

    Raises SeriesError naming the groups of images that disagree.
    """
    frames = list(info.frames)
    uid = info.series_uid
    kinds = {frame.frame_index is None for frame in frames}
    if len(kinds) > 1:
        raise SeriesError(f"series {uid} mixes single-frame and multi-frame CT images; deblur them separately")
    if len({(f.rows, f.columns) for f in frames}) > 1:
        raise SeriesError(f"series {uid} mixes image sizes: "
                          f"{_groups_text(frames, lambda f: (f.rows, f.columns), lambda v: f'{v[0]}x{v[1]}')}; "
                          "put the images of one size in a directory of their own")
    reference = np.asarray(frames[0].orientation)
    if any(np.max(np.abs(np.asarray(f.orientation) - reference)) > ORIENTATION_TOLERANCE for f in frames):
        raise SeriesError(f"series {uid} mixes image orientations: "
                          f"{_groups_text(frames, lambda f: tuple(round(v, 3) for v in f.orientation), list)}")
    spacing = np.asarray(frames[0].pixel_spacing_mm)
    if any(np.max(np.abs(np.asarray(f.pixel_spacing_mm) - spacing)) > SPACING_TOLERANCE_MM for f in frames):
        raise SeriesError(f"series {uid} mixes pixel spacings: "
                          f"{_groups_text(frames, lambda f: tuple(round(v, 4) for v in f.pixel_spacing_mm), list)}")
    normal = frames[0].normal
    ordered = sorted(frames, key=lambda f: (float(np.dot(f.position_mm, normal)), f.instance_number or 0,
                                            f.source.name, f.frame_index or 0))
    positions = np.asarray([f.position_mm for f in ordered])
    along = positions @ normal
    tilt = 0.0
    stack = positions[-1] - positions[0]
    if np.linalg.norm(stack) > SPACING_TOLERANCE_MM:
        tilt = math.degrees(math.acos(min(1.0, abs(float(np.dot(stack, normal))) / float(np.linalg.norm(stack)))))
    return CTSeries(uid, info.description, info.series_number, tuple(ordered), tilt,
                    tuple(float(d) for d in np.diff(along)))


def hu_from_stored(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU (float32, same layout) of stored pixel values: stored * slope + intercept."""
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def stored_from_hu(hu: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, np.ndarray]:
    """(int16 stored values, bool mask of clipped pixels) of HU: round((hu - intercept) / slope),
    clipped to the int16 range, i.e. to HU [-32768, 32767] * slope + intercept."""
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    clipped = (stored < INT16_MIN) | (stored > INT16_MAX)
    return np.clip(stored, INT16_MIN, INT16_MAX).astype(np.int16), clipped


def padding_mask(dataset: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Pixels equal to PixelPaddingValue or between it and PixelPaddingRangeLimit (stored values),
    or None without padding. A value written unsigned for signed pixels is read as its int16."""
    value = _optional_int(dataset.get("PixelPaddingValue"))
    if value is None:
        return None
    limit = _optional_int(dataset.get("PixelPaddingRangeLimit"))
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    bits = int(dataset.get("BitsAllocated", 16) or 16)

    def as_stored(v: int) -> int:
        return v - (1 << bits) if signed and v >= (1 << (bits - 1)) else v

    if limit is None:
        return stored == as_stored(value)
    low, high = sorted((as_stored(value), as_stored(limit)))
    return (stored >= low) & (stored <= high)


def output_padding_value(dataset: Dataset) -> int | None:
    """PixelPaddingValue of the derived (signed int16) dataset: the input's when it fits int16,
    else -32768; None when the input has no padding."""
    value = _optional_int(dataset.get("PixelPaddingValue"))
    if value is None:
        return None
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    bits = int(dataset.get("BitsAllocated", 16) or 16)
    if signed and value >= (1 << (bits - 1)):
        value -= 1 << bits
    return value if INT16_MIN <= value <= INT16_MAX else INT16_MIN


@dataclasses.dataclass(frozen=True)
class DecodedObject:
    """One input file's dataset and pixels. hu: float32 [F, H, W]; padding: bool [F, H, W]."""

    source: Source
    dataset: Dataset
    frames: tuple[Frame, ...]
    hu: np.ndarray
    padding: np.ndarray


def decode_object(files: InputFiles, source: Source, frames: Sequence[Frame]) -> DecodedObject:
    """Reads one file fully and decodes its pixels to HU (SeriesError naming the file if it fails)."""
    with files.open(source) as handle:
        dataset = parse_dicom(handle, defer_pixels=False)
    if dataset is None:
        raise SeriesError(f"{source.name} could not be read again (was it changed during the run?)")
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = np.asarray(dataset.pixel_array)
    except Exception as error:  # decoders raise many types
        raise SeriesError(f"cannot decode the pixels of {source.name} (transfer syntax "
                          f"{getattr(transfer_syntax, 'name', transfer_syntax)}): {type(error).__name__}: {error}") from error
    count = _optional_int(dataset.get("NumberOfFrames")) or 1
    expected = (count, frames[0].rows, frames[0].columns)
    if stored.size != math.prod(expected):
        raise SeriesError(f"{source.name}: decoded pixels have shape {stored.shape}, expected {expected}")
    stored = stored.reshape(expected)
    indices = [frame.frame_index or 0 for frame in frames]
    stored = stored[indices]
    hu = np.stack([hu_from_stored(stored[i], *frame.rescale) for i, frame in enumerate(frames)])
    mask = padding_mask(dataset, stored)
    if mask is None:
        mask = np.zeros(stored.shape, bool)
    return DecodedObject(source, dataset, tuple(frames), hu, mask)


def iter_decoded(files: InputFiles, series: CTSeries) -> Iterator[DecodedObject]:
    """Decodes the series' files one at a time in stack order."""
    for source, frames in series.objects():
        yield decode_object(files, source, frames)


@dataclasses.dataclass(frozen=True)
class Derivation:
    """What changes in the derived series (the same for all its images).

    uid_seed: mixed with each input SOP Instance UID into the new SOP Instance UID, so the same
    model on the same images gives the same UIDs.
    """

    series_instance_uid: str
    series_number: int
    series_description: str
    derivation_description: str
    uid_seed: str
    created: datetime.datetime


def derived_uid(seed: str, input_uid: str) -> str:
    """A valid UID (pydicom's root) derived deterministically from `seed` and `input_uid`."""
    return str(generate_uid(entropy_srcs=["ctdeblur-deblur", seed, input_uid]))


def _derived_type(values, multiframe: bool) -> list[str]:
    """Image Type / Frame Type of the output: value 1 DERIVED; value 2 SECONDARY for a CT Image,
    PRIMARY for (Legacy Converted) Enhanced CT, whose IODs allow no other value 2; the input's
    further values kept."""
    values = [str(v) for v in _values(values)]
    values += [""] * (2 - len(values))
    return ["DERIVED", "PRIMARY" if multiframe else "SECONDARY", *values[2:]]


def _add_missing_rescale(dataset: Dataset, rescale: tuple[float, float]) -> None:
    """States `rescale` (slope, intercept) where a dataset read with --missing_rescale identity has none."""
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        if "RescaleSlope" not in dataset or "RescaleIntercept" not in dataset:
            dataset.RescaleSlope, dataset.RescaleIntercept = rescale
        return
    groups = [*dataset.get("PerFrameFunctionalGroupsSequence", []), *dataset.get("SharedFunctionalGroupsSequence", [])]
    if any("PixelValueTransformationSequence" in group for group in groups):
        return
    if not dataset.get("SharedFunctionalGroupsSequence"):
        dataset.SharedFunctionalGroupsSequence = [Dataset()]
    item = Dataset()
    item.RescaleSlope, item.RescaleIntercept = rescale
    item.RescaleType = "HU"
    dataset.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = [item]


def derived_dataset(source: Dataset, stored: np.ndarray, padding_value: int | None, derivation: Derivation,
                    rescale: tuple[float, float]) -> Dataset:
    """A copy of `source` holding `stored` (int16 [F, H, W], F = 1 for single-frame) as the new image.

    `rescale` (slope, intercept) is written only where `source` states none (--missing_rescale
    identity); the input's own rescale is always kept.

    Changed: SOP Instance UID (file meta too), Series Instance UID, SeriesNumber, SeriesDescription,
    ImageType and Enhanced CT FrameType (DERIVED\\SECONDARY, or DERIVED\\PRIMARY for (Legacy
    Converted) Enhanced CT, whose IODs allow only PRIMARY as value 2; further values kept),
    DerivationDescription, SourceImageSequence (the input image), InstanceCreationDate/Time,
    LossyImageCompression "01" if the input's transfer syntax is always lossy and did not say so,
    the pixel module (16 bits allocated and stored, signed, MONOCHROME2 unless MONOCHROME1,
    PixelPaddingValue as `padding_value`), transfer syntax Explicit VR Little Endian. Removed:
    `PIXEL_DEPENDENT_TAGS`. Everything else (patient, study, geometry, Frame of Reference,
    rescale, windows, private tags, per-frame functional groups) is copied.
    """
    dataset = Dataset()
    for element in source:
        if element.tag.group != 0x0002 and element.keyword != "PixelData":
            dataset.add(element)
    dataset = copy.deepcopy(dataset)
    for keyword in PIXEL_DEPENDENT_TAGS:
        if keyword in dataset:
            delattr(dataset, keyword)
    sop_uid = derived_uid(derivation.uid_seed, str(source.SOPInstanceUID))
    dataset.SOPInstanceUID = sop_uid
    dataset.SeriesInstanceUID = derivation.series_instance_uid
    dataset.SeriesNumber = derivation.series_number
    dataset.SeriesDescription = derivation.series_description
    dataset.DerivationDescription = derivation.derivation_description
    multiframe = source.SOPClassUID in MULTIFRAME_CT_SOP_CLASSES
    dataset.ImageType = _derived_type(source.get("ImageType"), multiframe)
    _add_missing_rescale(dataset, rescale)
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in dataset.get(groups, []):
            for item in group.get("CTImageFrameTypeSequence", []):
                item.FrameType = _derived_type(item.get("FrameType"), multiframe)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    dataset.SourceImageSequence = [reference]
    transfer_syntax = source.file_meta.get("TransferSyntaxUID") if hasattr(source, "file_meta") else None
    if transfer_syntax in LOSSY_TRANSFER_SYNTAXES and "LossyImageCompression" not in dataset:
        dataset.LossyImageCompression = "01"
        dataset.LossyImageCompressionMethod = LOSSY_TRANSFER_SYNTAXES[transfer_syntax]
    dataset.InstanceCreationDate = derivation.created.strftime("%Y%m%d")
    dataset.InstanceCreationTime = derivation.created.strftime("%H%M%S")
    frames, rows, columns = stored.shape
    dataset.SamplesPerPixel = 1
    photometric = str(source.get("PhotometricInterpretation", "MONOCHROME2"))
    dataset.PhotometricInterpretation = photometric if photometric == "MONOCHROME1" else "MONOCHROME2"
    dataset.Rows, dataset.Columns = rows, columns
    if "NumberOfFrames" in source:
        dataset.NumberOfFrames = frames
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    if padding_value is not None:
        dataset.add_new("PixelPaddingValue", "SS", padding_value)
    dataset.add_new("PixelData", "OW", np.ascontiguousarray(stored, dtype="<i2").tobytes())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = source.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    dataset.file_meta = meta
    return dataset


def write_dataset(dataset: Dataset, path: str) -> None:
    """Writes `dataset` as a DICOM Part 10 file (preamble, file meta, Explicit VR Little Endian)."""
    dataset.save_as(path, enforce_file_format=True)
