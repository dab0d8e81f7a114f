"""What `ctdeblur-evaluate` shows and writes: summaries with 95% CIs (patient-clustered bootstrap),
Markdown tables, the JSON document, per_image.csv, evaluation.md and figure.png (matplotlib's
object API: no global backend is set).

Works on the per-pair rows of an evaluation: one dict per (pair, method) with the pair's position
in the split (`pair_index`), its provenance (`PAIR_COLUMNS`), `method`, `status` and a PSNR and an
SSIM column per scope
(`score_columns`). NaN = n/a (no score), +inf PSNR = restoration identical to sharp in the window.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy import ndimage

from model import metrics
from model.evaluation_engine import Evaluation
from model.evaluation_protocol import (
    BLURRY,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CI_LEVEL,
    CI_METHOD,
    GROUPINGS,
    PAIR_COLUMNS,
    SCOPES,
    EvalConfig,
    score_columns,
)
from tfrecords_schema import join_path

REPORT_NAME = "evaluation.md"
CSV_NAME = "per_image.csv"
FIGURE_NAME = "figure.png"
ZOOM_FRACTION = 0.25
"""Side of the figure's zoomed region, as a fraction of the image's shorter side."""


@dataclasses.dataclass(frozen=True)
class ClusteredBootstrap:
    """Patient-clustered percentile bootstrap of a mean over pairs.

    Pairs of one patient are correlated, so the resampling unit is the patient: each of
    `resamples` resamples draws as many patients as there are, with replacement, and takes the
    mean over all pairs of the drawn patients (a patient drawn twice counts twice); the interval is
    the resample means' (1 - level) / 2 and (1 + level) / 2 quantiles. The draws come from
    `np.random.default_rng(seed)` over the patients in sorted order, so the same values give the
    same interval, whatever the rows' order. Below 2 patients there is no interval.
    """

    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = BOOTSTRAP_SEED
    level: float = CI_LEVEL

    def resample_means(self, values: Sequence[float], patients: Sequence[str]) -> np.ndarray:
        """[resamples] means of the resamples; values (finite) and their pairs' patient keys align."""
        data = np.asarray(values, np.float64)
        if data.shape != (len(patients),):
            raise ValueError(f"{data.size} values but {len(patients)} patient keys")
        names, cluster = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
        sums = np.bincount(cluster, weights=data, minlength=names.size)
        sizes = np.bincount(cluster, minlength=names.size).astype(np.float64)
        draws = np.random.default_rng(self.seed).integers(0, names.size, size=(self.resamples, names.size))
        return sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)

    def interval(self, values: Sequence[float], patients: Sequence[str]) -> tuple[float, float] | None:
        """The percentile interval of the mean of `values`, None below 2 distinct patients."""
        if len(set(patients)) < 2:
            return None
        tail = (1 - self.level) / 2
        low, high = np.quantile(self.resample_means(values, patients), [tail, 1 - tail])
        return float(low), float(high)

    @classmethod
    def of(cls, config: EvalConfig) -> ClusteredBootstrap:
        """The bootstrap of an evaluation's settings (`bootstrap_resamples`, `bootstrap_seed`)."""
        return cls(config.bootstrap_resamples, config.bootstrap_seed)


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean and 95% CI of one metric (or per-pair difference) of one method over a group of pairs.

    n: pairs scored (n/a excluded); n_infinite: of those, pairs with PSNR +inf, left out of the
    mean and CI; n_na: pairs without a score; patients: distinct patients of the pairs in the mean,
    the units the CI resamples (`ClusteredBootstrap`). mean is None without finite values, ci None
    below 2 patients.
    """

    mean: float | None
    ci: tuple[float, float] | None
    n: int
    n_infinite: int
    n_na: int
    patients: int

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci95": list(self.ci) if self.ci else None, "ci_method": CI_METHOD,
                "patients": self.patients, "n": self.n, "n_infinite": self.n_infinite, "n_na": self.n_na}


def summarise(values: Sequence[float], patients: Sequence[str],
              bootstrap: ClusteredBootstrap = ClusteredBootstrap()) -> Summary:
    """`Summary` of per-pair values (NaN = n/a, +inf = identical images) and their pairs' patient keys."""
    data = np.asarray(values, np.float64)
    if data.shape != (len(patients),):
        raise ValueError(f"{data.size} values but {len(patients)} patient keys")
    scored = ~np.isnan(data)
    finite = np.isfinite(data)
    kept = [patient for patient, keep in zip(patients, finite) if keep]
    mean = float(data[finite].mean()) if kept else None
    ci = bootstrap.interval(data[finite], kept)
    return Summary(mean, ci, int(scored.sum()), int(scored.sum() - finite.sum()), int(data.size - scored.sum()),
                   len(set(kept)))


