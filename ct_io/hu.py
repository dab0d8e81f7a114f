"""Stored pixel values <-> Hounsfield units, pixel padding and the air rule (pure numpy).

HU = stored * RescaleSlope + RescaleIntercept. Pixels a scanner marks as padding
(PixelPaddingValue, up to PixelPaddingRangeLimit) and values below -1024 HU (out-of-field markers
such as -2000 or -3024) carry no attenuation: the air rule makes them `AIR_HU`.
"""

from __future__ import annotations

import numpy as np

AIR_HU = -1000.0
"""Air; the value the air rule gives padding and out-of-field pixels (HU)."""
MIN_VALID_HU = -1024.0
"""Values below this are not attenuation but scanner markers for "no data" (HU)."""
INT16_MIN, INT16_MAX = -32768, 32767


def hu_from_stored(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU float32 (same layout as `stored`) of stored pixel values: stored * slope + intercept,
    computed in float32."""
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def stored_from_hu(hu: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, np.ndarray]:
    """(int16 stored values, bool mask of clipped pixels) of HU: round((hu - intercept) / slope),
    clipped to the int16 range, i.e. to HU [-32768, 32767] * slope + intercept."""
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    clipped = (stored < INT16_MIN) | (stored > INT16_MAX)
    return np.clip(stored, INT16_MIN, INT16_MAX).astype(np.int16), clipped


def as_stored_value(value: int, signed: bool, bits_allocated: int) -> int:
    """A padding value as the pixels hold it: a value written unsigned (e.g. 63536 as US) for
    signed pixels is read as its two's-complement signed value (-2000)."""
    if signed and value >= 1 << (bits_allocated - 1):
        return value - (1 << bits_allocated)
    return value


def padding_mask(stored: np.ndarray, value: int | None, range_limit: int | None, signed: bool,
                 bits_allocated: int) -> np.ndarray | None:
    """Pixels equal to the padding `value` or between it and `range_limit` (stored values, either
    signedness), or None without padding."""
    if value is None:
        return None
    value = as_stored_value(value, signed, bits_allocated)
    if range_limit is None:
        return stored == value
    low, high = sorted((value, as_stored_value(range_limit, signed, bits_allocated)))
    return (stored >= low) & (stored <= high)


def with_air(hu: np.ndarray, padding: np.ndarray | None) -> np.ndarray:
    """The air rule: a copy of `hu` where padding pixels and values below `MIN_VALID_HU` are
    `AIR_HU`. This is the HU the pipeline trains on and `ctdeblur-deblur` feeds the network."""
    hu = np.array(hu, dtype=np.float32)
    if padding is not None:
        hu[padding] = AIR_HU
    hu[hu < MIN_VALID_HU] = AIR_HU
    return hu


def body_fraction(hu: np.ndarray, threshold_hu: float) -> float:
    """Fraction of pixels above `threshold_hu` (tissue, not air or lung)."""
    return float(np.count_nonzero(hu > threshold_hu)) / hu.size
