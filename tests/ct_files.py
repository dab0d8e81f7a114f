"""Small CT DICOM files written by the tests themselves (not the procedural phantoms).

Every image is a seeded ellipse of soft tissue with a denser core inside air, so tests can know
the HU of every pixel; `stored = (hu - intercept) / slope`.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

UID_ROOT = "1.2.826.0.1.3680043.8.498."


def test_uid(*parts: object) -> str:
    """A deterministic UID under pydicom's test root."""
    return str(generate_uid(UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def ellipse_hu(patient: int, index: int, size: int) -> np.ndarray:
    """HU image float32 [size, size]: air outside, tissue with seeded texture inside (HU)."""
    rng = np.random.default_rng([patient, index])
    y, x = np.mgrid[:size, :size] / (size - 1) - 0.5
    body = (x / 0.42) ** 2 + (y / 0.33) ** 2 < 1
    core = (x / 0.15) ** 2 + ((y - 0.05 * np.sin(index)) / 0.1) ** 2 < 1
    hu = np.full((size, size), -1000.0, np.float32)
    hu[body] = 40 + rng.normal(0, 12, body.sum())
    hu[core] = 700 + 20 * index
    return np.round(hu).astype(np.float32)


def _common(dataset: Dataset, patient: int, series: str, size: int) -> None:
    dataset.PatientID = f"TEST-{patient:03d}"
    dataset.PatientName = f"Test^{patient}"
    dataset.StudyInstanceUID = test_uid("study", patient)
    dataset.SeriesInstanceUID = series
    dataset.FrameOfReferenceUID = test_uid("frame", patient)
    dataset.Modality = "CT"
    dataset.Rows = dataset.Columns = size
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15


def _file_meta(dataset: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta


def ct_slice(patient: int, index: int, size: int = 64, *, slope: float = 1.0, intercept: float = -1024.0,
             padding: int | None = -2000, unsigned: bool = False, spacing_mm: float = 0.8,
             thickness_mm: float = 2.5) -> Dataset:
    """Slice `index` of patient `patient`'s axial CT Image Storage series.

    The corners outside the reconstruction circle hold the stored value `padding`, named by
    PixelPaddingValue (None: no padding, the corners keep the ellipse's air). `unsigned` stores
    the pixels as uint16 (PixelRepresentation 0).
    """
    hu = ellipse_hu(patient, index, size)
    dataset = Dataset()
    _common(dataset, patient, test_uid("series", patient, size), size)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = test_uid("sop", patient, size, index)
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    dataset.InstanceNumber = index + 1
    dataset.ImagePositionPatient = [-size * spacing_mm / 2, -size * spacing_mm / 2, -thickness_mm * index]
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.PixelSpacing = [spacing_mm, spacing_mm]
    dataset.SliceThickness = thickness_mm
    dataset.RescaleSlope = slope
    dataset.RescaleIntercept = intercept
    stored = np.rint((hu - intercept) / slope)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    outside = x ** 2 + y ** 2 > (size / 2) ** 2
    if unsigned:
        stored = stored.astype(np.uint16)
        dataset.PixelRepresentation = 0
    else:
        stored = stored.astype(np.int16)
        dataset.PixelRepresentation = 1
    if padding is not None:
        stored[outside] = padding
        dataset.add_new("PixelPaddingValue", "US" if unsigned else "SS", padding)
    dataset.PixelData = stored.tobytes()
    _file_meta(dataset)
    return dataset


def unsigned_padding_slice(patient: int, index: int, size: int = 64) -> Dataset:
    """A signed slice whose padding (stored -1) is named by PixelPaddingValue 65535 written as
    US, as some scanners do. With intercept 0 the padding's HU (-1) is a valid value, so only the
    padding rule can make those pixels air."""
    dataset = ct_slice(patient, index, size, intercept=0.0, padding=-1)
    del dataset.PixelPaddingValue
    dataset.add_new("PixelPaddingValue", "US", 65535)
    return dataset


def enhanced_ct(patient: int, frames: int, size: int = 64, *, slope: float = 1.0, intercept: float = -1024.0,
                spacing_mm: float = 0.8, thickness_mm: float = 2.5) -> Dataset:
    """An Enhanced CT Image Storage object holding `frames` axial frames of `ellipse_hu`, with
    geometry and rescale in the functional groups (rescale per frame, geometry shared)."""
    dataset = Dataset()
    _common(dataset, patient, test_uid("enhanced-series", patient, size), size)
    dataset.SOPClassUID = EnhancedCTImageStorage
    dataset.SOPInstanceUID = test_uid("enhanced-sop", patient, size)
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    dataset.InstanceNumber = 1
    dataset.NumberOfFrames = frames
    dataset.PixelRepresentation = 1
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]
    measures.SliceThickness = thickness_mm
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    dataset.SharedFunctionalGroupsSequence = [shared]
    per_frame, stored = [], []
    for index in range(frames):
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-size * spacing_mm / 2, -size * spacing_mm / 2, -thickness_mm * index]
        group.PlanePositionSequence = [position]
        transformation = Dataset()
        transformation.RescaleSlope = slope
        transformation.RescaleIntercept = intercept
        transformation.RescaleType = "HU"
        group.PixelValueTransformationSequence = [transformation]
        per_frame.append(group)
        stored.append(np.rint((ellipse_hu(patient, index, size) - intercept) / slope).astype(np.int16))
    dataset.PerFrameFunctionalGroupsSequence = per_frame
    dataset.PixelData = np.stack(stored).tobytes()
    _file_meta(dataset)
    return dataset
