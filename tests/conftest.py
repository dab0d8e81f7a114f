"""Shared fixtures: tiny configs and DICOM files made by the tests themselves."""

from __future__ import annotations

import io
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


GOLDEN_SIMD = "avx2"
"""The x86-64 vector level the pinned golden digests were made on (AVX2, no AVX-512)."""


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return []


if "avx512f" in _cpu_flags():
    # numpy (imported after this, also by the pipeline's worker processes) dispatches to AVX2 code, as
    # on the machine the golden digests were pinned on, so byte-identity is checked on any x86-64 CPU
    os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", "AVX512F")


def simd_level() -> str:
    """The vector level numpy dispatches its maths to here: avx512, avx2 or other (the CPU's, less
    what NPY_DISABLE_CPU_FEATURES turns off)."""
    from numpy.core._multiarray_umath import __cpu_features__ as features
    return "avx512" if features.get("AVX512F") else "avx2" if features.get("AVX2") else "other"


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
