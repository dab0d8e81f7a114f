"""tf.data input: a dataset directory (local or gs://) -> batches of (blurry, sharp) crops.

Records are read with `tf.data.TFRecordDataset(files, compression_type=...)` and decoded with
the schema's `parse_pair_tensors`. Images go from int16 HU `[H, W]` to float32 `[crop, crop, 1]`
in [-1, 1] (the HU window is config). Randomness (file order, shuffling, crop offsets) derives
only from the run seed, the sub-dataset and the epoch, and each pair's crop from its position in
the shuffled order: the same seed gives the same batches, and a resumed epoch can skip the
records already trained on without decoding them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from cli_shell.command import UserError
from model.config import DEFAULT_SOFTENING_SIGMA, softening_radius
from tfrecords_schema import (
    MANIFEST_NAME,
    VALIDATION_DIR,
    SchemaVersionError,
    SplitNotFound,
    check_schema_version,
    find_split_shards,
    join_path,
    parse_pair_tensors,
    tf_compression_type,
    train_dir,
)

AIR_HU = -1024
"""HU of the padding added around slices smaller than the crop."""


class DatasetError(UserError):
    """A dataset directory is missing, incomplete or unreadable; the message names the path."""


def read_manifest(data_dir: str) -> Mapping[str, Any] | None:
    """The dataset's manifest.json, or None when the directory has none."""
    path = join_path(data_dir, MANIFEST_NAME)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            manifest = json.loads(handle.read())
    except (json.JSONDecodeError, tf.errors.OpError) as error:
        raise DatasetError(f"{path} is not a readable JSON manifest: {error}") from error
    try:
        check_schema_version(int(manifest.get("schema_version", 0)))
    except SchemaVersionError as error:
        raise DatasetError(f"{path}: {error}") from error
    return manifest


@dataclasses.dataclass(frozen=True)
class Split:
    """The shards of one split directory (`test` or `train-K`) and its pair count."""

    name: str
    files: tuple[str, ...]
    pairs: int
    compression: str

    @property
    def compression_type(self) -> str:
        return tf_compression_type(self.compression)


def record_dataset(files, compression: str) -> tf.data.Dataset:
    """Serialised records of `files`, in file order (one file after another)."""
    return tf.data.TFRecordDataset(list(files), compression_type=tf_compression_type(compression))


def count_records(files, compression: str) -> int:
    """Number of records in `files` (reads them all)."""
    return int(record_dataset(files, compression).reduce(np.int64(0), lambda n, _: n + 1).numpy())


def find_split(data_dir: str, name: str, manifest: Mapping[str, Any] | None) -> Split:
    """The split directory `name` of the dataset at `data_dir` (`tfrecords_schema.find_split_shards`);
    DatasetError if it has no shards. A pair count the manifest does not state is counted by
    reading the shards."""
    try:
        shards = find_split_shards(data_dir, name, manifest, tf.io.gfile.listdir, tf.io.gfile.exists)
    except SplitNotFound as error:
        raise DatasetError(str(error)) from error
    pairs = shards.pairs if shards.pairs is not None else count_records(shards.files, shards.compression)
    return Split(name, shards.files, pairs, shards.compression)


def hu_to_unit(hu: tf.Tensor, window: tuple[float, float]) -> tf.Tensor:
    """HU -> float32 in [-1, 1]: `window` (low, high) maps to (-1, 1), values outside are clipped."""
    low, high = float(window[0]), float(window[1])
    unit = (tf.cast(hu, tf.float32) - low) / (high - low) * 2.0 - 1.0
    return tf.clip_by_value(unit, -1.0, 1.0)


def unit_to_hu(unit: tf.Tensor, window: tuple[float, float]) -> tf.Tensor:
    """Network range [-1, 1] -> float32 HU in `window` (inverse of `hu_to_unit` inside the window)."""
    low, high = float(window[0]), float(window[1])
    return (tf.cast(unit, tf.float32) + 1.0) / 2.0 * (high - low) + low


