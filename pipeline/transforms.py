"""Beam transforms: thin wrappers that map the pure functions of `pipeline.*` over PCollections.

Graph (labels as in the Beam UI):
  Read_<source> -> ScanSlices -> Assemble (GroupBySeries, AssembleSeries) -> PlanDataset (global)
  -> WriteShards (SelectPairs, GroupByShard, WriteShards) ; rejections -> WriteDeadLetters ;
  CountInputs -> Summarize
Heavy data (pixels) never crosses a shuffle: shards are written by re-reading their selected
files, so memory stays bounded by one shard writer per worker whatever the dataset size.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from ct_io.errors import CTInputError
from pipeline.archive_sources import registered_slices
from pipeline.config import PipelineConfig
from pipeline.files import read_bytes, write_bytes
from pipeline.pairs import shard_info, shard_records
from pipeline.planning import (
    InputFile,
    Plan,
    Rejection,
    SeriesSlices,
    assemble_series,
    breathing_rejections,
    make_plan,
    pair_tasks,
    series_summary,
)
from pipeline.slice_scan import read_file_hu, scan_file
from tfrecords_schema import DEAD_LETTER_NAME, UNSELECTED_NAME, shard_name

NAMESPACE = "ctdeblur"
REJECTED = "rejected"
GZIP_LEVEL = 1
"""gzip level of compressed shards: level 1 costs ~5 ms per 512x512 pair, level 6 ~29 ms, for
nearly the same size."""
LOG = logging.getLogger("ctdeblur.pipeline")


def _count_rejection(rejection: Rejection) -> Rejection:
    Metrics.counter(NAMESPACE, f"rejected_{rejection.reason}").inc()
    return rejection


class ScanSlicesFn(beam.DoFn):
    """InputFile -> (series_uid, (InputFile, SliceHeader)) per slice (frame), or a tagged Rejection."""

    def __init__(self, body_hu_threshold: float, with_air_fraction: bool = False, max_lossy_ratio: float = 0.0):
        self.body_hu_threshold = body_hu_threshold
        self.with_air_fraction = with_air_fraction
        self.max_lossy_ratio = max_lossy_ratio
        self.files_read = Metrics.counter(NAMESPACE, "files_read")
        self.slices_scanned = Metrics.counter(NAMESPACE, "slices_scanned")

    def process(self, source: InputFile):
        self.files_read.inc()
        try:
            headers = scan_file(read_bytes(source.path), source.path, self.body_hu_threshold, self.with_air_fraction,
                                self.max_lossy_ratio)
        except CTInputError as rejected:
            yield beam.pvalue.TaggedOutput(REJECTED, _count_rejection(
                Rejection(source.path, rejected.reason, rejected.detail, "scan")))
            return
        except OSError as error:
            yield beam.pvalue.TaggedOutput(REJECTED, _count_rejection(
                Rejection(source.path, "unreadable_file", f"{type(error).__name__}: {error}", "scan")))
            return
        self.slices_scanned.inc(len(headers))
        for header in headers:
            yield header.series_uid, (source, header)


class AssembleSeriesFn(beam.DoFn):
    """(series_uid, members) -> SeriesSlices, plus tagged Rejections (with the respiratory model,
    also of the series it cannot use: `planning.breathing_rejections`)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.series = Metrics.counter(NAMESPACE, "series_assembled")

    def process(self, element):
        series_uid, members = element
        series, rejections = assemble_series(series_uid, members, self.config.min_body_fraction)
        if series is not None and self.config.blur_model == "respiratory":
            unusable = breathing_rejections(series, self.config)
            if unusable:
                LOG.warning("series %s: %s", series_uid, unusable[0].detail)
                rejections, series = rejections + unusable, None
        for rejection in rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, _count_rejection(rejection))
        if series is not None:
            self.series.inc()
            LOG.info("series %s: %d slices, %d eligible", series_uid, len(series.slices), len(series.eligible))
            yield series


class SelectPairsFn(beam.DoFn):
    """SeriesSlices -> ((split_dir, shard, shards), PairTask) under the plan, plus Rejections."""

    def __init__(self, config: PipelineConfig):
        self.config = config

    def process(self, series: SeriesSlices, plan: Plan):
        tasks, rejections = pair_tasks(series, plan, self.config)
        for rejection in rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, _count_rejection(rejection))
        for task in tasks:
            yield (task.split_dir, task.shard, plan.shards_per_split[task.split_dir]), task