def paired_gain(rows: Sequence[dict], method: str, column: str,
                bootstrap: ClusteredBootstrap = ClusteredBootstrap()) -> Summary:
    """`method`'s `column` minus blurry's, per pair, over the pairs where both are finite; the CI
    resamples patients (a pair's difference stays with its patient)."""
    blurry = {row["pair_index"]: row[column] for row in rows if row["method"] == BLURRY}
    differences, patients, skipped = [], [], 0
    for row in rows:
        if row["method"] != method:
            continue
        value, base = row[column], blurry[row["pair_index"]]
        if math.isfinite(value) and math.isfinite(base):
            differences.append(value - base)
            patients.append(row["patient_key"])
        else:
            skipped += 1
    summary = summarise(differences, patients, bootstrap)
    return dataclasses.replace(summary, n_na=skipped)


def aggregate(rows: Sequence[dict], methods: Sequence[str], window_key: str, region: str,
              bootstrap: ClusteredBootstrap = ClusteredBootstrap()) -> dict[str, dict[str, Summary]]:
    """{method: {"psnr", "ssim", and (not for blurry) "psnr_gain", "ssim_gain": Summary}} of one scope
    over `rows`; the CIs resample the patients of `rows` (of a group, when `rows` are one group's)."""
    psnr_column, ssim_column = score_columns(window_key, region)
    by_method: dict[str, list[dict]] = {method: [] for method in methods}
    for row in rows:
        by_method[row["method"]].append(row)
    result = {}
    for method in methods:
        mine = by_method[method]
        patients = [row["patient_key"] for row in mine]
        result[method] = {"psnr": summarise([row[psnr_column] for row in mine], patients, bootstrap),
                          "ssim": summarise([row[ssim_column] for row in mine], patients, bootstrap)}
        if method != BLURRY:
            result[method]["psnr_gain"] = paired_gain(rows, method, psnr_column, bootstrap)
            result[method]["ssim_gain"] = paired_gain(rows, method, ssim_column, bootstrap)
    return result


def groups(rows: Sequence[dict], grouping: str) -> dict[str, list[dict]]:
    """Rows split by the value of `grouping` (collection, source_kind, blur_model), sorted by value."""
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(str(row[grouping]), []).append(row)
    return dict(sorted(found.items()))


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" + "s" * (count != 1)


def _format(summary: Summary, digits: int, signed: bool = False) -> str:
    """`mean [low, high]` (the interval is a percentile interval, not symmetric), `mean (CI n/a: 1
    patient)` without an interval, `n/a` without a mean."""
    if summary.mean is None:
        return "n/a"
    style = f"+.{digits}f" if signed else f".{digits}f"
    number = format(summary.mean, style)
    if summary.ci is None:
        return f"{number} (CI n/a: {_count(summary.patients, 'patient')})"
    return f"{number} [{format(summary.ci[0], style)}, {format(summary.ci[1], style)}]"


def _pairs_cell(summary: Summary) -> str:
    notes = [f"{summary.n_na} n/a"] * bool(summary.n_na) + [f"{summary.n_infinite} ∞"] * bool(summary.n_infinite)
    return f"{summary.n}" + (f" ({', '.join(notes)})" if notes else "")


def markdown_table(result: dict[str, dict[str, Summary]], methods: Sequence[str]) -> str:
    """Table-1-style Markdown: rows PSNR, SSIM, their gains over blurry, pairs and patients (of the
    scored pairs: the CIs' resampling units); a column per method."""

    def gains(name: str, digits: int) -> str:
        return " | ".join("—" if m == BLURRY else _format(result[m][name], digits, signed=True) for m in methods)

    lines = ["| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods),
             "| PSNR (dB) | " + " | ".join(_format(result[m]["psnr"], 2) for m in methods) + " |",
             "| SSIM | " + " | ".join(_format(result[m]["ssim"], 4) for m in methods) + " |",
             f"| ΔPSNR vs blurry (dB) | {gains('psnr_gain', 2)} |",
             f"| ΔSSIM vs blurry | {gains('ssim_gain', 4)} |",
             "| pairs | " + " | ".join(_pairs_cell(result[m]["psnr"]) for m in methods) + " |",
             "| patients | " + " | ".join(str(result[m]["ssim"].patients) for m in methods) + " |"]
    return "\n".join(lines)


