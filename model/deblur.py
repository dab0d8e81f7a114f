"""`ctdeblur-deblur INPUT OUTPUT --model DIR`: deblur a CT series into a new DICOM series.

    ctdeblur-deblur INPUT OUTPUT --model DIR [--format dicom|png|nifti] [--series_uid UID]
                    [--batch_size N] [--overwrite] [--config YAML] [--FLAG VALUE ...]

INPUT: a DICOM series directory (searched recursively), a single file, a multi-frame (Enhanced)
CT file or a zip of any of these (see `model.dicom_series` for what is read and skipped).
OUTPUT: a new directory. `dicom` writes `CT.00001.dcm`, `CT.00002.dcm`, ... numbered along the
slice normal (one `CT.00001.dcm` per multi-frame input file, kept multi-frame); `png` writes
windowed 8-bit `CT.00001.png`, ...; `nifti` writes `deblurred.nii.gz` (float32 HU).
The output is written into a temporary sibling directory and renamed to OUTPUT at the end, so a
failed or interrupted run leaves nothing behind. docs/deblur.md describes the output series.
"""

from __future__ import annotations

import cli_shell.quiet_start  # noqa: F401  (first: quiets TensorFlow / absl / Google noise unless --verbose)

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import typing
from collections.abc import Sequence

import numpy as np

from ct_io.dicom import LOSSY_RATIO_LIMIT
from ct_io.errors import CTInputError
from ct_io.hu import stored_from_hu, with_air
from ct_io.series import CTSeries
from cli_shell.command import UserError, run_command
from cli_shell.quiet import add_verbose_flag
from cli_shell.settings import add_config_flags, config_from_layers, flag_settings, read_yaml_settings
from cli_shell.settings import setting as _field
from model.config import PRECISIONS
from model.dicom_series import (
    DecodedObject,
    Derivation,
    InputFiles,
    SeriesError,
    checked_series,
    derived_dataset,
    derived_uid,
    iter_decoded,
    output_padding_value,
    scan_input,
    select_series,
    write_dataset,
)

PROG = "ctdeblur-deblur"
FORMATS = ("dicom", "png", "nifti")
NIFTI_NAME = "deblurred.nii.gz"
OUTPUT_FILE_PATTERN = re.compile(r"^(CT\.\d{5,}\.(dcm|png)|deblurred\.nii\.gz)$")
"""Names this tool writes; --overwrite replaces only directories holding nothing else."""
SERIES_DESCRIPTION_MAX = 64
DERIVATION_DESCRIPTION_MAX = 1024


class DeblurError(UserError):
    """A problem with OUTPUT, the model or the settings; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DeblurConfig:
    """Settings of `ctdeblur-deblur`. Batch and thread defaults are the fastest measured on 2 CPU
    cores (bench/inference.py, BENCHMARKS.md)."""

    format: str = _field("dicom", "output: dicom (a new series), png (windowed 8-bit images) or nifti (one float32 HU volume)",
                         choices=FORMATS)
    batch_size: int = _field(4, "slices per generator call; 4 was fastest on 2 CPU cores (bench/inference.py); peak memory of "
                                "the paper generator at 512x512: about 0.95 GB at 1, 1.55 GB at 4, 2.3 GB at 8")
    threads: int = _field(0, "CPU threads of TensorFlow's intra-op pool; 0 = one per core")
    precision: str = _field("float32", "generator arithmetic: float32, or bf16 (bfloat16 convolutions; skip, normalisation "
                                       "and HU mapping in float32): several times faster on CPUs with AMX, within a few "
                                       "HU of float32 (BENCHMARKS.md)", choices=PRECISIONS)
    series_description_suffix: str = _field(" deblurred", "appended to SeriesDescription (the result is cut to 64 characters)")
    series_number_offset: int = _field(1000, "SeriesNumber of the new series = the input's + this")
    png_window_hu: tuple[float, float] = _field((-1000.0, 1000.0), "HU window mapped to black..white in PNG output")
    missing_rescale: str = _field("error", "images without RescaleSlope/Intercept: error, or identity (stored values are HU)",
                                  choices=("error", "identity"))

    def validate(self) -> DeblurConfig:
        """Returns self, or raises ValueError naming the bad setting."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if len(self.png_window_hu) != 2 or not self.png_window_hu[0] < self.png_window_hu[1]:
            raise ValueError(f"png_window_hu must be two HU values low < high, got {self.png_window_hu}")
        return self


