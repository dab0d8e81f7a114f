"""Image-quality metrics on HU, as the evaluation protocol states them.

Both images are clipped to an HU window (default [-1000, 1000]) and shifted so that the window's
low end is 0 (intensities 0..width, as on a display of that window), then compared with
data_range = window width. SSIM is Wang et al.'s: Gaussian window 11, sigma 1.5, K1 0.01,
K2 0.03, statistics without padding (the SSIM map is `[H - 10, W - 10]`); the shift matters for
SSIM's luminance term, which is why it is part of the protocol.

Two implementations of the same maths:
- TensorFlow (`psnr_hu`, `ssim_hu`, `display`) on HU `[B, H, W, 1]`, results per image `[B]`:
  the trainer's validation summaries;
- numpy float64 (`psnr`, `ssim`, `ssim_map`, `body_mask`) on one image `[H, W]`: the evaluation
  (`ctdeblur-evaluate`). They agree with scikit-image's `peak_signal_noise_ratio(data_range=width)`
  and `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=width)` applied to the windowed images.

PSNR of two identical windowed images is +inf (zero error); aggregates decide what to do with it.
Masked metrics: PSNR from the mean squared error over the mask's pixels; SSIM as the mean of the
SSIM map over the mask's pixels whose whole 11 x 11 window lies inside the image.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from scipy import ndimage

DEFAULT_WINDOW_HU = (-1000.0, 1000.0)
"""Default HU window of the metrics (data range 2000 HU)."""
FULL_RANGE_WINDOW_HU = (-1024.0, 3071.0)
"""The full 12-bit CT range (data range 4095 HU)."""
SSIM_FILTER_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_MARGIN = SSIM_FILTER_SIZE // 2
"""Pixels lost on each side by the unpadded SSIM statistics."""
BODY_THRESHOLD_HU = -500.0
BODY_COMPONENT_FRACTION = 0.25
"""Body-mask components smaller than this fraction of the largest one are dropped."""


def window_bounds(window: tuple[float, float]) -> tuple[float, float]:
    """(low, high) of an HU window as floats; ValueError unless low < high."""
    low, high = float(window[0]), float(window[1])
    if not low < high:
        raise ValueError(f"an HU window needs low < high, got {tuple(window)}")
    return low, high


def window_width(window: tuple[float, float]) -> float:
    """Width of an HU window: the data range of PSNR and SSIM (HU)."""
    low, high = window_bounds(window)
    return high - low


def windowed(hu: tf.Tensor, window: tuple[float, float]) -> tf.Tensor:
    """HU clipped to `window` and shifted so the window starts at 0 (float32, 0..width)."""
    low, high = window_bounds(window)
    return tf.clip_by_value(tf.cast(hu, tf.float32), low, high) - low


def psnr_hu(restored_hu: tf.Tensor, reference_hu: tf.Tensor, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> tf.Tensor:
    """PSNR in dB per image, data range = window width."""
    return tf.image.psnr(windowed(restored_hu, window), windowed(reference_hu, window), max_val=window_width(window))


def ssim_hu(restored_hu: tf.Tensor, reference_hu: tf.Tensor, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> tf.Tensor:
    """SSIM per image (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), data range = window width."""
    return tf.image.ssim(
        windowed(restored_hu, window), windowed(reference_hu, window), max_val=window_width(window),
        filter_size=SSIM_FILTER_SIZE, filter_sigma=SSIM_SIGMA, k1=SSIM_K1, k2=SSIM_K2,
    )


def display(hu: tf.Tensor, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> tf.Tensor:
    """HU -> float32 [0, 1] grey levels of `window`, for image summaries."""
    return windowed(hu, window) / window_width(window)


def windowed_hu(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """numpy twin of `windowed`: HU `[H, W]` clipped to `window`, minus its low end (float64, 0..width)."""
    low, high = window_bounds(window)
    return np.clip(np.asarray(hu, np.float64), low, high) - low


def _check_pair(restored_hu: np.ndarray, reference_hu: np.ndarray) -> None:
    if np.shape(restored_hu) != np.shape(reference_hu) or np.ndim(reference_hu) != 2:
        raise ValueError(f"need two [H, W] images of one shape, got {np.shape(restored_hu)} and {np.shape(reference_hu)}")


def psnr_from_mse(mse: float, data_range: float) -> float:
    """PSNR (dB) of a mean squared error with peak `data_range`; +inf for mse 0, NaN for NaN."""
    if math.isnan(mse):
        return math.nan
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def mean_over(values: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean of `values` (over `mask`'s pixels when given; NaN when it selects none)."""
    selected = values if mask is None else values[np.asarray(mask, bool)]
    return float(selected.mean()) if selected.size else math.nan