def pad_to_size(hu: tf.Tensor, size: int) -> tf.Tensor:
    """`[H, W]` HU padded with air at the bottom/right to at least `size` x `size` (no copy when
    the image is large enough)."""
    shape = tf.shape(hu)
    pad_h = tf.maximum(size - shape[0], 0)
    pad_w = tf.maximum(size - shape[1], 0)
    return tf.cond(
        tf.logical_or(pad_h > 0, pad_w > 0),
        lambda: tf.pad(hu, [[0, pad_h], [0, pad_w]], constant_values=tf.cast(AIR_HU, hu.dtype)),
        lambda: hu,
    )


def _crop_offset(padded_shape: tf.Tensor, size: int, position: tf.Tensor) -> tf.Tensor:
    """Top-left corner `[2]` of a `size` crop of an image of `padded_shape` at `position` in [0, 1]²."""
    room = padded_shape - size
    offset = tf.cast(tf.floor(tf.cast(position, tf.float32) * tf.cast(room + 1, tf.float32)), tf.int32)
    return tf.minimum(offset, room)


def crop_pair(
    blurry_hu: tf.Tensor, sharp_hu: tf.Tensor, size: int, position: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The same `size` x `size` crop of both `[H, W]` images, as `[size, size, 1]`.

    `position` `[2]` in [0, 1] chooses the offset (0: top/left, 1: bottom/right, 0.5: centre);
    `[K, 2]` gives K candidates, of which the one where the images differ most (mean absolute
    difference) is taken. Images smaller than `size` are first padded with air (-1024 HU).
    """
    blurry_hu, sharp_hu = pad_to_size(blurry_hu, size), pad_to_size(sharp_hu, size)
    shape = tf.shape(sharp_hu)
    positions = tf.reshape(tf.cast(position, tf.float32), [-1, 2])
    if positions.shape[0] == 1:
        offset = _crop_offset(shape, size, positions[0])
    else:
        difference = tf.abs(tf.cast(blurry_hu, tf.float32) - tf.cast(sharp_hu, tf.float32))
        offsets = tf.map_fn(lambda p: _crop_offset(shape, size, p), positions, fn_output_signature=tf.int32)
        scores = tf.map_fn(lambda o: tf.reduce_mean(tf.slice(difference, o, [size, size])), offsets,
                           fn_output_signature=tf.float32)
        offset = offsets[tf.argmax(scores)]
    blurry = tf.ensure_shape(tf.slice(blurry_hu, offset, [size, size]), [size, size])
    sharp = tf.ensure_shape(tf.slice(sharp_hu, offset, [size, size]), [size, size])
    return blurry[..., tf.newaxis], sharp[..., tf.newaxis]


def orient_pair(blurry: tf.Tensor, sharp: tf.Tensor, orientation: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Both `[S, S, 1]` crops turned by `orientation` (0..7): rotated by (orientation mod 4) x 90
    degrees, then mirrored left-right when orientation >= 4. A valid pair again: a motion kernel
    turns with the image, and the noise is isotropic."""

    def turn(image: tf.Tensor) -> tf.Tensor:
        rotated = tf.image.rot90(image, k=orientation % 4)
        return tf.cond(orientation >= 4, lambda: tf.image.flip_left_right(rotated), lambda: rotated)

    return turn(blurry), turn(sharp)


def soften_pair(blurry: tf.Tensor, sharp: tf.Tensor, sigma_pixels: tf.Tensor,
                radius: int = softening_radius(DEFAULT_SOFTENING_SIGMA)) -> tuple[tf.Tensor, tf.Tensor]:
    """Both `[S, S, 1]` crops blurred by the same isotropic Gaussian of `sigma_pixels` (taps out to
    `radius` pixels, which must be below S; mirrored at the borders; sigma 0 leaves them as they
    are). A valid pair again: the Gaussian commutes with the motion kernel, so the blurry crop is
    the motion blur of the softened sharp one, as a thicker slab or a softer reconstruction kernel
    would have made it."""
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.maximum(tf.cast(sigma_pixels, tf.float32), 1e-3)
    taps = tf.exp(-0.5 * tf.square(offsets / sigma))
    taps /= tf.reduce_sum(taps)
    rows, cols = tf.reshape(taps, [-1, 1, 1, 1]), tf.reshape(taps, [1, -1, 1, 1])
    pad = [[0, 0], [radius, radius], [radius, radius], [0, 0]]

    def soften(image: tf.Tensor) -> tf.Tensor:
        padded = tf.pad(image[tf.newaxis], pad, mode="REFLECT")
        filtered = tf.nn.conv2d(tf.nn.conv2d(padded, rows, 1, "VALID"), cols, 1, "VALID")
        return filtered[0]

    return soften(blurry), soften(sharp)


def epoch_seed(seed: int, subdataset: int, epoch: int) -> int:
    """A 31-bit seed for one (sub-dataset, epoch) of a run."""
    return int(np.random.SeedSequence([seed, subdataset, epoch]).generate_state(1)[0] >> 1)


@dataclasses.dataclass(frozen=True)
class InputShard:
    """This input pipeline's part of each step: pipeline `index` of `count`, feeding `replicas`
    local replicas `batch` pairs each (so `count * replicas * batch` = global batch)."""

    count: int = 1
    index: int = 0
    replicas: int = 1
    batch: int = 2

    @property
    def records_per_step(self) -> int:
        return self.replicas * self.batch


def training_batches(split: Split, *, seed: int, **settings) -> tf.data.Dataset:
    """Batches of one epoch of `split`: `epochs_batches` with the one epoch seed `seed`."""
    return epochs_batches(split, seeds=[seed], **settings)


def epochs_batches(
    split: Split,
    *,
    crop_size: int,
    hu_window: tuple[float, float],
    shuffle_buffer: int,
    seeds: Sequence[int],
    shard: InputShard,
    steps: int,
    skip_steps: int = 0,
    crop_candidates: int = 1,
    random_orientation: bool = False,
    shared_softening: float = 0.0,
    shared_softening_sigma: float = DEFAULT_SOFTENING_SIGMA,
    still_fraction: float = 0.0,
) -> tf.data.Dataset:
    """Batches `(blurry, sharp)`, each `[batch, crop, crop, 1]` float32 in [-1, 1], for epochs of
    `split` one after another, one per seed of `seeds` (see `epoch_seed`).

    Each epoch yields `steps * shard.replicas` batches (one per local replica per step), the first
    one `(steps - skip_steps) * shard.replicas`; not prefetched, so that sub-datasets can be
    concatenated first. One pipeline whatever the number of epochs (a pipeline per epoch costs
    ~0.2 s to build, so a thousand epochs would take minutes to start).
    An epoch's seed fixes its file order, the record order and every crop: records are shuffled
    in consecutive windows of `shuffle_buffer` (sorted by a random key drawn from the seed and the
    record's place in the files; a window as large as the sub-dataset shuffles it whole). All
    pipelines shuffle alike and take every `count`-th record, so their records are disjoint.
    `crop_candidates` > 1: of that many random crop positions, the one with the largest blur
    difference is taken (see `crop_pair`). `random_orientation`: each crop is turned to one of its
    8 orientations (see `orient_pair`), drawn from the same seed and record index.
    `shared_softening`: that fraction of the crops is softened, blurry and sharp alike, by one
    isotropic Gaussian of sigma uniform in [0, `shared_softening_sigma`] pixels (see `soften_pair`).
    `still_fraction`: that fraction of the crops is still, its sharp crop also its input.
    """
    reads = min(len(split.files), 8)
    file_orders = [[split.files[i] for i in np.random.default_rng(seed).permutation(len(split.files))] for seed in seeds]
    skips = [skip_steps] + [0] * (len(seeds) - 1)

    def epoch(seed, files, skip):
        records = tf.data.TFRecordDataset(files, compression_type=split.compression_type, num_parallel_reads=reads)
        keyed = records.enumerate().map(
            lambda index, record: (tf.random.stateless_uniform([], seed=tf.stack([seed, index])), record))
        shuffled = keyed.batch(shuffle_buffer).map(lambda keys, batch: tf.gather(batch, tf.argsort(keys))).unbatch()
        numbered = shuffled.enumerate()
        if shard.count > 1:
            numbered = numbered.shard(shard.count, shard.index)
        numbered = numbered.skip(skip * shard.records_per_step).take((steps - skip) * shard.records_per_step)
        return numbered.map(lambda index, record: (seed, index, record))

    radius = softening_radius(shared_softening_sigma)

    def decode(seed, index, serialized):
        pair = parse_pair_tensors(serialized)
        shape = [2] if crop_candidates == 1 else [crop_candidates, 2]
        position = tf.random.stateless_uniform(shape, seed=tf.stack([seed, index]))
        blurry, sharp = crop_pair(pair["blurry_hu"], pair["sharp_hu"], crop_size, position)
        if still_fraction > 0:
            still = tf.random.stateless_uniform([], seed=tf.stack([-1 - seed, -1 - index])) < still_fraction
            blurry = tf.where(still, sharp, blurry)
        if random_orientation:
            orientation = tf.random.stateless_uniform([], seed=tf.stack([seed, -1 - index]), maxval=8, dtype=tf.int32)
            blurry, sharp = orient_pair(blurry, sharp, orientation)
        if shared_softening > 0:
            draw = tf.random.stateless_uniform([2], seed=tf.stack([-1 - seed, index]))
            sigma = tf.where(draw[0] < shared_softening, draw[1] * shared_softening_sigma, 0.0)
            blurry, sharp = tf.cast(blurry, tf.float32), tf.cast(sharp, tf.float32)
            blurry, sharp = tf.cond(sigma > 0, lambda: soften_pair(blurry, sharp, sigma, radius), lambda: (blurry, sharp))
        return hu_to_unit(blurry, hu_window), hu_to_unit(sharp, hu_window)

    epochs = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(seeds), tf.int64), tf.constant(file_orders, tf.string), tf.constant(skips, tf.int64)))
    records = epochs.flat_map(epoch)
    batches = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return batches.batch(shard.batch, drop_remainder=True)


