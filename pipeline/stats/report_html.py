"""The self-contained HTML report: tables, histograms, per-collection bars and example pairs.

Figures are drawn with matplotlib (`Figure` + Agg, no pyplot state) and embedded as base64 PNG
data URIs, so the page is one file that opens anywhere without the dataset.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from pipeline.stats.metrics import rebin_histogram
from pipeline.stats.report import ALL_TOTAL, DatasetStats
from pipeline.stats.report_text import Table, render_problems, tables
from tfrecords_schema import TEST_DIR, Pair

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { padding: 2px 8px; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
tr.shard td:first-child { padding-left: 2em; color: #555; }
tr.total td { font-weight: bold; }
.problems { background: #fff3f3; border-left: 4px solid #c00; padding: 0.5em 1em; white-space: pre-wrap; }
.ok { background: #f3fff3; border-left: 4px solid #080; padding: 0.5em 1em; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1em; }
figure.example { margin: 0; border: 1px solid #ddd; padding: 0.5em; }
figcaption { font-size: 0.8em; color: #444; }
img { max-width: 100%; }
"""


@dataclasses.dataclass(frozen=True)
class Example:
    """A decoded pair for the example grid, where it lies, and its measured PSNR (dB) and SSIM."""

    file: str
    record_index: int
    pair: Pair
    psnr_db: float
    ssim: float


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(figure: Figure, alt: str) -> str:
    return f'<img src="{_png(figure)}" alt="{html.escape(alt)}">'


def _groups(stats: DatasetStats) -> dict[str, Any]:
    """Test and all-train measurements for the histograms (each only if present)."""
    groups = {}
    if TEST_DIR in stats.by_directory:
        groups["test"] = stats.by_directory[TEST_DIR]
    if len(stats.totals["train"]):
        groups["train"] = stats.totals["train"]
    return groups


def hu_histogram_figure(stats: DatasetStats) -> Figure:
    """Sharp and blurry HU histograms (log counts) of the test and train pixels."""
    config = stats.config
    groups = _groups(stats)
    figure = Figure(figsize=(5 * max(len(groups), 1), 3.2))
    for column, (name, measurements) in enumerate(groups.items()):
        axes = figure.add_subplot(1, len(groups), column + 1)
        for label, histogram in (("sharp", measurements.sharp_histogram), ("blurry", measurements.blurry_histogram)):
            counts, edges = rebin_histogram(histogram, config.hu_histogram_range_hu, config.hu_histogram_bin_hu)
            axes.stairs(counts, edges, label=label)
        axes.set_yscale("log")
        axes.set_xlabel(f"HU ({config.hu_histogram_bin_hu} HU bins)")
        axes.set_ylabel("pixels")
        axes.set_title(f"{name}: HU of all measured pixels")
        axes.legend()
    return figure


