"""The dataset's statistics as one JSON-ready report: groups, leakage and problems (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.stats.config import StatsConfig
from pipeline.stats.problems import Problem
from pipeline.stats.reader import Shard, ShardResult
from pipeline.stats.summary import Measurements, summarise
from pipeline.stats.validate import (
    HELD_OUT_DIRS,
    Leakage,
    check_manifest,
    check_placement,
    check_splits_present,
    find_leakage,
    leakage_problems,
)
from tfrecords_schema import SCHEMA_VERSION, split_dir_order

TRAIN_TOTAL = "train"
ALL_TOTAL = "all"


@dataclasses.dataclass(frozen=True)
class DatasetStats:
    """Everything measured and checked about one dataset directory.

    by_directory: split directory (test, train-0, ...) -> measurements of all its shards;
    totals: "train" (every train-N) and "all" -> measurements.
    """

    root: str
    config: StatsConfig
    results: tuple[ShardResult, ...]
    by_directory: Mapping[str, Measurements]
    totals: Mapping[str, Measurements]
    leakage: Leakage
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def collect(
    root: str,
    config: StatsConfig,
    shards: Sequence[Shard],
    results: Sequence[ShardResult],
    manifest: Mapping[str, Any] | None,
    early_problems: Sequence[Problem],
    digests: Mapping[str, str] | None = None,
) -> DatasetStats:
    """Groups shard results by directory and runs every check; `early_problems` are those found
    before reading (shard numbering, stray files, manifest unreadable); `digests` the shards'
    sha256 (relative path -> hex) to compare with the manifest."""
    directories = sorted({result.shard.directory for result in results}, key=split_dir_order)
    by_directory = {
        directory: Measurements.concatenate(r.measurements for r in results if r.shard.directory == directory)
        for directory in directories
    }
    totals = {
        TRAIN_TOTAL: Measurements.concatenate(m for d, m in by_directory.items() if d not in HELD_OUT_DIRS),
        ALL_TOTAL: Measurements.concatenate(by_directory.values()),
    }
    found = list(early_problems)
    for result in results:
        found.extend(result.problems)
    for result in results:
        found.extend(check_placement(result))
    found.extend(check_splits_present(directories))
    if manifest is not None:
        found.extend(check_manifest(manifest, shards, results, by_directory, digests))
    leakage = find_leakage(by_directory)
    found.extend(leakage_problems(leakage))
    return DatasetStats(root, config, tuple(results), by_directory, totals, leakage, tuple(found))


def to_json(stats: DatasetStats) -> dict[str, Any]:
    """The report: protocol, per-split (and per-shard) numbers, totals, leakage and errors.

    Every number printed in the terminal tables and the HTML report is taken from this dict.
    """
    config = stats.config
    splits = {}
    for directory, measurements in stats.by_directory.items():
        shards = [
            {"file": r.shard.relative, "complete": r.complete, **summarise(r.measurements, config)}
            for r in stats.results
            if r.shard.directory == directory
        ]
        splits[directory] = {**summarise(measurements, config), "shards": shards}
    return {
        "dataset": stats.root,
        "schema_version": SCHEMA_VERSION,
        "protocol": {
            "window_hu": list(config.window_hu),
            "data_range": config.data_range,
            "ssim": {
                "filter_size": config.ssim_filter_size,
                "sigma_px": config.ssim_sigma,
                "k1": config.ssim_k1,
                "k2": config.ssim_k2,
            },
            "hu_percentiles": list(config.hu_percentiles),
            "image_stride": config.image_stride,
        },
        "splits": splits,
        "totals": {name: summarise(measurements, config) for name, measurements in stats.totals.items()},
        "leakage": stats.leakage.to_json(),
        "errors": [problem.to_json() for problem in stats.problems],
        "ok": stats.ok,
    }


@dataclasses.dataclass(frozen=True)
class ExampleChoice:
    """A pair picked for the HTML example grid, with its measured PSNR (dB) and SSIM."""

    shard: Shard
    record_index: int
    psnr_db: float
    ssim: float


def choose_examples(stats: DatasetStats, count: int) -> list[ExampleChoice]:
    """`count` image-measured pairs spread evenly over the dataset in reading order (test first)."""
    candidates = []
    for result in stats.results:
        columns = result.measurements.columns
        psnr = result.measurements.psnr_db(stats.config.data_range)
        for row in np.flatnonzero(columns["image_measured"]):
            candidates.append(ExampleChoice(result.shard, int(columns["record_index"][row]), float(psnr[row]), float(columns["ssim"][row])))
    if count <= 0 or not candidates:
        return []
    picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, min(count, len(candidates)))).astype(int))
    return [candidates[i] for i in picks]
