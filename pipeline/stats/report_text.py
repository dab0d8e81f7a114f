"""Terminal tables of a report (`pipeline.stats.report.to_json`), also reused by the HTML page."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from pipeline.stats.report import ALL_TOTAL, TRAIN_TOTAL
from pipeline.stats.summary import percentile_name

_KEYS_SHOWN = 50


@dataclasses.dataclass(frozen=True)
class Table:
    """A titled table of strings; `levels[i]` is 0 for split and total rows, 1 for shard rows;
    a rule is drawn before the rows whose index is in `rules_before`."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    levels: tuple[int, ...]
    rules_before: tuple[int, ...] = ()
    left_aligned: tuple[int, ...] = (0,)


def _group_rows(report: Mapping[str, Any]) -> tuple[list[tuple[str, Mapping[str, Any], int]], int]:
    """(label, group, level) for every split, its shards, then the totals; and the index of the
    first total row."""
    rows: list[tuple[str, Mapping[str, Any], int]] = []
    for name, split in report["splits"].items():
        rows.append((name, split, 0))
        rows.extend((shard["file"].rsplit("/", 1)[-1], shard, 1) for shard in split["shards"])
    first_total = len(rows)
    rows.append((f"{TRAIN_TOTAL} (all train-N)", report["totals"][TRAIN_TOTAL], 0))
    rows.append((f"{ALL_TOTAL} (test + train)", report["totals"][ALL_TOTAL], 0))
    return rows, first_total


def _mean_std(stat: Mapping[str, Any], digits: int) -> str:
    if not stat["count"]:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _psnr(group: Mapping[str, Any]) -> str:
    identical = group["psnr_db"]["identical_pairs"]
    return _mean_std(group["psnr_db"], 2) + (f" (+{identical} equal)" if identical else "")


def _projection(group: Mapping[str, Any]) -> str:
    translation, rotation = group["projection_translation_extent_mm"], group["projection_rotation_extent_deg"]
    if not translation["count"]:
        return "-"
    return f"{translation['mean']:.1f} / {rotation['mean']:.1f}"


def _breathing(group: Mapping[str, Any]) -> str:
    amplitude, period = group["respiratory_si_amplitude_mm"], group["respiratory_period_s"]
    if not amplitude["count"]:
        return "-"
    return f"{amplitude['mean']:.1f} / {period['mean']:.2f}"


def _median_range(stat: Mapping[str, Any]) -> str:
    if not stat["count"]:
        return "-"
    return f"{stat['p50']:g} [{stat['min']:g}-{stat['max']:g}]"


def _top_counts(counts: Mapping[str, int]) -> str:
    """The two most frequent keys with their counts (just the key when there is only one)."""
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    text = ", ".join(key if len(ordered) == 1 else f"{key} ({count})" for key, count in ordered[:2])
    return text + (f", +{len(ordered) - 2} more" if len(ordered) > 2 else "") if ordered else "-"


def _percentiles(values: Mapping[str, Any]) -> str:
    return "/".join("-" if v is None else f"{round(v, 1):g}" for v in values.values())


