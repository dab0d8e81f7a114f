"""Per-pair measurement tables and the numbers reported for a group of pairs (pure numpy)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline.stats.config import StatsConfig
from pipeline.stats.metrics import HU_BINS, describe, percentiles_from_histogram, psnr_db

COLUMNS: Mapping[str, Any] = {
    "record_index": np.int64,
    "patient_key": object,
    "series_uid": object,
    "collection": object,
    "source_kind": object,
    "split": object,
    "subdataset": np.int64,
    "height": np.int64,
    "width": np.int64,
    "psf_extent_px": np.int64,
    "trajectory_length_px": np.float64,
    "squared_error_sum": np.int64,
    "ssim": np.float64,
}
"""One entry per pair. record_index: 0-based position in its shard; squared_error_sum: HU^2 inside
the PSNR window; psf_extent_px, trajectory_length_px: pixels; ssim: mean SSIM inside the window."""

SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True)
class Measurements:
    """Measurements of a group of pairs: `COLUMNS` as arrays [n] and int64 [65536] HU histograms
    of all sharp and all blurry pixels (bin i = HU i - 32768)."""

    columns: Mapping[str, np.ndarray]
    sharp_histogram: np.ndarray
    blurry_histogram: np.ndarray

    def __len__(self) -> int:
        return int(self.columns["record_index"].shape[0])

    @staticmethod
    def from_rows(rows: Mapping[str, list], sharp_histogram: np.ndarray, blurry_histogram: np.ndarray) -> "Measurements":
        """Builds the table from one list per column (as collected while reading a shard)."""
        columns = {name: np.asarray(rows[name], dtype=dtype) for name, dtype in COLUMNS.items()}
        return Measurements(columns, np.asarray(sharp_histogram, np.int64), np.asarray(blurry_histogram, np.int64))

    @staticmethod
    def concatenate(parts: Iterable["Measurements"]) -> "Measurements":
        """All pairs of `parts` in one table, histograms summed."""
        parts = list(parts)
        columns = {
            name: np.concatenate([part.columns[name] for part in parts]) if parts else np.zeros(0, dtype)
            for name, dtype in COLUMNS.items()
        }
        sharp = np.zeros(HU_BINS, np.int64)
        blurry = np.zeros(HU_BINS, np.int64)
        for part in parts:
            sharp += part.sharp_histogram
            blurry += part.blurry_histogram
        return Measurements(columns, sharp, blurry)

    def psnr_db(self, data_range: float) -> np.ndarray:
        """PSNR of each pair (dB, float64 [n]); inf where blurry equals sharp inside the window."""
        pixels = self.columns["height"] * self.columns["width"]
        return psnr_db(self.columns["squared_error_sum"], pixels, data_range)

    def synthetic(self) -> np.ndarray:
        """Mask [n] of pairs whose blur was simulated with a PSF (source_kind synthetic)."""
        return self.columns["source_kind"] == SYNTHETIC


def _counts(values: np.ndarray) -> dict[str, int]:
    return dict(sorted(collections.Counter(str(value) for value in values).items()))


def _percentiles(histogram: np.ndarray, config: StatsConfig) -> dict[str, float | None]:
    values = percentiles_from_histogram(histogram, config.hu_percentiles)
    return {percentile_name(q): None if np.isnan(v) else float(v) for q, v in zip(config.hu_percentiles, values)}


def percentile_name(q: float) -> str:
    """JSON key of percentile `q`: p1, p50, p99.5."""
    return f"p{q:g}"


def summarise(measurements: Measurements, config: StatsConfig) -> dict[str, Any]:
    """The reported numbers of a group of pairs (JSON-ready).

    pairs; distinct patients and series; pairs per collection, source kind and image size (HxW);
    HU percentiles of sharp and blurry pixels; PSF extent and trajectory length (pixels) over
    synthetic pairs; PSNR (dB) and SSIM inside `config.window_hu` as count/mean/std/min/p50/max
    over finite values (`identical_pairs` counts pairs with infinite PSNR).
    """
    columns = measurements.columns
    synthetic = measurements.synthetic()
    psnr = measurements.psnr_db(config.data_range)
    sizes = [f"{h}x{w}" for h, w in zip(columns["height"], columns["width"])]
    return {
        "pairs": len(measurements),
        "patients": len(set(columns["patient_key"])),
        "series": len(set(columns["series_uid"])),
        "collections": _counts(columns["collection"]),
        "source_kinds": _counts(columns["source_kind"]),
        "image_sizes": _counts(np.asarray(sizes, dtype=object)),
        "sharp_hu_percentiles": _percentiles(measurements.sharp_histogram, config),
        "blurry_hu_percentiles": _percentiles(measurements.blurry_histogram, config),
        "psf_extent_px": describe(columns["psf_extent_px"][synthetic]),
        "trajectory_length_px": describe(columns["trajectory_length_px"][synthetic]),
        "psnr_db": {**describe(psnr), "identical_pairs": int(np.isposinf(psnr).sum())},
        "ssim": describe(columns["ssim"]),
    }
