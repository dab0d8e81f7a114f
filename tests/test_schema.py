import io

import numpy as np
import pytest
import tensorflow as tf

import tfrecords_schema as schema
from tfrecords_schema import pair as pair_module


def make_pair(height=5, width=7, seed=0, **overrides) -> schema.Pair:
    rng = np.random.default_rng(seed)
    values = dict(
        sharp_hu=rng.integers(-1024, 3071, size=(height, width)).astype(np.int16),
        blurry_hu=rng.integers(-32768, 32767, size=(height, width)).astype(np.int16),
        psf=rng.random((3, 3)).astype(np.float32),
        record_key="1.2.3/00004/00",
        pixel_spacing_mm=(0.5, 0.75),
        slice_thickness_mm=2.5,
        slice_position_mm=-12.5,
        collection="phantom",
        patient_key="abcdef0123456789",
        patient_id="",
        series_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        slice_index=4,
        kernel_index=0,
        source_kind="synthetic",
        split="train",
        subdataset=3,
        motion={name: 0.25 * (i + 1) for i, name in enumerate(schema.MOTION_PARAM_NAMES)},
        noise_sigma_hu=1.5,
    )
    values.update(overrides)
    return schema.Pair(**values)


def test_round_trip_is_exact():
    original = make_pair()
    decoded = schema.decode_pair(schema.encode_pair(original))
    np.testing.assert_array_equal(decoded.sharp_hu, original.sharp_hu)
    np.testing.assert_array_equal(decoded.blurry_hu, original.blurry_hu)
    np.testing.assert_array_equal(decoded.psf, original.psf)
    assert decoded.sharp_hu.dtype == np.int16 and decoded.psf.dtype == np.float32
    assert decoded.motion == pytest.approx(original.motion)
    for name in ("record_key", "collection", "patient_key", "series_uid", "slice_index", "subdataset", "split"):
        assert getattr(decoded, name) == getattr(original, name)
    assert decoded.pixel_spacing_mm == pytest.approx((0.5, 0.75))


def test_encoding_is_deterministic():
    assert schema.encode_pair(make_pair(seed=3)) == schema.encode_pair(make_pair(seed=3))
    assert schema.encode_pair(make_pair(seed=3)) != schema.encode_pair(make_pair(seed=4))


def test_plain_tf_data_reads_identical_arrays(tmp_path):
    pairs = [make_pair(height=4 + i, width=9 - i, seed=i) for i in range(3)]
    path = tmp_path / "pairs-00000-of-00001.tfrecord"
    with open(path, "wb") as handle:
        schema.write_records(handle, (schema.encode_pair(p) for p in pairs))
    dataset = tf.data.TFRecordDataset(str(path)).map(lambda r: tf.io.parse_single_example(r, schema.FEATURE_SPEC))
    for original, features in zip(pairs, dataset, strict=True):
        shape = (int(features["height"]), int(features["width"]))
        sharp = tf.io.decode_raw(features["sharp_hu"], tf.int16).numpy().reshape(shape)
        np.testing.assert_array_equal(sharp, original.sharp_hu)
        assert features["series_uid"].numpy().decode() == original.series_uid
    for original, tensors in zip(pairs, tf.data.TFRecordDataset(str(path)).map(schema.parse_pair_tensors), strict=True):
        np.testing.assert_array_equal(tensors["blurry_hu"].numpy(), original.blurry_hu)
        np.testing.assert_array_equal(tensors["psf"].numpy(), original.psf)


