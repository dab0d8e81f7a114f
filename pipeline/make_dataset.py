"""`ctdeblur-make-dataset`: CT series -> blur-sharp TFRecord dataset, with an Apache Beam pipeline.

Runs on the DirectRunner (laptop) or any Beam runner such as Dataflow: every flag this command
does not know is handed to Beam's PipelineOptions.
"""

from __future__ import annotations

import cli_shell.quiet_start  # noqa: F401  (first: quiets TensorFlow / absl / Google noise unless --verbose)

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import threading
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from cli_shell.command import EXIT_FAILED, EXIT_OK, UserError, run_command
from cli_shell.quiet import add_verbose_flag
from pipeline.archive_sources import read_pairs_manifest
from pipeline.archives.idc import collections_with_ct, list_idc_series
from pipeline.archives.series import ArchiveError, SeriesListing, collection_names
from pipeline.archives.tcia import list_series
from pipeline.config import PipelineConfig, add_config_flags, config_from_args
from pipeline.files import read_bytes, write_bytes
from pipeline.sources import SOURCES, ReadSource
from pipeline.transforms import NAMESPACE, MakeDataset
from tfrecords_schema import (
    DEAD_LETTER_NAME,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    TEST_DIR,
    UNSELECTED_NAME,
    VALIDATION_DIR,
)

SUMMARY_NAME = "_run_summary.json"
REGISTERED_DIR = "_registered"
"""Registered FB slices, kept while the run writes its shards."""
VERSION = "0.1.0"

DESCRIPTION = """\
Make a blur-sharp CT dataset: read CT series, convert to HU, pick slices with body spread evenly
in z, blur each with a random camera-shake motion kernel (Boracchi-Foi, as DeblurGAN) and write
sharded TFRecords: OUTPUT/test/ (patient-disjoint) and OUTPUT/train-0/ .. train-N/, plus
OUTPUT/manifest.json (counts, config, accounting) and dead-letter JSONL files naming every input
that was not used and why.
"""

