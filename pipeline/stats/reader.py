"""Reading a dataset directory: shard discovery, the manifest, and the tf.data pass per shard.

Shards are read with `tf.data.TFRecordDataset` and parsed with the schema's
`parse_pair_tensors`; every record is measured inside the tf.data map (parallel, no Python per
pixel), and only scalars and HU histograms come back to Python.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from typing import Any, Callable, Iterable

import numpy as np
import tensorflow as tf

from pipeline.stats import problems as kinds
from pipeline.stats.config import StatsConfig
from pipeline.stats.metrics import HU_BINS, hu_histogram, psf_extent_px, squared_error_sum, ssim_hu
from pipeline.stats.problems import Problem
from pipeline.stats.summary import COLUMNS, Measurements
from tfrecords_schema import (
    MANIFEST_NAME,
    TEST_DIR,
    Pair,
    PairDecodeError,
    SchemaVersionError,
    decode_pair,
    parse_pair_tensors,
    tf_compression_type,
)

SHARD_FILE = re.compile(r"pairs-(\d+)-of-(\d+)\.tfrecord(\.gz)?")
SPLIT_DIRECTORY = re.compile(r"test|train-(\d+)")
_READ_BUFFER_BYTES = 8 << 20
_STRING_COLUMNS = ("patient_key", "series_uid", "collection", "source_kind", "split")


class DatasetError(Exception):
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


def directory_order(directory: str) -> tuple[int, int]:
    """Sort key of split directories: test first, then train-0, train-1, ... numerically."""
    if directory == TEST_DIR:
        return (0, 0)
    return (1, int(directory.split("-", 1)[1]))


def find_shards(root: str) -> tuple[list[Shard], list[Problem]]:
    """All shard files under `root`/{test,train-N}/, ordered, and problems with their numbering.

    Raises `DatasetError` when `root` is not a directory or holds no shard at all.
    """
    if not tf.io.gfile.isdir(root):
        raise DatasetError(f"{root} is not a directory; give the dataset directory the pipeline wrote")
    directories = sorted(
        (entry.rstrip("/") for entry in tf.io.gfile.listdir(root) if SPLIT_DIRECTORY.fullmatch(entry.rstrip("/"))),
        key=directory_order,
    )
    shards: list[Shard] = []
    found: list[Problem] = []
    for directory in directories:
        in_directory = []
        for name in sorted(tf.io.gfile.listdir(posixpath.join(root, directory))):
            match = SHARD_FILE.fullmatch(name)
            if match:
                index, count = int(match.group(1)), int(match.group(2))
                in_directory.append(Shard(directory, name, index, count, "gzip" if match.group(3) else "none"))
        shards.extend(in_directory)
        found.extend(_numbering_problems(directory, in_directory))
    if not shards:
        raise DatasetError(
            f"no shards found in {root}: expected test/ and train-N/ directories holding "
            "pairs-XXXXX-of-YYYYY.tfrecord[.gz] files (is this the dataset root?)"
        )
    return shards, found


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


def measure_record(record: tf.Tensor, config: StatsConfig) -> dict[str, tf.Tensor]:
    """tf.data map function: one serialised pair -> its `COLUMNS` (except record_index) and the
    int32 [65536] HU histograms `sharp_histogram`, `blurry_histogram`."""
    pair = parse_pair_tensors(record)
    sharp, blurry = pair["sharp_hu"], pair["blurry_hu"]
    measured = {name: pair[name] for name in (*_STRING_COLUMNS, "subdataset", "height", "width")}
    measured.update(
        psf_extent_px=psf_extent_px(pair["psf"]),
        trajectory_length_px=pair["motion/length_px"],
        squared_error_sum=squared_error_sum(sharp, blurry, config.window_hu),
        ssim=ssim_hu(
            sharp, blurry, config.window_hu, config.ssim_filter_size, config.ssim_sigma, config.ssim_k1, config.ssim_k2
        ),
        sharp_histogram=hu_histogram(sharp),
        blurry_histogram=hu_histogram(blurry),
    )
    return measured


def shard_dataset(path: str, compression: str, config: StatsConfig) -> tf.data.Dataset:
    """(record index, `measure_record` output) for every record of one shard file, in order."""
    records = tf.data.TFRecordDataset(
        path, compression_type=tf_compression_type(compression), buffer_size=_READ_BUFFER_BYTES
    )
    measured = records.enumerate().map(
        lambda index, record: (index, measure_record(record, config)),
        num_parallel_calls=config.parallel_calls,
        deterministic=True,
    )
    return measured.prefetch(tf.data.AUTOTUNE)


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


def read_shard(root: str, shard: Shard, config: StatsConfig, on_record: Callable[[], None] = lambda: None) -> ShardResult:
    """Measures every readable pair of `shard`; corrupt or undecodable records become problems.

    A CRC or framing error ends the shard (TFRecord framing cannot be resynchronised); an
    undecodable record is skipped, up to `config.max_decode_errors_per_shard` per shard.
    `on_record` is called once per record read (for progress bars).
    """
    path = posixpath.join(root, shard.relative)
    rows: dict[str, list] = {name: [] for name in COLUMNS}
    sharp_histogram = np.zeros(HU_BINS, np.int64)
    blurry_histogram = np.zeros(HU_BINS, np.int64)
    strings: dict[bytes, str] = {}
    found: list[Problem] = []
    complete = True
    decode_errors = 0
    next_index = 0
    iterator = iter(shard_dataset(path, shard.compression, config))
    while True:
        try:
            index, measured = next(iterator)
        except StopIteration:
            break
        except tf.errors.DataLossError as error:
            found.append(
                Problem(
                    kinds.CORRUPT_RECORD,
                    f"{_tf_message(error)}; records {next_index} and later of this shard were not read. "
                    "Copy the shard again or re-run the pipeline",
                    file=shard.relative,
                    record_index=next_index,
                )
            )
            complete = False
            break
        except tf.errors.InvalidArgumentError as error:
            found.append(_undecodable(path, shard, next_index, error))
            on_record()
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
                complete = False
                break
            continue
        on_record()
        next_index = int(index) + 1
        rows["record_index"].append(int(index))
        for name in _STRING_COLUMNS:
            raw = measured[name].numpy()
            rows[name].append(strings.setdefault(raw, raw.decode("utf-8")))
        for name in ("subdataset", "height", "width", "psf_extent_px", "squared_error_sum"):
            rows[name].append(int(measured[name]))
        rows["trajectory_length_px"].append(float(measured["trajectory_length_px"]))
        rows["ssim"].append(float(measured["ssim"]))
        sharp_histogram += measured["sharp_histogram"].numpy()
        blurry_histogram += measured["blurry_histogram"].numpy()
    measurements = Measurements.from_rows(rows, sharp_histogram, blurry_histogram)
    return ShardResult(shard, measurements, tuple(found), complete)


def read_pairs(root: str, shard: Shard, indices: Iterable[int]) -> dict[int, Pair]:
    """The decoded pairs at record `indices` of one shard (records that read cleanly before)."""
    wanted = sorted(set(indices))
    path = posixpath.join(root, shard.relative)
    records = tf.data.TFRecordDataset(path, compression_type=tf_compression_type(shard.compression)).enumerate()
    selected = records.take(wanted[-1] + 1).filter(lambda index, _: tf.reduce_any(tf.equal(index, wanted)))
    return {int(index): decode_pair(record.numpy()) for index, record in selected}