def test_newer_schema_version_is_refused(monkeypatch):
    monkeypatch.setattr(pair_module, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
    monkeypatch.setattr(pair_module, "_LAYOUT_VERSION", schema.SCHEMA_VERSION + 1)
    future = pair_module.encode_pair(make_pair())
    monkeypatch.undo()
    with pytest.raises(schema.SchemaVersionError, match="newer than this reader"):
        schema.decode_pair(future)
    with pytest.raises(tf.errors.InvalidArgumentError, match="schema_version"):
        list(tf.data.Dataset.from_tensors(future).map(schema.parse_pair_tensors))


def test_unknown_records_are_refused():
    with pytest.raises(schema.SchemaVersionError, match="not a ctdeblur pair"):
        schema.decode_pair(tf.train.Example().SerializeToString())
    with pytest.raises(schema.PairDecodeError):
        schema.decode_pair(b"\xff\x00garbage")


def test_encoder_rejects_wrong_dtypes_and_shapes():
    with pytest.raises(ValueError, match="int16"):
        schema.encode_pair(make_pair(sharp_hu=np.zeros((5, 7), np.float32)))
    with pytest.raises(ValueError, match="differ in shape"):
        schema.encode_pair(make_pair(blurry_hu=np.zeros((5, 6), np.int16)))
    with pytest.raises(ValueError, match="source_kind"):
        schema.encode_pair(make_pair(source_kind="simulated"))


def test_tfrecord_framing_matches_tensorflow_and_detects_corruption(tmp_path):
    path = tmp_path / "x.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for payload in (b"alpha", b"", b"gamma" * 100):
            writer.write(payload)
    raw = path.read_bytes()
    ours = b"".join(schema.frame_record(p) for p in (b"alpha", b"", b"gamma" * 100))
    assert raw == ours
    assert list(schema.read_records(io.BytesIO(raw))) == [b"alpha", b"", b"gamma" * 100]
    damaged = bytearray(raw)
    damaged[len(schema.frame_record(b"alpha")) + len(schema.frame_record(b"")) + 20] ^= 0xFF
    with pytest.raises(schema.TFRecordCorruptionError) as error:
        list(schema.read_records(io.BytesIO(bytes(damaged))))
    assert error.value.record_index == 2


def test_layout_names():
    assert schema.shard_name(3, 12) == "pairs-00003-of-00012.tfrecord"
    assert schema.shard_name(0, 1, "gzip").endswith(".tfrecord.gz")
    assert schema.split_dir("test", -1) == "test" and schema.split_dir("train", 6) == "train-6"


def version_1_record(pair: schema.Pair) -> bytes:
    """A record as schema version 1 wrote it: no blur_model, no projection parameters."""
    example = tf.train.Example.FromString(schema.encode_pair(pair))
    features = example.features.feature
    for name in list(features):
        if name.startswith("projection/") or name in ("blur_model", "projection_kind"):
            del features[name]
    features["schema_version"].int64_list.value[:] = [1]
    return example.SerializeToString(deterministic=True)


def test_version_1_records_still_decode_as_kernel_pairs(tmp_path):
    old = version_1_record(make_pair(seed=5))
    decoded = schema.decode_pair(old)
    assert decoded.schema_version == 1 and decoded.blur_model == "kernel"
    assert decoded.projection == {name: 0.0 for name in schema.PROJECTION_PARAM_NAMES}
    np.testing.assert_array_equal(decoded.sharp_hu, make_pair(seed=5).sharp_hu)
    (tensors,) = list(tf.data.Dataset.from_tensors(old).map(schema.parse_pair_tensors))
    assert tensors["blur_model"].numpy() == b"kernel" and float(tensors["projection/dx_mm"]) == 0.0


def test_projection_parameters_round_trip():
    motion = {name: float(i) for i, name in enumerate(schema.PROJECTION_PARAM_NAMES)}
    pair = make_pair(blur_model="projection", projection_kind="jerk", projection=motion)
    decoded = schema.decode_pair(schema.encode_pair(pair))
    assert decoded.blur_model == "projection" and decoded.projection_kind == "jerk"
    assert decoded.projection == pytest.approx(motion)
    with pytest.raises(ValueError, match="blur_model"):
        schema.encode_pair(make_pair(blur_model="wobble"))


def respiratory_pair(**overrides) -> schema.Pair:
    breathing = {name: 0.5 * (i + 1) for i, name in enumerate(schema.RESPIRATORY_PARAM_NAMES)}
    cycles = {"cycle_starts_s": (-1.5, 2.25, 6.0), "cycle_periods_s": (3.75, 3.75, 4.0), "cycle_amplitudes": (1.0, 0.875, 1.125)}
    values = dict(psf=np.zeros((1, 1), np.float32), blur_model="respiratory", respiratory_geometry="cone",
                  body_site="thorax", respiratory=breathing, respiratory_cycles=cycles)
    return make_pair(**{**values, **overrides})


def test_respiratory_records_are_version_4_and_round_trip():
    pair = respiratory_pair()
    decoded = schema.decode_pair(schema.encode_pair(pair))
    assert decoded.schema_version == 4 == schema.SCHEMA_VERSION and decoded.blur_model == "respiratory"
    assert (decoded.respiratory_geometry, decoded.body_site) == ("cone", "thorax")
    assert decoded.respiratory == pair.respiratory and decoded.respiratory_cycles == pair.respiratory_cycles
    (tensors,) = list(tf.data.Dataset.from_tensors(schema.encode_pair(pair)).map(schema.parse_pair_tensors))
    assert float(tensors["respiratory/period_s"]) == pair.respiratory["period_s"]
    assert tensors["respiratory_geometry"].numpy() == b"cone"
    with pytest.raises(ValueError, match="respiratory pair needs"):
        schema.encode_pair(respiratory_pair(respiratory_cycles={}))
    with pytest.raises(ValueError, match="respiratory parameters on a kernel pair"):
        schema.encode_pair(make_pair(respiratory=pair.respiratory))


def test_other_records_keep_the_version_3_layout_and_older_ones_decode_without_breathing():
    record = schema.encode_pair(make_pair(seed=2))
    features = tf.train.Example.FromString(record).features.feature
    assert features["schema_version"].int64_list.value[:] == [3]
    assert not [name for name in features if name.startswith("respiratory") or name == "body_site"]
    assert schema.encode_pair(schema.decode_pair(record)) == record
    for old in (record, version_1_record(make_pair(seed=2))):
        decoded = schema.decode_pair(old)
        assert decoded.respiratory == dict.fromkeys(schema.RESPIRATORY_PARAM_NAMES, 0.0)
        assert decoded.respiratory_cycles == {} and decoded.respiratory_geometry == decoded.body_site == ""
        (tensors,) = list(tf.data.Dataset.from_tensors(old).map(schema.parse_pair_tensors))
        assert float(tensors["respiratory/si_amplitude_mm"]) == 0.0 and tensors["body_site"].numpy() == b""
