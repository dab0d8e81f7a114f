"""The training recipe of issue 16 on known values: the warm-up + cosine learning rate, the
Charbonnier pixel term, VGG input through a CT window, gradient-share weights, the critic-free
mode, normalisations and the scaled residual, edge-seeking crops and validation pairs, the new
settings' validation, a 50-step overfit on one pair, and the trainer's validation split,
best-step export and time budget (tiny, in process)."""

import glob
import itertools
import json
import math
import os
import shutil
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from tensorflow.core.util import event_pb2
from test_model_support import phantom_pair, recipe_flags, run_main, write_dataset

from model.config import PRESETS, TrainConfig, config_from_dict
from model.data import (
    InputShard,
    crop_pair,
    dataset_splits,
    find_split,
    hu_to_unit,
    largest_difference_crop,
    orient_pair,
    soften_pair,
    training_batches,
    unit_to_hu,
    validation_pairs,
)
from model.gan import DeblurWGAN
from model.losses import IMAGENET_BGR_MEAN, charbonnier_loss, vgg_input
from model.metrics import psnr
from model.networks import (
    ScaledResidual,
    build_critic,
    build_generator,
    build_patchgan_critic,
    build_resnet_generator,
    normalisation,
)
from model import schedule
from model.schedule import WarmupCosine
from model.train import build_model, config_differences, make_optimizer, network_window
from pipeline.kernels import MotionParams, blur_hu, motion_psf, motion_trajectory
from tfrecords_schema import encode_pair, shard_name, write_records

PIXEL_ONLY = {
    "generator_dropout": 0.0, "generator_norm": "none", "residual_output": "linear", "residual_scale": 1.0,
    "perceptual_weights": "none", "pixel_weight": 1.0, "charbonnier_epsilon_hu": 1.0, "adversarial_weight": 0.0,
    "adversarial_gradient_share": 0.0, "perceptual_gradient_share": 0.0, "generator_warmup_steps": 0,
    "generator_learning_rate": 1e-4, "learning_rate_schedule": "constant", "learning_rate_warmup_steps": 0,
    "adam_beta_1": 0.5, "adam_beta_2": 0.999, "crop_candidates": 1, "random_orientation": False, "critic_norm": "batch",
}
"""A generator-only recipe (no VGG19, no critic), spelt out: what these tests train, whatever the
`ours` recipe sets."""


def tiny(**settings) -> TrainConfig:
    """The tiny preset's sizes with the pixel-only recipe and `settings` on top."""
    return config_from_dict({**PRESETS["tiny"], **PIXEL_ONLY, **settings})


def weights(model):
    return [w.copy() for w in model.get_weights()]


def same(before, after) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# --- learning rate ------------------------------------------------------------------------------


def test_warmup_cosine_ramps_peaks_and_decays_to_the_final_fraction():
    schedule = WarmupCosine(peak=1e-3, total=110, warmup=10, final_fraction=0.1)
    rates = {step: float(schedule(step)) for step in (0, 4, 9, 10, 60, 85, 110, 111, 10_000)}
    assert rates == {
        0: pytest.approx(1e-4), 4: pytest.approx(5e-4), 9: pytest.approx(1e-3),  # linear ramp (step + 1) / 10
        10: pytest.approx(1e-3),  # the peak
        60: pytest.approx(1e-4 + 9e-4 * 0.5),  # halfway down the cosine
        85: pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(0.75 * math.pi))),
        110: pytest.approx(1e-4), 111: pytest.approx(1e-4), 10_000: pytest.approx(1e-4),  # the final fraction, then flat
    }
    no_warmup = WarmupCosine(peak=2.0, total=4, warmup=0, final_fraction=0.5)
    assert [float(no_warmup(s)) for s in range(6)] == pytest.approx(
        [2.0, 1.0 + 0.5 * (1 + math.cos(math.pi / 4)), 1.5, 1.0 + 0.5 * (1 + math.cos(3 * math.pi / 4)), 1.0, 1.0])
    assert WarmupCosine(**schedule.get_config()).get_config() == schedule.get_config()


def test_warmup_cosine_follows_the_time_budget_when_it_is_further_along_than_the_steps():
    used = tf.Variable(0.0)
    rate = WarmupCosine(peak=1.0, total=1000, warmup=10, final_fraction=0.1, budget_fraction=used)
    assert float(rate(5)) == pytest.approx(0.6) and float(rate(10)) == pytest.approx(1.0)
    used.assign(0.5)
    assert float(rate(5)) == pytest.approx(0.6)  # the warm-up ramp is the steps'
    assert float(rate(10)) == pytest.approx(0.55, rel=1e-5)
    assert float(rate(900)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(890 / 990 * math.pi)), rel=1e-5)
    used.assign(1.0)
    assert float(rate(11)) == pytest.approx(0.1, rel=1e-5)


def test_each_sub_dataset_gets_an_equal_share_of_what_is_left_of_the_budget():
    assert schedule.budget_fraction(0.0, 30.0, 120.0) == 0.25
    assert schedule.budget_fraction(0.5, 60.0, 120.0) == 0.75  # a resumed run spends the rest of the curve
    assert schedule.budget_fraction(0.0, 200.0, 120.0) == 1.0
    steps = [4, 0, 4, 4]
    assert schedule.stages_left(schedule.Position(0, 0, 0), steps) == 3  # the empty sub-dataset has no share
    assert schedule.stages_left(schedule.Position(2, 1, 3), steps) == 2
    assert not schedule.stage_share_used(99.9, 0.0, 300.0, 3) and schedule.stage_share_used(100.0, 0.0, 300.0, 3)
    assert not schedule.stage_share_used(199.9, 100.0, 300.0, 2) and schedule.stage_share_used(200.0, 100.0, 300.0, 2)
    assert not schedule.stage_share_used(1e9, 0.0, 300.0, 1)  # the last one runs to the end of the budget
    assert schedule.next_stage(schedule.Position(0, 3, 2), steps, epochs=5) == schedule.Position(2, 0, 0)
    assert schedule.next_stage(schedule.Position(3, 0, 1), steps, epochs=5) == schedule.Position(4, 0, 0)


