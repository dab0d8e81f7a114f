"""`ctdeblur-phantom`: write procedural phantom CT series as DICOM files, without the pipeline."""

from __future__ import annotations

import cli_shell.quiet_start  # noqa: F401  (first: quiets TensorFlow / absl / Google noise unless --verbose)

import argparse
import os
import sys

from cli_shell.command import run_command
from cli_shell.quiet import add_verbose_flag
from pipeline.phantom import BODY_SITES, phantom_series
from pipeline.sources import write_phantom_series


def build_parser() -> argparse.ArgumentParser:
    """The command line of `ctdeblur-phantom`."""
    parser = argparse.ArgumentParser(
        prog="ctdeblur-phantom",
        description="Write procedural CT phantom series (real DICOM CT Image Storage files, int16 with "
                    "rescale to HU) to OUTPUT/<patient>/<series uid>/CT.<index>.dcm. Body sites cycle "
                    f"{', '.join(BODY_SITES)}.")
    parser.add_argument("output", help="directory to write into")
    parser.add_argument("--patients", type=int, default=3, help="number of patients (default 3)")
    parser.add_argument("--slices", type=int, default=40, help="axial slices per series (default 40)")
    parser.add_argument("--size", type=int, default=512, help="matrix size in pixels, square (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed; same seed gives identical files (default 0)")
    add_verbose_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `ctdeblur-phantom`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.patients < 1 or args.slices < 1 or args.size < 32:
        parser.error("need --patients >= 1, --slices >= 1 and --size >= 32")
    return run_command("ctdeblur-phantom", lambda: _write_phantoms(args), user_errors=(OSError,))


def _write_phantoms(args: argparse.Namespace) -> int:
    for patient in range(args.patients):
        series = phantom_series(patient, args.slices, args.size, args.seed)
        paths = write_phantom_series(series, args.output)
        print(f"{series.patient_id} ({series.body_site}): {len(paths)} slices in {os.path.dirname(paths[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
