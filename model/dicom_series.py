"""CT series in and out for `ctdeblur-deblur`: the files of INPUT, the CT series in them; derived series.

Reading. INPUT is a directory (searched recursively; symlinked directories are not followed), a
single file or a zip archive (members are read into memory one at a time, never extracted, and
checked by `ct_io.zips`). Every file is read by `ct_io`, the reader the pipeline uses too, so the
network sees the HU it was trained on: what is not a CT image is skipped and counted by reason
(not DICOM, DICOMDIR, other modalities, CT objects without pixels, localizer images, repeated SOP
instances); single-frame CT and Enhanced / Legacy Converted Enhanced multi-frame CT are read;
slices are sorted along the slice normal (`ct_io.series.check_series`).

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
import zipfile
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from cli_shell.command import UserError
from ct_io.dicom import (
    LOSSY_TRANSFER_SYNTAXES,
    MULTIFRAME_CT_SOP_CLASSES,
    dataset_frames,
    frames_hu,
    lossy_compression_ratio,
    optional_int,
    parse_dicom,
    skip_reason,
    values_of,
)
from ct_io.errors import CTInputError
from ct_io.hu import INT16_MAX, INT16_MIN, as_stored_value
from ct_io.series import CTSeries, Frame, check_series
from ct_io.zips import ZipLimits, ZipReader

IMPLEMENTATION_VERSION_NAME = "CTDEBLUR_0_1"

PIXEL_DEPENDENT_TAGS = (
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries",
    "PixelPaddingRangeLimit", "IconImageSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "PixelDataProviderURL", "DigitalSignaturesSequence", "MACParametersSequence", "EncryptedAttributesSequence",
    "PlanarConfiguration", "PixelPaddingValue",
)
"""Removed from derived datasets: they describe the input's pixel bytes (or sign them)."""


class SeriesError(UserError):
    """The input cannot be deblurred as asked; the message names the file or series and what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One input file: `name` for messages (a path, or `archive.zip!member`); `member` for zips."""

    name: str
    path: str
    member: str | None = None


class InputFiles(contextlib.AbstractContextManager):
    """The files of INPUT (directory, file or zip) and their bytes; a zip stays open while in use.

    Raises SeriesError if INPUT does not exist, CTInputError (zip_slip, zip_bomb, bad_zip) for a
    zip that `ct_io.zips` refuses.
    """

    def __init__(self, input_path: str, limits: ZipLimits = ZipLimits()):
        self.input_path = input_path
        self.limits = limits
        self._zip: ZipReader | None = None
        self.skipped: collections.Counter = collections.Counter()
        self.sources: list[Source] = self._list()

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
            self._zip = ZipReader(path, self.limits)
            self.skipped["encrypted zip member"] += len(self._zip.encrypted)
            return [Source(f"{path}!{member}", path, member) for member in self._zip.members]
        return [Source(path, path)]

    def open(self, source: Source) -> BinaryIO:
        """A readable, seekable file object of `source` (zip members are read into memory, bounded)."""
        if source.member is None:
            return open(source.path, "rb")
        assert self._zip is not None
        return io.BytesIO(self._zip.read(source.member))

    def __exit__(self, *exc_info) -> None:
        if self._zip is not None:
            self._zip.__exit__(*exc_info)


def _has_dicom_prefix(path: str) -> bool:
    """True if the file has the DICOM Part 10 prefix ('DICM' after the 128-byte preamble)."""
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """What the scan saw of one CT series in the input (for listings)."""

    series_uid: str
    description: str
    series_number: int | None
    frames: tuple[Frame, ...]
    lossy_ratio: float | None = None
    """The highest lossy compression ratio its files declare (LossyImageCompressionRatio), None if none does."""


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
    the counts of skipped files. `progress` is called once per file. Raises CTInputError for a
    CT image that cannot be read (no SeriesInstanceUID, no rescale, unknown geometry, ...)."""
    report = ScanReport(files=len(files.sources))
    for reason, count in files.skipped.items():
        report.skipped[reason] += count
    by_series: dict[str, list[Frame]] = {}
    descriptions: dict[str, tuple[str, int | None]] = {}
    lossy_ratios: dict[str, float] = {}
    seen_sops: set[str] = set()
    for source in files.sources:
        if progress is not None:
            progress()
        with files.open(source) as handle:
            try:
                dataset = parse_dicom(handle, source.name, defer_pixels=True)
            except CTInputError:
                report.skip("not DICOM", source.name)
                continue
            skipped = skip_reason(dataset)
            if skipped is not None:
                report.skip(skipped[1], source.name)
                continue
            series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
            if not series_uid:
                raise CTInputError("missing_series_uid", f"{source.name} is a CT image without SeriesInstanceUID")
            sop_uid = str(dataset.get("SOPInstanceUID", "") or "")
            if sop_uid in seen_sops:
                report.skip("repeated SOP Instance UID (same image twice)", source.name)
                continue
            seen_sops.add(sop_uid)
            by_series.setdefault(series_uid, []).extend(dataset_frames(dataset, source, source.name, missing_rescale))
            descriptions.setdefault(series_uid, (str(dataset.get("SeriesDescription", "") or ""),
                                                 optional_int(dataset.get("SeriesNumber"))))
            ratio = lossy_compression_ratio(dataset, measure=False)
            if ratio is not None and not math.isnan(ratio):
                lossy_ratios[series_uid] = max(ratio, lossy_ratios.get(series_uid, 0.0))
    series = [SeriesInfo(uid, descriptions[uid][0], descriptions[uid][1], tuple(frames), lossy_ratios.get(uid))
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


def checked_series(info: SeriesInfo) -> CTSeries:
    """The series to deblur, consistent and sorted along the normal (`ct_io.series.check_series`)."""
    return check_series(info.series_uid, info.frames, info.description, info.series_number)


def output_padding_value(dataset: Dataset) -> int | None:
    """PixelPaddingValue of the derived (signed int16) dataset: the input's when it fits int16,
    else -32768; None when the input has no padding."""
    value = optional_int(dataset.get("PixelPaddingValue"))
    if value is None:
        return None
    value = as_stored_value(value, int(dataset.get("PixelRepresentation", 0) or 0) == 1,
                            int(dataset.get("BitsAllocated", 16) or 16))
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
    """Reads one file fully and decodes its frames' HU and padding (CTInputError naming the file
    if it fails)."""
    with files.open(source) as handle:
        dataset = parse_dicom(handle, source.name)
    hu, padding = frames_hu(dataset, list(frames), source.name)
    return DecodedObject(source, dataset, tuple(frames), hu, padding)


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
    values = [str(v) for v in values_of(values)]
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
