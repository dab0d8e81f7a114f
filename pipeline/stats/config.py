"""`StatsConfig`: what the shard-statistics pass measures and how, from presets, YAML and flags.

Precedence: named preset (default `paper`) < YAML file (`--config`) < flags. Every field carries
its help text (with units) in its metadata and has a flag of the same name, so `--help`
documents each of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Mapping

from cli_shell.settings import add_config_flags as add_settings_flags
from cli_shell.settings import config_from_layers, flag_settings, read_yaml_settings, setting


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Settings of `ctdeblur-shard-stats`; the defaults follow the evaluation protocol of DESIGN.md
    (PSNR/SSIM on HU clipped to [-1000, 1000], data_range = window width = 2000 HU; SSIM of Wang
    et al. with an 11-tap Gaussian window, sigma 1.5 px, K1 0.01, K2 0.03)."""

    window_hu: tuple[int, int] = setting((-1000, 1000), "HU window for PSNR and SSIM; data_range = HIGH - LOW")
    ssim_filter_size: int = setting(11, "SSIM Gaussian window size (pixels, odd)")
    ssim_sigma: float = setting(1.5, "SSIM Gaussian window standard deviation (pixels)")
    ssim_k1: float = setting(0.01, "SSIM K1 (luminance constant, fraction of data_range)")
    ssim_k2: float = setting(0.03, "SSIM K2 (contrast constant, fraction of data_range)")
    hu_percentiles: tuple[float, ...] = setting((1.0, 5.0, 50.0, 95.0, 99.0), "percentiles (0..100) of all sharp and all blurry pixels")
    image_stride: int = setting(1, "measure HU percentiles, PSNR and SSIM on records 0, n, 2n, ... of each shard (1 = every record); counts always cover every record")
    examples: int = setting(8, "example pairs (sharp | blurry | PSF) in the --html report")
    display_window_hu: tuple[int, int] = setting((-1000, 1000), "HU window of the example images in the --html report")
    hu_histogram_range_hu: tuple[int, int] = setting((-1024, 3071), "range of the HU histogram in the --html report (outside values go to the edge bins)")
    hu_histogram_bin_hu: int = setting(16, "bin width of the HU histogram in the --html report (HU)")
    parallel_calls: int = setting(-1, "records decoded and measured at once; -1 lets tf.data tune it")
    max_decode_errors_per_shard: int = setting(10, "undecodable records reported per shard before the rest of that shard is skipped")

    def validate(self) -> StatsConfig:
        """Checks every setting (ValueError naming it) and normalises the HU pairs to int tuples."""
        for name in ("window_hu", "display_window_hu", "hu_histogram_range_hu"):
            value = tuple(getattr(self, name))
            if len(value) != 2 or any(int(v) != v for v in value) or not value[0] < value[1]:
                raise ValueError(f"{name} must be two integers LOW < HIGH (HU), got {getattr(self, name)}")
            object.__setattr__(self, name, (int(value[0]), int(value[1])))
        if self.ssim_filter_size < 1 or self.ssim_filter_size % 2 == 0:
            raise ValueError(f"ssim_filter_size must be a positive odd number of pixels, got {self.ssim_filter_size}")
        if not self.ssim_sigma > 0:
            raise ValueError(f"ssim_sigma must be > 0 pixels, got {self.ssim_sigma}")
        percentiles = tuple(float(q) for q in self.hu_percentiles)
        if not percentiles or any(math.isnan(q) or not 0 <= q <= 100 for q in percentiles):
            raise ValueError(f"hu_percentiles must be values in [0, 100], got {self.hu_percentiles}")
        object.__setattr__(self, "hu_percentiles", percentiles)
        checks = {
            "image_stride": self.image_stride >= 1,
            "examples": self.examples >= 0,
            "hu_histogram_bin_hu": self.hu_histogram_bin_hu >= 1,
            "parallel_calls": self.parallel_calls == -1 or self.parallel_calls >= 1,
            "max_decode_errors_per_shard": self.max_decode_errors_per_shard >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)} is out of range: {_help(name)}")
        return self

    @property
    def data_range(self) -> int:
        """Width of `window_hu` in HU: the PSNR/SSIM data_range."""
        return self.window_hu[1] - self.window_hu[0]


def _help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(StatsConfig) if f.name == name)


PRESETS: Mapping[str, Mapping[str, Any]] = {
    "paper": {},
    "full-range": {"window_hu": (-1024, 3071)},
}
"""`paper`: the evaluation protocol's default window [-1000, 1000] HU; `full-range`: PSNR and SSIM
over [-1024, 3071] HU (data_range 4095), the protocol's second window."""


def config_from_dict(values: Mapping[str, Any], where: str = "config") -> StatsConfig:
    """A validated config from a (possibly partial) mapping over the paper defaults; `where`
    names the origin of `values` in error messages."""
    try:
        return config_from_layers(StatsConfig, [(where, values)])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --preset, --config and one flag per setting (default: unset, i.e. preset/YAML value)."""
    add_settings_flags(parser, StatsConfig, "statistics settings (preset < --config YAML < these flags)", PRESETS,
                       "named settings: paper (window [-1000, 1000] HU), full-range (window [-1024, 3071] HU)",
                       "YAML file with settings by name")


def config_from_args(args: argparse.Namespace) -> StatsConfig:
    """The config named by --preset, updated by the --config YAML, then by explicit flags."""
    layers = [(f"preset {args.preset}", PRESETS[args.preset])]
    if args.config:
        layers.append((args.config, read_yaml_settings(args.config)))
    layers.append(("flags", flag_settings(args, StatsConfig)))
    try:
        return config_from_layers(StatsConfig, layers)
    except (TypeError, ValueError) as error:
        raise ValueError(f"settings: {error}") from error
