"""DICOM CT slice -> Hounsfield units, with a named reason for every input it refuses.

pydicom decodes (uncompressed and, with pylibjpeg, JPEG / JPEG-LS / JPEG 2000 transfer syntaxes).
HU = stored * RescaleSlope + RescaleIntercept; pixel padding and values below -1024 HU (the
outside-of-field-of-view markers scanners write, such as -2000 or -3024) become air.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

AIR_HU = -1000.0
"""Value given to padding and out-of-field pixels (HU)."""
MIN_VALID_HU = -1024.0
"""Values below this are not attenuation but scanner markers for "no data" (HU)."""
CT_MODALITY = "CT"
AXIAL_MIN_NORMAL_Z = 0.9
"""|z component| of the slice normal above which a slice counts as axial (gantry tilt <= ~25 deg)."""


class SliceRejected(Exception):
    """An input file cannot become a slice; `reason` is a short stable code, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class SliceHeader:
    """What the pipeline keeps of a readable CT slice (no pixels). Positions and spacing in mm."""

    path: str
    series_uid: str
    sop_instance_uid: str
    patient_id: str
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    position_mm: float | None
    instance_number: int | None
    body_fraction: float


def read_dataset(data: bytes, path: str) -> pydicom.Dataset:
    """Parses file bytes; raises SliceRejected(empty_file | not_dicom | truncated_file)."""
    if not data:
        raise SliceRejected("empty_file", f"{path} has 0 bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                dataset = pydicom.dcmread(io.BytesIO(data))
            except InvalidDicomError:
                # Files without the 128-byte preamble and 'DICM' are common in older archives.
                dataset = pydicom.dcmread(io.BytesIO(data), force=True)
            dataset.get("PixelData")
        except (EOFError, OSError) as error:
            raise SliceRejected("truncated_file", f"{path}: {error}") from error
        except Exception as error:  # pydicom raises many types on garbage input
            raise SliceRejected("not_dicom", f"{path}: {type(error).__name__}: {error}") from error
    if "SOPInstanceUID" not in dataset and "PixelData" not in dataset and "Modality" not in dataset:
        raise SliceRejected("not_dicom", f"{path} holds no DICOM image attributes")
    return dataset


def _expected_pixel_bytes(dataset: pydicom.Dataset) -> int:
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    return int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1)) * frames * (
        int(dataset.BitsAllocated) // 8
    )


