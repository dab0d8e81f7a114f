"""CT DICOM objects: parse, say why an object is no CT image, list its frames with geometry and
rescale, decode their HU.

Read: CT Image Storage (one frame per file) and Enhanced / Legacy Converted Enhanced CT (many
frames, geometry and rescale per frame or shared in the functional groups); files without the
128-byte preamble and 'DICM'; compressed transfer syntaxes that pydicom decodes (with pylibjpeg).
Skipped with a reason: not DICOM, DICOMDIR, other modalities, CT objects that are no image (dose
reports), CT objects without pixels, localizer (scout) images. HU and padding: `ct_io.hu`.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Hashable
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2K,
    JPEG2000,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
)

from ct_io.errors import CTInputError
from ct_io.hu import hu_from_stored, padding_mask
from ct_io.series import Frame

CT_MODALITY = "CT"
CT_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})
MULTIFRAME_CT_SOP_CLASSES = frozenset({EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})
LOSSY_TRANSFER_SYNTAXES = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1",
                           JPEGLSNearLossless: "ISO_14495_1"}
"""Transfer syntaxes that are always lossy -> LossyImageCompressionMethod."""
LOSSY_CAPABLE_TRANSFER_SYNTAXES = frozenset({*LOSSY_TRANSFER_SYNTAXES, JPEG2000, HTJ2K})
"""Compressed transfer syntaxes whose data may have lost information: the always lossy ones, and
JPEG 2000 / HTJ2K, which may be either (their Lossless transfer syntaxes and RLE are not listed)."""
MISSING_RESCALE = ("error", "identity")
"""What to do with an image without RescaleSlope/RescaleIntercept: refuse it, or read its stored
values as HU."""


def _original_transfer_syntax(dataset: Dataset) -> UID:
    implicit, little = getattr(dataset, "original_encoding", (False, True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def parse_dicom(data: bytes | BinaryIO, name: str, *, defer_pixels: bool = False) -> Dataset:
    """The dataset in `data` (file bytes or a seekable binary file). Files without preamble are
    read too; a missing Transfer Syntax UID is filled in from the encoding pydicom detected.
    `defer_pixels` leaves PixelData unread (headers only).

    Raises CTInputError: empty_file, not_dicom, truncated_file.
    """
    handle = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    start = handle.tell()
    if not handle.read(1):
        raise CTInputError("empty_file", f"{name} has 0 bytes")
    defer = 4096 if defer_pixels else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                handle.seek(start)
                dataset = pydicom.dcmread(handle, defer_size=defer)
            except InvalidDicomError:
                handle.seek(start)
                dataset = pydicom.dcmread(handle, defer_size=defer, force=True)
            if not defer_pixels:
                dataset.get("PixelData")
            identified = any(tag in dataset for tag in ("SOPClassUID", "SOPInstanceUID", "Modality", "PixelData"))
        except (EOFError, OSError) as error:
            raise CTInputError("truncated_file", f"{name}: {error}") from error
        except Exception as error:  # noqa: BLE001 - pydicom raises many types on garbage input
            raise CTInputError("not_dicom", f"{name}: {type(error).__name__}: {error}") from error
    if not identified:
        raise CTInputError("not_dicom", f"{name} holds no DICOM image attributes")
    if not hasattr(dataset, "file_meta"):
        dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = _original_transfer_syntax(dataset)
    return dataset


def values_of(value) -> list:
    """A DICOM value as a list (empty for None, one item for a single value)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def skip_reason(dataset: Dataset) -> tuple[str, str] | None:
    """(reason code, short description) of why a DICOM dataset is no CT image to read, or None if
    it is one. Codes: dicomdir, non_ct_modality, not_a_ct_image, missing_pixel_data,
    localizer_image (ImageType value 3 LOCALIZER)."""
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    if sop_class == MediaStorageDirectoryStorage:
        return "dicomdir", "DICOMDIR"
    modality = str(dataset.get("Modality", "") or "").strip()
    if modality != CT_MODALITY and not (not modality and sop_class in CT_SOP_CLASSES):
        kind = "image" if "PixelData" in dataset else "object"
        return "non_ct_modality", f"non-CT {kind} (Modality {modality or 'missing'})"
    if sop_class and sop_class not in CT_SOP_CLASSES:
        return "not_a_ct_image", f"CT object that is not a CT image ({UID(sop_class).name})"
    if "PixelData" not in dataset:
        return "missing_pixel_data", "CT object without pixel data"
    image_type = [str(v).upper() for v in values_of(dataset.get("ImageType"))]
    if len(image_type) > 2 and image_type[2] == "LOCALIZER":
        return "localizer_image", "localizer (scout) image"
    return None