def _value_histograms(stats: DatasetStats, panels: Sequence[tuple[str, str, bool, Any]]) -> Figure:
    """One histogram panel per (title, unit, integer-valued, values of a group), test vs train."""
    groups = _groups(stats)
    figure = Figure(figsize=(5 * len(panels), 3.2))
    for column, (title, unit, integer, values_of) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), column + 1)
        series = {name: values_of(m) for name, m in groups.items()}
        finite = {name: v[np.isfinite(v)] for name, v in series.items()}
        everything = np.concatenate(list(finite.values())) if finite else np.zeros(0)
        if everything.size:
            if integer:
                bins = np.arange(everything.min() - 0.5, everything.max() + 1.5)
            else:
                bins = np.histogram_bin_edges(everything, bins=30)
            for name, values in finite.items():
                axes.hist(values, bins=bins, histtype="step", label=f"{name} (n={values.size})")
            axes.legend()
        else:
            axes.text(0.5, 0.5, "no values", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel(unit)
        axes.set_ylabel("pairs")
        axes.set_title(title)
    return figure


def blur_figure(stats: DatasetStats) -> Figure:
    """Blur strength: PSF extent and trajectory length of kernel-blurred pairs, and (if the
    dataset has any) translation and rotation extents of projection-blurred pairs and diaphragm
    amplitude and breathing period of respiratory pairs."""
    panels = [
        ("PSF extent (kernel blur)", "pixels", True, lambda m: m.columns["psf_extent_px"][m.kernel_blurred()].astype(float)),
        ("trajectory length (kernel blur)", "pixels", False, lambda m: m.columns["trajectory_length_px"][m.kernel_blurred()]),
    ]
    if stats.totals[ALL_TOTAL].projection_blurred().any():
        panels += [
            ("translation extent (projection blur)", "mm", False, lambda m: m.columns["translation_extent_mm"][m.projection_blurred()]),
            ("rotation extent (projection blur)", "degrees", False, lambda m: m.columns["rotation_extent_deg"][m.projection_blurred()]),
        ]
    if stats.totals[ALL_TOTAL].respiratory_blurred().any():
        panels += [
            ("diaphragm amplitude (respiratory blur)", "mm", False, lambda m: m.columns["si_amplitude_mm"][m.respiratory_blurred()]),
            ("breathing period (respiratory blur)", "s", False, lambda m: m.columns["period_s"][m.respiratory_blurred()]),
        ]
    return _value_histograms(stats, panels)


def quality_figure(stats: DatasetStats) -> Figure:
    """PSNR and SSIM of blurry vs sharp inside the protocol window."""
    low, high = stats.config.window_hu
    return _value_histograms(
        stats,
        [
            (f"PSNR blurry vs sharp, [{low}, {high}] HU", "dB", False, lambda m: m.psnr_db(stats.config.data_range)),
            (f"SSIM blurry vs sharp, [{low}, {high}] HU", "SSIM", False, lambda m: m.columns["ssim"]),
        ],
    )


def collection_figure(report: Mapping[str, Any]) -> Figure:
    """Pairs per collection, stacked by split directory."""
    collections = sorted(report["totals"][ALL_TOTAL]["collections"])
    figure = Figure(figsize=(8, 0.5 + 0.4 * max(len(collections), 1)))
    axes = figure.add_subplot(1, 1, 1)
    left = np.zeros(len(collections))
    for directory, split in report["splits"].items():
        counts = np.array([split["collections"].get(name, 0) for name in collections], dtype=float)
        axes.barh(collections, counts, left=left, label=directory)
        left += counts
    axes.set_xlabel("pairs")
    axes.set_title("pairs per collection")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def example_figure(example: Example, display_window_hu: tuple[int, int]) -> Figure:
    """sharp | blurry at `display_window_hu` | the PSF cropped to its support and magnified."""
    low, high = display_window_hu
    pair = example.pair
    figure = Figure(figsize=(9, 3.2))
    for column, (title, image) in enumerate((("sharp", pair.sharp_hu), ("blurry", pair.blurry_hu))):
        axes = figure.add_subplot(1, 3, column + 1)
        axes.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axes.set_title(f"{title} [{low}, {high}] HU")
        axes.axis("off")
    axes = figure.add_subplot(1, 3, 3)
    support = np.argwhere(pair.psf > 0)
    if support.size:
        extent = int((support.max(axis=0) - support.min(axis=0) + 1).max())
        top, left = np.maximum(support.min(axis=0) - 1, 0)
        bottom, right = support.max(axis=0) + 2
        axes.imshow(pair.psf[top:bottom, left:right], cmap="inferno", interpolation="nearest")
        axes.set_title(f"PSF extent {extent} px (of {pair.psf.shape[0]}x{pair.psf.shape[1]}), magnified")
    else:
        axes.text(0.5, 0.5, "no PSF\n(registered pair)", ha="center", va="center", transform=axes.transAxes)
        axes.set_title("PSF")
    axes.axis("off")
    return figure


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in table.header)
    body = []
    for index, (row, level) in enumerate(zip(table.rows, table.levels)):
        kind = "shard" if level else ("total" if table.rules_before and index >= table.rules_before[0] else "split")
        cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
        body.append(f'<tr class="{kind}">{cells}</tr>')
    return f"<h3>{html.escape(table.title)}</h3>\n<table><tr>{head}</tr>\n" + "\n".join(body) + "</table>"