def _all_shards(plan: Plan):
    """An empty placeholder for every planned shard, so every shard file exists."""
    for name, shards in plan.shards_per_split.items():
        for shard in range(shards):
            yield (name, shard, shards), None


def write_shard(directory: str, name: str, records: list[bytes], compression: str) -> str:
    """Writes framed records as shard `name` under `directory` (local or gs://) and returns the
    file's sha256 (hex, of the bytes as stored). The file is written under a temporary name and
    renamed, so a retried bundle rewrites identical bytes; gzip headers carry no time stamp."""
    if "://" not in directory:
        os.makedirs(directory, exist_ok=True)
    temporary = FileSystems.join(directory, f".tmp-{uuid.uuid4().hex}")
    digest = hashlib.sha256()
    with FileSystems.create(temporary, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        hashing = _HashingWriter(raw, digest)
        sink = gzip.GzipFile(filename="", mode="wb", fileobj=hashing, compresslevel=GZIP_LEVEL, mtime=0) \
            if compression == "gzip" else hashing
        for record in records:
            sink.write(record)
        if sink is not hashing:
            sink.close()
    FileSystems.rename([temporary], [FileSystems.join(directory, name)])
    return digest.hexdigest()


def _read_file_hu(path: str):
    return read_file_hu(read_bytes(path), path)


class WriteShardFn(beam.DoFn):
    """((split_dir, shard, shards), tasks) -> shard info dict (`pairs.shard_info`), plus Rejections;
    the records are `pairs.shard_records`, the file `write_shard`."""

    def __init__(self, config: PipelineConfig, output: str):
        self.config = config
        self.output = output
        self.pairs = Metrics.counter(NAMESPACE, "pairs_written")
        self.shards = Metrics.counter(NAMESPACE, "shards_written")

    def process(self, element):
        (split_dir, shard, shards), tasks = element
        records, written, rejections = shard_records(tasks, self.config, _read_file_hu, registered_slices)
        for rejection in rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, _count_rejection(rejection))
        name = shard_name(shard, shards, self.config.compression)
        digest = write_shard(FileSystems.join(self.output, split_dir), name, records, self.config.compression)
        self.pairs.inc(len(written))
        self.shards.inc()
        LOG.info("wrote %s/%s: %d pairs", split_dir, name, len(written))
        yield shard_info(split_dir, name, written, digest, self.config.patient_salt)


class _HashingWriter:
    """A write-only stream that feeds a digest and forwards to another stream."""

    def __init__(self, stream, digest):
        self.stream = stream
        self.digest = digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.stream.write(data)
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


