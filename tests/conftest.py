"""Shared fixtures: tiny configs and DICOM files made by the tests themselves."""

from __future__ import annotations

import io
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


GOLDEN_SIMD = "avx2"
"""The x86-64 vector level the pinned golden digests were made on (AVX2, no AVX-512)."""


def simd_level() -> str:
    """This CPU's vector level for numpy's dispatched maths: avx512, avx2 or other."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return "other"
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"


golden_machine = pytest.mark.skipif(
    simd_level() != GOLDEN_SIMD,
    reason=f"golden digests were made on {GOLDEN_SIMD}; numpy's SIMD-dispatched sin/cos/exp round differently on "
           f"{simd_level()}, so the bytes may differ without any code change (same-machine determinism tests still run)",
)
"""Marks tests that compare output bytes with digests pinned on the `GOLDEN_SIMD` machine kind."""


def dicom_bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def ct_small_path() -> str:
    from pipeline.sources import pydicom_test_files_dir

    return os.path.join(pydicom_test_files_dir(), "CT_small.dcm")
