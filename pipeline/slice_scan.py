"""CT files -> the slice headers the pipeline plans with, and their HU when a shard is written.

Reading is `ct_io`'s (one way to read CT for the pipeline and `ctdeblur-deblur`): single-frame
CT and Enhanced / Legacy Converted Enhanced multi-frame CT, HU by each frame's rescale, pixel
padding (also written unsigned) and values below -1024 HU become air. The pipeline adds its own
policy: a series UID is needed, slices must be axial, and a slice compressed lossily beyond
`max_lossy_ratio` is no sharp reference (its compression has already smoothed it). Every refused
input raises `CTInputError` with a stable reason code for the dead letter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydicom.dataset import Dataset

from ct_io.dicom import dataset_frames, frames_hu, lossy_compression_ratio, parse_dicom, skip_reason
from ct_io.errors import CTInputError
from ct_io.hu import body_fraction, with_air
from ct_io.series import Frame
from pipeline.respiratory import air_fraction

AXIAL_MIN_NORMAL_Z = 0.9
"""|z component| of the slice normal above which a slice counts as axial (gantry tilt <= ~25 deg)."""


@dataclasses.dataclass(frozen=True)
class SliceHeader:
    """What the pipeline keeps of a readable CT slice (no pixels). Positions and spacing in mm.

    position_mm: signed distance along the slice normal (`ct_io.series.position_along_normal`).
    pixel_spacing_mm: (between rows, between columns). frame_index: the frame of a multi-frame
    file, None for a single-frame file. patient_z_mm: the patient z (superior positive) of the
    first pixel, None if unknown. body_part: DICOM BodyPartExamined ("" if absent). air_fraction:
    `pipeline.respiratory.air_fraction` of the slice when scanned for the respiratory model, else NaN.
    """

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
    frame_index: int | None = None
    patient_z_mm: float | None = None
    body_part: str = ""
    air_fraction: float = float("nan")


def _patient_id(dataset: Dataset) -> str:
    """PatientID, or the study (then series) UID for anonymised files without one."""
    patient_id = str(dataset.get("PatientID", "") or "").strip()
    if patient_id:
        return patient_id
    study = str(dataset.get("StudyInstanceUID", "") or "")
    return f"study:{study}" if study else f"series:{dataset.SeriesInstanceUID}"


def read_ct_frames(data: bytes, path: str) -> tuple[Dataset, list[Frame]]:
    """The dataset and frames of a file the pipeline can use (CTInputError otherwise: the reasons
    of `ct_io`, plus missing_series_uid and non_axial_orientation)."""
    dataset = parse_dicom(data, path)
    skipped = skip_reason(dataset)
    if skipped is not None:
        reason, description = skipped
        raise CTInputError(reason, f"{path}: {description}")
    if not dataset.get("SeriesInstanceUID"):
        raise CTInputError("missing_series_uid", f"{path} has no SeriesInstanceUID")
    frames = dataset_frames(dataset, path, path)
    for frame in frames:
        if frame.orientation is not None and abs(frame.normal[2]) < AXIAL_MIN_NORMAL_Z:
            raise CTInputError("non_axial_orientation",
                               f"{frame.where}: slice normal {np.round(frame.normal, 3).tolist()} is not axial")
    return dataset, frames


def read_file_hu(data: bytes, path: str) -> np.ndarray:
    """HU float32 [frames, rows, columns] of a file, the air rule applied (one frame for a
    single-frame file)."""
    dataset, frames = read_ct_frames(data, path)
    hu, padding = frames_hu(dataset, frames, path)
    return with_air(hu, padding)


def scan_file(data: bytes, path: str, body_hu_threshold: float, with_air_fraction: bool = False,
              max_lossy_ratio: float = 0.0) -> list[SliceHeader]:
    """Reads and validates one file fully (pixels included); one header per frame, with each
    slice's air fraction if `with_air_fraction` (the respiratory model's diaphragm search).
    `max_lossy_ratio` > 0: a file compressed lossily at a higher ratio is refused (lossy_compressed;
    a file marked lossy without a known ratio is kept).

    Raises CTInputError with the first problem found.
    """
    dataset, frames = read_ct_frames(data, path)
    ratio = lossy_compression_ratio(dataset)
    if max_lossy_ratio > 0 and ratio is not None and ratio > max_lossy_ratio:
        raise CTInputError("lossy_compressed", f"{path}: compressed lossily at {ratio:.0f}:1, above max_lossy_ratio "
                                               f"{max_lossy_ratio:g}: too smoothed to serve as a sharp image")
    hu, padding = frames_hu(dataset, frames, path)
    hu = with_air(hu, padding)
    series_uid, sop_uid, patient_id = str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID), _patient_id(dataset)
    return [SliceHeader(
        path=path,
        series_uid=series_uid,
        sop_instance_uid=sop_uid,
        patient_id=patient_id,
        rows=frame.rows,
        columns=frame.columns,
        pixel_spacing_mm=frame.pixel_spacing_mm,
        slice_thickness_mm=frame.slice_thickness_mm or 0.0,
        position_mm=frame.along_normal_mm,
        instance_number=frame.instance_number,
        body_fraction=body_fraction(hu[index], body_hu_threshold),
        frame_index=frame.frame_index,
        patient_z_mm=None if frame.position_mm is None else float(frame.position_mm[2]),
        body_part=str(dataset.get("BodyPartExamined", "") or ""),
        air_fraction=air_fraction(hu[index]) if with_air_fraction else float("nan"),
    ) for index, frame in enumerate(frames)]