def table_notes(result: dict[str, dict[str, Summary]]) -> list[str]:
    """Footnotes for the n/a, ∞ and CI n/a marks that a table uses."""
    notes = []
    if any(parts["psnr"].n_na for parts in result.values()):
        notes.append("n/a: pairs without a score (no image-space PSF for the oracles, or an empty body mask); "
                     "that method's means are over its scored pairs only.")
    if any(parts["psnr"].n_infinite for parts in result.values()):
        notes.append("∞: pairs identical to sharp in the window (PSNR +inf): counted in pairs and in SSIM, left "
                     "out of the PSNR mean, CI and ΔPSNR.")
    if any(s.mean is not None and s.ci is None for parts in result.values() for s in parts.values()):
        notes.append("CI n/a: the pairs come from a single patient; the interval resamples patients, so it needs "
                     "at least 2.")
    return notes


def ci_title(bootstrap: ClusteredBootstrap) -> str:
    """What the tables' intervals are, in a few words."""
    return f"{bootstrap.level:.0%} CI: {CI_METHOD}, {bootstrap.resamples} resamples"


def scope_title(config: EvalConfig, window_key: str, region: str) -> str:
    low, high = config.windows[window_key]
    where = "full field of view" if region == "full" else "inside the body mask"
    return f"window [{low:g}, {high:g}] HU (data range {high - low:g}), {where}"


def scope_section(rows: Sequence[dict], methods: Sequence[str], config: EvalConfig, window_key: str, region: str,
                  pairs: int, heading: str) -> str:
    """A heading line, the table of one scope over all pairs, and its notes."""
    bootstrap = ClusteredBootstrap.of(config)
    result = aggregate(rows, methods, window_key, region, bootstrap)
    notes = "".join(f"\n\n{note}" for note in table_notes(result))
    patients = len({row["patient_key"] for row in rows})
    return (f"{heading}: mean [{ci_title(bootstrap)}] over {pairs} test pairs from {_count(patients, 'patient')}, "
            f"{scope_title(config, window_key, region)}\n\n" + markdown_table(result, methods) + notes)


