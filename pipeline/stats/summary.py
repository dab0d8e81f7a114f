"""Per-pair measurement tables and the numbers reported for a group of pairs (pure numpy)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline.stats.config import StatsConfig
from pipeline.stats.metrics import (
    HU_BINS,
    describe,
    percentiles_from_histogram,
    psnr_db,
)

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
    "image_measured": bool,
    "blur_model": object,
    "translation_extent_mm": np.float64,
    "rotation_extent_deg": np.float64,
    "si_amplitude_mm": np.float64,
    "period_s": np.float64,
}
"""One entry per pair. record_index: 0-based position in its shard; psf_extent_px,
trajectory_length_px: pixels; image_measured: whether the image measurements were taken (see
`StatsConfig.image_stride`); squared_error_sum: HU^2 inside the PSNR window (-1 if not measured);
ssim: mean SSIM inside the window (NaN if not measured); blur_model: kernel | projection | none;
translation_extent_mm, rotation_extent_deg: rigid-motion extents of projection-model pairs;
si_amplitude_mm, period_s: diaphragm amplitude (mm) and mean breathing period (s) of respiratory
pairs (0 for others)."""

SYNTHETIC = "synthetic"
KERNEL = "kernel"
PROJECTION = "projection"
RESPIRATORY = "respiratory"
AMPLITUDE_BIN_MM = 1.0
"""Bin width of the diaphragm amplitude histogram (mm)."""
PERIOD_BIN_S = 0.25
"""Bin width of the breathing period histogram (s)."""


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
        """PSNR of each pair (dB, float64 [n]); inf where blurry equals sharp inside the window,
        NaN where the images were not measured."""
        pixels = self.columns["height"] * self.columns["width"]
        psnr = psnr_db(np.maximum(self.columns["squared_error_sum"], 0), pixels, data_range)
        return np.where(self.columns["image_measured"], psnr, np.nan)

    def kernel_blurred(self) -> np.ndarray:
        """Mask [n] of synthetic pairs blurred with a motion PSF (blur_model kernel)."""
        return (self.columns["source_kind"] == SYNTHETIC) & (self.columns["blur_model"] == KERNEL)

    def projection_blurred(self) -> np.ndarray:
        """Mask [n] of pairs blurred by rigid motion during a simulated scan (blur_model projection)."""
        return self.columns["blur_model"] == PROJECTION

    def respiratory_blurred(self) -> np.ndarray:
        """Mask [n] of pairs of a breathing series volume scanned (blur_model respiratory)."""
        return self.columns["blur_model"] == RESPIRATORY


def _counts(values: np.ndarray) -> dict[str, int]:
    return dict(sorted(collections.Counter(str(value) for value in values).items()))


def _percentiles(histogram: np.ndarray, config: StatsConfig) -> dict[str, float | None]:
    values = percentiles_from_histogram(histogram, config.hu_percentiles)
    return {percentile_name(q): None if np.isnan(v) else float(v) for q, v in zip(config.hu_percentiles, values)}


def value_histogram(values: np.ndarray, bin_width: float) -> dict[str, Any]:
    """Counts of `values` in bins [k w, (k + 1) w): {"bin_width": w, "bins": [[k w, count], ...]}
    over the non-empty bins in order (none for no values)."""
    starts, counts = np.unique(np.floor(np.asarray(values, np.float64) / bin_width), return_counts=True)
    return {"bin_width": bin_width, "bins": [[float(start * bin_width), int(count)] for start, count in zip(starts, counts)]}


def percentile_name(q: float) -> str:
    """JSON key of percentile `q`: p1, p50, p99.5."""
    return f"p{q:g}"


def summarise(measurements: Measurements, config: StatsConfig) -> dict[str, Any]:
    """The reported numbers of a group of pairs (JSON-ready).

    pairs; distinct patients and series; pairs per collection, source kind, blur model and image
    size (HxW); PSF extent and trajectory length (pixels) over kernel-blurred synthetic pairs;
    translation (mm) and rotation (degrees) extents over projection-blurred pairs; diaphragm
    amplitude (mm) and breathing period (s) over respiratory pairs, described and as histograms
    (`value_histogram`, `AMPLITUDE_BIN_MM`, `PERIOD_BIN_S`; no bins without them); over the
    `image_pairs` pairs whose images were measured: HU percentiles of all sharp and all blurry
    pixels, PSNR (dB) and SSIM inside `config.window_hu`. Distributions are
    count/mean/std/min/p50/max of the finite values (`identical_pairs` counts pairs with
    infinite PSNR, i.e. blurry == sharp inside the window).
    """
    columns = measurements.columns
    kernel = measurements.kernel_blurred()
    projection = measurements.projection_blurred()
    respiratory = measurements.respiratory_blurred()
    psnr = measurements.psnr_db(config.data_range)
    sizes = [f"{h}x{w}" for h, w in zip(columns["height"], columns["width"])]
    return {
        "pairs": len(measurements),
        "patients": len(set(columns["patient_key"])),
        "series": len(set(columns["series_uid"])),
        "collections": _counts(columns["collection"]),
        "source_kinds": _counts(columns["source_kind"]),
        "blur_models": _counts(columns["blur_model"]),
        "image_sizes": _counts(np.asarray(sizes, dtype=object)),
        "image_pairs": int(columns["image_measured"].sum()),
        "sharp_hu_percentiles": _percentiles(measurements.sharp_histogram, config),
        "blurry_hu_percentiles": _percentiles(measurements.blurry_histogram, config),
        "psf_extent_px": describe(columns["psf_extent_px"][kernel]),
        "trajectory_length_px": describe(columns["trajectory_length_px"][kernel]),
        "projection_translation_extent_mm": describe(columns["translation_extent_mm"][projection]),
        "projection_rotation_extent_deg": describe(columns["rotation_extent_deg"][projection]),
        "respiratory_si_amplitude_mm": describe(columns["si_amplitude_mm"][respiratory]),
        "respiratory_period_s": describe(columns["period_s"][respiratory]),
        "respiratory_si_amplitude_mm_histogram": value_histogram(columns["si_amplitude_mm"][respiratory],
                                                                 AMPLITUDE_BIN_MM),
        "respiratory_period_s_histogram": value_histogram(columns["period_s"][respiratory], PERIOD_BIN_S),
        "psnr_db": {**describe(psnr), "identical_pairs": int(np.isposinf(psnr).sum())},
        "ssim": describe(columns["ssim"]),
    }
