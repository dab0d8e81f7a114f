"""Reading a dataset directory: shard discovery, the manifest, and the tf.data pass over shards.

Shards are read with `tf.data.TFRecordDataset` and parsed with the schema's
`parse_pair_tensors`; every record is measured inside the tf.data map (in parallel, no Python
per pixel): scalars, PSNR's squared-error sum and SSIM come back to Python with the decoded
images, whose exact HU histograms numpy counts while the map measures the next records.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import posixpath
import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from cli_shell.command import UserError
from pipeline.stats import problems as kinds
from pipeline.stats.config import StatsConfig
from pipeline.stats.metrics import (
    HU_BINS,
    hu_histogram,
    pair_ssim,
    psf_extent_px,
    squared_error_sum,
)
from pipeline.stats.problems import Problem
from pipeline.stats.summary import COLUMNS, Measurements
from tfrecords_schema import (
    MANIFEST_NAME,
    Pair,
    PairDecodeError,
    SchemaVersionError,
    decode_pair,
    is_split_dir,
    parse_pair_tensors,
    parse_shard_name,
    split_dir_order,
    tf_compression_type,
)

_READ_BUFFER_BYTES = 8 << 20
_STRING_COLUMNS = ("patient_key", "series_uid", "collection", "source_kind", "split", "blur_model")


class NoShardsFound(UserError):
    """DIR cannot be summarised at all (not a directory, no shards): a usage error."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard file: `directory` is its split directory (`test`, `train-3`), `name` the file
    name `pairs-00000-of-00004.tfrecord[.gz]`, `compression` "none" or "gzip"."""

    directory: str
    name: str
    index: int
    count: int
    compression: str

    @property
    def relative(self) -> str:
        """Path relative to the dataset root, as in manifest.json."""
        return f"{self.directory}/{self.name}"


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What reading one shard gave: measurements of its readable pairs, problems found, and
    whether it was read to its end (`complete`)."""

    shard: Shard
    measurements: Measurements
    problems: tuple[Problem, ...]
    complete: bool


def find_shards(root: str) -> tuple[list[Shard], list[Problem]]:
    """All shard files under `root`/{test,validation,train-N}/, ordered, and problems with their numbering
    and with entries of those directories that are no shard files (`stray_file`).

    Raises `NoShardsFound` when `root` is not a directory or holds no shard at all.
    """
    if not tf.io.gfile.isdir(root):
        raise NoShardsFound(f"{root} is not a directory; give the dataset directory the pipeline wrote")
    directories = sorted(
        (
            entry.rstrip("/")
            for entry in tf.io.gfile.listdir(root)
            if is_split_dir(entry.rstrip("/")) and tf.io.gfile.isdir(posixpath.join(root, entry))
        ),
        key=split_dir_order,
    )
    shards: list[Shard] = []
    found: list[Problem] = []
    for directory in directories:
        in_directory = []
        for name in sorted(tf.io.gfile.listdir(posixpath.join(root, directory))):
            parsed = parse_shard_name(name)
            if parsed:
                in_directory.append(Shard(directory, name, *parsed))
            else:
                found.append(_stray(f"{directory}/{name.rstrip('/')}", "not a shard file of this dataset"))
        shards.extend(in_directory)
        found.extend(_numbering_problems(directory, in_directory))
    if not shards:
        raise NoShardsFound(
            f"no shards found in {root}: expected test/ and train-N/ directories holding "
            "pairs-XXXXX-of-YYYYY.tfrecord[.gz] files (is this the dataset root?)"
        )
    return shards, found


def _stray(relative: str, what: str) -> Problem:
    return Problem(
        kinds.STRAY_FILE,
        f"{what}, and manifest.json does not list it: readers that glob the split directory would read it, "
        "the trainer (which reads by manifest) would not; remove it or re-make the dataset",
        file=relative,
    )


def stray_shard(relative: str) -> Problem:
    """The problem of a shard-named file that manifest.json does not list."""
    return _stray(relative, "a shard file on disk")