def test_optimizers_follow_the_schedule_over_all_steps_and_critic_updates():
    config = tiny(learning_rate_schedule="cosine", learning_rate_warmup_steps=4, learning_rate_final_fraction=0.2,
                  generator_learning_rate=1e-3, critic_learning_rate=3e-3, critic_steps=5)
    generator = make_optimizer(1e-3, config, total_steps=100)
    critic = make_optimizer(3e-3, config, total_steps=100, steps_per_update=5)
    assert float(generator.learning_rate) == pytest.approx(1e-3 / 4)  # step 0 of a 4-step ramp
    assert float(critic.learning_rate) == pytest.approx(3e-3 / 20)  # 5 critic updates per generator step
    critic.iterations.assign(500)
    generator.iterations.assign(52)  # halfway through the cosine part: (52 - 4) / 96
    assert float(critic.learning_rate) == pytest.approx(3e-3 * 0.2)
    assert float(generator.learning_rate) == pytest.approx(1e-3 * (0.2 + 0.8 * 0.5))
    constant = make_optimizer(1e-3, tiny(), total_steps=100)
    constant.iterations.assign(99)
    assert float(constant.learning_rate) == pytest.approx(1e-3)


# --- loss terms ---------------------------------------------------------------------------------


def test_log_mse_loss_is_minus_psnr_per_crop_and_weighs_crops_by_their_error():
    from model.losses import log_mse_loss

    crops = tf.constant([[1.0, -1.0, 1.0, -1.0], [3.0, 3.0, -3.0, -3.0]], shape=(2, 2, 2, 1))
    zeros = tf.zeros_like(crops)
    expected = (10 * math.log10(1.0 + 0.01) + 10 * math.log10(9.0 + 0.01)) / 2
    assert float(log_mse_loss(crops, zeros, 0.1)) == pytest.approx(expected, rel=1e-6)
    assert float(log_mse_loss(zeros, zeros, 0.1)) == pytest.approx(10 * math.log10(0.01), rel=1e-6)
    with tf.GradientTape() as tape:
        tape.watch(crops)
        loss = log_mse_loss(crops, zeros, 1e-6)
    gradient = tape.gradient(loss, crops).numpy()
    # d/dx of 10 log10(mean x^2) = 20 x / (n mse ln 10): the same step for the same relative error
    assert np.allclose(np.abs(gradient[0]) * 1.0, np.abs(gradient[1]) * 3.0, rtol=1e-4)


def test_rmse_loss_is_the_mean_of_each_crops_rms_error():
    from model.losses import rmse_loss

    crops = tf.constant([[1.0, -1.0, 1.0, -1.0], [3.0, 3.0, -3.0, -3.0]], shape=(2, 2, 2, 1))
    zeros = tf.zeros_like(crops)
    assert float(rmse_loss(crops, zeros, 0.0)) == pytest.approx((1.0 + 3.0) / 2, rel=1e-6)
    assert float(rmse_loss(zeros, zeros, 0.5)) == pytest.approx(0.5, rel=1e-6)


def test_charbonnier_loss_on_known_tensors():
    sharp = tf.constant([[0.0, 3.0], [-4.0, 0.5]], shape=(1, 2, 2, 1))
    restored = tf.zeros((1, 2, 2, 1))
    expected = (0.0 + (math.sqrt(10) - 1) + (math.sqrt(17) - 1) + (math.sqrt(1.25) - 1)) / 4
    assert float(charbonnier_loss(restored, sharp, 1.0)) == pytest.approx(expected, rel=1e-6)
    assert float(charbonnier_loss(sharp, sharp, 1.0)) == 0.0
    big = tf.fill((1, 4, 4, 1), 100.0)
    assert float(charbonnier_loss(big, tf.zeros_like(big), 1e-3)) == pytest.approx(100.0 - 1e-3, rel=1e-7)  # |d| - eps
    small = tf.fill((1, 4, 4, 1), 0.1)
    near = float(charbonnier_loss(small, tf.zeros_like(small), 1.0))
    assert near == pytest.approx(math.sqrt(1.01) - 1.0, rel=1e-5) and near == pytest.approx(0.005, rel=0.01)  # d^2 / 2eps


def test_vgg_input_maps_the_window_to_0_255_and_clips():
    images = tf.constant([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0], shape=(1, 1, 6, 1))
    vgg = vgg_input(images, (-0.5, 0.5)).numpy()
    assert vgg.shape == (1, 1, 6, 3)
    for channel, mean in enumerate(IMAGENET_BGR_MEAN):
        np.testing.assert_allclose(vgg[0, 0, :, channel], np.array([0, 0, 127.5, 191.25, 255, 255]) - mean, rtol=1e-6)
    np.testing.assert_allclose(vgg_input(images).numpy()[0, 0, :, 0],
                               (images.numpy().ravel() + 1) * 127.5 - IMAGENET_BGR_MEAN[0], rtol=1e-6)


def test_hu_settings_reach_the_model_in_network_units():
    assert network_window((-1024.0, 3071.0), (-1024.0, 3071.0)) == pytest.approx((-1.0, 1.0))
    assert network_window((-160.0, 240.0), (-1024.0, 3071.0)) == pytest.approx(
        (864 / 4095 * 2 - 1, 1264 / 4095 * 2 - 1))
    gan = build_model(tiny(charbonnier_epsilon_hu=2.0), None)
    assert gan.charbonnier_epsilon == pytest.approx(4.0 / 4095)
    assert gan.features is None and gan.content_weights() == {"generator/pixel": 1.0}


@pytest.fixture(scope="module")
def share_gan():
    """A tiny WGAN with pixel, perceptual (a stand-in feature map) and adversarial terms."""
    keras.utils.set_random_seed(3)
    generator = build_resnet_generator(filters=4, blocks=1, dropout=0.0, norm="none", residual_output="linear")
    tail = generator.get_layer("tail_conv")
    tail.set_weights([np.random.default_rng(1).normal(0.0, 0.01, w.shape).astype(np.float32) for w in tail.get_weights()])
    critic = build_patchgan_critic(filters=4, blocks=2, norm="layer")

    def features(vgg):
        return tf.nn.relu(tf.nn.avg_pool2d(vgg, 2, 2, "VALID") - 50.0)

    return DeblurWGAN(generator, critic, features, critic_steps=1, perceptual_weight=100.0, pixel_weight=1.0,
                      charbonnier_epsilon=1e-3, adversarial_share=0.1, perceptual_share=0.3,
                      perceptual_window=(-0.6, 0.2))


