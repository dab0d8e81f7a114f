"""Image-quality metrics on HU, as the evaluation protocol states them.

Both images are clipped to an HU window (default [-1000, 1000]) and compared with
data_range = window width. SSIM is Wang et al.'s: Gaussian window 11, sigma 1.5, K1 0.01,
K2 0.03. Inputs are HU `[B, H, W, 1]`; results are per image `[B]`.
"""

from __future__ import annotations

import tensorflow as tf

DEFAULT_WINDOW_HU = (-1000.0, 1000.0)


def windowed(hu: tf.Tensor, window: tuple[float, float]) -> tf.Tensor:
    """HU clipped to `window` and shifted so the window starts at 0 (float32, 0..width)."""
    low, high = float(window[0]), float(window[1])
    return tf.clip_by_value(tf.cast(hu, tf.float32), low, high) - low


def psnr_hu(restored_hu: tf.Tensor, reference_hu: tf.Tensor, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> tf.Tensor:
    """PSNR in dB per image, data range = window width."""
    width = float(window[1] - window[0])
    return tf.image.psnr(windowed(restored_hu, window), windowed(reference_hu, window), max_val=width)


def ssim_hu(restored_hu: tf.Tensor, reference_hu: tf.Tensor, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> tf.Tensor:
    """SSIM per image (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), data range = window width."""
    width = float(window[1] - window[0])
    return tf.image.ssim(
        windowed(restored_hu, window), windowed(reference_hu, window),
        max_val=width, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03,
    )


def display(hu: tf.Tensor, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> tf.Tensor:
    """HU -> float32 [0, 1] grey levels of `window`, for image summaries."""
    return windowed(hu, window) / float(window[1] - window[0])