def passthrough_mask(hu: np.ndarray, padding: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Pixels whose input HU is kept: padding and HU outside the model's window, which the
    generator can only return clipped to the window (metal above it, no-data markers below)."""
    return padding | (hu < window[0]) | (hu > window[1])


def merge_restored(hu: np.ndarray, restored: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The generator's HU, with the input HU where `keep` is set (float32, layout of `hu`)."""
    return np.where(keep, hu, restored).astype(np.float32)


def png_pixels(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """uint8 [H, W] grey levels of HU `[H, W]`: window low -> 0, high -> 255, clipped."""
    low, high = window
    return np.rint(np.clip((hu - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def series_description(description: str, suffix: str) -> str:
    """`description` + `suffix`, the description shortened so that the result fits LO (64 chars);
    the suffix alone, stripped, when there is no description."""
    if not description.strip():
        return suffix.strip()[:SERIES_DESCRIPTION_MAX]
    return description[: max(0, SERIES_DESCRIPTION_MAX - len(suffix))] + suffix[:SERIES_DESCRIPTION_MAX]


def export_digest(export_dir: str) -> str:
    """sha256 (hex) of an export directory: relative paths and contents of all its files."""
    import tensorflow as tf

    digest = hashlib.sha256()
    files = []
    for root, _, names in tf.io.gfile.walk(export_dir):
        files += [os.path.join(root, name) for name in names]
    for path in sorted(files):
        digest.update(os.path.relpath(path, export_dir).encode() + b"\0")
        with tf.io.gfile.GFile(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def derivation_text(name: str, path: str, digest: str, window: Sequence[float]) -> str:
    """DerivationDescription naming the model (fits ST, 1024 characters)."""
    text = (f"Motion deblurring by ctdeblur-deblur with the generator {name!r} (export sha256 {digest[:16]}, "
            f"HU window [{window[0]:g}, {window[1]:g}]) from {path}")
    return text[:DERIVATION_DESCRIPTION_MAX]


@dataclasses.dataclass
class WriteStats:
    """Counts over the written slices: pixels clipped to int16, pixels whose input HU was kept, and
    the seconds spent decoding, deblurring and writing them."""

    slices: int = 0
    clipped_pixels: int = 0
    kept_pixels: int = 0
    seconds: float = 0.0


class DicomWriter:
    """Writes each input file's derived dataset: `CT.<rank>.dcm` (rank 1 = lowest along the normal),
    or `CT.<k>.dcm` for the k-th multi-frame input file."""

    def __init__(self, directory: str, series: CTSeries, derivation: Derivation):
        self.directory = directory
        self.series = series
        self.derivation = derivation
        self.ranks = {(f.source, f.frame_index): i for i, f in enumerate(series.frames)}
        self.objects_written = 0

    def write(self, obj: DecodedObject, hu: np.ndarray, stats: WriteStats) -> None:
        padding_value = output_padding_value(obj.dataset)
        stored = np.empty(hu.shape, np.int16)
        for i, frame in enumerate(obj.frames):
            stored[i], clipped = stored_from_hu(hu[i], *frame.rescale)
            stats.clipped_pixels += int(np.count_nonzero(clipped & ~obj.padding[i]))
        if padding_value is not None:
            stored[obj.padding] = padding_value
        dataset = derived_dataset(obj.dataset, stored, padding_value, self.derivation, obj.frames[0].rescale)
        self.objects_written += 1
        number = self.objects_written if self.series.multiframe else self.ranks[(obj.source, None)] + 1
        write_dataset(dataset, os.path.join(self.directory, f"CT.{number:05d}.dcm"))

    def close(self) -> None:
        """Nothing to finish: every file is complete when written."""


class PngWriter:
    """Writes `CT.<rank>.png` per slice (rank 1 = lowest along the normal), windowed 8-bit grey."""

    def __init__(self, directory: str, series: CTSeries, window: tuple[float, float]):
        self.directory = directory
        self.window = window
        self.ranks = {(f.source, f.frame_index): i for i, f in enumerate(series.frames)}

    def write(self, obj: DecodedObject, hu: np.ndarray, stats: WriteStats) -> None:
        from PIL import Image

        for i, frame in enumerate(obj.frames):
            rank = self.ranks[(frame.source, frame.frame_index)] + 1
            Image.fromarray(png_pixels(hu[i], self.window), mode="L").save(os.path.join(self.directory, f"CT.{rank:05d}.png"))

    def close(self) -> None:
        """Nothing to finish: every image is complete when written."""


class NiftiWriter:
    """Collects the slices in stack order and writes `deblurred.nii.gz` (float32 HU) at the end,
    with the series' spacing, origin and direction (SimpleITK)."""

    def __init__(self, directory: str, series: CTSeries):
        self.path = os.path.join(directory, NIFTI_NAME)
        self.series = series
        self.ranks = {(f.source, f.frame_index): i for i, f in enumerate(series.frames)}
        self.volume = np.zeros((len(series.frames), series.rows, series.columns), np.float32)

    def write(self, obj: DecodedObject, hu: np.ndarray, stats: WriteStats) -> None:
        for i, frame in enumerate(obj.frames):
            self.volume[self.ranks[(frame.source, frame.frame_index)]] = hu[i]

    def close(self) -> None:
        import SimpleITK as sitk

        first = self.series.frames[0]
        image = sitk.GetImageFromArray(self.volume)
        spacing = self.series.slice_spacing_mm
        slice_spacing = float(np.mean(spacing)) if spacing else (first.slice_thickness_mm or 1.0)
        image.SetSpacing((first.pixel_spacing_mm[1], first.pixel_spacing_mm[0], slice_spacing))
        image.SetOrigin(first.position_mm)
        row, column = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
        image.SetDirection(tuple(np.column_stack([row, column, self.series.normal]).ravel()))
        sitk.WriteImage(image, self.path, useCompression=True)


class OutputDirectory(contextlib.AbstractContextManager):
    """OUTPUT written atomically: a temporary sibling directory renamed to OUTPUT by `commit()`.

    Without `commit()` (error, Ctrl-C, SIGTERM) the temporary directory and any parent directories
    created for it are removed. An existing OUTPUT must be empty, or, with `overwrite`, hold only
    files this tool writes.
    """

    def __init__(self, output: str, overwrite: bool, input_path: str):
        self.output = os.path.abspath(output)
        self.overwrite = overwrite
        self.temporary: str | None = None
        self.created_parents: list[str] = []
        self.committed = False
        check_output(self.output, overwrite, os.path.abspath(input_path))

    def __enter__(self) -> typing.Self:
        parent = os.path.dirname(self.output)
        missing = parent
        while not os.path.exists(missing):
            self.created_parents.append(missing)
            missing = os.path.dirname(missing)
        os.makedirs(parent, exist_ok=True)
        self.temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(self.output)}.partial-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.temporary, 0o777 & ~umask)
        return self

    def commit(self) -> None:
        """Moves the finished output to OUTPUT (replacing an existing one)."""
        assert self.temporary is not None
        check_output(self.output, self.overwrite, None)
        old = None
        if os.path.exists(self.output):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.output)}.old-", dir=os.path.dirname(self.output))
            os.rename(self.output, os.path.join(old, "output"))
        os.rename(self.temporary, self.output)
        self.committed = True
        if old is not None:
            shutil.rmtree(old)

    def __exit__(self, *exc_info) -> None:
        if self.committed or self.temporary is None:
            return
        shutil.rmtree(self.temporary, ignore_errors=True)
        for directory in self.created_parents:
            with contextlib.suppress(OSError):
                os.rmdir(directory)


def check_output(output: str, overwrite: bool, input_path: str | None) -> None:
    """Raises DeblurError if OUTPUT may not be (re)placed: a file, a non-empty directory without
    `overwrite`, a directory holding files this tool does not write, or one holding INPUT."""
    if not os.path.lexists(output):
        return
    if not os.path.isdir(output) or os.path.islink(output):
        raise DeblurError(f"OUTPUT {output} exists and is not a directory; choose a new directory")
    if input_path is not None:
        real_output, real_input = os.path.realpath(output), os.path.realpath(input_path)
        if os.path.commonpath([real_output, real_input]) == real_output:
            raise DeblurError(f"OUTPUT {output} holds INPUT {input_path}; choose another OUTPUT")
    entries = sorted(os.listdir(output))
    if not entries:
        return
    if not overwrite:
        raise DeblurError(f"OUTPUT {output} exists and is not empty; pass --overwrite to replace it or choose a new directory")
    foreign = [e for e in entries if not (OUTPUT_FILE_PATTERN.match(e) and os.path.isfile(os.path.join(output, e)))]
    if foreign:
        raise DeblurError(f"OUTPUT {output} holds files ctdeblur-deblur does not write ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); --overwrite only replaces earlier outputs of this "
                          "tool: remove the directory yourself or choose a new one")


@dataclasses.dataclass
class _Pending:
    obj: DecodedObject
    restored: np.ndarray
    remaining: int


def deblur_objects(files: InputFiles, series: CTSeries, deblur, window: tuple[float, float], batch_size: int,
                   writer, stats: WriteStats, progress=None) -> None:
    """Decodes the series file by file, deblurs its slices `batch_size` at a time with `deblur`
    (HU `[B, H, W]` -> HU `[B, H, W]`), keeps the input HU where `passthrough_mask` says, and
    hands each file's restored HU `[F, H, W]` to `writer.write` as soon as it is complete."""
    batch: list[tuple[_Pending, int, np.ndarray]] = []

    def flush() -> None:
        restored = deblur(np.stack([net for _, _, net in batch]))
        for (pending, index, _), hu in zip(batch, restored):
            pending.restored[index] = hu
            pending.remaining -= 1
            if pending.remaining == 0:
                obj = pending.obj
                keep = passthrough_mask(obj.hu, obj.padding, window)
                stats.kept_pixels += int(np.count_nonzero(keep))
                writer.write(obj, merge_restored(obj.hu, pending.restored, keep), stats)
        stats.slices += len(batch)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for obj in iter_decoded(files, series):
        pending = _Pending(obj, np.empty_like(obj.hu), len(obj.frames))
        net = with_air(obj.hu, obj.padding)
        for index in range(len(obj.frames)):
            batch.append((pending, index, net[index]))
            if len(batch) == batch_size:
                flush()
    if batch:
        flush()


def configure_threads(threads: int) -> str | None:
    """Sets TensorFlow's thread pools before its first op: `threads` intra-op threads (0 = one per
    core) and one inter-op thread (the generator is one chain of convolutions). When TensorFlow
    already runs in this process (`main` called from Python after other TensorFlow work), its
    pools cannot change and stay as they are: returns a note saying so if `threads` was asked for."""
    import tensorflow as tf

    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        return (f"note: --threads {threads} not applied: TensorFlow already runs in this process with "
                f"{tf.config.threading.get_intra_op_parallelism_threads() or 'one per core'} intra-op threads"
                if threads else None)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Deblur a CT series with an exported ctdeblur generator and write the result as a new DICOM "
                    "series (same geometry, patient and study; new UIDs; ImageType DERIVED\\SECONDARY), or as PNG "
                    "images or a NIfTI volume. See docs/deblur.md.",
    )
    parser.add_argument("input", metavar="INPUT", help="DICOM series directory (searched recursively), single "
                        "DICOM file, multi-frame Enhanced CT file, or zip archive of these")
    parser.add_argument("output", metavar="OUTPUT", help="new directory to write (must not exist or be empty, "
                        "see --overwrite)")
    parser.add_argument("--model", required=True, metavar="DIR", help="exported generator (ctdeblur-train --export DIR)")
    parser.add_argument("--series_uid", metavar="UID", help="the SeriesInstanceUID to deblur when INPUT holds several series")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT written by this tool")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars on stderr (default: on)")
    add_verbose_flag(parser)
    add_config_flags(parser, DeblurConfig, "settings (defaults < --config YAML < these flags)")
    return parser


