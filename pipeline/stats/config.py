"""`StatsConfig`: what the shard-statistics pass measures and how, with named presets."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import yaml


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Settings of `ctdeblur-shard-stats`; defaults follow the evaluation protocol in DESIGN.md.

    window_hu: (low, high) HU window, integers; sharp and blurry are clipped to it before PSNR and
        SSIM, and data_range = high - low (2000 HU by default).
    ssim_filter_size, ssim_sigma, ssim_k1, ssim_k2: SSIM of Wang et al. (Gaussian window of
        `ssim_filter_size` pixels, sigma in pixels), averaged over the valid region
        [H - size + 1, W - size + 1].
    hu_percentiles: percentiles (0..100) of all sharp and all blurry pixels reported per group.
    examples: example pairs shown in the HTML report.
    display_window_hu: (low, high) HU window of the example images in the HTML report.
    hu_histogram_range_hu, hu_histogram_bin_hu: range and bin width (HU) of the HTML HU histogram.
    parallel_calls: records decoded and measured at once per shard; -1 lets tf.data tune it.
    max_decode_errors_per_shard: undecodable records reported in one shard before the rest of
        that shard is skipped (a shard of a foreign format would otherwise be re-read per record).
    """

    window_hu: tuple[int, int] = (-1000, 1000)
    ssim_filter_size: int = 11
    ssim_sigma: float = 1.5
    ssim_k1: float = 0.01
    ssim_k2: float = 0.03
    hu_percentiles: tuple[float, ...] = (1.0, 5.0, 50.0, 95.0, 99.0)
    examples: int = 8
    display_window_hu: tuple[int, int] = (-1000, 1000)
    hu_histogram_range_hu: tuple[int, int] = (-1024, 3071)
    hu_histogram_bin_hu: int = 16
    parallel_calls: int = -1
    max_decode_errors_per_shard: int = 10

    def __post_init__(self) -> None:
        for name in ("window_hu", "display_window_hu", "hu_histogram_range_hu"):
            low, high = getattr(self, name)
            if int(low) != low or int(high) != high or not low < high:
                raise ValueError(f"{name} must be two integers low < high (HU), got {getattr(self, name)}")
            object.__setattr__(self, name, (int(low), int(high)))
        if self.ssim_filter_size < 1 or self.ssim_filter_size % 2 == 0:
            raise ValueError(f"ssim_filter_size must be a positive odd number of pixels, got {self.ssim_filter_size}")
        if not self.ssim_sigma > 0:
            raise ValueError(f"ssim_sigma must be > 0 pixels, got {self.ssim_sigma}")
        if not self.hu_percentiles or any(not 0 <= q <= 100 or math.isnan(q) for q in self.hu_percentiles):
            raise ValueError(f"hu_percentiles must be values in [0, 100], got {self.hu_percentiles}")
        object.__setattr__(self, "hu_percentiles", tuple(float(q) for q in self.hu_percentiles))
        if self.examples < 0:
            raise ValueError(f"examples must be >= 0, got {self.examples}")
        if self.hu_histogram_bin_hu < 1:
            raise ValueError(f"hu_histogram_bin_hu must be >= 1 HU, got {self.hu_histogram_bin_hu}")
        if self.parallel_calls == 0 or self.parallel_calls < -1:
            raise ValueError(f"parallel_calls must be -1 (autotune) or >= 1, got {self.parallel_calls}")
        if self.max_decode_errors_per_shard < 1:
            raise ValueError(f"max_decode_errors_per_shard must be >= 1, got {self.max_decode_errors_per_shard}")

    @property
    def data_range(self) -> int:
        """Width of `window_hu` in HU: the SSIM/PSNR data_range."""
        return self.window_hu[1] - self.window_hu[0]

    def replace(self, **changes: Any) -> "StatsConfig":
        """A copy with `changes` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)


PRESETS: Mapping[str, StatsConfig] = {
    "paper": StatsConfig(),
    "full-range": StatsConfig(window_hu=(-1024, 3071)),
}
"""`paper`: window [-1000, 1000] HU (protocol default); `full-range`: [-1024, 3071] HU."""

_TUPLE_FIELDS = {"window_hu", "display_window_hu", "hu_histogram_range_hu", "hu_percentiles"}


def config_from_mapping(values: Mapping[str, Any], base: StatsConfig, source: str) -> StatsConfig:
    """`base` with the fields in `values` replaced; `source` names the origin in error messages."""
    known = {field.name for field in dataclasses.fields(StatsConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown StatsConfig field(s) {unknown}; known fields: {sorted(known)}")
    changes = {name: tuple(value) if name in _TUPLE_FIELDS else value for name, value in values.items()}
    try:
        return base.replace(**changes)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from error


def load_config(preset: str = "paper", yaml_path: str | None = None, **overrides: Any) -> StatsConfig:
    """The preset `preset`, then fields from the YAML file `yaml_path`, then `overrides`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]
    if yaml_path is not None:
        with open(yaml_path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{yaml_path}: expected a mapping of StatsConfig fields, got {type(values).__name__}")
        config = config_from_mapping(values, config, yaml_path)
    return config_from_mapping(overrides, config, "command line") if overrides else config