def test_gradient_share_weights_equal_the_gradient_norm_ratio_on_the_last_layer(share_gan):
    gan = share_gan
    sharp = tf.random.stateless_uniform((2, 24, 24, 1), seed=[4, 5], minval=-1, maxval=1)
    blurry = tf.nn.avg_pool2d(sharp, 3, 1, "SAME")
    with tf.GradientTape(persistent=True) as tape:
        restored = gan.generator(blurry, training=True)
        logs = gan.generator_losses(blurry, restored, sharp, tape)
    kernel = gan.generator.get_layer("tail_conv").kernel
    with tf.GradientTape(persistent=True) as independent:
        restored = gan.generator(blurry, training=True)
        pixel = tf.reduce_mean(tf.sqrt(tf.square(restored - sharp) + 1e-6) - 1e-3)
        adversarial = -tf.reduce_mean(gan.critic(restored, training=True))
        to_vgg = [tf.clip_by_value((x - -0.6) / 0.8, 0.0, 1.0) * 255.0 - IMAGENET_BGR_MEAN for x in (restored, sharp)]
        perceptual = tf.reduce_mean(tf.abs(gan.features(to_vgg[0]) - tf.stop_gradient(gan.features(to_vgg[1]))))

    def norm(loss):
        return float(tf.norm(independent.gradient(loss, kernel)))

    assert norm(pixel) > 0 and norm(adversarial) > 0 and norm(perceptual) > 0
    adversarial_weight = 0.1 * norm(pixel) / norm(adversarial)
    perceptual_weight = 0.3 * norm(pixel) / norm(perceptual)
    assert float(logs["generator/pixel"]) == pytest.approx(float(pixel), rel=1e-5)
    assert float(logs["generator/adversarial"]) == pytest.approx(float(adversarial), rel=1e-5)
    assert float(logs["generator/perceptual"]) == pytest.approx(float(perceptual), rel=1e-5)
    assert float(logs["generator/adversarial_weight"]) == pytest.approx(adversarial_weight, rel=1e-4)
    assert float(logs["generator/perceptual_weight"]) == pytest.approx(perceptual_weight, rel=1e-4)
    assert perceptual_weight != pytest.approx(100.0, rel=0.1)  # the fixed weight is not used
    total = float(pixel) + adversarial_weight * float(adversarial) + perceptual_weight * float(perceptual)
    assert float(logs["generator/total"]) == pytest.approx(total, rel=1e-4)


def test_gradient_share_logs_come_out_of_a_train_step(share_gan):
    gan = share_gan
    gan.compile(keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4))
    sharp = tf.random.stateless_uniform((2, 24, 24, 1), seed=[6, 7], minval=-1, maxval=1)
    logs = gan.train_step((tf.nn.avg_pool2d(sharp, 3, 1, "SAME"), sharp))
    assert {"generator/pixel", "generator/perceptual", "generator/adversarial", "generator/adversarial_weight",
            "generator/perceptual_weight", "critic/loss"} <= set(logs)
    assert float(logs["generator/adversarial_weight"]) > 0 and float(logs["generator/perceptual_weight"]) > 0


def test_without_adversarial_weight_a_train_step_leaves_the_critic_alone():
    config = tiny(adversarial_weight=0.0)
    assert not config.adversarial and not config.perceptual
    gan = build_model(config, None)
    sharp = tf.random.stateless_uniform((2, 32, 32, 1), seed=[1, 2], minval=-1, maxval=1)
    batch = (tf.nn.avg_pool2d(sharp, 3, 1, "SAME"), sharp)
    generator_before, critic_before = weights(gan.generator), weights(gan.critic)
    logs = gan.train_step(batch)
    assert set(logs) == {"generator/pixel", "generator/total"}
    assert float(logs["generator/total"]) == pytest.approx(float(logs["generator/pixel"]))
    assert same(critic_before, weights(gan.critic)) and int(gan.critic_optimizer.iterations) == 0
    assert not same(generator_before, weights(gan.generator)) and int(gan.generator_optimizer.iterations) == 1
    assert tiny(adversarial_weight=0.0, adversarial_gradient_share=0.1).adversarial
    with_critic = build_model(tiny(adversarial_weight=0.5, critic_steps=2, critic_norm="layer"), None)
    logs = with_critic.train_step(batch)
    assert int(with_critic.critic_optimizer.iterations) == 2 and "critic/loss" in logs
    assert float(logs["generator/total"]) == pytest.approx(
        float(logs["generator/pixel"]) + 0.5 * float(logs["generator/adversarial"]), rel=1e-5)


# --- networks -----------------------------------------------------------------------------------


