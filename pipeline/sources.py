"""Input sources: each turns into a PCollection of `InputFile` (one per file to read) mixed
with the `Rejection`s of series it could not deliver.

- `phantom`: procedural phantom series, written as DICOM files by the pipeline itself.
- `pydicom-samples`: the real CT files that pydicom ships with its package.
- `dicom-dir`: every file under a local or `gs://` directory (or one file), recursively.
- `tcia`, `idc`: archive series listed by the launcher, fetched by the workers.
- `pairs`: registered free-breathing / breath-hold CT pairs from a CSV manifest.
"""

from __future__ import annotations

import io
import os

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from pipeline.archive_sources import (
    REJECTED,
    FetchSeriesFn,
    RegisterPairFn,
    idc_files,
    listing_rejections,
    tcia_series_files,
)
from pipeline.config import PipelineConfig
from pipeline.files import list_files, write_bytes
from pipeline.phantom import (
    PhantomSeries,
    phantom_dataset,
    phantom_series,
    slice_file_name,
)
from pipeline.planning import InputFile

SOURCES = ("phantom", "pydicom-samples", "dicom-dir", "tcia", "idc", "pairs")
PHANTOM_COLLECTION = "phantom"
PYDICOM_COLLECTION = "pydicom-samples"
PYDICOM_CT_SAMPLES = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")
"""Real CT images in pydicom's package data: 128x128 uncompressed, and two 512x512 JPEG 2000 files
from different scanners (one with a PixelRepresentation quirk)."""


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


class ReadSource(beam.PTransform):
    """One source -> PCollection of InputFile and Rejection.

    listing: for tcia and idc the launcher's SeriesListing, for pairs the manifest's PairRows.
    work_dir: where registered FB volumes are kept during the run (pairs).
    """

    def __init__(self, source: str, config: PipelineConfig, input_path: str | None, phantom_dir: str,
                 listing=None, work_dir: str = ""):
        super().__init__()
        self.source = source
        self.config = config
        self.input_path = input_path
        self.phantom_dir = phantom_dir
        self.listing = listing
        self.work_dir = work_dir

    def _fetched(self, pbegin, items, fetch_fn, rejections=()):
        fetched = (
            pbegin
            | "Listed" >> beam.Create(list(items))
            | "Reshuffle" >> beam.Reshuffle()
            | "Fetch" >> beam.ParDo(fetch_fn).with_outputs(REJECTED, main="files")
        )
        listed = pbegin | "ListingRejections" >> beam.Create(list(rejections))
        return (fetched.files, fetched[REJECTED], listed) | "Merge" >> beam.Flatten()

    def expand(self, pbegin):
        if self.source == "tcia":
            return self._fetched(pbegin, self.listing.kept, FetchSeriesFn("tcia", tcia_series_files, self.config),
                                 listing_rejections(self.listing, "tcia"))
        if self.source == "idc":
            return self._fetched(pbegin, self.listing.kept, FetchSeriesFn("idc", idc_files, self.config),
                                 listing_rejections(self.listing, "idc"))
        if self.source == "pairs":
            return self._fetched(pbegin, self.listing, RegisterPairFn(self.config, self.work_dir))
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
                | "MatchFiles" >> fileio.MatchFiles(list_files(self.input_path))
                | "ToInputFile" >> beam.Map(lambda meta: InputFile(meta.path, collection))
            )
        raise ValueError(f"unknown source {self.source!r}; choose from {SOURCES}")