def _caption(example: Example) -> str:
    pair = example.pair
    psnr = "inf" if np.isposinf(example.psnr_db) else f"{example.psnr_db:.2f}"
    return html.escape(
        f"{example.file} record {example.record_index} · {pair.record_key} · collection {pair.collection} · "
        f"patient {pair.patient_key} · {pair.source_kind} · {pair.blur_model} blur · {pair.height}x{pair.width} px · "
        f"{_motion(pair)} · PSNR {psnr} dB · SSIM {example.ssim:.4f}"
    )


def _motion(pair: Pair) -> str:
    if pair.blur_model == "respiratory":
        return (f"{pair.respiratory_geometry} beam, {pair.body_site}, diaphragm "
                f"{pair.respiratory['si_amplitude_mm']:.1f} mm, period {pair.respiratory['period_s']:.1f} s")
    if pair.blur_model == "projection":
        return (
            f"{pair.projection_kind} motion, translation {pair.projection.get('translation_extent_mm', 0.0):.1f} mm, "
            f"rotation {pair.projection.get('rotation_extent_deg', 0.0):.1f} deg"
        )
    return f"trajectory {pair.motion['length_px']:.1f} px"


def render_html(stats: DatasetStats, report: Mapping[str, Any], examples: Sequence[Example]) -> str:
    """The whole report page (UTF-8 text with every image embedded)."""
    config = stats.config
    protocol = report["protocol"]
    low, high = protocol["window_hu"]
    display_low, display_high = config.display_window_hu
    all_pairs = report["totals"][ALL_TOTAL]
    status_class = "ok" if report["ok"] else "problems"
    figures = "\n".join(
        (
            "<h2>HU distribution</h2>",
            _img(hu_histogram_figure(stats), "HU histograms of sharp and blurry pixels"),
            "<h2>Blur strength</h2>",
            _img(blur_figure(stats), "PSF extent and trajectory length histograms"),
            "<h2>Blurry vs sharp</h2>",
            _img(quality_figure(stats), "PSNR and SSIM histograms"),
            "<h2>Collections</h2>",
            _img(collection_figure(report), "pairs per collection"),
        )
    )
    grid = "\n".join(
        f'<figure class="example">{_img(example_figure(example, config.display_window_hu), example.pair.record_key)}'
        f"<figcaption>{_caption(example)}</figcaption></figure>"
        for example in examples
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>ctdeblur shard statistics: {html.escape(stats.root)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>Shard statistics: {html.escape(stats.root)}</h1>
<p>{all_pairs['pairs']} pairs, {all_pairs['patients']} patients, {all_pairs['series']} series in
{len(report['splits'])} split directories (schema v{report['schema_version']}).
PSNR and SSIM: blurry vs sharp on HU clipped to [{low}, {high}], data_range {protocol['data_range']};
SSIM of Wang et al. (Gaussian window {protocol['ssim']['filter_size']} px, sigma {protocol['ssim']['sigma_px']} px,
K1 {protocol['ssim']['k1']}, K2 {protocol['ssim']['k2']}), averaged over the valid region.
Image measurements on every {protocol['image_stride']} record(s) of each shard.</p>
<div class="{status_class}">{html.escape(render_problems(report))}</div>
{"".join(_html_table(table) for table in tables(report))}
{figures}
<h2>Example pairs (sharp | blurry | PSF), display window [{display_low}, {display_high}] HU</h2>
<p>{len(examples)} pairs spread evenly over the dataset (test first).</p>
<div class="examples">
{grid}
</div>
</body></html>
"""
