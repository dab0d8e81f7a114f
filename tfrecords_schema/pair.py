"""The blur-sharp pair record: feature spec, encoder and decoder.

A pair is one `tf.train.Example`. Images are raw little-endian int16 HU bytes (lossless), the PSF
is raw little-endian float32 bytes. Every record carries `schema_version`; readers refuse records
written by a version they do not know.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 4
"""Version of the record layout. Bump it when a feature is added, removed or changes meaning.

1: images, PSF, kernel parameters, provenance, split.
2: adds `blur_model` and the projection-domain motion parameters (`projection/*`). Version 1
   records still decode: their blur model is "kernel" and their projection parameters are 0.
3: adds the noise forward model's parameters (`noise/*`). Older records decode with all 0 (no
   noise model: only `noise_sigma_hu`, the optional white noise on the blurry image).
4: adds blur model `respiratory` with `respiratory_geometry`, `body_site`, the breathing
   parameters (`respiratory/*`) and the breathing trace's cycles (`respiratory/cycle_*`, float
   lists). Only respiratory records are written as version 4; every other record keeps the
   version 3 layout and number, so datasets of the other blur models are byte-identical to
   before (their manifest.json names the writer's version, 4). Older records decode with empty
   strings and 0.
"""
READABLE_VERSIONS = (1, 2, 3, 4)
_LAYOUT_VERSION = 3
"""Version written for records without respiratory features (`SCHEMA_VERSION` for the others)."""

BLUR_MODELS = ("kernel", "projection", "respiratory", "none")
"""kernel: image-space motion PSF (Boracchi-Foi); projection: rigid motion during the CT scan,
forward-projected and reconstructed by FBP; respiratory: the series volume breathing during a fan-
or cone-beam scan (`pipeline.respiratory`); none: a registered real pair without simulated blur."""

SOURCE_KINDS = ("synthetic", "registered")
"""`synthetic`: blurry made from sharp by a simulated PSF; `registered`: a real FB/DIBH pair."""

SPLITS = ("train", "test", "validation")

MOTION_PARAM_NAMES = (
    "length_px",
    "anxiety",
    "centripetal",
    "jump_probability",
    "gaussian_shake",
    "exposure",
    "scale",
)
"""Per-pair motion-kernel parameters, stored as `motion/<name>` float features.

length_px: path length of the integrated trajectory (pixels, after `scale`); anxiety: strength of
random shake (Boracchi-Foi "exploration"); centripetal: pull back towards the start;
jump_probability: chance of an impulsive direction change per step; gaussian_shake: scale of the
Gaussian velocity perturbation; exposure: fraction of the trajectory integrated (0..1];
scale: factor applied so the PSF fits its size limit (1 = unscaled).
"""


PROJECTION_PARAM_NAMES = (
    "dx_mm",
    "dy_mm",
    "rotation_deg",
    "dx2_mm",
    "dy2_mm",
    "rotation2_deg",
    "breathing_cycles",
    "breathing_phase",
    "breathing_power",
    "jerk_time",
    "jerk_duration",
    "translation_extent_mm",
    "rotation_extent_deg",
)
"""Projection-domain rigid motion of a pair (`projection/<name>` floats; all 0 for other blur
models), with `projection_kind` smooth | breathing | jerk | none. Translations in mm, rotations in
degrees, times as fractions of the scan; see `pipeline.projection.RigidMotion`."""


NOISE_PARAM_NAMES = (
    "input_measured_hu",
    "sharp_added_hu",
    "blurry_added_hu",
    "nps_peak_cycles_per_mm",
)
"""The noise of a pair (`noise/<name>` floats, HU; see `pipeline.noise`): the noise measured on
the input slice, the std of the CT noise added to the sharp and to the blurry image, and the peak
frequency (cycles/mm) of that noise's power spectrum. All 0 for registered pairs and records
older than version 3."""


RESPIRATORY_PARAM_NAMES = (
    "si_amplitude_mm",
    "ap_amplitude_mm",
    "period_s",
    "shape_power",
    "drift_mm_per_min",
    "trace_duration_s",
    "start_s",
    "scan_s",
    "arc_deg",
    "views",
    "above_diaphragm_mm",
    "slice_motion_mm",
)
"""Breathing of a respiratory pair (`respiratory/<name>` floats; 0 for other blur models; see
`pipeline.respiratory.BreathingTrace`): diaphragm (superior-inferior) and anterior wall amplitudes
(mm, exhale to inhale), mean period (s), shape power n, baseline drift (mm/min), the trace's
duration (s), the start (s into the trace) and duration (s) of this slice's scan, its gantry arc
(degrees) and parallel views, the slice's distance above the diaphragm (mm, negative below) and the
superior-inferior motion of tissue deep in the body during its scan (mm, peak to peak)."""

RESPIRATORY_CYCLE_NAMES = ("cycle_starts_s", "cycle_periods_s", "cycle_amplitudes")
"""The trace's cycles (`respiratory/<name>` float lists, one value per cycle; absent for other blur
models): with the parameters above they give the breathing b(t) of `pipeline.respiratory`
(`BreathingTrace`, `breathing_signal`). Read by `decode_pair`; not in `FEATURE_SPEC` (variable length)."""


class SchemaVersionError(ValueError):
    """A record was written with a schema version this reader cannot read."""


class PairDecodeError(ValueError):
    """A record is not a valid pair (missing feature, inconsistent sizes)."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One blur-sharp pair as numpy arrays and metadata.

    sharp_hu, blurry_hu: int16 [H, W] in Hounsfield units. psf: float32 [k, k], sums to 1 for
    synthetic pairs (all zero, k = 1, for registered pairs without a kernel).
    pixel_spacing_mm: (row, column) spacing in mm. patient_key: salted hash of the patient ID;
    patient_id is empty unless the dataset was made with raw IDs. subdataset: 0..n-1 for train,
    -1 for test.
    """

    sharp_hu: np.ndarray
    blurry_hu: np.ndarray
    psf: np.ndarray
    record_key: str
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    slice_position_mm: float
    collection: str
    patient_key: str
    patient_id: str
    series_uid: str
    sop_instance_uid: str
    slice_index: int
    kernel_index: int
    source_kind: str
    split: str
    subdataset: int
    motion: Mapping[str, float]
    noise_sigma_hu: float = 0.0
    blur_model: str = "kernel"
    projection_kind: str = ""
    projection: Mapping[str, float] = dataclasses.field(default_factory=dict)
    noise: Mapping[str, float] = dataclasses.field(default_factory=dict)
    respiratory_geometry: str = ""
    body_site: str = ""
    respiratory: Mapping[str, float] = dataclasses.field(default_factory=dict)
    respiratory_cycles: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def height(self) -> int:
        return int(self.sharp_hu.shape[0])

    @property
    def width(self) -> int:
        return int(self.sharp_hu.shape[1])


_STRING_FIELDS = (
    "record_key",
    "collection",
    "patient_key",
    "patient_id",
    "series_uid",
    "sop_instance_uid",
    "source_kind",
    "split",
    "blur_model",
    "projection_kind",
)
_V2_STRINGS = {"blur_model": b"kernel", "projection_kind": b""}
_RESPIRATORY_STRINGS = ("respiratory_geometry", "body_site")
_INT_FIELDS = ("slice_index", "kernel_index", "subdataset")
_FLOAT_FIELDS = ("slice_thickness_mm", "slice_position_mm", "noise_sigma_hu")


def _feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    spec = {
        "schema_version": tf.io.FixedLenFeature([], tf.int64),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
        "sharp_hu": tf.io.FixedLenFeature([], tf.string),
        "blurry_hu": tf.io.FixedLenFeature([], tf.string),
        "psf": tf.io.FixedLenFeature([], tf.string),
        "psf_size": tf.io.FixedLenFeature([], tf.int64),
        "pixel_spacing_mm": tf.io.FixedLenFeature([2], tf.float32),
    }
    spec.update({name: tf.io.FixedLenFeature([], tf.string, default_value=_V2_STRINGS.get(name))
                 for name in _STRING_FIELDS})
    spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in _INT_FIELDS})
    spec.update({name: tf.io.FixedLenFeature([], tf.float32) for name in _FLOAT_FIELDS})
    spec.update({f"motion/{name}": tf.io.FixedLenFeature([], tf.float32) for name in MOTION_PARAM_NAMES})
    spec.update({f"projection/{name}": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
                 for name in PROJECTION_PARAM_NAMES})
    spec.update({f"noise/{name}": tf.io.FixedLenFeature([], tf.float32, default_value=0.0) for name in NOISE_PARAM_NAMES})
    spec.update({name: tf.io.FixedLenFeature([], tf.string, default_value=b"") for name in _RESPIRATORY_STRINGS})
    spec.update({f"respiratory/{name}": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
                 for name in RESPIRATORY_PARAM_NAMES})
    return spec


FEATURE_SPEC: Mapping[str, tf.io.FixedLenFeature] = _feature_spec()
"""Spec for `tf.io.parse_single_example`; decode images with `tf.io.decode_raw(x, tf.int16)`."""


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(*values: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(*values: float) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def _check_image(name: str, image: np.ndarray) -> np.ndarray:
    if image.ndim != 2:
        raise ValueError(f"{name} must be [H, W], got shape {image.shape}")
    if image.dtype != np.int16:
        raise ValueError(f"{name} must be int16 HU, got dtype {image.dtype}")
    return np.ascontiguousarray(image, dtype="<i2")


def encode_pair(pair: Pair) -> bytes:
    """Serialises `pair` as a `tf.train.Example` (deterministic bytes for equal pairs)."""
    sharp = _check_image("sharp_hu", pair.sharp_hu)
    blurry = _check_image("blurry_hu", pair.blurry_hu)
    if sharp.shape != blurry.shape:
        raise ValueError(f"sharp_hu {sharp.shape} and blurry_hu {blurry.shape} differ in shape")
    psf = np.ascontiguousarray(pair.psf, dtype="<f4")
    if psf.ndim != 2 or psf.shape[0] != psf.shape[1]:
        raise ValueError(f"psf must be square [k, k], got shape {psf.shape}")
    if pair.source_kind not in SOURCE_KINDS:
        raise ValueError(f"source_kind must be one of {SOURCE_KINDS}, got {pair.source_kind!r}")
    if pair.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {pair.split!r}")
    missing = set(MOTION_PARAM_NAMES) - set(pair.motion)
    if missing:
        raise ValueError(f"motion parameters missing: {sorted(missing)}")
    if pair.blur_model not in BLUR_MODELS:
        raise ValueError(f"blur_model must be one of {BLUR_MODELS}, got {pair.blur_model!r}")
    unknown = set(pair.projection) - set(PROJECTION_PARAM_NAMES)
    if unknown:
        raise ValueError(f"unknown projection parameters: {sorted(unknown)}")
    unknown = set(pair.noise) - set(NOISE_PARAM_NAMES)
    if unknown:
        raise ValueError(f"unknown noise parameters: {sorted(unknown)}")
    respiratory = pair.blur_model == "respiratory"
    if respiratory and (set(pair.respiratory) != set(RESPIRATORY_PARAM_NAMES)
                        or set(pair.respiratory_cycles) != set(RESPIRATORY_CYCLE_NAMES)):
        raise ValueError(f"a respiratory pair needs the parameters {RESPIRATORY_PARAM_NAMES} and the cycles "
                         f"{RESPIRATORY_CYCLE_NAMES}")
    if not respiratory and (any(pair.respiratory.values()) or pair.respiratory_cycles):
        raise ValueError(f"respiratory parameters on a {pair.blur_model} pair")
    feature = {
        "schema_version": _ints(SCHEMA_VERSION if respiratory else _LAYOUT_VERSION),
        "height": _ints(sharp.shape[0]),
        "width": _ints(sharp.shape[1]),
        "sharp_hu": _bytes(sharp.tobytes()),
        "blurry_hu": _bytes(blurry.tobytes()),
        "psf": _bytes(psf.tobytes()),
        "psf_size": _ints(psf.shape[0]),
        "pixel_spacing_mm": _floats(*pair.pixel_spacing_mm),
    }
    feature.update({name: _bytes(str(getattr(pair, name)).encode("utf-8")) for name in _STRING_FIELDS})
    feature.update({name: _ints(getattr(pair, name)) for name in _INT_FIELDS})
    feature.update({name: _floats(getattr(pair, name)) for name in _FLOAT_FIELDS})
    feature.update({f"motion/{name}": _floats(pair.motion[name]) for name in MOTION_PARAM_NAMES})
    feature.update({f"projection/{name}": _floats(pair.projection.get(name, 0.0)) for name in PROJECTION_PARAM_NAMES})
    feature.update({f"noise/{name}": _floats(pair.noise.get(name, 0.0)) for name in NOISE_PARAM_NAMES})
    if respiratory:
        feature.update({name: _bytes(getattr(pair, name).encode("utf-8")) for name in _RESPIRATORY_STRINGS})
        feature.update({f"respiratory/{name}": _floats(pair.respiratory[name]) for name in RESPIRATORY_PARAM_NAMES})
        feature.update({f"respiratory/{name}": _floats(*pair.respiratory_cycles[name])
                        for name in RESPIRATORY_CYCLE_NAMES})
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def check_schema_version(version: int) -> None:
    """Raises `SchemaVersionError` unless `version` is one this reader understands."""
    if version in READABLE_VERSIONS:
        return
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"record has schema_version {version}, newer than this reader's {SCHEMA_VERSION}: "
            "upgrade ctdeblur to read this dataset"
        )
    raise SchemaVersionError(
        f"record has unknown schema_version {version} (this reader knows {READABLE_VERSIONS}); "
        "the file is not a ctdeblur dataset or is damaged"
    )


def _values(features, name: str, kind: str, default=None) -> list:
    if name not in features.feature and default is not None:
        return [default]
    if name not in features.feature:
        raise PairDecodeError(f"record has no feature {name!r}")
    values = list(getattr(features.feature[name], kind).value)
    if not values:
        raise PairDecodeError(f"feature {name!r} is empty")
    return values


def decode_pair(record: bytes) -> Pair:
    """Parses one serialised record into a `Pair` (numpy arrays, host byte order)."""
    example = tf.train.Example()
    try:
        example.ParseFromString(record)
    except Exception as error:  # protobuf raises its own DecodeError type
        raise PairDecodeError(f"record is not a tf.train.Example: {error}") from error
    features = example.features
    if "schema_version" not in features.feature:
        raise SchemaVersionError("record has no schema_version: it is not a ctdeblur pair")
    version = _values(features, "schema_version", "int64_list")[0]
    check_schema_version(version)

    height = _values(features, "height", "int64_list")[0]
    width = _values(features, "width", "int64_list")[0]
    psf_size = _values(features, "psf_size", "int64_list")[0]

    def image(name: str) -> np.ndarray:
        raw = _values(features, name, "bytes_list")[0]
        if len(raw) != height * width * 2:
            raise PairDecodeError(f"{name} holds {len(raw)} bytes, expected {height}x{width} int16")
        return np.frombuffer(raw, dtype="<i2").astype(np.int16).reshape(height, width)

    raw_psf = _values(features, "psf", "bytes_list")[0]
    if len(raw_psf) != psf_size * psf_size * 4:
        raise PairDecodeError(f"psf holds {len(raw_psf)} bytes, expected {psf_size}x{psf_size} float32")
    spacing = _values(features, "pixel_spacing_mm", "float_list")
    return Pair(
        sharp_hu=image("sharp_hu"),
        blurry_hu=image("blurry_hu"),
        psf=np.frombuffer(raw_psf, dtype="<f4").astype(np.float32).reshape(psf_size, psf_size),
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
        motion={name: float(_values(features, f"motion/{name}", "float_list")[0]) for name in MOTION_PARAM_NAMES},
        projection={name: float(_values(features, f"projection/{name}", "float_list", 0.0)[0])
                    for name in PROJECTION_PARAM_NAMES},
        noise={name: float(_values(features, f"noise/{name}", "float_list", 0.0)[0]) for name in NOISE_PARAM_NAMES},
        respiratory={name: float(_values(features, f"respiratory/{name}", "float_list", 0.0)[0])
                     for name in RESPIRATORY_PARAM_NAMES},
        respiratory_cycles={name: tuple(float(v) for v in features.feature[f"respiratory/{name}"].float_list.value)
                            for name in RESPIRATORY_CYCLE_NAMES if f"respiratory/{name}" in features.feature},
        **{name: _values(features, name, "bytes_list", b"")[0].decode("utf-8") for name in _RESPIRATORY_STRINGS},
        schema_version=int(version),
        **{name: _values(features, name, "bytes_list", _V2_STRINGS.get(name))[0].decode("utf-8")
           for name in _STRING_FIELDS},
        **{name: int(_values(features, name, "int64_list")[0]) for name in _INT_FIELDS},
        **{name: float(_values(features, name, "float_list")[0]) for name in _FLOAT_FIELDS},
    )


def parse_pair_tensors(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """tf.data map function: one serialised record -> dict of tensors.

    `sharp_hu`, `blurry_hu`: int16 [H, W]; `psf`: float32 [k, k]; every other feature as in
    `FEATURE_SPEC` (version 1 records get blur_model "kernel" and zero projection parameters).
    Fails (tf.errors.InvalidArgumentError) on a schema version this reader does not know.
    """
    features = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    version = features["schema_version"]
    version_ok = tf.debugging.Assert(
        tf.logical_and(version >= min(READABLE_VERSIONS), version <= max(READABLE_VERSIONS)),
        [f"ctdeblur record schema_version not in {READABLE_VERSIONS}:", version],
    )
    with tf.control_dependencies([version_ok]):
        shape = tf.stack([features["height"], features["width"]])
        features["sharp_hu"] = tf.reshape(tf.io.decode_raw(features["sharp_hu"], tf.int16, little_endian=True), shape)
    features["blurry_hu"] = tf.reshape(tf.io.decode_raw(features["blurry_hu"], tf.int16, little_endian=True), shape)
    k = features["psf_size"]
    features["psf"] = tf.reshape(tf.io.decode_raw(features["psf"], tf.float32, little_endian=True), tf.stack([k, k]))
    return features
