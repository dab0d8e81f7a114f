"""WGAN-GP and perceptual losses against closed-form values."""

import numpy as np
import pytest
import tensorflow as tf

from model.losses import (
    IMAGENET_BGR_MEAN,
    critic_wasserstein_loss,
    feature_distance,
    generator_adversarial_loss,
    gradient_penalty,
    image_scores,
    interpolate,
    perceptual_loss,
    vgg_input,
    wasserstein_estimate,
)

SHAPE = (4, 8, 8, 1)


def linear_critic(scale: float):
    """D(x) = scale * <w, x> with ||w||_2 = 1: gradient norm `scale` everywhere."""
    w = tf.random.stateless_normal(SHAPE[1:], seed=[1, 2])
    w = w / tf.norm(w)

    def critic(x):
        return scale * tf.reduce_sum(x * w, axis=[1, 2, 3], keepdims=True)

    return critic


@pytest.fixture
def batch():
    real = tf.random.stateless_uniform(SHAPE, seed=[3, 4], minval=-1, maxval=1)
    fake = tf.random.stateless_uniform(SHAPE, seed=[5, 6], minval=-1, maxval=1)
    weight = tf.random.stateless_uniform([SHAPE[0], 1, 1, 1], seed=[7, 8])
    return real, fake, weight


def test_gradient_penalty_is_zero_for_unit_gradient_linear_critic(batch):
    assert float(gradient_penalty(linear_critic(1.0), *batch)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_penalty_is_positive_for_scaled_critic(batch):
    assert float(gradient_penalty(linear_critic(3.0), *batch)) == pytest.approx(4.0, rel=1e-5)
    assert float(gradient_penalty(linear_critic(0.5), *batch)) == pytest.approx(0.25, rel=1e-5)


def test_gradient_penalty_of_patch_critic_uses_per_image_mean_score(batch):
    def patch_critic(x):
        return 2.0 * x

    # mean over 64 pixels of 2x: gradient 2/64 per pixel, norm 2/64 * 8 = 0.25
    assert float(gradient_penalty(patch_critic, *batch)) == pytest.approx(0.75**2, rel=1e-5)


def test_interpolation_endpoints(batch):
    real, fake, _ = batch
    np.testing.assert_allclose(interpolate(real, fake, tf.ones([4, 1, 1, 1])), real)
    np.testing.assert_allclose(interpolate(real, fake, tf.zeros([4, 1, 1, 1])), fake)


def test_wasserstein_losses_on_known_scores():
    real = tf.constant([[[[1.0], [3.0]]], [[[5.0], [7.0]]]])  # image means 2 and 6
    fake = tf.constant([1.0, -1.0])
    np.testing.assert_allclose(image_scores(real), [2.0, 6.0])
    assert float(wasserstein_estimate(real, fake)) == pytest.approx(4.0)
    assert float(critic_wasserstein_loss(real, fake)) == pytest.approx(-4.0)
    assert float(generator_adversarial_loss(fake)) == pytest.approx(0.0)
    assert float(generator_adversarial_loss(real)) == pytest.approx(-4.0)


def test_feature_distances():
    a = tf.constant([0.0, 1.0, -2.0, 3.0])
    b = tf.constant([1.0, 1.0, 0.0, 0.0])
    assert float(feature_distance(a, b, "l1")) == pytest.approx((1 + 0 + 2 + 3) / 4)
    assert float(feature_distance(a, b, "l2")) == pytest.approx((1 + 0 + 4 + 9) / 4)
    with pytest.raises(ValueError, match="l3"):
        feature_distance(a, b, "l3")


def test_vgg_input_replicates_gray_with_imagenet_means():
    images = tf.constant([-1.0, 0.0, 1.0], shape=(1, 1, 3, 1))
    vgg = vgg_input(images).numpy()
    assert vgg.shape == (1, 1, 3, 3)
    for channel, mean in enumerate(IMAGENET_BGR_MEAN):
        np.testing.assert_allclose(vgg[0, 0, :, channel], np.array([0.0, 127.5, 255.0]) - mean, rtol=1e-6)


def test_perceptual_loss_zero_on_identical_images_and_no_gradient_into_target(batch):
    real, fake, _ = batch

    def features(x):
        return tf.nn.relu(x[..., :2] - 0.5)

    assert float(perceptual_loss(features, real, real)) == 0.0
    sharp = tf.Variable(real)
    restored = tf.Variable(fake)
    with tf.GradientTape() as tape:
        loss = perceptual_loss(features, restored, sharp, "l1")
    grad_restored, grad_sharp = tape.gradient(loss, [restored, sharp])
    assert float(loss) > 0 and grad_sharp is None and float(tf.reduce_sum(tf.abs(grad_restored))) > 0