def test_normalisation_kinds():
    x = tf.random.stateless_normal((3, 5, 6, 4), seed=[1, 1]) * 3.0 + 2.0
    layer = normalisation("layer", "n")
    y = layer(x).numpy()  # per sample over H, W and channels
    np.testing.assert_allclose(y.reshape(3, -1).mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.reshape(3, -1).std(axis=1), 1.0, rtol=1e-3)
    instance = normalisation("instance", "i")(x).numpy()  # per sample and channel
    np.testing.assert_allclose(instance.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_array_equal(normalisation("none", "z")(x).numpy(), x.numpy())
    assert isinstance(normalisation("batch", "b"), keras.layers.BatchNormalization)
    with pytest.raises(ValueError, match="'group'"):
        normalisation("group", "g")


def test_critic_norm_layer_scores_each_image_alone_and_none_has_no_norm():
    images = tf.random.stateless_uniform((3, 32, 32, 1), seed=[2, 3], minval=-1, maxval=1)
    for norm, independent in (("layer", True), ("none", True), ("batch", False)):
        critic = build_critic(tiny(critic_norm=norm))
        together = critic(images, training=True).numpy()[:1]
        alone = critic(images[:1], training=True).numpy()
        assert np.allclose(together, alone, atol=1e-5) == independent, norm
    names = [layer.name for layer in build_critic(tiny(critic_norm="none")).layers]
    assert not any(name.endswith("_norm") for name in names)


def test_linear_residual_is_scaled_and_uncapped():
    image = tf.random.stateless_uniform((1, 20, 24, 1), seed=[3, 4], minval=-0.9, maxval=0.9)
    kernel = np.random.default_rng(2).normal(0.0, 0.05, (7, 7, 4, 1)).astype(np.float32)
    residuals = {}
    for output, scale in (("linear", 1.0), ("linear", 0.1), ("tanh", 1.0)):
        keras.utils.set_random_seed(5)
        generator = build_resnet_generator(filters=4, blocks=1, dropout=0.0, norm="none", residual_output=output,
                                           residual_scale=scale)
        np.testing.assert_array_equal(generator(image).numpy(), image.numpy())  # zero last conv: the identity
        generator.get_layer("tail_conv").set_weights([kernel, np.full((1,), 0.3, np.float32)])
        residuals[output, scale] = (generator(image) - image).numpy()
    assert isinstance(generator.get_layer("residual"), keras.layers.Activation)
    inside = np.abs(image.numpy() + residuals["linear", 1.0]) < 1.0  # where the output is not clipped
    np.testing.assert_allclose(residuals["linear", 0.1][inside], 0.1 * residuals["linear", 1.0][inside], atol=1e-6)
    np.testing.assert_allclose(np.tanh(residuals["linear", 1.0][inside]), residuals["tanh", 1.0][inside], atol=1e-5)
    assert ScaledResidual(0.25)(tf.ones((1, 2, 2, 1))).numpy().tolist() == [[[[0.25], [0.25]], [[0.25], [0.25]]]]
    assert ScaledResidual.from_config(ScaledResidual(0.25).get_config()).scale == 0.25


def test_generator_norm_none_has_no_normalisation_layers():
    generator = build_generator(tiny(generator_norm="none"))
    norms = [layer for layer in generator.layers if layer.name.endswith(("_norm", "_norm1", "_norm2"))]
    assert norms and all(isinstance(layer, keras.layers.Identity) for layer in norms)
    instance = build_generator(tiny(generator_norm="instance"))
    assert generator.count_params() < instance.count_params()


# --- a 50-step overfit --------------------------------------------------------------------------


def tiles_phantom(size: int = 64, tile: int = 8, seed: int = 0) -> np.ndarray:
    """HU `[size, size]`: tiles of lung, fat, soft tissue, contrast and bone, all edges."""
    rng = np.random.default_rng(seed)
    values = rng.choice([-800.0, -100.0, 40.0, 300.0, 1000.0], size=(size // tile, size // tile))
    return np.kron(values, np.ones((tile, tile))).astype(np.float32)


def test_fifty_steps_on_one_pair_deblur_it():
    sharp = tiles_phantom()
    params = MotionParams(length_px=6.0, anxiety=0.005, centripetal=0.0, jump_probability=0.0, gaussian_shake=0.0,
                          exposure=1.0, initial_angle_rad=0.3, samples=200, walk_seed=1)
    psf, _ = motion_psf(motion_trajectory(params), 1.0, 17)
    blurry = blur_hu(sharp, psf)
    keras.utils.set_random_seed(0)
    config = tiny(generator_filters=8, generator_blocks=2, generator_learning_rate=1e-3,
                  learning_rate_schedule="cosine", learning_rate_warmup_steps=2, learning_rate_final_fraction=0.1)
    gan = build_model(config, None, total_steps=50)
    pair = tuple(hu_to_unit(image[None, ..., None], config.hu_window) for image in (blurry, sharp))
    step = tf.function(gan.train_step)
    losses = [float(step(pair)["generator/pixel"]) for _ in range(50)]
    restored = unit_to_hu(gan.generator(pair[0], training=False), config.hu_window).numpy()[0, ..., 0]
    window = (-1000.0, 1000.0)
    before, after = psnr(blurry, sharp, window), psnr(restored, sharp, window)
    assert after > before + 2.0, (before, after)
    assert losses[-1] < 0.7 * losses[0]


# --- crops and validation pairs -----------------------------------------------------------------


def test_crop_pair_takes_the_candidate_where_blur_changed_most():
    sharp = np.zeros((40, 50), np.int16)
    blurry = sharp.copy()
    blurry[30:40, 40:50] = 300  # the bottom-right corner changed
    blurry[0:5, 0:5] = 100  # a smaller change at the top-left
    candidates = [[0.5, 0.5], [0.999, 0.999], [0.0, 0.0]]
    for order in (candidates, candidates[::-1], candidates[1:] + candidates[:1]):
        b, s = crop_pair(tf.constant(blurry), tf.constant(sharp), 16, tf.constant(order))
        np.testing.assert_array_equal(b.numpy()[..., 0], blurry[24:40, 34:50])
        np.testing.assert_array_equal(s.numpy()[..., 0], sharp[24:40, 34:50])
    b, _ = crop_pair(tf.constant(blurry), tf.constant(sharp), 16, tf.constant([[0.5, 0.5], [0.0, 0.0]]))
    np.testing.assert_array_equal(b.numpy()[..., 0], blurry[0:16, 0:16])
    b, _ = crop_pair(tf.constant(blurry), tf.constant(sharp), 16, tf.constant([0.5, 0.5]))  # one position as before
    np.testing.assert_array_equal(b.numpy()[..., 0], blurry[12:28, 17:33])


def test_training_batches_with_candidates_hold_more_blur(tmp_path):
    root = write_dataset(str(tmp_path / "data"), train_pairs=12, test_pairs=1, size=(48, 52), subdatasets=1, shards=1)
    split = dataset_splits(root, [0])[0][0]

    def blur_in_crops(candidates):
        batches = training_batches(split, crop_size=16, hu_window=(-1024.0, 3071.0), shuffle_buffer=12, seed=3,
                                   shard=InputShard(batch=2), steps=6, crop_candidates=candidates)
        return [float(np.mean(np.abs(b.numpy() - s.numpy()), axis=(1, 2, 3)).min()) for b, s in batches]

    uniform, chosen = blur_in_crops(1), blur_in_crops(8)
    assert len(chosen) == 6 and np.mean(chosen) > 1.5 * np.mean(uniform), (uniform, chosen)


def test_orienting_a_pair_commutes_with_the_motion_blur():
    """Each of the 8 orientations is a distinct rotation/mirror applied alike to blurry and sharp, and
    turning a blurred image equals blurring the turned image with the turned kernel: a valid pair."""
    rng = np.random.default_rng(1)
    sharp = rng.normal(0, 100, (24, 24)).astype(np.float32)
    params = MotionParams(length_px=7.0, anxiety=0.05, centripetal=0.2, jump_probability=0.0, gaussian_shake=0.3,
                          exposure=1.0, initial_angle_rad=0.7, samples=500, walk_seed=3)
    psf = motion_psf(motion_trajectory(params), 1.0, 9)[0]
    assert not np.allclose(psf, np.rot90(psf)) and not np.allclose(psf, psf[:, ::-1])
    blurry = blur_hu(np.pad(sharp, 8, mode="wrap"), psf)[8:-8, 8:-8]
    seen = set()
    for orientation in range(8):
        b, s = orient_pair(tf.constant(blurry[..., None]), tf.constant(sharp[..., None]), tf.constant(orientation))
        turned = np.rot90(sharp, orientation % 4)
        turned_psf = np.rot90(psf, orientation % 4)
        if orientation >= 4:
            turned, turned_psf = turned[:, ::-1], turned_psf[:, ::-1]
        np.testing.assert_array_equal(s.numpy()[..., 0], turned)
        reblurred = blur_hu(np.pad(turned, 8, mode="wrap"), np.ascontiguousarray(turned_psf))[8:-8, 8:-8]
        np.testing.assert_allclose(b.numpy()[..., 0], reblurred, atol=0.05)
        seen.add(s.numpy().tobytes())
    assert len(seen) == 8


def test_training_batches_turn_crops_reproducibly(tmp_path):
    """With random_orientation the crops are those of the unturned run (same positions), each turned
    one of the 8 ways, several ways in one epoch, and the same ways again with the same seed."""
    root = write_dataset(str(tmp_path / "data"), train_pairs=12, test_pairs=1, size=(48, 52), subdatasets=1, shards=1)
    split = dataset_splits(root, [0])[0][0]

    def crops(turned):
        batches = training_batches(split, crop_size=16, hu_window=(-1024.0, 3071.0), shuffle_buffer=12, seed=5,
                                   shard=InputShard(batch=2), steps=6, random_orientation=turned)
        return [image for blurry, sharp in batches for image in np.concatenate([blurry, sharp], axis=-1)]

    plain, turned = crops(False), crops(True)
    ways = []
    for before, after in zip(plain, turned):
        options = [np.rot90(before, k) for k in range(4)] + [np.rot90(before, k)[:, ::-1] for k in range(4)]
        ways.append(next(k for k, option in enumerate(options) if np.array_equal(option, after)))
    assert len(ways) == 12 and len(set(ways)) >= 4, ways
    np.testing.assert_array_equal(np.stack(turned), np.stack(crops(True)))


def test_softening_a_pair_is_one_gaussian_that_commutes_with_the_motion_blur():
    """`soften_pair` is scipy's mirrored Gaussian of the same sigma on both crops, keeps the mean, is
    the identity at sigma 0, and softening a blurred image equals blurring the softened image: a
    valid pair whose sharp side is softer."""
    rng = np.random.default_rng(2)
    sharp = rng.normal(0, 100, (40, 40)).astype(np.float32)
    params = MotionParams(length_px=7.0, anxiety=0.05, centripetal=0.2, jump_probability=0.0, gaussian_shake=0.3,
                          exposure=1.0, initial_angle_rad=0.7, samples=500, walk_seed=3)
    psf = motion_psf(motion_trajectory(params), 1.0, 9)[0]
    blurry = blur_hu(np.pad(sharp, 8, mode="wrap"), psf)[8:-8, 8:-8]
    b, s = soften_pair(tf.constant(blurry[..., None]), tf.constant(sharp[..., None]), tf.constant(1.2))
    expected = ndimage.gaussian_filter(sharp, 1.2, mode="mirror", truncate=5 / 1.2)
    np.testing.assert_allclose(s.numpy()[..., 0], expected, atol=1e-3)
    np.testing.assert_allclose(b.numpy()[..., 0], ndimage.gaussian_filter(blurry, 1.2, mode="mirror", truncate=5 / 1.2),
                               atol=1e-3)
    assert np.std(s.numpy()) < 0.6 * np.std(sharp)
    assert abs(float(np.mean(s.numpy())) - float(np.mean(sharp))) < 2.0
    periodic = ndimage.gaussian_filter(sharp, 1.2, mode="wrap", truncate=5 / 1.2)
    reblurred = blur_hu(np.pad(periodic, 8, mode="wrap"), psf)[8:-8, 8:-8]
    softened_blurry = ndimage.gaussian_filter(blurry, 1.2, mode="wrap", truncate=5 / 1.2)
    np.testing.assert_allclose(reblurred[10:-10, 10:-10], softened_blurry[10:-10, 10:-10], atol=0.05)
    b0, s0 = soften_pair(tf.constant(blurry[..., None]), tf.constant(sharp[..., None]), tf.constant(0.0))
    np.testing.assert_array_equal(s0.numpy()[..., 0], sharp)
    np.testing.assert_array_equal(b0.numpy()[..., 0], blurry)


def test_training_batches_soften_a_fraction_of_crops_reproducibly(tmp_path):
    """With shared_softening 0.5 about half of the crops are softened, blurry and sharp together
    (same positions as the plain run, same mean, less detail), and the same ones again with the
    same seed; 0 changes nothing."""
    root = write_dataset(str(tmp_path / "data"), train_pairs=24, test_pairs=1, size=(48, 52), subdatasets=1, shards=1)
    split = dataset_splits(root, [0])[0][0]

    def crops(fraction):
        batches = training_batches(split, crop_size=24, hu_window=(-1024.0, 3071.0), shuffle_buffer=24, seed=5,
                                   shard=InputShard(batch=4), steps=6, shared_softening=fraction)
        return [(blurry, sharp) for b, s in batches for blurry, sharp in zip(b.numpy(), s.numpy())]

    plain, softened = crops(0.0), crops(0.5)
    changed = 0
    for (b0, s0), (b1, s1) in zip(plain, softened):
        if np.array_equal(s0, s1):
            np.testing.assert_array_equal(b0, b1)
            continue
        changed += 1
        assert not np.array_equal(b0, b1)
        assert abs(float(np.mean(s1)) - float(np.mean(s0))) < 0.01
        assert np.abs(np.diff(s1, axis=0)).sum() < np.abs(np.diff(s0, axis=0)).sum()
    assert 6 <= changed <= 18, changed
    again = crops(0.5)
    for (b1, s1), (b2, s2) in zip(softened, again):
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(b1, b2)


def test_training_batches_make_a_fraction_of_crops_still_reproducibly(tmp_path):
    """With still_fraction 0.5 about half of the crops take their sharp crop as input (same
    positions and sharp crops as the plain run), the same ones again with the same seed; the
    others are left as they were."""
    root = write_dataset(str(tmp_path / "data"), train_pairs=24, test_pairs=1, size=(48, 52), subdatasets=1, shards=1)
    split = dataset_splits(root, [0])[0][0]

    def crops(fraction):
        batches = training_batches(split, crop_size=24, hu_window=(-1024.0, 3071.0), shuffle_buffer=24, seed=5,
                                   shard=InputShard(batch=4), steps=6, crop_candidates=2, random_orientation=True,
                                   still_fraction=fraction)
        return [(blurry, sharp) for b, s in batches for blurry, sharp in zip(b.numpy(), s.numpy())]

    plain, still = crops(0.0), crops(0.5)
    made_still = 0
    for (b0, s0), (b1, s1) in zip(plain, still):
        np.testing.assert_array_equal(s0, s1)
        assert not np.array_equal(b0, s0)
        if np.array_equal(b1, s1):
            made_still += 1
        else:
            np.testing.assert_array_equal(b0, b1)
    assert 6 <= made_still <= 18, made_still
    for (b1, _), (b2, _) in zip(still, crops(0.5)):
        np.testing.assert_array_equal(b1, b2)


def test_largest_difference_crop_finds_a_planted_difference():
    rng = np.random.default_rng(0)
    sharp = rng.integers(-100, 100, (64, 72)).astype(np.int16)
    blurry = sharp.copy()
    blurry[20:25, 30:35] += 50
    b, s = largest_difference_crop(blurry, sharp, 8)
    assert b.shape == s.shape == (8, 8)
    np.testing.assert_array_equal(b, blurry[17:25, 27:35])  # the first crop (row-major) holding all of it
    np.testing.assert_array_equal(s, sharp[17:25, 27:35])
    b, s = largest_difference_crop(blurry, sharp, 16)
    assert int(np.sum(b.astype(int) - s)) == 25 * 50
    for size in (0, 72, 100):
        b, s = largest_difference_crop(blurry, sharp, size)
        assert b is blurry and s is sharp
    b, _ = largest_difference_crop(blurry, sharp, 66)  # taller than the image: full height, 66 columns
    assert b.shape == (64, 66)


def write_split(root: str, name: str, pairs) -> None:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    with open(os.path.join(root, name, shard_name(0, 1)), "wb") as handle:
        write_records(handle, [encode_pair(p) for p in pairs])


def test_validation_pairs_take_pairs_in_turn_from_each_split(tmp_path):
    rng = np.random.default_rng(1)
    made = {name: [phantom_pair(rng, (24 + 4 * k, 28), "train", 0, i) for i in range(count)]
            for k, (name, count) in enumerate((("a", 3), ("b", 1), ("c", 2)))}
    for name, pairs in made.items():
        write_split(str(tmp_path), name, pairs)
    splits = [find_split(str(tmp_path), name, None) for name in made]
    chosen = validation_pairs(splits, 5, 0)
    expected = [made["a"][0], made["b"][0], made["c"][0], made["a"][1], made["c"][1]]
    assert len(chosen) == 5
    for (blurry, sharp), pair in zip(chosen, expected):
        np.testing.assert_array_equal(sharp, pair.sharp_hu)
        np.testing.assert_array_equal(blurry, pair.blurry_hu)
    assert len(validation_pairs(splits, 10, 0)) == 6  # all there are
    assert [s.shape for _, s in validation_pairs(splits, 3, 16)] == [(16, 16)] * 3


def test_dataset_splits_find_a_validation_split_listed_or_not(tmp_path):
    root = write_dataset(str(tmp_path / "data"), train_pairs=4, test_pairs=1, subdatasets=1, shards=1)
    assert dataset_splits(root, [0])[1] is None
    shutil.copytree(os.path.join(root, "train-0"), os.path.join(root, "validation"))
    _, validation = dataset_splits(root, [0])
    assert validation.name == "validation" and validation.pairs == 4
    assert validation.files == (os.path.join(root, "validation", shard_name(0, 1)),)
    with open(os.path.join(root, "manifest.json")) as handle:
        manifest = json.load(handle)
    manifest["splits"]["validation"] = {"pairs": 3, "shards": [{"file": "validation/" + shard_name(0, 1), "pairs": 3}]}
    with open(os.path.join(root, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    assert dataset_splits(root, [0])[1].pairs == 3  # the manifest's count


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    ({"adversarial_gradient_share": 0.1, "pixel_weight": 0.0}, "need pixel_weight > 0"),
    ({"perceptual_gradient_share": 0.2, "pixel_weight": 0.0, "perceptual_weights": "random-init"},
     "need pixel_weight > 0"),
    ({"perceptual_weights": "none", "pixel_weight": 0.0}, "perceptual_weights none leaves no content loss"),
    ({"generator_norm": "batch"}, "generator_norm must be instance, layer or none"),
    ({"generator_norm": "group"}, "generator_norm must be one of batch, instance, layer, none, got 'group'"),
    ({"critic_norm": "group"}, "critic_norm must be one of"),
    ({"residual_output": "sigmoid"}, "residual_output must be one of tanh, linear"),
    ({"learning_rate_schedule": "linear"}, "learning_rate_schedule must be one of constant, cosine"),
    ({"export_weights": "first"}, "export_weights must be one of best, last"),
    ({"learning_rate_final_fraction": 0.0}, r"learning_rate_final_fraction must be in \(0, 1\], got 0.0"),
    ({"learning_rate_final_fraction": 1.5}, r"learning_rate_final_fraction must be in \(0, 1\], got 1.5"),
    ({"charbonnier_epsilon_hu": 0.0}, "charbonnier_epsilon_hu must be > 0"),
    ({"crop_candidates": 0}, "crop_candidates must be >= 1, got 0"),
    ({"shared_softening": 1.5}, r"shared_softening must be in \[0, 1\], got 1.5"),
    ({"shared_softening_sigma": 6.5}, r"shared_softening_sigma must be in \(0, 6.0\] pixels, got 6.5"),
    ({"shared_softening_sigma": 0.0}, "shared_softening_sigma must be in"),
    ({"shared_softening": 0.5, "shared_softening_sigma": 6.0, "crop_size": 16},
     "crop_size 16 is too small for shared_softening_sigma 6: the crop must exceed the softening's 20-pixel reach"),
    ({"still_fraction": 1.0}, r"still_fraction must be in \[0, 1\), got 1.0"),
    ({"validation_crop": 8}, "validation_crop must be 0 or >= 16"),
    ({"perceptual_window_hu": (240.0, -160.0)}, "perceptual_window_hu must be two HU values low < high"),
    ({"pixel_weight": -1.0}, "pixel_weight must be >= 0, got -1.0"),
    ({"adversarial_weight": -1.0}, "adversarial_weight must be >= 0"),
    ({"residual_scale": -0.5}, "residual_scale must be >= 0"),
    ({"learning_rate_warmup_steps": -1}, "learning_rate_warmup_steps must be >= 0"),
    ({"time_budget_minutes": -1.0}, "time_budget_minutes must be >= 0"),
])
def test_bad_recipe_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict({"pixel_weight": 1.0, **settings})


def test_good_recipe_settings_and_their_properties():
    pix2pix = config_from_dict({"model": "pix2pix", "perceptual_weights": "none"})
    assert not pix2pix.perceptual and pix2pix.pixel_weight == 0.0  # pix2pix has its own l1
    ours = config_from_dict({"perceptual_weights": "none", "pixel_weight": 1.0, "validation_crop": 0,
                             "learning_rate_final_fraction": 1.0, "adversarial_weight": 0.0})
    assert not ours.perceptual and not ours.adversarial
    assert config_from_dict({"adversarial_weight": 0.0, "adversarial_gradient_share": 0.5, "pixel_weight": 1.0}).adversarial
    assert TrainConfig().perceptual and TrainConfig().adversarial  # the paper's defaults


def test_resuming_may_change_the_time_budget_and_the_exported_weights_only():
    saved = tiny().to_dict()
    assert config_differences(saved, tiny(time_budget_minutes=5.0, export_weights="last")) == []
    assert config_differences(saved, tiny(crop_candidates=4)) == ["crop_candidates: 1 in the logdir, 4 now"]
    old = {k: v for k, v in saved.items() if k not in ("pixel_weight", "critic_norm")}  # a run from before them
    assert config_differences(old, tiny(pixel_weight=0.0, perceptual_weights="random-init")) == [
        "perceptual_weights: 'none' in the logdir, 'random-init' now"]


# --- the trainer ----------------------------------------------------------------------------------

TRAIN_SETTINGS = {**PIXEL_ONLY, "generator_learning_rate": 1e-3, "learning_rate_schedule": "cosine",
                  "learning_rate_warmup_steps": 1, "learning_rate_final_fraction": 0.1, "subdatasets": 0,
                  "max_steps_per_epoch": 4, "crop_size": 32, "validation_every": 1, "validation_crop": 0,
                  "summary_every": 1}
TRAIN = ["--preset", "tiny", *recipe_flags(TRAIN_SETTINGS)]
STEPS = 4


def scalars(logdir: str) -> dict:
    found = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value))
    return found


BEST_STEP = 2


def script_best_step(patch: pytest.MonkeyPatch, best_step: int) -> None:
    """Validation then scores the restored images 3 dB higher at `best_step` than measured (the
    blurry ones as measured), so that `best_step` is the best whatever 4 tiny steps do."""
    from model import train

    real_psnr, real_validate = train.psnr, train.Training.score_validation_pairs
    current = {}

    def score_validation_pairs(training):
        current["training"] = training
        real_validate(training)

    def psnr(image, reference, window, mask=None):
        training = current["training"]
        restored = not any(image is blurry for blurry, _ in training.validation_hu)
        bonus = 3.0 if restored and training.global_step == best_step else 0.0
        return real_psnr(image, reference, window, mask) + bonus

    patch.setattr(train.Training, "score_validation_pairs", score_validation_pairs)
    patch.setattr(train, "psnr", psnr)


@pytest.fixture(scope="module")
def validation_run(tmp_path_factory):
    """4 steps, exported, on a dataset with a validation/ split of 24 x 28 slices (train: 40 x 44)
    that the manifest does not list; step 2 scripted to validate best. (data, logdir, export, stdout)"""
    root = tmp_path_factory.mktemp("recipe")
    data = write_dataset(str(root / "data"), train_pairs=8, test_pairs=1, size=(40, 44), subdatasets=1, shards=1)
    rng = np.random.default_rng(7)
    write_split(data, "validation", [phantom_pair(rng, (24, 28), "train", 0, i) for i in range(2)])
    logdir, export = str(root / "logs"), str(root / "generator")
    with pytest.MonkeyPatch.context() as patch:
        script_best_step(patch, BEST_STEP)
        code, stdout, stderr = run_main(["--data", data, "--logdir", logdir, "--export", export, *TRAIN])
    assert code == 0, stderr[-3000:]
    return data, logdir, export, stdout


def exported_info(export: str) -> dict:
    with open(os.path.join(export, "ctdeblur_generator.json")) as handle:
        return json.load(handle)


def deblurred_by(export: str, hu: np.ndarray) -> np.ndarray:
    return tf.saved_model.load(export).signatures["serving_default"](hu=tf.constant(hu))["hu"].numpy()


def deblurred_by_checkpoint(prefix: str, hu: np.ndarray) -> np.ndarray:
    config = tiny()
    generator = build_generator(config)
    tf.train.Checkpoint(generator=generator).read(prefix).expect_partial()
    restored = generator(hu_to_unit(hu[None, ..., None], config.hu_window), training=False)
    return unit_to_hu(restored, config.hu_window).numpy()[0, ..., 0]


def test_the_validation_split_is_used_when_the_dataset_has_one(validation_run):
    _, logdir, _, stdout = validation_run
    assert "validation at step 4 (2 pairs of the validation/ split" in stdout
    found = scalars(logdir)
    for index in (0, 1):
        images = found[f"validation/blurry_restored_sharp/{index}"]
        assert [step for step, _ in images] == [1, 2, 3, 4]
        assert images[0][1].tensor.string_val[:2] == [b"84", b"24"]  # 3 x 28 wide, 24 high: the validation slices
    blurry = [float(tf.make_ndarray(v.tensor)) for _, v in found["validation/psnr_db_blurry"]]
    assert len(set(np.round(blurry, 4))) == 1  # the same fixed pairs every time


def test_the_learning_rate_follows_the_cosine_over_the_whole_run(validation_run):
    rates = {step: float(tf.make_ndarray(v.tensor)) for step, v in scalars(validation_run[1])["learning_rate/generator"]}
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(4)]  # 1 warm-up step of 4
    assert rates == {step: pytest.approx(1e-3 * factor, rel=1e-5) for step, factor in zip(range(1, 5), cosine)}