class WriteSortedLines(beam.PTransform):
    """Writes a PCollection of text lines to one file, sorted (deterministic), even when empty."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, lines):
        path = self.path
        placeholder = lines.pipeline | "Placeholder" >> beam.Create([(None, None)])
        return (
            (lines | "Key" >> beam.Map(lambda line: (None, line)), placeholder)
            | "Union" >> beam.Flatten()
            | "Gather" >> beam.GroupByKey()
            | "Write" >> beam.Map(lambda kv: write_bytes(
                path, "".join(line + "\n" for line in sorted(l for l in kv[1] if l is not None)).encode("utf-8")))
        )


def _rejection_line(rejection: Rejection) -> str:
    return json.dumps(rejection.to_dict(), sort_keys=True)


def _summarize(_, files: int, slices: int, frames: int, multiframe_files: int, series: int, shards: list,
               rejected: list, plan: Plan, config: PipelineConfig) -> dict:
    """The run's counts; `rejected` holds ((unit, reason), count) pairs. A multi-frame file read
    counts as its frames (`multiframe_files` gave `frames` slices), any other file as one slice."""
    splits: dict[str, dict] = {}
    for info in sorted(shards, key=lambda s: s["file"]):
        split = splits.setdefault(info["split"], {"pairs": 0, "patient_keys": set(), "series": set(), "shards": []})
        split["pairs"] += info["pairs"]
        split["patient_keys"].update(info["patient_keys"])
        split["series"].update(info["series"])
        split["shards"].append({"file": info["file"], "pairs": info["pairs"], "sha256": info["sha256"]})
    written_slices = set().union(*(info["slices"] for info in shards)) if shards else set()
    return {
        "splits": {name: {"pairs": s["pairs"], "patients": len(s["patient_keys"]), "series": len(s["series"]),
                          "shards": s["shards"]} for name, s in sorted(splits.items())},
        "patient_keys": {name: sorted(s["patient_keys"]) for name, s in sorted(splits.items())},
        "inputs": {"files": files, "slices": files + frames - multiframe_files, "series": series,
                   "readable_slices": slices},
        "written": {"pairs": sum(s["pairs"] for s in splits.values()), "slices": len(written_slices)},
        "rejected": {reason: n for (unit, reason), n in sorted(rejected) if unit == "file"},
        "rejected_series": {reason: n for (unit, reason), n in sorted(rejected) if unit == "series"},
        "plan": {"pairs_per_split": dict(plan.pairs_per_split), "test_patients": plan.test_patients,
                 "validation_patients": plan.validation_patients, "train_patients": plan.train_patients},
        "warnings": list(plan.warnings),
        "config": config.to_dict(),
    }


class AssembleSeries(beam.PTransform):
    """(series_uid, (InputFile, SliceHeader)) per slice -> {"series": SeriesSlices, REJECTED: Rejection}."""

    def __init__(self, config: PipelineConfig):
        super().__init__()
        self.config = config

    def expand(self, slices):
        assembled = (
            slices
            | "GroupBySeries" >> beam.GroupByKey()
            | "AssembleSeries" >> beam.ParDo(AssembleSeriesFn(self.config)).with_outputs(
                REJECTED, main="series")
        )
        return {"series": assembled.series, REJECTED: assembled[REJECTED]}


class PlanDataset(beam.PTransform):
    """SeriesSlices -> the one global `Plan` (`planning.make_plan` over every series' summary)."""

    def __init__(self, config: PipelineConfig):
        super().__init__()
        self.config = config

    def expand(self, series):
        return (
            series
            | "SeriesSummaries" >> beam.Map(series_summary, self.config.patient_salt)
            | "CollectSummaries" >> beam.combiners.ToList()
            | "PlanDataset" >> beam.Map(make_plan, self.config)
        )


class WriteShards(beam.PTransform):
    """{"series": SeriesSlices, "plan": the Plan} -> {"shards": shard info dicts, REJECTED: Rejection}:
    selects the pairs under the plan and writes every planned shard under `output`, empty ones too."""

    def __init__(self, config: PipelineConfig, output: str):
        super().__init__()
        self.config = config
        self.output = output

    def expand(self, inputs):
        plan = inputs["plan"]
        selected = inputs["series"] | "SelectPairs" >> beam.ParDo(
            SelectPairsFn(self.config), beam.pvalue.AsSingleton(plan)).with_outputs(REJECTED, main="tasks")
        placeholders = plan | "AllShards" >> beam.FlatMap(_all_shards)
        written = (
            (selected.tasks, placeholders)
            | "UnionShards" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShardFn(self.config, self.output)).with_outputs(REJECTED, main="shards")
        )
        rejected = (selected[REJECTED], written[REJECTED]) | "ShardRejections" >> beam.Flatten()
        return {"shards": written.shards, REJECTED: rejected}