def concatenate(datasets: Sequence[tf.data.Dataset]) -> tf.data.Dataset:
    """The datasets one after another."""
    return functools.reduce(tf.data.Dataset.concatenate, datasets)


def largest_difference_crop(blurry_hu: np.ndarray, sharp_hu: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The `size` x `size` crop (both `[H, W]` images, same place) where they differ most (largest
    mean absolute difference; the first such place in row-major order); the whole images when
    `size` is 0 or not smaller than them."""
    height, width = sharp_hu.shape
    if not size or (size >= height and size >= width):
        return blurry_hu, sharp_hu
    rows, cols = min(size, height), min(size, width)
    difference = np.abs(blurry_hu.astype(np.float64) - sharp_hu.astype(np.float64))
    summed = np.pad(difference.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    boxes = summed[rows:, cols:] - summed[:-rows, cols:] - summed[rows:, :-cols] + summed[:-rows, :-cols]
    top, left = np.unravel_index(int(np.argmax(boxes)), boxes.shape)
    return blurry_hu[top:top + rows, left:left + cols], sharp_hu[top:top + rows, left:left + cols]


def validation_pairs(splits: Sequence[Split], pairs: int, crop_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fixed held-out pairs: HU (blurry, sharp) int16 `[h, w]` of the first records of `splits`
    taken in turn (one from each, then the second of each, ...), up to `pairs`; each cropped by
    `largest_difference_crop` (whole slices at `crop_size` 0)."""
    readers = [iter(record_dataset(split.files, split.compression).take(pairs)) for split in splits]
    chosen: list[tuple[np.ndarray, np.ndarray]] = []
    while readers and len(chosen) < pairs:
        for reader in list(readers):
            serialized = next(reader, None)
            if serialized is None:
                readers.remove(reader)
                continue
            pair = parse_pair_tensors(serialized)
            chosen.append(largest_difference_crop(pair["blurry_hu"].numpy(), pair["sharp_hu"].numpy(), crop_size))
            if len(chosen) == pairs:
                break
    if not chosen:
        raise DatasetError(f"the {', '.join(s.name for s in splits)} split(s) have no pairs for validation")
    return chosen


def dataset_splits(data_dir: str, subdatasets) -> tuple[dict[int, Split], Split | None]:
    """The train sub-dataset splits `{K: train-K}` and the `validation/` split (None when the
    dataset has none)."""
    if not tf.io.gfile.isdir(data_dir):
        raise DatasetError(f"dataset directory {data_dir} does not exist")
    manifest = read_manifest(data_dir)
    train = {k: find_split(data_dir, train_dir(k), manifest) for k in subdatasets}
    has_validation = VALIDATION_DIR in ((manifest or {}).get("splits") or {}) or bool(
        tf.io.gfile.glob(join_path(data_dir, VALIDATION_DIR, "pairs-*")))
    validation = find_split(data_dir, VALIDATION_DIR, manifest) if has_validation else None
    return train, validation