def tables(report: Mapping[str, Any]) -> list[Table]:
    """Contents, blur and quality, HU percentiles, and pairs per collection."""
    rows, first_total = _group_rows(report)
    levels = tuple(level for _, _, level in rows)
    rules = (first_total,)
    contents = Table(
        "Contents",
        ("split / shard", "pairs", "patients", "series", "collections", "synthetic", "registered", "blur models", "image sizes"),
        tuple(
            (
                label,
                str(g["pairs"]),
                str(g["patients"]),
                str(g["series"]),
                str(len(g["collections"])),
                str(g["source_kinds"].get("synthetic", 0)),
                str(g["source_kinds"].get("registered", 0)),
                _top_counts(g["blur_models"]),
                _top_counts(g["image_sizes"]),
            )
            for label, g, _ in rows
        ),
        levels,
        rules,
        left_aligned=(0, 7, 8),
    )
    protocol = report["protocol"]
    low, high = protocol["window_hu"]
    columns: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("PSF extent px p50 [min-max]", lambda g: _median_range(g["psf_extent_px"])),
        ("trajectory px mean ± std", lambda g: _mean_std(g["trajectory_length_px"], 1)),
    ]
    if "projection" in report["totals"][ALL_TOTAL]["blur_models"]:
        columns.append(("projection shift mm / rotation deg", _projection))
    if "respiratory" in report["totals"][ALL_TOTAL]["blur_models"]:
        columns.append(("breathing amplitude mm / period s", _breathing))
    columns += [
        ("PSNR dB mean ± std", _psnr),
        ("SSIM mean ± std", lambda g: _mean_std(g["ssim"], 4)),
    ]
    if protocol["image_stride"] > 1:
        columns.append(("measured pairs", lambda g: str(g["image_pairs"])))
    quality = Table(
        f"Blur and quality (PSNR/SSIM on HU clipped to [{low}, {high}], data_range {protocol['data_range']})",
        ("split / shard", *(title for title, _ in columns)),
        tuple((label, *(cell(g) for _, cell in columns)) for label, g, _ in rows),
        levels,
        rules,
    )
    names = "/".join(percentile_name(q) for q in protocol["hu_percentiles"])
    hu = Table(
        "HU percentiles of all pixels",
        ("split / shard", f"sharp HU {names}", f"blurry HU {names}"),
        tuple((label, _percentiles(g["sharp_hu_percentiles"]), _percentiles(g["blurry_hu_percentiles"])) for label, g, _ in rows),
        levels,
        rules,
    )
    directories = list(report["splits"])
    collections = sorted(report["totals"][ALL_TOTAL]["collections"])
    per_collection = Table(
        "Pairs per collection",
        ("collection", *directories, "total"),
        tuple(
            (
                name,
                *(str(report["splits"][d]["collections"].get(name, 0)) for d in directories),
                str(report["totals"][ALL_TOTAL]["collections"][name]),
            )
            for name in collections
        ),
        tuple(0 for _ in collections),
    )
    return [contents, quality, hu, per_collection]


def render_table(table: Table) -> str:
    """The table as aligned text: `left_aligned` columns to the left (shards indented), others right."""
    labels = [("  " * level) + row[0] for row, level in zip(table.rows, table.levels)]
    cells = [table.header] + [(label, *row[1:]) for label, row in zip(labels, table.rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i in table.left_aligned else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [table.title, line(table.header), rule]
    for index, row in enumerate(cells[1:]):
        if index in table.rules_before:
            out.append(rule)
        out.append(line(row))
    return "\n".join(out)


def render_problems(report: Mapping[str, Any]) -> str:
    """The problems, one a line, with leaked patient keys listed; or a line saying there are none."""
    errors = report["errors"]
    if not errors:
        return "No problems found: shards readable, counts match the manifest, no test/train patient leakage."
    out = [f"{len(errors)} problem(s):"]
    for error in errors:
        where = error.get("file") or error.get("split") or ""
        if "record_index" in error:
            where += f" record {error['record_index']}"
        out.append(f"  {error['kind']:<18} {where + ': ' if where else ''}{error['message']}")
        keys = error.get("patient_keys", [])
        if keys:
            shown = ", ".join(keys[:_KEYS_SHOWN])
            more = f" (+{len(keys) - _KEYS_SHOWN} more in --json)" if len(keys) > _KEYS_SHOWN else ""
            out.append(f"  {'':<18} patient keys: {shown}{more}")
    return "\n".join(out)


def render_text(report: Mapping[str, Any]) -> str:
    """All tables, the leakage count and the problems, for the terminal."""
    parts = [f"Dataset {report['dataset']} (schema v{report['schema_version']})"]
    if report["protocol"]["image_stride"] > 1:
        parts.append(
            f"HU percentiles, PSNR and SSIM measured on every {report['protocol']['image_stride']}th record of each shard"
        )
    parts.extend(render_table(table) for table in tables(report))
    parts.append(f"Patients in test and train: {report['leakage']['patients_in_test_and_train']}")
    parts.append(render_problems(report))
    return "\n\n".join(parts)