def psnr(restored_hu: np.ndarray, reference_hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW_HU,
         mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of `restored_hu` against `reference_hu` (both HU `[H, W]`) in `window`.

    data_range = window width. With `mask` (bool `[H, W]`), the squared error is averaged over the
    mask's pixels only (NaN for an empty mask). +inf when the windowed images are identical.
    """
    _check_pair(restored_hu, reference_hu)
    squared = (windowed_hu(restored_hu, window) - windowed_hu(reference_hu, window)) ** 2
    return psnr_from_mse(mean_over(squared, mask), window_width(window))


def gaussian_taps(size: int = SSIM_FILTER_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian of `size` taps, standard deviation `sigma` pixels (float64 [size])."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    weights = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def _local_mean(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian average over each fully contained window: `[H - k + 1, W - k + 1]`."""
    margin = len(taps) // 2
    rows = ndimage.correlate1d(image, taps, axis=0, mode="nearest")[margin:-margin]
    return ndimage.correlate1d(rows, taps, axis=1, mode="nearest")[:, margin:-margin]


class WindowedReference:
    """A reference image prepared once for scoring several restorations against it in one window.

    reference_hu: HU `[H, W]` (at least 11 x 11); window: the HU window (data range = its width).
    Caches the windowed image and its local SSIM statistics.
    """

    def __init__(self, reference_hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW_HU):
        if np.ndim(reference_hu) != 2 or min(np.shape(reference_hu)) < SSIM_FILTER_SIZE:
            raise ValueError(f"SSIM needs [H, W] images of at least {SSIM_FILTER_SIZE} x {SSIM_FILTER_SIZE} pixels, "
                             f"got shape {np.shape(reference_hu)}")
        self.window = window_bounds(window)
        self.width = window_width(window)
        self.image = windowed_hu(reference_hu, window)
        self._taps = gaussian_taps()
        self._mean = _local_mean(self.image, self._taps)
        self._variance = _local_mean(self.image * self.image, self._taps) - self._mean * self._mean

    def _windowed(self, restored_hu: np.ndarray) -> np.ndarray:
        _check_pair(restored_hu, self.image)
        return windowed_hu(restored_hu, self.window)

    def squared_error(self, restored_hu: np.ndarray) -> np.ndarray:
        """Squared difference of the windowed images, HU^2 float64 `[H, W]`."""
        return (self._windowed(restored_hu) - self.image) ** 2

    def ssim_map(self, restored_hu: np.ndarray) -> np.ndarray:
        """Local SSIM of `restored_hu` against the reference: float64 `[H - 10, W - 10]`."""
        x = self._windowed(restored_hu)
        mu_x = _local_mean(x, self._taps)
        var_x = _local_mean(x * x, self._taps) - mu_x * mu_x
        cov = _local_mean(x * self.image, self._taps) - mu_x * self._mean
        c1, c2 = (SSIM_K1 * self.width) ** 2, (SSIM_K2 * self.width) ** 2
        mu_y = self._mean
        return ((2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)) / (
            (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + self._variance + c2))


def ssim_map(restored_hu: np.ndarray, reference_hu: np.ndarray,
             window: tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """Local SSIM (Wang et al. 2004) of two HU images `[H, W]` in `window`: float64 `[H - 10, W - 10]`.

    Gaussian window of 11 taps, sigma 1.5 pixels, K1 0.01, K2 0.03, data range = window width;
    population (not sample) variances. Entry (i, j) belongs to image pixel (i + 5, j + 5).
    """
    return WindowedReference(reference_hu, window).ssim_map(restored_hu)


def ssim_region(mask: np.ndarray) -> np.ndarray:
    """The part of a bool mask `[H, W]` that lines up with the SSIM map: `[H - 10, W - 10]`."""
    return np.asarray(mask, bool)[SSIM_MARGIN:-SSIM_MARGIN, SSIM_MARGIN:-SSIM_MARGIN]


def ssim(restored_hu: np.ndarray, reference_hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW_HU,
         mask: np.ndarray | None = None) -> float:
    """Mean SSIM of two HU images `[H, W]` in `window` (see `ssim_map`).

    Without `mask`: the mean of the whole SSIM map, i.e. over the pixels at least 5 pixels from
    the border (the Wang et al. / scikit-image convention). With `mask` (bool `[H, W]`): the mean
    of the map over the mask's pixels within that region (NaN if there are none).
    """
    local = ssim_map(restored_hu, reference_hu, window)
    return mean_over(local, None if mask is None else ssim_region(mask))


def body_mask(hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU,
              component_fraction: float = BODY_COMPONENT_FRACTION) -> np.ndarray:
    """Bool `[H, W]` mask of the patient's body in an HU image `[H, W]`.

    Pixels above `threshold_hu` (-500 HU: soft tissue and bone, not air or lung), with holes
    filled (lungs, airways and bowel gas enclosed by the body are inside it); of the 4-connected
    components, those with at least `component_fraction` of the largest one's area are kept (both
    legs or a head and a raised arm stay; the scanner table, cables and small specks are dropped
    when they do not touch the body). All False when no pixel passes the threshold.
    """
    if np.ndim(hu) != 2:
        raise ValueError(f"hu must be [H, W], got shape {np.shape(hu)}")
    filled = ndimage.binary_fill_holes(np.asarray(hu) > threshold_hu)
    labels, count = ndimage.label(filled)
    if count <= 1:
        return filled
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= component_fraction * areas.max()) + 1
    return np.isin(labels, keep)