def file_sha256(root: str, shard: Shard) -> str | None:
    """SHA-256 (hex) of a shard file's bytes as stored (compressed ones too), as manifest.json
    states it; None if the file cannot be read (reading its records reports that)."""
    digest = hashlib.sha256()
    try:
        with tf.io.gfile.GFile(posixpath.join(root, shard.relative), "rb") as handle:
            while chunk := handle.read(_READ_BUFFER_BYTES):
                digest.update(chunk)
    except (tf.errors.OpError, OSError):
        return None
    return digest.hexdigest()


def _numbering_problems(directory: str, shards: list[Shard]) -> list[Problem]:
    counts = sorted({shard.count for shard in shards})
    if len(counts) > 1:
        return [
            Problem(
                kinds.SHARD_SET,
                f"shard names disagree on the shard count ({', '.join(f'of-{c:05d}' for c in counts)}): "
                "files from different runs are mixed; remove the ones that do not belong",
                split=directory,
            )
        ]
    if not shards:
        return [Problem(kinds.SHARD_SET, "split directory holds no shard files", split=directory)]
    missing = sorted(set(range(counts[0])) - {shard.index for shard in shards})
    if missing:
        return [
            Problem(
                kinds.SHARD_SET,
                f"{len(missing)} of {counts[0]} shards missing (indices {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}); copy them again or re-run the pipeline",
                split=directory,
            )
        ]
    return []


