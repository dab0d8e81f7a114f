"""`--precision bf16` at inference: bfloat16 convolutions, float32 skip, normalisation and HU
mapping, within a few HU of the float32 export (tiny generators, in process)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model.config import preset_config
from model.export import ExportError, export_generator, generator_under_policy, load_exported_generator
from model.networks import build_generator


def head_like_hu(shape=(2, 96, 80)) -> np.ndarray:
    """Air, a skull ring, soft tissue with texture: HU of the kind a CT slice holds."""
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[: shape[1], : shape[2]]
    radius = np.hypot((rows - shape[1] / 2) / (shape[1] * 0.4), (cols - shape[2] / 2) / (shape[2] * 0.4))
    hu = np.where(radius < 1.0, 40.0, -1000.0) + np.where((radius > 0.85) & (radius < 1.0), 1200.0, 0.0)
    return np.stack([hu + rng.normal(0, 15, hu.shape) * (radius < 1.0) for _ in range(shape[0])]).astype(np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{"ours": linear-residual generator, "paper": instance-norm tanh generator}, each with a
    last layer that corrects by tens of HU, as a trained one does; plus an identity export."""
    root = tmp_path_factory.mktemp("precision")
    found = {}
    for model in ("ours", "paper"):
        config = preset_config("tiny", model)
        generator = build_generator(config)
        tail = generator.get_layer("tail_conv")
        kernel, bias = tail.get_weights()
        scale = 0.001 if model == "paper" else 1.0  # tanh in network units (2,047.5 HU) vs x0.1
        tail.set_weights([np.random.default_rng(1).normal(0, scale, kernel.shape).astype(np.float32), bias + 0.002])
        export_generator(generator, config, str(root / model), {"model": model})
        found[model] = str(root / model)
    config = preset_config("tiny", "ours")
    export_generator(build_generator(config), config, str(root / "identity"), {"model": "identity"})
    found["identity"] = str(root / "identity")
    return found


@pytest.mark.parametrize("model", ["ours", "paper"])
def test_bf16_stays_within_a_few_hu_of_float32(exports, model):
    hu = head_like_hu()
    full = load_exported_generator(exports[model]).deblur(hu)
    half = load_exported_generator(exports[model], "bf16").deblur(hu)
    assert half.dtype == np.float32 and half.shape == hu.shape
    assert np.percentile(np.abs(full - hu), 50) > 5.0  # the generator really corrects by tens of HU
    inside = (full >= -1000) & (full <= 1000)
    difference = np.abs(half - full)[inside]
    assert np.percentile(difference, 99) <= 5.0
    assert difference.max() > 0.0  # it did run in bfloat16


def test_bf16_keeps_the_skip_in_float32(exports):
    hu = head_like_hu()
    full = load_exported_generator(exports["identity"]).deblur(hu)
    half = load_exported_generator(exports["identity"], "bf16").deblur(hu)
    np.testing.assert_array_equal(half, full)  # zero correction: the input comes back to the float32 bit


def test_under_bf16_convolutions_are_bfloat16_and_normalisation_float32():
    generator = generator_under_policy(preset_config("tiny", "paper"), "mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # restored
    kinds = {}
    for layer in generator.layers:
        kinds.setdefault(type(layer).__name__, set()).add(layer.compute_dtype)
    assert kinds["Conv2D"] == {"bfloat16"} and kinds["GroupNormalization"] == {"float32"}
    assert kinds["GlobalSkip"] == {"float32"} and generator.get_layer("residual").compute_dtype == "float32"
    assert {v.dtype for v in generator.trainable_variables} == {"float32"}  # weights stay float32


def test_an_unknown_precision_is_refused_by_name(exports):
    with pytest.raises(ExportError, match="precision must be one of float32, bf16"):
        load_exported_generator(exports["ours"], "fp8")