def config_from_args(args: argparse.Namespace) -> DeblurConfig:
    """Defaults, updated by --config YAML, then by explicit flags (DeblurError naming the setting)."""
    try:
        layers = [(args.config, read_yaml_settings(args.config))] if args.config else []
        return config_from_layers(DeblurConfig, [*layers, ("flags", flag_settings(args, DeblurConfig))])
    except ValueError as error:
        raise DeblurError(str(error)) from error


def _bar(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="slice" if description == "deblurring" else "file",
                file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def run(args: argparse.Namespace, config: DeblurConfig) -> int:
    """Scans INPUT, checks OUTPUT, loads the model, deblurs and writes; prints the summary."""
    started = time.perf_counter()
    output = OutputDirectory(args.output, args.overwrite, args.input)
    with InputFiles(args.input) as files:
        with _bar(len(files.sources), "reading headers", args.progress) as bar:
            found, report = scan_input(files, config.missing_rescale, progress=lambda: bar.update(1))
        chosen = select_series(found, report, args.input, args.series_uid)
        series = checked_series(chosen)
        if chosen.lossy_ratio is not None and chosen.lossy_ratio > LOSSY_RATIO_LIMIT:
            print(f"{PROG}: warning: series {chosen.series_uid} was compressed lossily at {chosen.lossy_ratio:.0f}:1 "
                  "(LossyImageCompressionRatio): the model learnt from sharp, lossless CT and may sharpen the "
                  "compression's smoothing as if it were motion (docs/training.md)", file=sys.stderr)
        if config.format == "nifti":
            problem = series.regular_grid_problem()
            if problem:
                raise SeriesError(f"series {series.series_uid} cannot be one NIfTI volume: {problem}; "
                                  "use --format dicom, which keeps each slice's own position")

        from model.export import ExportError, load_exported_generator

        note = configure_threads(config.threads)
        if note:
            print(note, file=sys.stderr)
        try:
            model = load_exported_generator(args.model, config.precision)
        except ExportError as error:
            raise DeblurError(str(error)) from error
        if len(model.info.get("hu_window") or ()) != 2:
            raise DeblurError(f"{args.model}: the export info has no hu_window (HU range of the network); re-export it "
                              "with ctdeblur-train --export")
        window = (float(model.info["hu_window"][0]), float(model.info["hu_window"][1]))
        digest = export_digest(args.model)
        number = (series.series_number or 0) + config.series_number_offset
        if not 0 <= number <= 2**31 - 1:
            raise DeblurError(f"the new SeriesNumber {number} does not fit DICOM IS; change --series_number_offset")
        derivation = Derivation(
            series_instance_uid=derived_uid(digest, series.series_uid),
            series_number=number,
            series_description=series_description(series.description, config.series_description_suffix),
            derivation_description=derivation_text(model.name, os.path.abspath(args.model), digest, window),
            uid_seed=digest,
            created=datetime.datetime.now(),
        )
        stats = WriteStats()
        with output:
            if config.format == "dicom":
                writer = DicomWriter(output.temporary, series, derivation)
            elif config.format == "png":
                writer = PngWriter(output.temporary, series, config.png_window_hu)
            else:
                writer = NiftiWriter(output.temporary, series)
            deblur_started = time.perf_counter()
            with _bar(len(series.frames), "deblurring", args.progress) as bar:
                deblur_objects(files, series, model.deblur, window, config.batch_size, writer, stats, bar.update)
            writer.close()
            stats.seconds = time.perf_counter() - deblur_started
            output.commit()
    seconds = time.perf_counter() - started
    print_summary(args, config, series, report, model, window, derivation, stats, seconds, output.output)
    return 0


def print_summary(args, config, series: CTSeries, report, model, window, derivation: Derivation, stats: WriteStats,
                  seconds: float, output: str) -> None:
    kind = "multi-frame" if series.multiframe else "single-frame"
    print(f"{PROG}: {stats.slices} slice{'s' if stats.slices != 1 else ''} deblurred in {seconds:.1f} s -> {output}")
    print(f"  time: {stats.seconds / max(stats.slices, 1):.2f} s/slice deblurring and writing, "
          f"{seconds - stats.seconds:.1f} s reading headers, loading the model and starting")
    print(f"  input: {args.input}: {report.files} files; series {series.series_uid} "
          f"({series.description or 'no description'!r}, {series.rows}x{series.columns}, {kind}"
          f"{f', gantry tilt {series.tilt_deg:.1f} deg kept' if series.tilt_deg > 0.1 else ''})")
    print(f"  skipped: {report.skipped_text()}")
    print(f"  model: {model.name} ({args.model}), HU window [{window[0]:g}, {window[1]:g}], batch {config.batch_size}")
    if config.format == "dicom":
        print(f"  output: DICOM series {derivation.series_instance_uid}, SeriesNumber {derivation.series_number}, "
              f"{derivation.series_description!r}, int16 with the input's rescale, Explicit VR Little Endian")
    elif config.format == "png":
        print(f"  output: 8-bit PNG, window [{config.png_window_hu[0]:g}, {config.png_window_hu[1]:g}] HU")
    else:
        print(f"  output: {NIFTI_NAME}, float32 HU")
    print(f"  input HU kept (padding or outside the model's window): {stats.kept_pixels} pixels; "
          f"clipped to the int16 range: {stats.clipped_pixels} pixels")


def _deblur_command(args: argparse.Namespace) -> int:
    try:
        return run(args, config_from_args(args))
    except CTInputError as error:
        hint = ("; if its stored values are HU already, pass --missing_rescale identity"
                if error.reason == "missing_rescale" else "")
        raise DeblurError(f"{error}{hint}") from error


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `ctdeblur-deblur`; returns the exit code (0; 2 bad input, output, model
    or settings; 130 Ctrl-C; 143 SIGTERM)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _deblur_command(args), user_errors=(OSError,), aborted_note="nothing was written.")


if __name__ == "__main__":
    sys.exit(main())