class WriteDeadLetters(beam.PTransform):
    """Rejections -> the two dead-letter files under `output`, one JSON line each, sorted: problems
    (`DEAD_LETTER_NAME`) and valid inputs deliberately not used (`UNSELECTED_NAME`)."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, rejected):
        problems = rejected | "Problems" >> beam.Filter(lambda r: not r.unselected)
        unselected = rejected | "Unselected" >> beam.Filter(lambda r: r.unselected)
        return (
            problems | "ProblemLines" >> beam.Map(_rejection_line)
            | "WriteDeadLetter" >> WriteSortedLines(FileSystems.join(self.output, DEAD_LETTER_NAME)),
            unselected | "UnselectedLines" >> beam.Map(_rejection_line)
            | "WriteUnselected" >> WriteSortedLines(FileSystems.join(self.output, UNSELECTED_NAME)),
        )


class CountInputs(beam.PTransform):
    """{"files", "source_rejections", "slices", "series"} -> one count each (a PCollection of one int):
    files read (InputFiles and sources' file Rejections), readable slices, frames of multi-frame
    files, multi-frame files, assembled series."""

    def expand(self, inputs):
        files_count = (
            (inputs["files"], inputs["source_rejections"] | "FileRejections" >> beam.Filter(lambda r: r.unit == "file"))
            | "ReadFiles" >> beam.Flatten()
            | "CountFiles" >> beam.combiners.Count.Globally()
        )
        slices = inputs["slices"]
        frames = slices | "Frames" >> beam.Filter(lambda item: item[1][1].frame_index is not None)
        return {
            "files": files_count,
            "slices": slices | "CountSlices" >> beam.combiners.Count.Globally(),
            "frames": frames | "CountFrames" >> beam.combiners.Count.Globally(),
            "multiframe_files": (frames | "FramePaths" >> beam.Map(lambda item: item[1][1].path)
                                 | "DistinctPaths" >> beam.Distinct()
                                 | "CountMultiFrameFiles" >> beam.combiners.Count.Globally()),
            "series": inputs["series"] | "CountSeries" >> beam.combiners.Count.Globally(),
        }


class Summarize(beam.PTransform):
    """{"counts": `CountInputs`' dict, "shards", "rejected", "plan"} -> the run summary (one dict,
    `_summarize`), also written as JSON to `summary_path`."""

    def __init__(self, config: PipelineConfig, summary_path: str):
        super().__init__()
        self.config = config
        self.summary_path = summary_path

    def expand(self, inputs):
        counts = inputs["counts"]
        reasons = (inputs["rejected"] | "ReasonOf" >> beam.Map(lambda r: ((r.unit, r.reason), 1))
                   | "CountReasons" >> beam.CombinePerKey(sum))
        summary = (
            inputs["shards"].pipeline
            | "SummaryTrigger" >> beam.Create([None])
            | "Summarize" >> beam.Map(
                _summarize,
                *(beam.pvalue.AsSingleton(counts[name]) for name in ("files", "slices", "frames", "multiframe_files",
                                                                     "series")),
                beam.pvalue.AsList(inputs["shards"]),
                beam.pvalue.AsList(reasons),
                beam.pvalue.AsSingleton(inputs["plan"]),
                self.config,
            )
        )
        summary_path = self.summary_path
        _ = summary | "WriteSummary" >> beam.Map(
            lambda s: write_bytes(summary_path, json.dumps(s, sort_keys=True, indent=1).encode("utf-8")))
        return summary


class MakeDataset(beam.PTransform):
    """PCollection of InputFile (and sources' Rejections) -> dataset files under `output`;
    returns the run summary (one dict)."""

    def __init__(self, config: PipelineConfig, output: str, summary_path: str):
        super().__init__()
        self.config = config
        self.output = output
        self.summary_path = summary_path

    def expand(self, inputs):
        config = self.config
        files = inputs | "InputFiles" >> beam.Filter(lambda item: isinstance(item, InputFile))
        source_rejections = inputs | "SourceRejections" >> beam.Filter(lambda item: isinstance(item, Rejection))
        scan = ScanSlicesFn(config.body_hu_threshold, config.blur_model == "respiratory", config.max_lossy_ratio)
        scanned = files | "ScanSlices" >> beam.ParDo(scan).with_outputs(REJECTED, main="slices")
        assembled = scanned.slices | "Assemble" >> AssembleSeries(config)
        plan = assembled["series"] | "PlanDataset" >> PlanDataset(config)
        written = {"series": assembled["series"], "plan": plan} | "WriteShards" >> WriteShards(config, self.output)
        rejected = (source_rejections, scanned[REJECTED], assembled[REJECTED], written[REJECTED]) \
            | "AllRejections" >> beam.Flatten()
        _ = rejected | "WriteDeadLetters" >> WriteDeadLetters(self.output)
        counts = {"files": files, "source_rejections": source_rejections, "slices": scanned.slices,
                  "series": assembled["series"]} | "CountInputs" >> CountInputs()
        return ({"counts": counts, "shards": written["shards"], "rejected": rejected, "plan": plan}
                | "Summarize" >> Summarize(config, self.summary_path))