def test_the_export_is_the_best_validation_step(validation_run):
    data, logdir, export, stdout = validation_run
    deltas = {step: float(tf.make_ndarray(v.tensor)) for step, v in scalars(logdir)["validation/delta_psnr_db"]}
    assert list(deltas) == [1, 2, 3, 4]
    best = max(deltas, key=deltas.get)
    assert best == BEST_STEP and deltas[best] > 2.0, deltas
    info = exported_info(export)
    assert (info["global_step"], info["final_step"], info["weights"]) == (best, STEPS, "best")
    assert info["validation_delta_psnr_db"] == pytest.approx(deltas[best], abs=1e-4)
    assert f"exported generator of step {best} (best)" in stdout and f"best validation: step {best}," in stdout
    hu = np.random.default_rng(3).uniform(-1000, 1500, (30, 34)).astype(np.float32)
    exported = deblurred_by(export, hu)
    np.testing.assert_allclose(exported, deblurred_by_checkpoint(os.path.join(logdir, "best_generator", "generator"), hu),
                               atol=0.05)
    last = deblurred_by_checkpoint(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")), hu)
    assert np.abs(exported - last).max() > 0.5  # the last step's generator is another one


def test_export_weights_last_exports_the_final_step(validation_run, tmp_path):
    data, logdir, _, _ = validation_run
    export = str(tmp_path / "last")
    code, stdout, stderr = run_main(["--data", data, "--logdir", logdir, "--export", export, *TRAIN,
                                     "--export_weights", "last"])  # resumes the finished run: a runtime setting
    assert code == 0, stderr[-3000:]
    info = exported_info(export)
    assert (info["global_step"], info["final_step"], info["weights"]) == (STEPS, STEPS, "last")
    hu = np.random.default_rng(4).uniform(-1000, 1500, (30, 34)).astype(np.float32)
    last = deblurred_by_checkpoint(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")), hu)
    np.testing.assert_allclose(deblurred_by(export, hu), last, atol=0.05)


def test_time_budget_stops_early_checkpoints_exports_and_a_rerun_continues(validation_run, tmp_path, monkeypatch):
    from model import train

    real_run = train.Training.run
    current = {}

    def run(training, position):
        current["training"] = training
        return real_run(training, position)

    def perf_counter():  # every step lasts a minute on the trainer's clock
        return time.perf_counter() + 60.0 * (current["training"].global_step if current else 0)

    monkeypatch.setattr(train.Training, "run", run)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=perf_counter))
    data = validation_run[0]
    logdir, export = str(tmp_path / "logs"), str(tmp_path / "generator")
    code, stdout, stderr = run_main(["--data", data, "--logdir", logdir, "--export", export, *TRAIN,
                                     "--time_budget_minutes", "2.5"])
    assert code == 0, stderr[-3000:]
    assert "time budget of 2.5 min reached at global step 3 (next: train-0 epoch 1/1 step 4/4)" in stdout
    checkpoint = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
    assert [int(checkpoint.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")) for name in ("global_step", "step")] == [3, 3]
    info = exported_info(export)
    assert info["final_step"] == 3 and info["global_step"] in (1, 2, 3)
    monkeypatch.undo()
    code, stdout, stderr = run_main(["--data", data, "--logdir", logdir, *TRAIN])  # no budget: runs the rest
    assert code == 0, stderr[-3000:]
    assert "(global step 3)" in stdout and "(1 steps in this run" in stdout and "time budget" not in stdout


def test_time_budget_gives_every_sub_dataset_its_share_and_ends_the_cosine(tmp_path, monkeypatch):
    from model import train

    data = write_dataset(str(tmp_path / "data"), train_pairs=8, test_pairs=1, size=(40, 44), subdatasets=3, shards=1)
    real_run = train.Training.run
    current = {}

    def run(training, position):
        current["training"] = training
        return real_run(training, position)

    calls = itertools.count()

    def perf_counter():  # every step lasts a minute on the trainer's clock, whatever the machine's load
        return 60.0 * (current["training"].global_step if current else 0) + 1e-6 * next(calls)

    monkeypatch.setattr(train.Training, "run", run)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=perf_counter))
    logdir = str(tmp_path / "logs")
    code, stdout, stderr = run_main(["--data", data, "--logdir", logdir, *TRAIN, "--subdatasets", "0", "1", "2",
                                     "--epochs", "5", "--time_budget_minutes", "6"])
    assert code == 0, stderr[-3000:]
    # 60 steps without a budget; 6 minutes: 2 of train-0, then (6 - 2) / 2 = 2 of train-1, then train-2 to the end
    assert "train-0: its share of the time budget (2.0 min) used before train-0 epoch 1/5 step 3/4; moving on" in stdout
    assert "train-1: its share of the time budget (2.0 min) used before train-1 epoch 1/5 step 3/4; moving on" in stdout
    assert "time budget of 6 min reached at global step 6 (next: train-2 epoch 1/5 step 3/4)" in stdout
    checkpoint = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
    used = float(checkpoint.get_tensor("budget_fraction/.ATTRIBUTES/VARIABLE_VALUE"))
    assert used == pytest.approx(5 / 6, abs=1e-3)  # at the start of the 6th minute
    rates = [float(tf.make_ndarray(value.tensor)) for _, value in sorted(scalars(logdir)["learning_rate/generator"],
                                                                         key=lambda item: item[0])]
    peak, final = 1e-3, 0.1 * 1e-3  # TRAIN_SETTINGS; the step fraction alone would be 6 / 60 of the way down
    assert rates[-1] == pytest.approx(final + (peak - final) * 0.5 * (1 + math.cos(math.pi * used)), rel=1e-4)
    assert rates[1:] == sorted(rates[1:], reverse=True)  # after the 1-step warm-up, only down
