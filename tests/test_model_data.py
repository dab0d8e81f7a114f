"""tf.data input and the schedule: HU window, paired crops, determinism, resume skipping, sharding."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from test_model_support import write_dataset

from model import schedule
from model.data import (
    AIR_HU,
    DatasetError,
    InputShard,
    crop_pair,
    dataset_splits,
    epoch_seed,
    find_split,
    hu_to_unit,
    training_batches,
    unit_to_hu,
    validation_pairs,
)

WINDOW = (-1024.0, 3071.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data")), train_pairs=12, test_pairs=3, subdatasets=2, shards=3)


ONE_PIPELINE = InputShard(batch=2)


def batches_of(split, seed=5, shard=ONE_PIPELINE, steps=6, skip_steps=0):
    ds = training_batches(split, crop_size=16, hu_window=WINDOW, shuffle_buffer=12, seed=seed, shard=shard,
                          steps=steps, skip_steps=skip_steps)
    return [(b.numpy(), s.numpy()) for b, s in ds]


def test_hu_window_maps_to_unit_range_and_back():
    hu = tf.constant([-2000.0, -1024.0, 1023.5, 3071.0, 5000.0])
    np.testing.assert_allclose(hu_to_unit(hu, WINDOW), [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(unit_to_hu(hu_to_unit(hu, WINDOW), WINDOW), [-1024, -1024, 1023.5, 3071, 3071], atol=1e-3)


def test_crop_pair_takes_the_same_place_in_both_images():
    sharp = tf.constant(np.arange(20 * 30, dtype=np.int16).reshape(20, 30))
    blurry = sharp + 7
    for position in ([0.0, 0.0], [0.999, 0.999], [0.5, 0.3]):
        b, s = crop_pair(blurry, sharp, 8, tf.constant(position))
        assert b.shape == s.shape == (8, 8, 1)
        np.testing.assert_array_equal(b.numpy() - s.numpy(), 7)
    b, s = crop_pair(blurry, sharp, 8, tf.constant([0.999, 0.999]))
    assert s.numpy()[-1, -1, 0] == sharp.numpy()[-1, -1]


def test_crop_pair_pads_small_images_with_air():
    small = tf.zeros((5, 6), tf.int16)
    _, s = crop_pair(small, small, 8, tf.constant([0.5, 0.5]))
    assert s.shape == (8, 8, 1)
    assert s.numpy()[7, 7, 0] == AIR_HU and s.numpy()[0, 0, 0] == 0


def test_splits_from_manifest_and_without(dataset, tmp_path):
    train, validation = dataset_splits(dataset, [0, 1])
    assert train[1].pairs == 12 and len(train[0].files) == 3
    assert validation is None  # no validation/ split: the test split is never handed to the trainer
    bare = write_dataset(str(tmp_path / "bare"), train_pairs=5, test_pairs=1, subdatasets=1, manifest=False)
    assert find_split(bare, "train-0", None).pairs == 5
    with pytest.raises(DatasetError, match="train-3"):
        dataset_splits(dataset, [3])
    os.rename(os.path.join(bare, "train-0"), os.path.join(bare, "moved"))
    with pytest.raises(DatasetError, match="no shards match .*train-0"):
        find_split(bare, "train-0", None)
    with pytest.raises(DatasetError, match="does not exist"):
        dataset_splits(os.path.join(dataset, "nowhere"), [0])


def test_training_batches_are_deterministic_and_seeded(dataset):
    train, _ = dataset_splits(dataset, [0])
    first, again, other = batches_of(train[0]), batches_of(train[0]), batches_of(train[0], seed=6)
    assert len(first) == 6
    assert first[0][0].shape == (2, 16, 16, 1) and first[0][0].dtype == np.float32
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    values = np.concatenate([s.ravel() for _, s in first])
    assert values.min() >= -1.0 and values.max() <= 1.0


def test_resumed_epoch_continues_with_the_same_batches(dataset):
    train, _ = dataset_splits(dataset, [0])
    full = batches_of(train[0])
    resumed = batches_of(train[0], skip_steps=4)
    assert len(resumed) == 2
    for (b, s), (rb, rs) in zip(full[4:], resumed):
        np.testing.assert_array_equal(b, rb)
        np.testing.assert_array_equal(s, rs)


def test_input_shards_see_disjoint_records(dataset):
    train, _ = dataset_splits(dataset, [0])
    single = batches_of(train[0], shard=InputShard(batch=1), steps=12)
    parts = [batches_of(train[0], shard=InputShard(count=2, index=i, batch=1), steps=6) for i in (0, 1)]
    def keys(batches):
        return [sharp.tobytes() for _, sharp in batches]

    assert sorted(keys(parts[0] + parts[1])) == sorted(keys(single))
    assert not set(keys(parts[0])) & set(keys(parts[1]))


def test_validation_pairs_are_fixed_int16_crops(dataset):
    train, _ = dataset_splits(dataset, [0])
    pairs = validation_pairs([train[0]], 5, 32)
    assert len(pairs) == 5
    assert all(b.shape == s.shape == (32, 32) and s.dtype == b.dtype == np.int16 for b, s in pairs)
    again = validation_pairs([train[0]], 5, 32)
    assert all(np.array_equal(s, s2) and np.array_equal(b, b2) for (b, s), (b2, s2) in zip(pairs, again))
    whole = validation_pairs([train[0]], 20, 0)
    assert len(whole) == 12 and whole[0][1].shape == (40, 44)  # all the split has, whole slices at crop 0


def test_epoch_seed_depends_on_every_part():
    seeds = {epoch_seed(0, s, e) for s in range(7) for e in range(5)} | {epoch_seed(1, 0, 0)}
    assert len(seeds) == 36 and all(0 <= s < 2**31 for s in seeds)


def test_schedule_walks_sub_datasets_then_epochs():
    steps, epochs = [2, 0, 1], 2
    position, visited = schedule.Position(), []
    while not schedule.finished(position, steps):
        visited.append((position.stage, position.epoch, position.step))
        position = schedule.advance(position, steps, epochs)
    assert visited == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (2, 0, 0), (2, 1, 0)]
    assert schedule.total_steps(steps, epochs) == 6
    assert schedule.steps_done(schedule.Position(2, 1, 0), steps, epochs) == 5
    assert schedule.steps_done(position, steps, epochs) == 6
    assert schedule.normalise(schedule.Position(0, 0, 2), steps, epochs) == schedule.Position(0, 1, 0)
    assert schedule.steps_per_epoch(9, 4) == 2 and schedule.steps_per_epoch(100, 4, max_steps=3) == 3


def test_manifest_problems_name_the_manifest(tmp_path):
    root = write_dataset(str(tmp_path / "data"), train_pairs=2, test_pairs=1, subdatasets=1)
    os.remove(os.path.join(root, "train-0", "pairs-00001-of-00002.tfrecord"))
    with pytest.raises(DatasetError, match="lists shards that do not exist: .*pairs-00001-of-00002"):
        dataset_splits(root, [0])
    manifest = os.path.join(root, "manifest.json")
    with open(manifest) as handle:
        content = json.load(handle)
    content["schema_version"] = 99
    with open(manifest, "w") as handle:
        json.dump(content, handle)
    with pytest.raises(DatasetError, match="manifest.json: .*99"):
        dataset_splits(root, [0])
