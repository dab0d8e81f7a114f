"""`ctdeblur-shard-stats DIR [--json FILE] [--html FILE] [--examples N]`: inspect a dataset.

Exit status: 0 when every shard reads cleanly, counts match manifest.json and no test patient
is in train; 1 when any problem was found (the tables, JSON and HTML are still written);
2 when the command could not run (bad flags, DIR not a dataset, output not writable).
"""

from __future__ import annotations

import cli_shell.quiet_start  # noqa: F401  (first: quiets TensorFlow / absl / Google noise unless --verbose)

import argparse
import collections
import concurrent.futures
import json
import os
import sys

from cli_shell.command import UserError, run_command
from cli_shell.quiet import add_verbose_flag
from pipeline.stats.config import add_config_flags, config_from_args

DESCRIPTION = """\
Inspect a ctdeblur dataset before training on it. Reads every shard of DIR/test and DIR/train-N
with tf.data, prints per split / sub-dataset / shard: pairs, patients, series, collections,
source kinds, image sizes, HU percentiles of sharp and blurry, PSF extent and trajectory length,
and PSNR/SSIM of blurry vs sharp (HU clipped to --window_hu, data_range = its width). Checks
TFRecord CRCs, record decoding, the schema version, the counts and each shard's sha256 in
manifest.json, files in the split directories that manifest.json does not list, and patient
leakage between test and train."""

EPILOG = """\
exit status: 0 no problem found; 1 problems found (listed last, also in --json "errors");
2 the command could not run (bad flags, DIR is not a dataset, an output cannot be written)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctdeblur-shard-stats",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", metavar="DIR", help="dataset directory written by ctdeblur-make-dataset (holds manifest.json)")
    parser.add_argument("--json", metavar="FILE", help="also write the statistics as JSON to FILE")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report (plots, example pairs) to FILE")
    add_verbose_flag(parser)
    add_config_flags(parser)
    return parser


def _check_output(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"{flag} {path}: directory {directory} does not exist; create it first"
    if os.path.isdir(path):
        return f"{flag} {path} is a directory; give a file name"
    return None


def _write(path: str, text: str, flag: str) -> str | None:
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        return f"cannot write {flag} {path}: {error.strerror or error}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `ctdeblur-shard-stats` (exit status: module docstring)."""
    args = build_parser().parse_args(argv)
    return run_command("ctdeblur-shard-stats", lambda: _shard_stats_command(args))


def _shard_stats_command(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as error:
        raise UserError(str(error)) from error
    if args.examples is not None and not args.html:
        raise UserError("--examples sets the example pairs of the HTML report: add --html FILE")
    for path, flag in ((args.json, "--json"), (args.html, "--html")):
        problem = _check_output(path, flag)
        if problem:
            raise UserError(problem)

    from tqdm import tqdm

    from pipeline.stats.reader import (
        file_sha256,
        find_shards,
        read_dataset,
        read_manifest,
        read_pairs,
    )
    from pipeline.stats.report import choose_examples, collect, to_json
    from pipeline.stats.report_text import render_text

    root = args.dataset.rstrip("/") or "/"
    shards, early_problems = find_shards(root)
    manifest, manifest_problems = read_manifest(root)
    expected = _expected_pairs(manifest)
    with concurrent.futures.ThreadPoolExecutor(1) as hasher:
        hashing = hasher.map(lambda shard: (shard.relative, file_sha256(root, shard)), shards)
        with tqdm(total=expected, unit="pair", desc="reading shards", file=sys.stderr, disable=None) as bar:
            results = read_dataset(root, shards, config, on_record=bar.update)
        digests = {relative: digest for relative, digest in hashing if digest}
    stats = collect(root, config, shards, results, manifest, [*early_problems, *manifest_problems], digests)
    report = to_json(stats)
    print(render_text(report))

    if args.json:
        error = _write(args.json, json.dumps(report, indent=2, allow_nan=False) + "\n", "--json")
        if error:
            raise UserError(error)
        print(f"\nJSON: {args.json}")
    if args.html:
        from pipeline.stats.report_html import Example, render_html

        choices = choose_examples(stats, config.examples)
        wanted = collections.defaultdict(list)
        for choice in choices:
            wanted[choice.shard].append(choice.record_index)
        pairs = {shard: read_pairs(root, shard, indices) for shard, indices in wanted.items()}
        examples = [
            Example(c.shard.relative, c.record_index, pairs[c.shard][c.record_index], c.psnr_db, c.ssim) for c in choices
        ]
        error = _write(args.html, render_html(stats, report, examples), "--html")
        if error:
            raise UserError(error)
        print(f"\nHTML report: {os.path.abspath(args.html)}")
    return 0 if stats.ok else 1


def _expected_pairs(manifest: dict | None) -> int | None:
    """Pairs the manifest lists over all shards (the progress bar's total), if it says."""
    try:
        return sum(int(entry["pairs"]) for split in manifest["splits"].values() for entry in split["shards"])
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
