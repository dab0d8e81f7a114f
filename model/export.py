"""Export of the trained generator as a SavedModel that deblurs HU images of any size.

The SavedModel needs only TensorFlow to load (`tf.saved_model.load`); its `serving_default`
signature (also callable as `.deblur_hu`) takes float32 HU named `hu`, either `[H, W]` or
`[B, H, W, 1]`, and returns `{"hu": ...}` of the same shape. HU outside the training window are
clipped. The model's name (`ours`, `deblurgan`, `pix2pix`), the training window and settings are
written beside it in `ctdeblur_generator.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.config import PRECISIONS, TrainConfig, config_from_dict
from model.data import hu_to_unit, unit_to_hu
from model.networks import build_generator
from tfrecords_schema import join_path

EXPORT_INFO_NAME = "ctdeblur_generator.json"
SIGNATURE_NAME = "deblur_hu"


class ExportError(ValueError):
    """A model directory is missing, not a ctdeblur export, or unloadable; the message names it."""


def deblur_function(generator: keras.Model, hu_window: tuple[float, float]):
    """HU `[H, W]` or `[B, H, W, 1]` -> {"hu": restored HU, same shape} using `generator`."""

    def deblur_hu(hu):
        shape = tf.shape(hu)
        rank = tf.size(shape)
        tf.debugging.assert_equal(
            tf.logical_or(tf.equal(rank, 2), tf.logical_and(tf.equal(rank, 4), tf.equal(shape[-1], 1))),
            True,
            message="hu must be [H, W] or [B, H, W, 1]",
        )
        size = tf.cond(tf.equal(rank, 2), lambda: shape[:2], lambda: shape[1:3])
        images = tf.reshape(hu, tf.concat([[-1], size, [1]], axis=0))
        images.set_shape([None, None, None, 1])
        restored = generator(hu_to_unit(images, hu_window), training=False)
        return {"hu": tf.reshape(unit_to_hu(restored, hu_window), shape)}

    return deblur_hu


def generator_under_policy(config: TrainConfig, policy: str) -> keras.Model:
    """A new generator of `config` built under the Keras dtype policy `policy` (the global policy
    is restored afterwards)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        return build_generator(config)
    finally:
        keras.config.set_dtype_policy(previous)


def export_generator(generator: keras.Model, config: TrainConfig, export_dir: str, info: dict) -> None:
    """Writes the SavedModel of `generator` (float32 copy, no distribution) to `export_dir`."""
    portable = generator_under_policy(config, "float32")
    portable.set_weights(generator.get_weights())
    archive = keras.export.ExportArchive()
    archive.track(portable)
    archive.add_endpoint(
        SIGNATURE_NAME,
        deblur_function(portable, config.hu_window),
        input_signature=[tf.TensorSpec(shape=None, dtype=tf.float32, name="hu")],
    )
    archive.write_out(export_dir, verbose=False)
    with tf.io.gfile.GFile(join_path(export_dir, EXPORT_INFO_NAME), "w") as handle:
        handle.write(json.dumps({"model": config.model, "hu_window": list(config.hu_window), "signature": SIGNATURE_NAME,
                                 "config": config.to_dict(), **info}, indent=2))


@dataclasses.dataclass(frozen=True)
class ExportedGenerator:
    """A loaded export: `deblur(hu)` maps float32 HU `[B, H, W]` to restored HU `[B, H, W]`.

    name: the model's name (`model` in the export info, else the directory's base name).
    info: the export's `ctdeblur_generator.json` (hu_window, config, run info).
    """

    path: str
    name: str
    info: dict[str, Any]
    signature: Any

    def deblur(self, hu: np.ndarray) -> np.ndarray:
        """Restored HU (float32 `[B, H, W]`) of blurry HU `[B, H, W]` (any H, W)."""
        images = tf.convert_to_tensor(np.asarray(hu, np.float32)[..., np.newaxis])
        return self.signature(hu=images)["hu"].numpy()[..., 0]


def bfloat16_deblur_function(loaded: Any, config: TrainConfig):
    """The `deblur_hu` function of the generator `config` describes, built under Keras'
    mixed_bfloat16 policy (its skip, residual and normalisation layers stay float32, see
    `model.networks`) and given the float32 weights of the loaded SavedModel `loaded`."""
    generator = generator_under_policy(config, "mixed_bfloat16")
    saved = list(loaded.variables)
    if [tuple(v.shape) for v in saved] != [tuple(v.shape) for v in generator.variables]:
        raise ExportError("the export's weights do not fit the generator its ctdeblur_generator.json describes")
    for variable, value in zip(generator.variables, saved):
        variable.assign(value)
    return tf.function(deblur_function(generator, config.hu_window),
                       input_signature=[tf.TensorSpec(shape=None, dtype=tf.float32, name="hu")])


def load_exported_generator(export_dir: str, precision: str = "float32") -> ExportedGenerator:
    """Loads a directory written by `export_generator` (local or gs://) to run at `precision`
    (one of `PRECISIONS`); ExportError if it is not one."""
    info_path = join_path(export_dir, EXPORT_INFO_NAME)
    if not tf.io.gfile.exists(info_path):
        raise ExportError(
            f"{export_dir} is not an exported ctdeblur generator: {EXPORT_INFO_NAME} is missing "
            "(export one with `ctdeblur-train ... --export DIR`)"
        )
    try:
        with tf.io.gfile.GFile(info_path, "r") as handle:
            info = json.loads(handle.read())
        loaded = tf.saved_model.load(export_dir)
        signature = loaded.signatures["serving_default"]
        if precision == "bf16":
            signature = bfloat16_deblur_function(loaded, config_from_dict(info["config"], where=info_path))
        elif precision != "float32":
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    except (json.JSONDecodeError, KeyError, OSError, ValueError, tf.errors.OpError) as error:
        raise ExportError(f"cannot load the exported generator in {export_dir}: {error}") from error
    name = str(info.get("model") or os.path.basename(export_dir.rstrip("/")))
    return ExportedGenerator(path=export_dir, name=name, info=info, signature=signature)
