"""Input sources: each turns into a PCollection of `InputFile` (one per file to read).

- `phantom`: procedural phantom series, written as DICOM files by the pipeline itself.
- `pydicom-samples`: the real CT files that pydicom ships with its package.
- `dicom-dir`: every file under a local or `gs://` directory (or one file), recursively.
"""

from __future__ import annotations

import io
import os

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.config import PipelineConfig
from pipeline.phantom import PhantomSeries, phantom_dataset, phantom_series, slice_file_name
from pipeline.planning import InputFile

SOURCES = ("phantom", "pydicom-samples", "dicom-dir")
PHANTOM_COLLECTION = "phantom"
PYDICOM_COLLECTION = "pydicom-samples"
PYDICOM_CT_SAMPLES = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")
"""Real CT images in pydicom's package data: 128x128 uncompressed, and two 512x512 JPEG 2000 files
from different scanners (one with a PixelRepresentation quirk)."""


def read_bytes(path: str) -> bytes:
    """All bytes of a local or remote file, never decompressed by extension."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def write_bytes(path: str, data: bytes) -> None:
    """Writes a local or remote file whole, creating local parent directories."""
    if "://" not in path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def pydicom_test_files_dir() -> str:
    import pydicom

    return os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def write_phantom_series(series: PhantomSeries, phantom_dir: str) -> list[str]:
    """Writes a phantom series as DICOM files under `phantom_dir` (local or gs://); returns paths."""
    paths = []
    for slice_index in range(series.slices):
        buffer = io.BytesIO()
        phantom_dataset(series, slice_index).save_as(buffer, enforce_file_format=True)
        path = FileSystems.join(phantom_dir, slice_file_name(series, slice_index))
        write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def write_phantom_patient(patient_index: int, config: PipelineConfig, phantom_dir: str) -> list[InputFile]:
    """Writes phantom patient `patient_index` of the config; returns its files."""
    series = phantom_series(patient_index, config.phantom.slices, config.phantom.size, config.seed)
    return [InputFile(path, PHANTOM_COLLECTION) for path in write_phantom_series(series, phantom_dir)]


def list_dicom_dir(root: str) -> str:
    """The file pattern that lists every file under `root` (or `root` itself if it is a file)."""
    if "://" not in root:
        if not os.path.exists(root):
            raise FileNotFoundError(f"--input {root} does not exist")
        if os.path.isfile(root):
            return root
    return root.rstrip("/") + "/**"


class ReadSource(beam.PTransform):
    """One source -> PCollection[InputFile]."""

    def __init__(self, source: str, config: PipelineConfig, input_path: str | None, phantom_dir: str):
        super().__init__()
        self.source = source
        self.config = config
        self.input_path = input_path
        self.phantom_dir = phantom_dir

    def expand(self, pbegin):
        if self.source == "phantom":
            config, phantom_dir = self.config, self.phantom_dir
            return (
                pbegin
                | "PhantomPatients" >> beam.Create(list(range(config.phantom.patients)))
                | "Reshuffle" >> beam.Reshuffle()
                | "WritePhantomDicom" >> beam.FlatMap(write_phantom_patient, config, phantom_dir)
            )
        if self.source == "pydicom-samples":
            return (
                pbegin
                | "SampleNames" >> beam.Create(list(PYDICOM_CT_SAMPLES))
                | "ResolveSamples" >> beam.Map(
                    lambda name: InputFile(os.path.join(pydicom_test_files_dir(), name), PYDICOM_COLLECTION))
            )
        if self.source == "dicom-dir":
            collection = self.config.collection
            return (
                pbegin
                | "MatchFiles" >> fileio.MatchFiles(list_dicom_dir(self.input_path))
                | "ToInputFile" >> beam.Map(lambda meta: InputFile(meta.path, collection))
            )
        raise ValueError(f"unknown source {self.source!r}; choose from {SOURCES}")
