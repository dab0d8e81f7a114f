"""VGG19 feature extractor of the perceptual loss, and where its weights come from.

`--perceptual_weights` is `imagenet` (the Keras cache, then the Keras download), a PATH to the
weights file (local or `gs://`), or `random-init` (only when asked for by name: the features
are then not ImageNet features and the run is not the paper's). Nothing falls back silently.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import keras
import tensorflow as tf

from cli_shell.command import UserError
from model.config import VGG19_LAYERS

VGG19_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
"""Keras' VGG19 ImageNet weights without the classifier (80 MB)."""
RANDOM_INIT = "random-init"
IMAGENET = "imagenet"


class PerceptualWeightsError(UserError):
    """The VGG19 weights asked for cannot be loaded; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where the VGG19 weights of a run came from: `kind` imagenet | file | random-init."""

    kind: str
    path: str
    description: str


def keras_cache_path() -> str:
    """Where Keras caches the VGG19 weights: `$KERAS_HOME/models/...` (default `~/.keras`)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", VGG19_WEIGHTS_FILE)


def missing_weights_message(reason: str) -> str:
    """The instructions printed when the ImageNet VGG19 weights are unavailable."""
    return (
        f"cannot load the VGG19 ImageNet weights for the perceptual loss: {reason}\n"
        f"  The file needed is {VGG19_WEIGHTS_FILE}\n"
        f"  (https://storage.googleapis.com/tensorflow/keras-applications/vgg19/{VGG19_WEIGHTS_FILE}).\n"
        f"  Either put it in the Keras cache at {keras_cache_path()} and pass --perceptual_weights imagenet,\n"
        f"  or pass its location with --perceptual_weights /path/to/{VGG19_WEIGHTS_FILE} (local or gs://).\n"
        f"  Only for tests and demos: --perceptual_weights {RANDOM_INIT} (random VGG19, not the paper's loss)."
    )


def _vgg19(weights: str | None) -> keras.Model:
    return keras.applications.VGG19(include_top=False, weights=weights, input_shape=(None, None, 3))


def _local_copy(path: str) -> str:
    """`path` itself when local; a copy in a temporary directory when on a remote filesystem."""
    if "://" not in path:
        return path
    local = os.path.join(tempfile.mkdtemp(prefix="ctdeblur-vgg19-"), os.path.basename(path))
    tf.io.gfile.copy(path, local, overwrite=True)
    return local


def load_vgg19(spec: str) -> tuple[keras.Model, WeightsSource]:
    """VGG19 without its classifier and the source of its weights, as named by `spec`.

    Raises `PerceptualWeightsError` (with `missing_weights_message` for `imagenet`) when the
    weights cannot be had.
    """
    if spec == RANDOM_INIT:
        return _vgg19(None), WeightsSource(RANDOM_INIT, "", "random-init: randomly initialised VGG19, NOT ImageNet features")
    if spec == IMAGENET:
        cached = keras_cache_path()
        origin = "Keras cache" if os.path.exists(cached) else "Keras download"
        try:
            model = _vgg19(IMAGENET)
        except Exception as error:  # urllib, hash and h5py failures all mean "not available"
            reason = f"not in the Keras cache and the download failed ({error})"
            raise PerceptualWeightsError(missing_weights_message(reason)) from error
        return model, WeightsSource(IMAGENET, cached, f"imagenet ({origin}: {cached})")
    if not tf.io.gfile.exists(spec):
        raise PerceptualWeightsError(missing_weights_message(f"--perceptual_weights {spec}: no such file"))
    model = _vgg19(None)
    try:
        model.load_weights(_local_copy(spec))
    except Exception as error:  # h5py / Keras raise several types for a wrong file
        raise PerceptualWeightsError(
            missing_weights_message(f"{spec} is not a VGG19 no-top weights file ({error})")
        ) from error
    return model, WeightsSource("file", spec, f"file {spec}")


def feature_extractor(vgg: keras.Model, layer: str) -> keras.Model:
    """Frozen sub-model of `vgg`: VGG19 input `[B, H, W, 3]` -> activations of `layer`."""
    if layer not in VGG19_LAYERS:
        raise ValueError(f"perceptual_layer {layer!r} is not a VGG19 layer; choose one of {', '.join(VGG19_LAYERS)}")
    extractor = keras.Model(vgg.input, vgg.get_layer(layer).output, name=f"vgg19_{layer}")
    extractor.trainable = False
    return extractor