def read_manifest(root: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    """`root`/manifest.json as a dict, or None and the problem that prevented reading it."""
    path = posixpath.join(root, MANIFEST_NAME)
    if not tf.io.gfile.exists(path):
        return None, [
            Problem(kinds.MANIFEST, "manifest.json missing: counts cannot be checked; the pipeline run did not finish", file=MANIFEST_NAME)
        ]
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            manifest = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, [Problem(kinds.MANIFEST, f"not valid JSON ({error}); the file is damaged", file=MANIFEST_NAME)]
    if not isinstance(manifest, dict):
        return None, [Problem(kinds.MANIFEST, "not a JSON object; the file is damaged", file=MANIFEST_NAME)]
    return manifest, []


def measure_record(index: tf.Tensor, record: tf.Tensor, config: StatsConfig) -> dict[str, tf.Tensor]:
    """tf.data map function: record `index` of a shard -> its `COLUMNS` (except record_index) and
    the int16 [H, W] images `sharp_hu`, `blurry_hu` (for their HU histograms, counted by numpy:
    `tf.math.bincount` took several times as long).

    Records whose index is not a multiple of `config.image_stride` skip the image measurements:
    `image_measured` is False, squared_error_sum -1, ssim NaN and the images empty [0, 0].
    """
    pair = parse_pair_tensors(record)
    sharp, blurry = pair["sharp_hu"], pair["blurry_hu"]
    measured = {name: pair[name] for name in (*_STRING_COLUMNS, "subdataset", "height", "width")}
    measured.update(
        psf_extent_px=psf_extent_px(pair["psf"]),
        trajectory_length_px=pair["motion/length_px"],
        translation_extent_mm=pair["projection/translation_extent_mm"],
        rotation_extent_deg=pair["projection/rotation_extent_deg"],
        si_amplitude_mm=pair["respiratory/si_amplitude_mm"],
        period_s=pair["respiratory/period_s"],
    )

    def images() -> dict[str, tf.Tensor]:
        return {
            "image_measured": tf.constant(True),
            "squared_error_sum": squared_error_sum(sharp, blurry, config.window_hu),
            "ssim": pair_ssim(
                sharp, blurry, config.window_hu, config.ssim_filter_size, config.ssim_sigma, config.ssim_k1, config.ssim_k2
            ),
            "sharp_hu": sharp,
            "blurry_hu": blurry,
        }

    def skipped() -> dict[str, tf.Tensor]:
        return {
            "image_measured": tf.constant(False),
            "squared_error_sum": tf.constant(-1, tf.int64),
            "ssim": tf.constant(np.nan, tf.float64),
            "sharp_hu": tf.zeros([0, 0], tf.int16),
            "blurry_hu": tf.zeros([0, 0], tf.int16),
        }

    if config.image_stride == 1:
        measured.update(images())
    else:
        measured.update(tf.cond(index % config.image_stride == 0, images, skipped))
    return measured


@functools.lru_cache(maxsize=None)
def _measure_function(config: StatsConfig):
    """`measure_record` for `config` on (shard number, record index, record), traced once."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string)])
    def measure(shard_number: tf.Tensor, index: tf.Tensor, record: tf.Tensor):
        return shard_number, index, measure_record(index, record, config)

    return measure


def measured_records(root: str, shards: Sequence[Shard], config: StatsConfig) -> tf.data.Dataset:
    """(shard number, record index, `measure_record` output) for every record of `shards`, in
    order: one tf.data pipeline over all files, records measured `config.parallel_calls` at a
    time. A failing record yields an error in its place and iteration goes on with the next
    record (after a CRC error: with the next shard)."""
    paths = [posixpath.join(root, shard.relative) for shard in shards]
    compressions = [tf_compression_type(shard.compression) for shard in shards]

    def records(shard_number: tf.Tensor, path: tf.Tensor, compression: tf.Tensor) -> tf.data.Dataset:
        file_records = tf.data.TFRecordDataset(path, compression_type=compression, buffer_size=_READ_BUFFER_BYTES)
        return file_records.enumerate().map(lambda index, record: (shard_number, index, record))

    files = tf.data.Dataset.from_tensor_slices((tf.range(len(shards), dtype=tf.int64), paths, compressions))
    measured = files.interleave(records, cycle_length=1).map(
        _measure_function(config), num_parallel_calls=config.parallel_calls, deterministic=True
    )
    return measured.prefetch(tf.data.AUTOTUNE)


class _ShardRows:
    """Collects the measurements of one shard's records as they arrive."""

    def __init__(self) -> None:
        self.rows: dict[str, list] = {name: [] for name in COLUMNS}
        self.sharp_histogram = np.zeros(HU_BINS, np.int64)
        self.blurry_histogram = np.zeros(HU_BINS, np.int64)
        self._strings: dict[bytes, str] = {}

    def add(self, index: int, measured: dict[str, tf.Tensor]) -> None:
        rows = self.rows
        rows["record_index"].append(index)
        for name in _STRING_COLUMNS:
            raw = measured[name].numpy()
            rows[name].append(self._strings.setdefault(raw, raw.decode("utf-8")))
        for name in ("subdataset", "height", "width", "psf_extent_px", "squared_error_sum"):
            rows[name].append(int(measured[name]))
        for name in ("trajectory_length_px", "translation_extent_mm", "rotation_extent_deg", "si_amplitude_mm",
                     "period_s", "ssim"):
            rows[name].append(float(measured[name]))
        rows["image_measured"].append(bool(measured["image_measured"]))
        if rows["image_measured"][-1]:
            self.sharp_histogram += hu_histogram(measured["sharp_hu"].numpy())
            self.blurry_histogram += hu_histogram(measured["blurry_hu"].numpy())

    def result(self, shard: Shard, found: Sequence[Problem] = (), complete: bool = True) -> ShardResult:
        measurements = Measurements.from_rows(self.rows, self.sharp_histogram, self.blurry_histogram)
        return ShardResult(shard, measurements, tuple(found), complete)


def read_dataset(
    root: str, shards: Sequence[Shard], config: StatsConfig, on_record: Callable[[], None] = lambda: None
) -> list[ShardResult]:
    """Measures every readable pair of `shards`, one result per shard, in order.

    All shards go through one tf.data pipeline (`measured_records`). Shards near an error (from
    the last good record before it to the next good record after it) are then read again one
    by one with `read_shard`, which names each bad record. `on_record` is called once per record
    of the first pass (for progress bars).
    """
    collected = [_ShardRows() for _ in shards]
    suspects: set[int] = set()
    last_good = 0
    error_after: int | None = None
    iterator = iter(measured_records(root, shards, config))
    while True:
        try:
            shard_number, index, measured = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError:
            on_record()
            error_after = last_good if error_after is None else error_after
            continue
        on_record()
        last_good = int(shard_number)
        if error_after is not None:
            suspects.update(range(error_after, last_good + 1))
            error_after = None
        collected[last_good].add(int(index), measured)
    if error_after is not None:
        suspects.update(range(error_after, len(shards)))
    return [
        read_shard(root, shard, config) if number in suspects else collected[number].result(shard)
        for number, shard in enumerate(shards)
    ]


def _tf_message(error: tf.errors.OpError) -> str:
    message = re.sub(r"\{\{[^}]*\}\}", "", error.message)
    message = re.sub(r"\s*\[Op:[^\]]*\].*$", "", message, flags=re.S)
    return " ".join(message.split())


def read_raw_record(path: str, compression: str, index: int) -> bytes:
    """The bytes of record `index` of a shard (for explaining an error)."""
    records = tf.data.TFRecordDataset(path, compression_type=tf_compression_type(compression)).skip(index).take(1)
    return next(iter(records)).numpy()


def _undecodable(path: str, shard: Shard, index: int, error: tf.errors.OpError) -> Problem:
    try:
        decode_pair(read_raw_record(path, shard.compression, index))
    except SchemaVersionError as version_error:
        return Problem(kinds.SCHEMA_VERSION, str(version_error), file=shard.relative, record_index=index)
    except PairDecodeError as decode_error:
        return Problem(
            kinds.UNDECODABLE_RECORD, f"{decode_error}; the record is skipped", file=shard.relative, record_index=index
        )
    return Problem(
        kinds.UNDECODABLE_RECORD, f"{_tf_message(error)}; the record is skipped", file=shard.relative, record_index=index
    )


def read_shard(root: str, shard: Shard, config: StatsConfig) -> ShardResult:
    """Measures every readable pair of one shard and names each corrupt or undecodable record.

    An undecodable record is skipped, up to `config.max_decode_errors_per_shard` per shard; any
    other read error (CRC, truncation, gzip stream, file access) ends the shard, as TFRecord
    framing cannot be resynchronised.
    """
    path = posixpath.join(root, shard.relative)
    collected = _ShardRows()
    found: list[Problem] = []
    decode_errors = 0
    next_index = 0
    iterator = iter(measured_records(root, [shard], config))
    while True:
        try:
            _, index, measured = next(iterator)
        except StopIteration:
            return collected.result(shard, found)
        except tf.errors.InvalidArgumentError as error:
            found.append(_undecodable(path, shard, next_index, error))
            next_index += 1
            decode_errors += 1
            if decode_errors >= config.max_decode_errors_per_shard:
                found.append(
                    Problem(
                        kinds.UNDECODABLE_RECORD,
                        f"{decode_errors} undecodable records: records {next_index} and later of this shard were not read",
                        file=shard.relative,
                        record_index=next_index,
                    )
                )
                return collected.result(shard, found, complete=False)
            continue
        except tf.errors.OpError as error:
            found.append(
                Problem(
                    kinds.CORRUPT_RECORD,
                    f"{_tf_message(error)}; records {next_index} and later of this shard were not read. "
                    "Copy the shard again or re-run the pipeline",
                    file=shard.relative,
                    record_index=next_index,
                )
            )
            return collected.result(shard, found, complete=False)
        next_index = int(index) + 1
        collected.add(next_index - 1, measured)


def read_pairs(root: str, shard: Shard, indices: Iterable[int]) -> dict[int, Pair]:
    """The decoded pairs at record `indices` of one shard (records that read cleanly before)."""
    wanted = sorted(set(indices))
    path = posixpath.join(root, shard.relative)
    records = tf.data.TFRecordDataset(path, compression_type=tf_compression_type(shard.compression)).enumerate()
    selected = records.take(wanted[-1] + 1).filter(lambda index, _: tf.reduce_any(tf.equal(index, wanted)))
    return {int(index): decode_pair(record.numpy()) for index, record in selected}