def dataset_hu(dataset: pydicom.Dataset, path: str) -> np.ndarray:
    """HU image float32 [rows, columns] of a single-frame CT dataset.

    Raises SliceRejected(missing_pixel_data | missing_rescale | truncated_file |
    undecodable_pixel_data).
    """
    if "PixelData" not in dataset:
        raise SliceRejected("missing_pixel_data", f"{path} has no PixelData element")
    for tag in ("RescaleSlope", "RescaleIntercept"):
        if dataset.get(tag) in (None, ""):
            raise SliceRejected("missing_rescale", f"{path} has no {tag}: HU cannot be computed")
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    compressed = transfer_syntax is not None and transfer_syntax.is_compressed
    try:
        if not compressed and len(dataset.PixelData) < _expected_pixel_bytes(dataset):
            raise SliceRejected(
                "truncated_file",
                f"{path}: PixelData has {len(dataset.PixelData)} bytes, {_expected_pixel_bytes(dataset)} expected",
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = dataset.pixel_array
    except SliceRejected:
        raise
    except Exception as error:
        raise SliceRejected(
            "undecodable_pixel_data", f"{path} (transfer syntax {transfer_syntax}): {type(error).__name__}: {error}"
        ) from error
    if stored.ndim != 2:
        raise SliceRejected("undecodable_pixel_data", f"{path}: pixel array has shape {stored.shape}, expected [rows, columns]")
    slope = float(dataset.RescaleSlope)
    intercept = float(dataset.RescaleIntercept)
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    padding = _padding_mask(dataset, stored)
    if padding is not None:
        hu[padding] = AIR_HU
    hu[hu < MIN_VALID_HU] = AIR_HU
    return hu


def _padding_mask(dataset: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    value = dataset.get("PixelPaddingValue")
    if value is None:
        return None
    limit = dataset.get("PixelPaddingRangeLimit")
    if limit is None:
        return stored == int(value)
    low, high = sorted((int(value), int(limit)))
    return (stored >= low) & (stored <= high)


def _normal(dataset: pydicom.Dataset) -> np.ndarray | None:
    orientation = dataset.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return None
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, column)
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 0 else None


def body_fraction(hu: np.ndarray, threshold_hu: float) -> float:
    """Fraction of pixels above `threshold_hu` (tissue, not air or lung)."""
    return float(np.count_nonzero(hu > threshold_hu)) / hu.size


def check_ct_slice(dataset: pydicom.Dataset, path: str) -> None:
    """Raises SliceRejected for inputs that are not single-frame axial CT images of a series."""
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise SliceRejected("unsupported_multiframe", f"{path} is a multi-frame object with {frames} frames")
    modality = str(dataset.get("Modality", "") or "")
    if modality != CT_MODALITY:
        sop_class = dataset.get("SOPClassUID")
        kind = getattr(sop_class, "name", sop_class)
        raise SliceRejected("non_ct_modality", f"{path} has Modality {modality or 'missing'!r} (SOP class {kind})")
    if not dataset.get("SeriesInstanceUID"):
        raise SliceRejected("missing_series_uid", f"{path} has no SeriesInstanceUID")
    if not dataset.get("SOPInstanceUID"):
        raise SliceRejected("missing_sop_instance_uid", f"{path} has no SOPInstanceUID")
    normal = _normal(dataset)
    if normal is not None and abs(normal[2]) < AXIAL_MIN_NORMAL_Z:
        raise SliceRejected("non_axial_orientation", f"{path}: slice normal {np.round(normal, 3).tolist()} is not axial")
    spacing = dataset.get("PixelSpacing")
    if spacing is None or len(spacing) != 2 or min(float(s) for s in spacing) <= 0:
        raise SliceRejected("missing_pixel_spacing", f"{path} has no valid PixelSpacing ({spacing!r})")


def _patient_id(dataset: pydicom.Dataset) -> str:
    """PatientID, or the study (then series) UID for anonymised files without one."""
    patient_id = str(dataset.get("PatientID", "") or "").strip()
    if patient_id:
        return patient_id
    study = str(dataset.get("StudyInstanceUID", "") or "")
    return f"study:{study}" if study else f"series:{dataset.SeriesInstanceUID}"


def scan_slice(data: bytes, path: str, body_hu_threshold: float) -> SliceHeader:
    """Reads and validates one file fully (pixels included) and returns its header.

    Raises SliceRejected with the first problem found.
    """
    dataset = read_dataset(data, path)
    check_ct_slice(dataset, path)
    hu = dataset_hu(dataset, path)
    normal = _normal(dataset)
    position = dataset.get("ImagePositionPatient")
    position_mm = None
    if position is not None and len(position) == 3:
        position_mm = float(np.dot(np.asarray(position, float), normal if normal is not None else (0.0, 0.0, 1.0)))
    instance = dataset.get("InstanceNumber")
    thickness = dataset.get("SliceThickness")
    return SliceHeader(
        path=path,
        series_uid=str(dataset.SeriesInstanceUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        patient_id=_patient_id(dataset),
        rows=int(hu.shape[0]),
        columns=int(hu.shape[1]),
        pixel_spacing_mm=(float(dataset.PixelSpacing[0]), float(dataset.PixelSpacing[1])),
        slice_thickness_mm=float(thickness) if thickness not in (None, "") else 0.0,
        position_mm=position_mm,
        instance_number=int(instance) if instance not in (None, "") else None,
        body_fraction=body_fraction(hu, body_hu_threshold),
    )


def read_slice_hu(data: bytes, path: str) -> np.ndarray:
    """HU image float32 [rows, columns] of a file that `scan_slice` accepted."""
    dataset = read_dataset(data, path)
    check_ct_slice(dataset, path)
    return dataset_hu(dataset, path)
