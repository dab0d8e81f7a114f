"""Shared fixtures: tiny configs and DICOM files made by the tests themselves."""

from __future__ import annotations

import io
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def dicom_bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def ct_small_path() -> str:
    from pipeline.sources import pydicom_test_files_dir

    return os.path.join(pydicom_test_files_dir(), "CT_small.dcm")
