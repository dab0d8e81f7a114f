"""`ctdeblur-evaluate`: PSNR/SSIM of exported models against the blurry input and the classical
oracles (Wiener, Richardson-Lucy with the true PSF) on a test split: the paper's Table 1.

    ctdeblur-evaluate --model DIR [--model DIR ...] --data DATASET/test [--json F] [--report DIR]
                      [--validation DATASET/train-0] [--preset paper|quick] [--config YAML] [...]

Pairs are streamed from the shards (memory does not grow with the split), the models are called
in batches, and every pair is scored at two HU windows, on the full field of view and inside the
body mask (see `model.metrics`). The Wiener NSR and Richardson-Lucy iterations are chosen on
pairs of a train sub-dataset (`--validation`, default: the test split's sibling `train-0`).
"""

from __future__ import annotations

import cli_shell.quiet_start  # noqa: F401  (first: quiets TensorFlow / absl / Google noise unless --verbose)

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from cli_shell.command import EXIT_OK, UserError, run_command
from cli_shell.quiet import add_verbose_flag
from cli_shell.settings import add_config_flags, config_from_layers, flag_settings, read_yaml_settings
from model.evaluation_engine import Evaluation, EvaluationError, evaluate
from model.evaluation_protocol import PRESETS, RL, WIENER, EvalConfig
from model.evaluation_report import results_json, screen_tables, write_report

def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The config named by --preset, updated by --config YAML, then by explicit flags."""
    layers = [(f"preset {args.preset}", PRESETS[args.preset])]
    if args.config:
        layers.append((args.config, read_yaml_settings(args.config)))
    layers.append(("flags", flag_settings(args, EvalConfig)))
    return config_from_layers(EvalConfig, layers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctdeblur-evaluate",
        description="PSNR/SSIM of exported deblurring models against the blurry input and the Wiener and "
        "Richardson-Lucy oracles (true PSF) on a test split: Table 1 on stdout, and optionally a JSON "
        "file and a report directory (evaluation.md, per_image.csv, figure.png).",
        epilog="See docs/evaluation.md for the protocol and what every number means.",
    )
    parser.add_argument("--model", action="append", default=[], metavar="DIR",
                        help="an exported generator (ctdeblur-train --export DIR); repeat for several; none = baselines only")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="the test split directory of a dataset, e.g. DATASET/test (local or gs://)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON here")
    parser.add_argument("--report", metavar="DIR", help="write evaluation.md, per_image.csv and figure.png here")
    parser.add_argument("--validation", metavar="DIR",
                        help="split whose kernel-blurred pairs choose the Wiener NSR and RL iterations "
                        "(default: train-0 beside the test split)")
    add_verbose_flag(parser)
    add_config_flags(parser, EvalConfig, "evaluation settings (preset < --config YAML < these flags)", PRESETS,
                     "named settings: paper (the protocol's grids), quick (small grids, for demos)")
    return parser


def print_settings(evaluation: Evaluation) -> None:
    """One line on how the Wiener NSR and RL iterations were set."""
    settings = evaluation.settings
    if settings is None:
        if evaluation.config.baselines:
            print(f"{WIENER}, {RL}: n/a for all pairs (no record has an image-space PSF)")
        return
    if settings.tuning_pairs:
        print(f"baselines chosen by mean PSNR on {settings.tuning_pairs} pairs of {evaluation.validation_dir}: "
              f"Wiener NSR {settings.wiener_nsr:g}, Richardson-Lucy {settings.rl_iterations} iterations")
    else:
        print(f"baselines as given: Wiener NSR {settings.wiener_nsr:g}, Richardson-Lucy {settings.rl_iterations} iterations")


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(text)


def write_output(path: str, write: Callable[[], Any]) -> Any:
    """`write()`'s result; EvaluationError naming `path` when it cannot be written."""
    try:
        return write()
    except (tf.errors.OpError, OSError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        raise EvaluationError(f"cannot write {path}: {message.strip()} (does its directory exist, is it writable?)") from error


def _evaluate_command(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as error:
        raise UserError(f"invalid settings: {error}") from error
    evaluation = evaluate(config, args.data, args.model, args.validation)
    print_settings(evaluation)
    print()
    print(screen_tables(evaluation))
    if args.json:
        document = json.dumps(results_json(evaluation, args.data), indent=2, allow_nan=False)
        write_output(args.json, lambda: _write_text(args.json, document))
        print(f"\nJSON: {args.json}")
    if args.report:
        paths = write_output(args.report, lambda: write_report(evaluation, args.data, args.report))
        print(f"\nreport: {paths['report']}\nper-image CSV: {paths['csv']}")
        print(f"figure: {paths['figure']}" if paths["figure"] else "figure: none (--figure_pairs 0)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `ctdeblur-evaluate`."""
    args = build_parser().parse_args(argv)
    return run_command("ctdeblur-evaluate", lambda: _evaluate_command(args))


if __name__ == "__main__":
    sys.exit(main())