def grouped_table(rows: Sequence[dict], methods: Sequence[str], grouping: str, window_key: str, region: str,
                  config: EvalConfig) -> str:
    """PSNR and SSIM rows (mean [95% CI]) for each value of `grouping`, one column per method; each
    group's CIs resample that group's patients."""
    bootstrap = ClusteredBootstrap.of(config)
    lines = [f"Per {grouping.replace('_', ' ')}: mean [{ci_title(bootstrap)} of the group's patients], "
             f"{scope_title(config, window_key, region)}", "",
             f"| {grouping} | | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for value, members in groups(rows, grouping).items():
        result = aggregate(members, methods, window_key, region, bootstrap)
        patients = len({row["patient_key"] for row in members})
        label = f"{value} ({_count(len(members) // len(methods), 'pair')}, {_count(patients, 'patient')})"
        lines.append(f"| {label} | PSNR (dB) | " + " | ".join(_format(result[m]["psnr"], 2) for m in methods) + " |")
        lines.append("| | SSIM | " + " | ".join(_format(result[m]["ssim"], 4) for m in methods) + " |")
    return "\n".join(lines)


def screen_tables(evaluation: Evaluation) -> str:
    """stdout: Table 1 (main window, full field), body mask, full range, per collection, per source kind."""
    config, rows, methods, pairs = evaluation.config, evaluation.rows, evaluation.methods, evaluation.pairs
    parts = [scope_section(rows, methods, config, "window", "full", pairs, "Table 1"),
             scope_section(rows, methods, config, "window", "body", pairs, "Body mask"),
             scope_section(rows, methods, config, "fullrange", "full", pairs, "Full range")]
    parts += [grouped_table(rows, methods, grouping, "window", "full", config) for grouping in ("collection", "source_kind")]
    return "\n\n".join(parts)


def protocol_json(config: EvalConfig) -> dict[str, Any]:
    """The protocol's settings, as stated in the JSON and the report."""
    return {
        "windows_hu": [list(config.window_hu), list(config.full_range_hu)],
        "data_range": "window width",
        "intensities": "HU clipped to the window, minus the window's low end (0..width)",
        "ssim": {"weights": "gaussian", "size": metrics.SSIM_FILTER_SIZE, "sigma": metrics.SSIM_SIGMA,
                 "k1": metrics.SSIM_K1, "k2": metrics.SSIM_K2, "covariance": "population",
                 "mean_over": f"pixels at least {metrics.SSIM_MARGIN} from the border"},
        "body_mask": {"on": "sharp image", "threshold_hu": config.body_threshold_hu, "holes": "filled",
                      "components": f"4-connected, area >= {config.body_component_fraction:g} x the largest's"},
        "masked": "PSNR from the MSE over mask pixels; SSIM = mean of the SSIM map over mask pixels",
        "ci_method": CI_METHOD,
        "ci": (f"{CI_LEVEL:.0%} percentile interval of the mean: {config.bootstrap_resamples} resamples (seed "
               f"{config.bootstrap_seed}) of the test patients with replacement, all pairs of each drawn patient; "
               "within a group, of the group's patients; none (null) below 2 patients. Gains: the same over the "
               "per-pair differences method - blurry"),
        "psnr_infinite": "pairs identical to sharp: counted, left out of PSNR means",
    }


def results_json(evaluation: Evaluation, data_dir: str) -> dict[str, Any]:
    """The JSON document: `window` and `methods` (main window, full field, all pairs), then the rest."""
    config, rows, methods = evaluation.config, evaluation.rows, evaluation.methods
    bootstrap = ClusteredBootstrap.of(config)
    main = aggregate(rows, methods, "window", "full", bootstrap)
    document: dict[str, Any] = {
        "window": list(config.window_hu),
        "methods": {m: {"psnr": main[m]["psnr"].mean, "ssim": main[m]["ssim"].mean, "n": main[m]["psnr"].n,
                        "psnr_ci95": main[m]["psnr"].to_json()["ci95"], "ssim_ci95": main[m]["ssim"].to_json()["ci95"],
                        "ci_method": CI_METHOD, "patients": main[m]["ssim"].patients,
                        "psnr_gain": main[m]["psnr_gain"].to_json() if m != BLURRY else None,
                        "ssim_gain": main[m]["ssim_gain"].to_json() if m != BLURRY else None,
                        "n_na": main[m]["psnr"].n_na, "psnr_infinite": main[m]["psnr"].n_infinite}
                    for m in methods},
        "data": data_dir,
        "pairs": evaluation.pairs,
        "models": {m.name: m.model.path for m in evaluation.models},
        "baselines": baselines_json(evaluation),
        "protocol": protocol_json(config),
        "config": config.to_dict(),
        "scopes": {},
    }
    for window_key, region in SCOPES:
        scope: dict[str, Any] = {"all": _scope_json(aggregate(rows, methods, window_key, region, bootstrap))}
        for grouping in GROUPINGS:
            scope[grouping] = {value: _scope_json(aggregate(members, methods, window_key, region, bootstrap))
                               for value, members in groups(rows, grouping).items()}
        low, high = config.windows[window_key]
        document["scopes"][f"[{low:g}, {high:g}] {region}"] = scope
    return document


def baselines_json(evaluation: Evaluation) -> dict[str, Any] | None:
    """The Wiener/RL settings and how they were chosen (None when no pair needed them)."""
    settings = evaluation.settings
    if settings is None:
        return None
    return {"wiener_nsr": settings.wiener_nsr, "rl_iterations": settings.rl_iterations,
            "chosen_on": evaluation.validation_dir if settings.tuning_pairs else "given",
            "tuning_pairs": settings.tuning_pairs,
            "wiener_psnr": {f"{k:g}": _finite_or_none(v) for k, v in settings.wiener_psnr.items()},
            "rl_psnr": {str(k): _finite_or_none(v) for k, v in settings.rl_psnr.items()}}


def _finite_or_none(value: float) -> float | None:
    """A tuning score for JSON: null when a setting gave no finite mean PSNR."""
    return value if math.isfinite(value) else None


def _scope_json(result: dict[str, dict[str, Summary]]) -> dict[str, Any]:
    return {method: {name: summary.to_json() for name, summary in parts.items()} for method, parts in result.items()}


def csv_text(rows: Sequence[dict]) -> str:
    """per_image.csv: one row per pair x method; empty cells = n/a, inf = identical images."""
    columns = ["pair_index", *PAIR_COLUMNS, "method", "status", "body_fraction"]
    for scope in SCOPES:
        columns.extend(score_columns(*scope))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def baselines_text(evaluation: Evaluation) -> str:
    """How the Wiener NSR and RL iterations were set, with the tuning grid's mean PSNRs."""
    settings, config = evaluation.settings, evaluation.config
    if not config.baselines:
        return "Wiener and Richardson-Lucy were not run (`--no_baselines`)."
    if settings is None:
        return "Wiener and Richardson-Lucy: n/a for every pair (no record has an image-space PSF)."
    if not settings.tuning_pairs:
        return (f"Wiener NSR {settings.wiener_nsr:g} and Richardson-Lucy {settings.rl_iterations} iterations, as given "
                "(one value each of `--wiener_nsr` and `--rl_iterations`).")
    low, high = settings.window
    lines = [(f"Wiener NSR {settings.wiener_nsr:g} and Richardson-Lucy {settings.rl_iterations} iterations, chosen by "
              f"the highest mean PSNR (window [{low:g}, {high:g}] HU, full field of view) on the first "
              f"{settings.tuning_pairs} pairs with an image-space PSF of `{evaluation.validation_dir}` (not the test "
              "split).")]
    for name, scores, unit in (("Wiener NSR", settings.wiener_psnr, "{:g}"), ("RL iterations", settings.rl_psnr, "{}")):
        if scores:
            lines.append(f"\n| {name} | " + " | ".join(unit.format(k) for k in scores) + " |\n|---|"
                         + "---|" * len(scores) + "\n| mean PSNR (dB) | " + " | ".join(f"{v:.2f}" for v in scores.values()) + " |")
    if settings.rl_psnr and settings.rl_iterations == max(settings.rl_psnr):
        lines.append(f"\nRichardson-Lucy was still improving at the grid's largest count ({settings.rl_iterations}): "
                     "it is limited by the iteration budget here, not by noise amplification.")
    return "\n".join(lines)


def protocol_text(config: EvalConfig) -> str:
    (low, high), (full_low, full_high) = config.window_hu, config.full_range_hu
    bullets = [
        (f"**Windows.** Both images are clipped to [{low:g}, {high:g}] HU (the main window) or "
         f"[{full_low:g}, {full_high:g}] HU (full range) and shifted so the window starts at 0; data range = "
         "window width."),
        ("**PSNR** = 10 log10(width² / MSE) in dB. A restoration identical to sharp in the window has PSNR +inf: "
         "it is counted (pairs, SSIM) but left out of PSNR means and CIs, and marked ∞."),
        (f"**SSIM** (Wang et al. 2004): Gaussian window {metrics.SSIM_FILTER_SIZE} taps, σ {metrics.SSIM_SIGMA}, "
         f"K1 {metrics.SSIM_K1}, K2 {metrics.SSIM_K2}, population covariances, statistics without padding; the mean "
         f"is over the pixels at least {metrics.SSIM_MARGIN} from the border (as scikit-image "
         "`structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`)."),
        (f"**Body mask** (of the sharp image): HU > {config.body_threshold_hu:g}, holes filled, 4-connected "
         f"components of at least {config.body_component_fraction:g} × the largest's area. Masked PSNR uses the MSE "
         "over the mask's pixels; masked SSIM is the mean of the SSIM map over the mask's pixels (within the "
         "border margin above)."),
        (f"**Mean [95% CI]**: the mean over the test pairs and a {CI_METHOD} interval. Pairs of one patient "
         "are correlated, so the bootstrap resamples patients, not pairs: each of "
         f"{config.bootstrap_resamples} resamples (seed {config.bootstrap_seed}) draws as many patients as the "
         "pairs come from, with replacement, and takes the mean over all pairs of the drawn patients; the "
         "interval is the 2.5th to 97.5th percentile of those means, so it need not be symmetric. A group's "
         "interval (per collection, source kind, blur model) resamples the group's patients. With a single "
         "patient there is no interval (CI n/a); with few patients it is coarse (with 2, it runs from one patient's "
         "mean to the other's). ΔPSNR and ΔSSIM vs blurry are the means of the per-pair differences method − blurry, "
         "with the same interval over those differences: a much tighter test of \"better than the input\" than "
         "comparing two means."),
        ("**Oracles** use the true PSF stored in each record: upper bounds for classical deconvolution. Pairs "
         "without an image-space PSF (blur_model projection or none) have no oracle and are counted as n/a."),
        ("**Wiener**: filter conj(K)/(|K|² + NSR) on the blurry image extended by reflection by the PSF's size "
         "(the pipeline blurs with reflect padding), mean removed first. **Richardson-Lucy**: multiplicative "
         "updates with the pipeline's exact blur operator (reflect padding, valid convolution) and its adjoint, on "
         "HU + 1024, started from the blurry image."),
    ]
    return "\n".join(f"- {bullet}" for bullet in bullets)


def report_text(evaluation: Evaluation, data_dir: str) -> str:
    """evaluation.md: run, protocol, baseline settings, every table, the figure and the CSV's columns."""
    config, rows, methods, pairs = evaluation.config, evaluation.rows, evaluation.methods, evaluation.pairs
    patients = len({row["patient_key"] for row in rows})
    models = "\n".join(f"- `{m.name}`: `{m.model.path}`" for m in evaluation.models) or "- (none: baselines only)"
    parts = [
        "# Evaluation", "",
        f"Test split `{data_dir}`: {pairs} pairs from {patients} patients. Models:", "", models, "",
        "## Protocol", "", protocol_text(config), "",
        "## Baseline settings", "", baselines_text(evaluation), "",
    ]
    for window_key, region in SCOPES:
        heading = "Table 1" if (window_key, region) == ("window", "full") else "Results"
        title = scope_title(config, window_key, region)
        parts += [f"## {title[0].upper()}{title[1:]}", "",
                  scope_section(rows, methods, config, window_key, region, pairs, heading), ""]
        for grouping in GROUPINGS:
            parts += [grouped_table(rows, methods, grouping, window_key, region, config), ""]
    low, high = config.window_hu
    if evaluation.figure:
        parts += ["## Figure", "", f"![blurry, each method and sharp]({FIGURE_NAME})", "",
                  figure_caption(config, len(evaluation.figure)), ""]
    columns = ", ".join(f"`{c}`" for c in PAIR_COLUMNS)
    parts += [
        "## Files", "",
        (f"`{CSV_NAME}`: one row per test pair × method. Columns: `pair_index` (order in the split), {columns}, "
         "`method`, `status` (`ok`, or "
         "`no_psf` for an oracle without a PSF: its scores are empty), `body_fraction` (of the image inside the "
         f"body mask), then `psnr_db`/`ssim` in [{low:g}, {high:g}] HU, the same with `_body` (inside the body "
         "mask), `_fullrange` (full-range window) and `_fullrange_body`. Empty = n/a, `inf` = identical to sharp."),
        "",
    ]
    return "\n".join(parts)


def figure_caption(config: EvalConfig, rows: int) -> str:
    low, high = config.window_hu
    return (f"{rows} test pairs (those with the smallest SHA-256 of their record_key), three rows each: the images at "
            f"[{low:g}, {high:g}] HU; the boxed region enlarged (the square, a quarter of the image's side, where "
            "blurry and sharp differ most inside the body); the difference method − sharp (both clipped to the "
            f"window) from −{config.figure_difference_hu:g} (blue) to +{config.figure_difference_hu:g} HU (red), with "
            "the body mask (green outline) under sharp. Panel titles: PSNR (dB) / SSIM of that pair in the main window, "
            "full field of view.")


def zoom_box(blurry_hu: np.ndarray, sharp_hu: np.ndarray, mask: np.ndarray,
             window: tuple[float, float]) -> tuple[int, int, int]:
    """(top, left, side) of the square (side: a quarter of the shorter image side, at least 8 pixels)
    with the largest mean absolute difference of windowed blurry and sharp inside `mask`."""
    side = min(max(8, round(ZOOM_FRACTION * min(sharp_hu.shape))), *sharp_hu.shape)
    difference = np.abs(metrics.windowed_hu(blurry_hu, window) - metrics.windowed_hu(sharp_hu, window)) * mask
    local = ndimage.uniform_filter(difference, side, mode="constant")
    half = side // 2
    valid = local[half:sharp_hu.shape[0] - side + half + 1, half:sharp_hu.shape[1] - side + half + 1]
    top, left = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(top), int(left), side


def _blank(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def write_figure(evaluation: Evaluation, path: str) -> None:
    """figure.png: for each figure pair, rows of images, zoomed regions and differences (`figure_caption`)."""
    config, panels, methods = evaluation.config, evaluation.figure, evaluation.methods
    columns = len(methods) + 1
    low, high = config.window_hu
    limit = config.figure_difference_hu
    figure = Figure(figsize=(2.3 * columns + 1.0, 2.3 * 3 * len(panels) + 0.4))
    axes = figure.subplots(3 * len(panels), columns, squeeze=False)
    difference_image = None
    for row, panel in enumerate(panels):
        image_axes, zoom_axes, difference_axes = axes[3 * row], axes[3 * row + 1], axes[3 * row + 2]
        top, left, side = zoom_box(panel.restored[BLURRY], panel.sharp_hu, panel.mask, config.window_hu)
        sharp = metrics.windowed_hu(panel.sharp_hu, config.window_hu)
        for column, name in enumerate([*methods, "sharp"]):
            image_axis, zoom_axis, difference_axis = image_axes[column], zoom_axes[column], difference_axes[column]
            for axis in (image_axis, zoom_axis, difference_axis):
                _blank(axis)
            hu = panel.sharp_hu if name == "sharp" else panel.restored[name]
            if hu is None:
                for axis in (image_axis, zoom_axis, difference_axis):
                    axis.text(0.5, 0.5, "n/a\n(no image-space PSF)", ha="center", va="center", fontsize=8,
                              transform=axis.transAxes)
                image_axis.set_title(name, fontsize=8)
                continue
            shown = np.clip(hu, low, high)
            image_axis.imshow(shown, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            image_axis.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="yellow", linewidth=0.8))
            zoom_axis.imshow(shown[top:top + side, left:left + side], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            for spine in zoom_axis.spines.values():
                spine.set_edgecolor("yellow")
            if name == "sharp":
                image_axis.set_title("sharp (reference)", fontsize=8)
                difference_axis.imshow(sharp, cmap="gray", vmin=0, vmax=high - low, interpolation="nearest")
                if panel.mask.any():
                    difference_axis.contour(panel.mask, levels=[0.5], colors="lime", linewidths=0.6)
                difference_axis.set_title("body mask", fontsize=8)
                continue
            psnr_db, ssim = panel.scores[name]
            image_axis.set_title(f"{name}\n{psnr_db:.2f} dB / {ssim:.4f}", fontsize=8)
            difference_image = difference_axis.imshow(metrics.windowed_hu(hu, config.window_hu) - sharp, cmap="RdBu_r",
                                                      vmin=-limit, vmax=limit, interpolation="nearest")
            difference_axis.set_title(f"{name} − sharp", fontsize=8)
        image_axes[0].set_ylabel(_short(panel.key), fontsize=7)
        zoom_axes[0].set_ylabel("zoom", fontsize=7)
        difference_axes[0].set_ylabel("difference", fontsize=7)
    figure.suptitle(f"Display window [{low:g}, {high:g}] HU; differences (method − sharp) from −{limit:g} to +{limit:g} HU",
                    fontsize=9)
    figure.tight_layout(rect=(0, 0, 0.9, 0.98))
    if difference_image is not None:
        bar = figure.add_axes((0.92, 0.25, 0.012, 0.5))
        figure.colorbar(difference_image, cax=bar, label="method − sharp (HU)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _short(key: str, length: int = 28) -> str:
    return key if len(key) <= length else "…" + key[-(length - 1):]


def write_report(evaluation: Evaluation, data_dir: str, report_dir: str) -> dict[str, str]:
    """Writes evaluation.md, per_image.csv and figure.png (unless no figure pair) into `report_dir`;
    returns their paths ("figure": "" when there is none)."""
    tf.io.gfile.makedirs(report_dir)
    paths = {"report": join_path(report_dir, REPORT_NAME), "csv": join_path(report_dir, CSV_NAME),
             "figure": join_path(report_dir, FIGURE_NAME)}
    with tf.io.gfile.GFile(paths["csv"], "w") as handle:
        handle.write(csv_text(evaluation.rows))
    if evaluation.figure:
        write_figure(evaluation, paths["figure"])
    else:
        paths["figure"] = ""
    with tf.io.gfile.GFile(paths["report"], "w") as handle:
        handle.write(report_text(evaluation, data_dir))
    return paths
