"""Per-pair measurements and their summaries.

SSIM, the squared-error sum and the PSF extent are TensorFlow functions used inside tf.data; the
HU histogram and the summaries are numpy. The per-pair functions take int16 HU images `[H, W]`
and a float32 PSF `[k, k]` as decoded by `tfrecords_schema.parse_pair_tensors`; nothing here
loops over pixels in Python.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

HU_OFFSET = 32768
"""Histogram bin `i` counts the HU value `i - HU_OFFSET`."""
HU_BINS = 65536
"""One bin per int16 HU value, so percentiles computed from histograms are exact."""


def hu_histogram(hu: np.ndarray) -> np.ndarray:
    """Count of every int16 value in `hu` (int16, any shape): int64 [65536], bin i = HU i - 32768.

    Counts the int16 bits read as uint16 (HU h >= 0 at h, h < 0 at h + 65536: no widening pass
    before counting), then rotates by 32768 so that bins run from -32768 HU upwards.
    """
    values = np.ascontiguousarray(hu, dtype=np.int16).view(np.uint16).ravel()
    return np.roll(np.bincount(values, minlength=HU_BINS), HU_OFFSET)


@functools.lru_cache(maxsize=None)
def _squared_error_function(window_hu: tuple[int, int]):
    low, high = window_hu

    @tf.function(jit_compile=True)
    def squared_error(sharp_hu: tf.Tensor, blurry_hu: tf.Tensor) -> tf.Tensor:
        sharp = tf.clip_by_value(tf.cast(sharp_hu, tf.int64), low, high)
        blurry = tf.clip_by_value(tf.cast(blurry_hu, tf.int64), low, high)
        difference = sharp - blurry
        return tf.reduce_sum(difference * difference)

    return squared_error


def squared_error_sum(sharp_hu: tf.Tensor, blurry_hu: tf.Tensor, window_hu: tuple[int, int]) -> tf.Tensor:
    """Exact sum of squared differences (HU^2, int64) of two int16 [H, W] images clipped to `window_hu`."""
    return _squared_error_function((int(window_hu[0]), int(window_hu[1])))(sharp_hu, blurry_hu)


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of `size` taps (float32 [size]), standard deviation `sigma` pixels."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return (weights / weights.sum()).astype(np.float32)


def _shifted_sum(values: tf.Tensor, taps: tuple[float, ...], axis: int) -> tf.Tensor:
    """Valid 1-D correlation of `values` with `taps` along `axis` (length shrinks by len(taps) - 1)."""
    length = tf.shape(values)[axis] - (len(taps) - 1)
    total = None
    for offset, weight in enumerate(taps):
        begin = [0] * values.shape.rank
        size = [-1] * values.shape.rank
        begin[axis], size[axis] = offset, length
        term = weight * tf.slice(values, begin, size)
        total = term if total is None else total + term
    return total


@functools.lru_cache(maxsize=None)
def _ssim_function(window_hu: tuple[int, int], filter_size: int, sigma: float, k1: float, k2: float):
    """SSIM as two XLA-compiled passes (rows, then columns + SSIM map + mean).

    XLA fuses the element-wise work of each pass into one loop over the image; keeping the passes
    apart makes the row-filtered moments be computed once instead of once per column tap.
    """
    low, high = window_hu
    data_range = float(high - low)
    taps = tuple(float(weight) for weight in gaussian_window(filter_size, sigma))
    c1, c2 = k1 * k1, k2 * k2

    @tf.function(jit_compile=True)
    def filter_rows(sharp_hu: tf.Tensor, blurry_hu: tf.Tensor) -> tf.Tensor:
        x = (tf.clip_by_value(tf.cast(sharp_hu, tf.float32), low, high) - low) / data_range
        y = (tf.clip_by_value(tf.cast(blurry_hu, tf.float32), low, high) - low) / data_range
        moments = tf.stack([x, y, x * x + y * y, x * y])
        return _shifted_sum(moments, taps, axis=1)

    @tf.function(jit_compile=True)
    def filter_columns_mean(row_filtered: tf.Tensor) -> tf.Tensor:
        mu_x, mu_y, mean_square_sum, mean_product = tf.unstack(_shifted_sum(row_filtered, taps, axis=2), num=4)
        mu_product = mu_x * mu_y
        mu_square_sum = mu_x * mu_x + mu_y * mu_y
        ssim_map = ((2.0 * mu_product + c1) * (2.0 * (mean_product - mu_product) + c2)) / (
            (mu_square_sum + c1) * (mean_square_sum - mu_square_sum + c2)
        )
        return tf.reduce_mean(tf.cast(ssim_map, tf.float64))

    def ssim(sharp_hu: tf.Tensor, blurry_hu: tf.Tensor) -> tf.Tensor:
        fits = tf.reduce_all(tf.shape(sharp_hu) >= filter_size)
        return tf.cond(
            fits,
            lambda: filter_columns_mean(filter_rows(sharp_hu, blurry_hu)),
            lambda: tf.constant(np.nan, tf.float64),
        )

    return ssim


def pair_ssim(
    sharp_hu: tf.Tensor,
    blurry_hu: tf.Tensor,
    window_hu: tuple[int, int],
    filter_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> tf.Tensor:
    """Mean SSIM (Wang et al. 2004) of a stored pair, sharp then blurry (the order of
    `squared_error_sum` and of the schema), each int16 [H, W] HU: float64 scalar. SSIM is symmetric,
    so the order does not change the value. (`model.metrics.ssim_hu` is the trainer's batched
    SSIM of a restored image against its reference; both follow the same protocol.)

    Both images are clipped to `window_hu` and shifted to start at 0 (0..width, the convention of
    `ctdeblur-evaluate`), and data_range is its width. Local statistics use a
    separable Gaussian window (`filter_size` taps, `sigma` pixels) without padding, and the mean
    is taken over the valid region [H - filter_size + 1, W - filter_size + 1] (the convention of
    `skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)`
    and `tf.image.ssim`). NaN if an image is smaller than the window.
    """
    window = (int(window_hu[0]), int(window_hu[1]))
    return _ssim_function(window, int(filter_size), float(sigma), float(k1), float(k2))(sharp_hu, blurry_hu)


def psf_extent_px(psf: tf.Tensor) -> tf.Tensor:
    """Side (pixels, int32) of the bounding box of the non-zero entries of a [k, k] PSF.

    The larger of its height and width; 0 for an all-zero PSF (registered pairs have no kernel).
    """
    support = psf > 0

    def span(mask: tf.Tensor) -> tf.Tensor:
        positions = tf.range(tf.size(mask, out_type=tf.int32))
        first = tf.reduce_min(tf.where(mask, positions, tf.size(mask, out_type=tf.int32)))
        last = tf.reduce_max(tf.where(mask, positions, -1))
        return tf.maximum(last - first + 1, 0)

    return tf.maximum(span(tf.reduce_any(support, axis=1)), span(tf.reduce_any(support, axis=0)))


def psnr_db(squared_error_sums: np.ndarray, pixels: np.ndarray, data_range: float) -> np.ndarray:
    """PSNR in dB (float64) from exact squared-error sums (HU^2) and pixel counts; inf where equal."""
    sse = np.asarray(squared_error_sums, dtype=np.float64)
    mse = sse / np.asarray(pixels, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(float(data_range) ** 2 / mse)


def percentiles_from_histogram(histogram: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Percentiles (float64) of the HU values counted in a [65536] histogram.

    Equal to `np.percentile(values, percentiles)` (linear interpolation) over the values
    themselves; NaN for an empty histogram.
    """
    counts = np.asarray(histogram, dtype=np.int64)
    total = int(counts.sum())
    quantiles = np.asarray(percentiles, dtype=np.float64) / 100.0
    if total == 0:
        return np.full(quantiles.shape, np.nan)
    cumulative = np.cumsum(counts)
    position = (total - 1) * quantiles
    below = np.floor(position)
    gamma = position - below
    below_index = below.astype(np.int64)
    above_index = np.minimum(below_index + 1, total - 1)
    below_value = (np.searchsorted(cumulative, below_index, side="right") - HU_OFFSET).astype(np.float64)
    above_value = (np.searchsorted(cumulative, above_index, side="right") - HU_OFFSET).astype(np.float64)
    difference = above_value - below_value
    return np.where(gamma >= 0.5, above_value - difference * (1 - gamma), below_value + difference * gamma)


def describe(values: np.ndarray) -> dict[str, float | int | None]:
    """count, mean, std (population), min, median and max of the finite entries of `values`."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "p50": None, "max": None}
    return {
        "count": int(finite.size),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "p50": float(np.median(finite)),
        "max": float(finite.max()),
    }


def rebin_histogram(histogram: np.ndarray, range_hu: tuple[int, int], bin_hu: int) -> tuple[np.ndarray, np.ndarray]:
    """A [65536] HU histogram as `bin_hu`-wide bins over `range_hu` (values outside go to the edge
    bins); returns (counts int64 [n], edges HU float64 [n + 1])."""
    low, high = range_hu
    bins = math.ceil((high - low + 1) / bin_hu)
    hu = np.arange(HU_BINS) - HU_OFFSET
    index = np.clip((hu - low) // bin_hu, 0, bins - 1)
    counts = np.bincount(index, weights=np.asarray(histogram, dtype=np.float64), minlength=bins).astype(np.int64)
    edges = low + bin_hu * np.arange(bins + 1, dtype=np.float64)
    return counts, edges
