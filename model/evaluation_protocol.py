"""The evaluation protocol of `ctdeblur-evaluate`: the names of methods, scopes and columns, the
confidence-interval method, and `EvalConfig` (everything that decides an evaluation) with its
presets. The engine (`model.evaluation_engine`) and the report (`model.evaluation_report`) both
import this module; it imports neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cli_shell.settings import build_config, merge_settings, setting
from model import metrics
from model.config import PRECISIONS
from model.baselines import DEFAULT_RL_ITERATIONS_GRID, DEFAULT_WIENER_NSR_GRID

BLURRY = "blurry"
WIENER = "wiener_oracle"
RL = "rl_oracle"
BASELINES = (WIENER, RL)
CI_LEVEL = 0.95
CI_METHOD = "patient-clustered bootstrap"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
SCOPES = (("window", "full"), ("window", "body"), ("fullrange", "full"), ("fullrange", "body"))
"""(window, region) of every score: the main window or the full range; full field of view or body mask."""
GROUPINGS = ("collection", "source_kind", "blur_model")
PAIR_COLUMNS = ("record_key", "patient_key", "collection", "source_kind", "blur_model")
STATUS_OK = "ok"
STATUS_NO_PSF = "no_psf"
"""Per-pair row status: scored, or n/a because the pair has no image-space PSF (oracles only)."""


def score_columns(window_key: str, region: str) -> tuple[str, str]:
    """CSV columns (psnr, ssim) of a scope: psnr_db, ssim, psnr_db_body, ..., ssim_fullrange_body."""
    suffix = ("" if window_key == "window" else "_fullrange") + ("_body" if region == "body" else "")
    return f"psnr_db{suffix}", f"ssim{suffix}"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Everything that decides an evaluation (with the data and the models); protocol defaults."""

    window_hu: tuple[float, float] = setting(metrics.DEFAULT_WINDOW_HU, "main HU window: both images clipped to it, data range = its width")
    full_range_hu: tuple[float, float] = setting(metrics.FULL_RANGE_WINDOW_HU, "second HU window, the full CT range")
    body_threshold_hu: float = setting(metrics.BODY_THRESHOLD_HU, "body mask: HU above this (before hole filling)")
    body_component_fraction: float = setting(
        metrics.BODY_COMPONENT_FRACTION, "body mask: keep components of at least this fraction of the largest one's area")
    baselines: bool = setting(True, "the Wiener and Richardson-Lucy oracles (true PSF)")
    wiener_nsr: tuple[float, ...] = setting(
        DEFAULT_WIENER_NSR_GRID, "Wiener noise-to-signal ratios to choose from by mean PSNR on the validation pairs (one value: used as given)")
    rl_iterations: tuple[int, ...] = setting(
        DEFAULT_RL_ITERATIONS_GRID, "Richardson-Lucy iteration counts to choose from likewise (one value: used as given)")
    tune_pairs: int = setting(16, "validation pairs with an image-space PSF used to choose the Wiener NSR and RL iterations")
    batch_size: int = setting(4, "pairs per model call")
    precision: str = setting("float32", "the models' arithmetic: float32, or bf16 (bfloat16 convolutions; skip, "
                                        "normalisation and HU mapping in float32; BENCHMARKS.md)", choices=PRECISIONS)
    max_pairs: int = setting(0, "evaluate only the first N pairs of the split (0 = all)")
    figure_pairs: int = setting(3, "pairs (rows) in figure.png, those with the smallest SHA-256 of their record_key")
    figure_difference_hu: float = setting(200.0, "difference maps (method - sharp) are shown from -D to +D HU")
    bootstrap_resamples: int = setting(
        BOOTSTRAP_RESAMPLES, "resamples of the test patients for the CIs (patient-clustered percentile bootstrap)")
    bootstrap_seed: int = setting(BOOTSTRAP_SEED, "seed of the bootstrap's draws (fixed, so a report is reproducible)")

    @property
    def tunes_baselines(self) -> bool:
        """Whether the Wiener NSR and RL iterations are chosen on validation pairs (baselines on and
        more than one value of either), rather than used as given."""
        return self.baselines and (len(set(self.wiener_nsr)) > 1 or len(set(self.rl_iterations)) > 1)

    def validate(self) -> EvalConfig:
        """Returns self, or raises ValueError naming the bad setting."""
        for name in ("window_hu", "full_range_hu"):
            metrics.window_bounds(getattr(self, name))
        if not 0 < self.body_component_fraction <= 1:
            raise ValueError(f"body_component_fraction must be in (0, 1], got {self.body_component_fraction}")
        if not self.wiener_nsr or any(not v > 0 for v in self.wiener_nsr):
            raise ValueError(f"wiener_nsr must be one or more values > 0, got {self.wiener_nsr}")
        if not self.rl_iterations or any(v < 1 for v in self.rl_iterations):
            raise ValueError(f"rl_iterations must be one or more counts >= 1, got {self.rl_iterations}")
        for name in ("tune_pairs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_pairs", "figure_pairs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.figure_difference_hu > 0:
            raise ValueError(f"figure_difference_hu must be > 0, got {self.figure_difference_hu}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples must be >= 100 for a 95% percentile interval, "
                             f"got {self.bootstrap_resamples}")
        if self.bootstrap_seed < 0:
            raise ValueError(f"bootstrap_seed must be >= 0, got {self.bootstrap_seed}")
        return self

    @property
    def windows(self) -> dict[str, tuple[float, float]]:
        """{"window": main window, "fullrange": full-range window}, the keys of the score columns."""
        return {"window": tuple(self.window_hu), "fullrange": tuple(self.full_range_hu)}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists) for YAML and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PRESETS: Mapping[str, Mapping[str, Any]] = {
    "paper": {},
    "quick": {"wiener_nsr": (1e-4, 1e-3, 1e-2), "rl_iterations": (10, 30), "tune_pairs": 4, "figure_pairs": 2},
}
"""`paper`: the protocol's full grids; `quick`: small grids and few tuning pairs (demos, smoke runs)."""


def config_from_dict(values: Mapping[str, Any], base: EvalConfig | None = None, where: str = "config") -> EvalConfig:
    """`base` (default: protocol values) updated by `values`, validated; unknown names are an error."""
    return build_config(EvalConfig, merge_settings(EvalConfig, dataclasses.asdict(base or EvalConfig()), values, where))
