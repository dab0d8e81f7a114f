"""Generator and critic: paper sizes, any H x W, identity with a zero residual."""

import numpy as np
import pytest
import tensorflow as tf
from test_model_support import PAPER_RECIPE

from model.config import PRESETS, config_from_dict
from model.networks import (
    build_critic,
    build_generator,
    build_patchgan_critic,
    build_resnet_generator,
)


def conv_params(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out


def norm_params(channels: int) -> int:
    return 2 * channels


def expected_generator_params(f: int = 64, blocks: int = 9) -> int:
    head = conv_params(7, 1, f) + norm_params(f)
    down = conv_params(3, f, 2 * f) + norm_params(2 * f) + conv_params(3, 2 * f, 4 * f) + norm_params(4 * f)
    res = blocks * 2 * (conv_params(3, 4 * f, 4 * f) + norm_params(4 * f))
    up = conv_params(3, 4 * f, 2 * f) + norm_params(2 * f) + conv_params(3, 2 * f, f) + norm_params(f)
    tail = conv_params(7, f, 1)
    return head + down + res + up + tail


def paper_config():
    """The paper preset with the reference paper's networks (instance norm, tanh residual, batch-norm critic)."""
    return config_from_dict({**PRESETS["paper"], **PAPER_RECIPE})


@pytest.fixture(scope="module")
def paper_generator():
    return build_generator(paper_config())


def test_paper_generator_parameter_count(paper_generator):
    assert expected_generator_params() == 11_376_129
    assert paper_generator.count_params() == 11_376_129
    blocks = [layer.name for layer in paper_generator.layers if layer.name.endswith("_add")]
    assert len(blocks) == 9


@pytest.mark.parametrize("shape", [(256, 256), (512, 512), (300, 517)])
def test_paper_generator_keeps_any_size(paper_generator, shape):
    image = tf.random.uniform((1, *shape, 1), -1.0, 1.0, seed=1)
    restored = paper_generator(image, training=False)
    assert restored.shape == (1, *shape, 1)
    assert restored.dtype == tf.float32
    assert float(tf.reduce_min(restored)) >= -1.0 and float(tf.reduce_max(restored)) <= 1.0


def randomise(layer, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(0.0, 0.05, w.shape).astype(np.float32) for w in layer.get_weights()])


def test_generator_is_identity_when_residual_weights_are_zero(paper_generator):
    image = tf.random.uniform((2, 37, 50, 1), -1.0, 1.0, seed=2)
    np.testing.assert_array_equal(paper_generator(image, training=True).numpy(), image.numpy())  # zero init
    tail = paper_generator.get_layer("tail_conv")
    randomise(tail, 1)
    try:
        assert float(tf.reduce_max(tf.abs(paper_generator(image, training=False) - image))) > 1e-3
        tail.set_weights([np.zeros_like(w) for w in tail.get_weights()])
        np.testing.assert_array_equal(paper_generator(image, training=True).numpy(), image.numpy())
    finally:
        tail.set_weights([np.zeros_like(w) for w in tail.get_weights()])


def test_small_generator_residual_changes_odd_sized_images_only_through_the_tail():
    generator = build_resnet_generator(filters=4, blocks=1)
    image = tf.random.uniform((1, 33, 35, 1), -0.5, 0.5, seed=3)
    np.testing.assert_array_equal(generator(image).numpy(), image.numpy())
    randomise(generator.get_layer("tail_conv"), 2)
    assert float(tf.reduce_max(tf.abs(generator(image) - image))) > 1e-3


def test_paper_critic_blocks_norms_and_patch_scores():
    critic = build_critic(paper_config())
    convs = [layer for layer in critic.layers if layer.name.endswith("_conv")]
    norms = [layer.name for layer in critic.layers if layer.name.endswith("_norm")]
    assert [c.filters for c in convs] == [64, 128, 256, 512]
    assert [c.strides for c in convs] == [(2, 2), (2, 2), (2, 2), (1, 1)]
    assert norms == ["block1_norm", "block2_norm", "block3_norm"]
    assert critic(tf.zeros((2, 256, 256, 1))).shape == (2, 32, 32, 1)
    assert build_patchgan_critic(8, 3)(tf.zeros((1, 40, 44, 1))).shape == (1, 10, 11, 1)