def optional_float(value) -> float | None:
    """A DICOM number as float, None when absent or unreadable."""
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def optional_int(value) -> int | None:
    """A DICOM number as int, None when absent or unreadable."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _floats(value, count: int, where: str, tag: str, reason: str) -> tuple[float, ...]:
    values = values_of(value)
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError) as error:
        raise CTInputError(reason, f"{where} has an unreadable {tag} {values!r}") from error
    if len(floats) != count or not all(math.isfinite(v) for v in floats):
        raise CTInputError(reason, f"{where} has {tag} {values!r}; {count} numbers are needed")
    return floats


def _functional_item(dataset: Dataset, frame_index: int, sequence: str) -> Dataset | None:
    """The item of functional group `sequence` for a frame: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame_index), ("SharedFunctionalGroupsSequence", 0)):
        items = dataset.get(groups)
        if items is not None and len(items) > index:
            group = items[index].get(sequence)
            if group is not None and len(group) > 0:
                return group[0]
    return None


def _rescale(item: Dataset | None, where: str, missing_rescale: str) -> tuple[float, float]:
    slope = item.get("RescaleSlope") if item is not None else None
    intercept = item.get("RescaleIntercept") if item is not None else None
    if slope in (None, "") or intercept in (None, ""):
        if missing_rescale == "identity":
            return 1.0, 0.0
        tag = "RescaleSlope" if slope in (None, "") else "RescaleIntercept"
        raise CTInputError("missing_rescale", f"{where} has no {tag}: HU cannot be computed")
    values = _floats([slope, intercept], 2, where, "RescaleSlope/RescaleIntercept", "missing_rescale")
    if values[0] == 0:
        raise CTInputError("missing_rescale", f"{where} has RescaleSlope 0")
    return values


LOSSY_RATIO_LIMIT = 15.0
"""Lossy compression ratio above which a CT image counts as smoothed by its compression: the
pipeline refuses it as a sharp reference (`max_lossy_ratio`), `ctdeblur-deblur` warns."""


def lossy_compression_ratio(dataset: Dataset, measure: bool = True) -> float | None:
    """The lossy compression ratio an image has undergone (uncompressed size / compressed size), or
    None if nothing says it was compressed lossily. From LossyImageCompression (0028,2110) "01" with
    LossyImageCompressionRatio (0028,2112; successive compressions multiply), else, for pixel data
    encapsulated in a transfer syntax that may be lossy (JPEG baseline or extended, JPEG-LS
    near-lossless, JPEG 2000, HTJ2K), measured from the encapsulated bytes if `measure` (pixel data
    read); NaN when the image is marked lossy but no ratio is given or measured."""
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    marked = str(dataset.get("LossyImageCompression", "") or "").strip() == "01"
    ratios = [optional_float(v) for v in values_of(dataset.get("LossyImageCompressionRatio"))]
    if marked and ratios and all(r is not None and r > 0 for r in ratios):
        return float(math.prod(ratios))
    if measure and transfer_syntax in LOSSY_CAPABLE_TRANSFER_SYNTAXES and "PixelData" in dataset:
        try:
            return _expected_pixel_bytes(dataset) / max(len(dataset.PixelData), 1)
        except (AttributeError, TypeError, ValueError):
            pass
    return math.nan if marked else None


def is_multiframe(dataset: Dataset) -> bool:
    """True for Enhanced / Legacy Converted Enhanced CT (frames placed by functional groups)."""
    return (str(dataset.get("SOPClassUID", "")) in MULTIFRAME_CT_SOP_CLASSES
            or "PerFrameFunctionalGroupsSequence" in dataset)