EPILOG = """\
Apache Beam options are passed through, for example:
  --runner DirectRunner|DataflowRunner   --direct_num_workers 2 --direct_running_mode multi_processing
  --temp_location gs://BUCKET/tmp  --project P --region R  --setup_file ./setup.py
Same inputs + settings + --seed give byte-identical shards whatever the runner's parallelism.

examples:
  ctdeblur-make-dataset --preset demo --source phantom --source pydicom-samples --output demo_output
  ctdeblur-make-dataset --source dicom-dir --input /data/ct --collection MYCOHORT --output ds
  ctdeblur-make-dataset --source idc --source tcia --output ds   # the paper's four collections: each from
                                                                # IDC where IDC has its CT, else from TCIA
  ctdeblur-make-dataset --source idc --collections CPTAC-LUAD,TCGA-SARC --output ds
  ctdeblur-make-dataset --source pairs --pairs_manifest pairs.csv --output ds
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctdeblur-make-dataset", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", choices=SOURCES,
                        help="input source, repeatable to combine: phantom (embedded procedural CT phantoms "
                             "written as DICOM), pydicom-samples (real CT files shipped with pydicom), "
                             "dicom-dir (every file under --input), tcia (TCIA NBIA API, --collections), "
                             "idc (NCI Imaging Data Commons, --collections), pairs (registered free-breathing / "
                             "breath-hold CT pairs, --pairs_manifest). Default: phantom")
    parser.add_argument("--input", help="directory (local or gs://) or single file for --source dicom-dir")
    parser.add_argument("--pairs_manifest", help="CSV for --source pairs: patient_id,fb_series,dibh_series[,transform] "
                                                 "(series directories and ITK transform files, local or gs://)")
    parser.add_argument("--output", required=True, help="dataset directory to create (local or gs://)")
    parser.add_argument("--phantom_dir", help="where --source phantom writes its DICOM series (default OUTPUT/phantom_dicom)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset in OUTPUT (its splits, manifest and dead letters)")
    add_verbose_flag(parser, "also log each series and shard")
    add_config_flags(parser)
    return parser


def _dataset_entries(output: str) -> list[str]:
    """Paths of a previous dataset's files and directories inside `output` (local only)."""
    if not os.path.isdir(output):
        return []
    names = {MANIFEST_NAME, DEAD_LETTER_NAME, UNSELECTED_NAME, SUMMARY_NAME, REGISTERED_DIR, TEST_DIR, VALIDATION_DIR}
    return sorted(os.path.join(output, n) for n in os.listdir(output)
                  if n in names or (n.startswith("train-") and n[6:].isdigit()))


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuses to mix two datasets: an existing one is replaced only with --overwrite."""
    if "://" in output:
        if FileSystems.exists(FileSystems.join(output, MANIFEST_NAME)) and not overwrite:
            raise UserError(f"{output} already holds a dataset; pass --overwrite or choose another --output")
        return
    entries = _dataset_entries(output)
    if entries and not overwrite:
        raise UserError(f"{output} already holds a dataset ({os.path.basename(entries[0])} ...); "
                        "pass --overwrite to replace it or choose another --output")
    for path in entries:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(output, exist_ok=True)


class _ShardProgress(threading.Thread):
    """Reports finished shard files while the pipeline runs: a bar on a terminal, else a line
    whenever the count changed and 15 s passed."""

    def __init__(self, output: str):
        super().__init__(daemon=True)
        self.output = output
        self.done = threading.Event()

    def _count(self) -> int | None:
        try:
            return len(FileSystems.match([FileSystems.join(self.output, "*", "pairs-*")])[0].metadata_list)
        except Exception:  # the split directories do not exist yet
            return None

    def run(self) -> None:
        from tqdm import tqdm

        if sys.stderr.isatty():
            with tqdm(desc="shards written", unit="shard", file=sys.stderr) as bar:
                while not self.done.wait(1.0):
                    bar.update((self._count() or 0) - bar.n)
                bar.update((self._count() or 0) - bar.n)
            return
        reported, last = 0, time.monotonic()
        while not self.done.wait(1.0):
            count = self._count() or 0
            if count != reported and time.monotonic() - last >= 15:
                print(f"ctdeblur-make-dataset: {count} shard files written so far", file=sys.stderr, flush=True)
                reported, last = count, time.monotonic()


def _counters(result) -> dict[str, int]:
    counters: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        counters[metric.key.metric.name] = counters.get(metric.key.metric.name, 0) + int(value or 0)
    return dict(sorted(counters.items()))


def build_manifest(summary: dict, counters: dict, config: PipelineConfig, sources: list[str], seconds: float) -> dict:
    """The manifest: counts per split, inputs, rejections by reason, accounting, leakage check."""
    rejected_total = sum(summary["rejected"].values())
    keys = summary["patient_keys"]
    test_keys = set(keys.get(TEST_DIR, []))
    validation_keys = set(keys.get(VALIDATION_DIR, []))
    train_keys = set().union(*(set(v) for k, v in keys.items() if k not in (TEST_DIR, VALIDATION_DIR))) if keys else set()
    return {
        "schema_version": SCHEMA_VERSION,
        "ctdeblur_version": VERSION,
        "sources": sources,
        "compression": config.compression,
        "config": summary["config"],
        "splits": summary["splits"],
        "inputs": summary["inputs"],
        "written": summary["written"],
        "rejected": summary["rejected"],
        "rejected_series": summary["rejected_series"],
        "accounting": {
            "slices_read": summary["inputs"]["slices"],
            "slices_written": summary["written"]["slices"],
            "slices_rejected": rejected_total,
            "balanced": summary["inputs"]["slices"] == summary["written"]["slices"] + rejected_total,
        },
        "leakage": {"patients_in_test_and_train": len(test_keys & train_keys),
                    "patients_in_validation_and_train": len(validation_keys & train_keys),
                    "patients_in_test_and_validation": len(test_keys & validation_keys)},
        "plan": summary["plan"],
        "warnings": summary["warnings"],
        "dead_letters": {"problems": DEAD_LETTER_NAME, "unselected": UNSELECTED_NAME},
        "counters": counters,
        "run_seconds": round(seconds, 1),
    }


def print_summary(manifest: dict, output: str, stream=sys.stdout) -> None:
    """One screen: where the dataset is, pairs per split, accounting, rejection reasons."""
    write = lambda line="": print(line, file=stream)  # noqa: E731
    config = manifest["config"]
    write(f"\nDataset written to {output}")
    compression = "uncompressed" if manifest["compression"] == "none" else manifest["compression"]
    write(f"  schema v{manifest['schema_version']}, {compression} TFRecord shards, seed {config['seed']}, "
          f"sources: {', '.join(manifest['sources'])}")
    write(f"  {'split':<11}{'pairs':>8}{'patients':>10}{'series':>8}{'shards':>8}")
    order = {TEST_DIR: 0, VALIDATION_DIR: 1}
    for name, split in sorted(manifest["splits"].items(), key=lambda kv: (order.get(kv[0], 2), kv[0])):
        write(f"  {name:<11}{split['pairs']:>8}{split['patients']:>10}{split['series']:>8}{len(split['shards']):>8}")
    written, inputs, accounting = manifest["written"], manifest["inputs"], manifest["accounting"]
    write(f"  {'total':<11}{written['pairs']:>8}")
    write(f"  inputs: {inputs['files']} files, {inputs['series']} series; slices read {accounting['slices_read']} = "
          f"written {accounting['slices_written']} + rejected {accounting['slices_rejected']}"
          f"{'' if accounting['balanced'] else '  (MISMATCH: please report)'}")
    for reason, count in manifest["rejected"].items():
        write(f"    {reason:<28}{count:>7}")
    if manifest["rejected_series"]:
        write(f"  series not read: {sum(manifest['rejected_series'].values())}")
        for reason, count in manifest["rejected_series"].items():
            write(f"    {reason:<28}{count:>7}")
    leakage = manifest["leakage"]
    write(f"  test/train patient overlap: {leakage['patients_in_test_and_train']}"
          + ("" if VALIDATION_DIR not in manifest["splits"] else
             f", validation/train: {leakage['patients_in_validation_and_train']}, "
             f"test/validation: {leakage['patients_in_test_and_validation']}"))
    for warning in manifest["warnings"]:
        write(f"  WARNING: {warning}")
    write(f"  dead letters: {FileSystems.join(output, DEAD_LETTER_NAME)} (problems), "
          f"{FileSystems.join(output, UNSELECTED_NAME)} (valid but not selected)")
    write(f"  manifest: {FileSystems.join(output, MANIFEST_NAME)}   ({manifest['run_seconds']} s)")


def _note(message: str) -> None:
    print(f"ctdeblur-make-dataset: {message}", file=sys.stderr)


def list_sources(config: PipelineConfig, sources: list[str], pairs_manifest: str | None) -> dict:
    """What the archive sources will fetch, listed before the pipeline starts (fails fast).

    With both `idc` and `tcia`, each collection is read from IDC when IDC has its CT and from
    TCIA otherwise (TCIA is moving public DICOM access to IDC; IDC serves from cloud buckets).
    """
    listings: dict = {}
    collections = collection_names(config.collections)
    tcia_collections = collections
    try:
        if "idc" in sources:
            try:
                listings["idc"] = list_idc_series(collections, config.idc_index or None, config.series_filter)
            except ArchiveError as error:
                if "tcia" not in sources or error.reason != "no_ct_in_idc":
                    raise
                listings["idc"] = SeriesListing((), (), ())
            if "tcia" in sources:
                in_idc = {record.collection for record in listings["idc"].kept}
                in_idc |= {record.collection for record, _ in listings["idc"].dropped}
                tcia_collections = tuple(name for name in collections if name not in in_idc)
                unavailable = tuple(item for item in listings["idc"].unavailable if item[0] not in tcia_collections)
                listings["idc"] = listings["idc"]._replace(unavailable=unavailable)
                from_idc = [name for name in collections if name in in_idc]
                _note(f"collections from IDC: {', '.join(from_idc) or 'none'}; from TCIA: "
                      f"{', '.join(tcia_collections) or 'none'}")
        if "tcia" in sources:
            if tcia_collections:
                listings["tcia"] = list_series(dataclasses.replace(config.tcia_config(), collections=tcia_collections))
            else:
                listings["tcia"] = SeriesListing((), (), ())
            if "idc" not in sources:
                in_idc = collections_with_ct(tcia_collections, config.idc_index or None)
                if in_idc:
                    _note(f"IDC holds the CT of {', '.join(in_idc)}: add --source idc to read it from IDC's buckets "
                          "instead of TCIA's server (recommended; TCIA is moving public DICOM access to IDC)")
        if "pairs" in sources:
            listings["pairs"] = read_pairs_manifest(pairs_manifest)
    except ArchiveError as error:
        raise UserError(f"cannot list the archive ({error.reason}): {error.detail}") from error
    except (OSError, ValueError) as error:
        raise UserError(str(error)) from error
    for name in ("tcia", "idc"):
        if name in listings:
            for collection, message in listings[name].unavailable:
                _note(f"warning: {name} {collection}: {message}")
    return listings


REASON_SETTINGS = {
    "filtered_too_few_slices": ("--series_filter_min_slices", ("series_filter", "min_slices")),
    "filtered_description_excluded": ("--series_filter_description_exclude", ("series_filter", "description_exclude")),
    "filtered_description_not_included": ("--series_filter_description_include",
                                          ("series_filter", "description_include")),
    "filtered_over_patient_limit": ("--series_filter_max_series_per_patient",
                                    ("series_filter", "max_series_per_patient")),
    "collection_unavailable": ("--collections", ("collections",)),
    "low_body_fraction": ("--min_body_fraction", ("min_body_fraction",)),
    "not_selected_z_stride": ("--target_pairs", ("target_pairs",)),
    "registration_rejected": ("--registration_min_ncc", ("registration", "min_ncc")),
    "outside_registered_fb": ("--registration_min_slice_coverage", ("registration", "min_slice_coverage")),
    "missing_series_files": ("--idc_bucket_root", ("idc_bucket_root",)),
}
"""Rejection reason -> the flag (and config path) that decides it, for the zero-pairs message."""


def zero_pairs_message(manifest: dict, output: str) -> str:
    """One line saying why a run wrote no pair: its biggest rejection reason (slices first, as
    they are the last step; series when no slice was read), the flag that controls it and, when
    valid slices were left unselected, the plan's warnings (e.g. a single patient cannot give a
    patient-disjoint test split)."""
    slices, series = manifest.get("rejected", {}), manifest.get("rejected_series", {})
    counts, unit = (slices, "slices") if slices else (series, "series")
    details = FileSystems.join(output, MANIFEST_NAME)
    if not counts:
        return f"no pairs written: no input was found (check --source and its input); details in {details}"
    reason, count = max(counts.items(), key=lambda item: (item[1], item[0]))
    total = sum(counts.values())
    line = f"no pairs written: the biggest rejection reason is {reason} ({count} of {total} {unit} rejected)"
    if reason in REASON_SETTINGS:
        flag, path = REASON_SETTINGS[reason]
        value: object = manifest.get("config", {})
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        line += f"; {flag} controls it (now {shown})"
    if slices.get("not_selected_z_stride"):  # valid slices the plan could not use: say why
        for warning in manifest.get("warnings", []):
            line += f"; {warning}"
    return f"{line}; details in {details}"


def build_pipeline(config: PipelineConfig, sources: list[str], input_path: str | None, output: str,
                   phantom_dir: str, options: PipelineOptions, listings: dict | None = None) -> beam.Pipeline:
    """The dataset pipeline graph, not yet run (any runner: Direct, Dataflow, ...)."""
    pipeline = beam.Pipeline(options=options)
    work_dir = FileSystems.join(output, REGISTERED_DIR)
    inputs = [pipeline | f"Read_{source}" >> ReadSource(source, config, input_path, phantom_dir,
                                                        (listings or {}).get(source), work_dir)
              for source in sources]
    files = inputs | "AllInputs" >> beam.Flatten()
    _ = files | "MakeDataset" >> MakeDataset(config, output, FileSystems.join(output, SUMMARY_NAME))
    return pipeline


def run(argv: list[str] | None = None, save_main_session: bool = True) -> dict:
    """Builds and runs the pipeline; returns the manifest (also written to OUTPUT/manifest.json)."""
    args, beam_args = build_parser().parse_known_args(argv)
    return run_parsed(args, beam_args, save_main_session)


def run_parsed(args: argparse.Namespace, beam_args: list[str], save_main_session: bool = True) -> dict:
    """`run` for a parsed command line: our flags in `args`, Beam's in `beam_args`."""
    try:
        config = config_from_args(args)
        config = dataclasses.replace(config, collections=collection_names(config.collections)).validate()
    except (ValueError, OSError) as error:
        raise UserError(f"invalid settings: {error}") from error
    sources = args.source or ["phantom"]
    if "dicom-dir" in sources and not args.input:
        raise UserError("--source dicom-dir needs --input DIR")
    if args.input and "dicom-dir" not in sources:
        raise UserError("--input is only used with --source dicom-dir")
    if ("pairs" in sources) != bool(args.pairs_manifest):
        raise UserError("--source pairs and --pairs_manifest CSV go together")
    if len(set(sources)) != len(sources):
        raise UserError(f"--source given twice: {sources}")
    output = args.output.rstrip("/")
    listings = list_sources(config, sources, args.pairs_manifest)
    prepare_output(output, args.overwrite)
    phantom_dir = args.phantom_dir or FileSystems.join(output, "phantom_dicom")

    options = PipelineOptions(beam_args, save_main_session=save_main_session)
    summary_path = FileSystems.join(output, SUMMARY_NAME)
    progress = _ShardProgress(output)
    started = time.monotonic()
    progress.start()
    try:
        pipeline = build_pipeline(config, sources, args.input, output, phantom_dir, options, listings)
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        progress.done.set()
        progress.join()
    summary = json.loads(read_bytes(summary_path))
    manifest = build_manifest(summary, _counters(result), config, sources, time.monotonic() - started)
    write_bytes(FileSystems.join(output, MANIFEST_NAME), json.dumps(manifest, indent=2, sort_keys=True).encode())
    FileSystems.delete([summary_path])
    registered = FileSystems.join(output, REGISTERED_DIR)
    if FileSystems.exists(registered):
        FileSystems.delete([registered])
    return manifest


def _make_dataset_command(args: argparse.Namespace, beam_args: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ctdeblur").setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    try:
        manifest = run_parsed(args, beam_args)
    except FileNotFoundError as error:
        raise UserError(str(error)) from error
    output = args.output.rstrip("/")
    if manifest["written"]["pairs"] == 0:
        print(f"ctdeblur-make-dataset: error: {zero_pairs_message(manifest, output)}", file=sys.stderr)
        return EXIT_FAILED
    print_summary(manifest, output)
    return EXIT_OK if manifest["accounting"]["balanced"] else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `ctdeblur-make-dataset`: 0 done, 1 nothing written or accounts not
    balanced, 2 bad command line or output."""
    args, beam_args = build_parser().parse_known_args(argv)
    return run_command("ctdeblur-make-dataset", lambda: _make_dataset_command(args, beam_args))


if __name__ == "__main__":
    sys.exit(main())