def dataset_frames(dataset: Dataset, source: Hashable, name: str, missing_rescale: str = "error") -> list[Frame]:
    """The frames of a CT image dataset with their geometry and rescale.

    ImagePositionPatient and ImageOrientationPatient may be absent (None in the frame); a
    positive PixelSpacing and, unless `missing_rescale` is "identity", the rescale are required.
    Raises CTInputError: not_grayscale, modality_lut, missing_matrix_size,
    missing_sop_instance_uid, unplaceable_frames, missing_pixel_spacing, invalid_geometry,
    missing_rescale.
    """
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise CTInputError("not_grayscale", f"{name} is a CT image with {dataset.SamplesPerPixel} samples per pixel; "
                                            "grayscale is needed")
    if "ModalityLUTSequence" in dataset:
        raise CTInputError("modality_lut", f"{name} maps stored values to HU with a Modality LUT, which is not supported")
    rows, columns = optional_int(dataset.get("Rows")) or 0, optional_int(dataset.get("Columns")) or 0
    if rows < 1 or columns < 1:
        raise CTInputError("missing_matrix_size", f"{name} has no Rows/Columns")
    if not dataset.get("SOPInstanceUID"):
        raise CTInputError("missing_sop_instance_uid", f"{name} has no SOPInstanceUID")
    instance = optional_int(dataset.get("InstanceNumber"))
    frames_count = optional_int(dataset.get("NumberOfFrames")) or 1
    multiframe = is_multiframe(dataset)
    if frames_count > 1 and not multiframe:
        raise CTInputError("unplaceable_frames", f"{name} has {frames_count} frames but no per-frame functional groups "
                           f"(SOP class {UID(str(dataset.get('SOPClassUID', ''))).name}); cannot place its frames")
    frames = []
    for index in range(frames_count):
        if multiframe:
            position_item = _functional_item(dataset, index, "PlanePositionSequence")
            orientation_item = _functional_item(dataset, index, "PlaneOrientationSequence")
            measures_item = _functional_item(dataset, index, "PixelMeasuresSequence")
            rescale_item = _functional_item(dataset, index, "PixelValueTransformationSequence") or dataset
            where = f"{name} (frame {index + 1})"
        else:
            position_item = orientation_item = measures_item = rescale_item = dataset
            where = name
        spacing = measures_item.get("PixelSpacing") if measures_item is not None else None
        if spacing is None or len(values_of(spacing)) != 2 or min(optional_float(s) or 0.0 for s in spacing) <= 0:
            raise CTInputError("missing_pixel_spacing", f"{where} has no valid PixelSpacing ({spacing!r})")
        orientation = None
        if orientation_item is not None and orientation_item.get("ImageOrientationPatient") is not None:
            orientation = _floats(orientation_item.ImageOrientationPatient, 6, where, "ImageOrientationPatient",
                                  "invalid_geometry")
            if not 0.99 < float(np.linalg.norm(np.cross(orientation[:3], orientation[3:]))) < 1.01:
                raise CTInputError("invalid_geometry", f"{where} has ImageOrientationPatient {list(orientation)} whose "
                                                       "row and column directions are not orthogonal unit vectors")
        position = None
        if position_item is not None and position_item.get("ImagePositionPatient") is not None:
            position = _floats(position_item.ImagePositionPatient, 3, where, "ImagePositionPatient", "invalid_geometry")
        frames.append(Frame(
            source=source,
            name=name,
            sop_instance_uid=str(dataset.SOPInstanceUID),
            frame_index=index if multiframe else None,
            rows=rows,
            columns=columns,
            position_mm=position,
            orientation=orientation,
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
            slice_thickness_mm=optional_float(measures_item.get("SliceThickness")),
            instance_number=instance,
            rescale=_rescale(rescale_item, where, missing_rescale),
        ))
    return frames


def _expected_pixel_bytes(dataset: Dataset) -> int:
    frames = optional_int(dataset.get("NumberOfFrames")) or 1
    return (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1) or 1) * frames
            * (int(dataset.BitsAllocated) // 8))


def decode_stored(dataset: Dataset, frames: list[Frame], name: str) -> np.ndarray:
    """Stored pixel values [len(frames), rows, columns] of `frames` (all of one dataset).

    Raises CTInputError: missing_pixel_data, truncated_file, undecodable_pixel_data.
    """
    if "PixelData" not in dataset:
        raise CTInputError("missing_pixel_data", f"{name} has no PixelData element")
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    compressed = transfer_syntax is not None and transfer_syntax.is_compressed
    try:
        if not compressed and len(dataset.PixelData) < _expected_pixel_bytes(dataset):
            raise CTInputError("truncated_file", f"{name}: PixelData has {len(dataset.PixelData)} bytes, "
                                                 f"{_expected_pixel_bytes(dataset)} expected")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = np.asarray(dataset.pixel_array)
    except CTInputError:
        raise
    except Exception as error:  # noqa: BLE001 - decoders raise many types
        raise CTInputError("undecodable_pixel_data", f"{name} (transfer syntax {getattr(transfer_syntax, 'name', transfer_syntax)}): "
                                                     f"{type(error).__name__}: {error}") from error
    count = optional_int(dataset.get("NumberOfFrames")) or 1
    expected = (count, frames[0].rows, frames[0].columns)
    if stored.size != math.prod(expected):
        raise CTInputError("undecodable_pixel_data", f"{name}: decoded pixels have shape {stored.shape}, "
                                                     f"expected {expected}")
    return stored.reshape(expected)[[frame.frame_index or 0 for frame in frames]]


def dataset_padding(dataset: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Padding pixels of `stored` (any layout) by PixelPaddingValue / PixelPaddingRangeLimit, a
    value written unsigned for signed pixels included; None without padding."""
    return padding_mask(stored, optional_int(dataset.get("PixelPaddingValue")),
                        optional_int(dataset.get("PixelPaddingRangeLimit")),
                        int(dataset.get("PixelRepresentation", 0) or 0) == 1,
                        int(dataset.get("BitsAllocated", 16) or 16))


def frames_hu(dataset: Dataset, frames: list[Frame], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32 [F, H, W] by each frame's rescale, padding bool [F, H, W]) of `frames`.

    The HU are as rescaled, the air rule not applied (`ct_io.hu.with_air`). Raises CTInputError
    like `decode_stored`.
    """
    stored = decode_stored(dataset, frames, name)
    hu = np.stack([hu_from_stored(stored[i], *frame.rescale) for i, frame in enumerate(frames)])
    padding = dataset_padding(dataset, stored)
    return hu, np.zeros(stored.shape, bool) if padding is None else padding
