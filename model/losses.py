"""Loss functions of the deblurring models: pure functions of tensors.

WGAN-GP (the reference paper, DeblurGAN): critic scores are `[B, ...]` (a PatchGAN's
`[B, h, w, 1]` patch scores or `[B]`); an image's score is the mean over its patches.
pix2pix: the discriminator's patch logits `[B, h, w, 1]` each classify one patch (binary cross
entropy, vanilla GAN). Images are `[B, H, W, C]` in the network range [-1, 1]. Every loss is a
scalar mean over the (per-replica) batch.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


def image_scores(scores: tf.Tensor) -> tf.Tensor:
    """Per-image critic score `[B]`: the mean of the patch scores."""
    scores = tf.cast(scores, tf.float32)
    return tf.reduce_mean(tf.reshape(scores, [tf.shape(scores)[0], -1]), axis=1)


def wasserstein_estimate(real_scores: tf.Tensor, fake_scores: tf.Tensor) -> tf.Tensor:
    """E[D(sharp)] - E[D(restored)]: the critic's estimate of the Wasserstein-1 distance."""
    return tf.reduce_mean(image_scores(real_scores)) - tf.reduce_mean(image_scores(fake_scores))


def critic_wasserstein_loss(real_scores: tf.Tensor, fake_scores: tf.Tensor) -> tf.Tensor:
    """The critic minimises E[D(restored)] - E[D(sharp)] (without the gradient penalty)."""
    return -wasserstein_estimate(real_scores, fake_scores)


def generator_adversarial_loss(fake_scores: tf.Tensor) -> tf.Tensor:
    """The generator minimises -E[D(restored)]."""
    return -tf.reduce_mean(image_scores(fake_scores))


def interpolate(real: tf.Tensor, fake: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    """weight * real + (1 - weight) * fake; `weight` is `[B, 1, 1, 1]` in [0, 1]."""
    weight = tf.cast(weight, real.dtype)
    return weight * real + (1.0 - weight) * tf.cast(fake, real.dtype)


def gradient_penalty(
    critic: Callable[[tf.Tensor], tf.Tensor], real: tf.Tensor, fake: tf.Tensor, weight: tf.Tensor
) -> tf.Tensor:
    """WGAN-GP penalty E[(||grad_x D(x)||_2 - 1)^2] at x = `interpolate(real, fake, weight)`.

    `weight` `[B, 1, 1, 1]`: the interpolation weights, drawn uniform in [0, 1] by the caller.
    The gradient norm is per image over all of H, W and channels. Multiply by alpha (10) in the
    critic loss.
    """
    mixed = interpolate(real, fake, weight)
    with tf.GradientTape() as tape:
        tape.watch(mixed)
        total_score = tf.reduce_sum(image_scores(critic(mixed)))
    grads = tf.cast(tape.gradient(total_score, mixed), tf.float32)
    norms = tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(grads, [tf.shape(grads)[0], -1])), axis=1) + 1e-12)
    return tf.reduce_mean(tf.square(norms - 1.0))


def feature_distance(features_a: tf.Tensor, features_b: tf.Tensor, distance: str = "l1") -> tf.Tensor:
    """Mean absolute (`l1`) or mean squared (`l2`) difference of two feature maps."""
    diff = tf.cast(features_a, tf.float32) - tf.cast(features_b, tf.float32)
    if distance == "l1":
        return tf.reduce_mean(tf.abs(diff))
    if distance == "l2":
        return tf.reduce_mean(tf.square(diff))
    raise ValueError(f"perceptual distance must be l1 or l2, got {distance!r}")


IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
"""Per-channel mean (0..255 scale, BGR order) that Keras' VGG19 ImageNet weights expect subtracted."""


def vgg_input(images: tf.Tensor, window: tuple[float, float] = (-1.0, 1.0)) -> tf.Tensor:
    """Grayscale `[B, H, W, 1]` in the network range -> VGG19 input `[B, H, W, 3]`.

    `window` (low, high), in network units, maps to 0..255 (values outside are clipped; the
    default is the whole network range). The image is replicated to 3 channels and
    mean-subtracted per channel as ImageNet training did ("caffe" preprocessing: BGR order, no
    scaling by the std).
    """
    low, high = float(window[0]), float(window[1])
    gray = tf.clip_by_value((tf.cast(images, tf.float32) - low) / (high - low), 0.0, 1.0) * 255.0
    return tf.concat([gray - mean for mean in IMAGENET_BGR_MEAN], axis=-1)


def perceptual_loss(
    features: Callable[[tf.Tensor], tf.Tensor], restored: tf.Tensor, sharp: tf.Tensor, distance: str = "l1",
    window: tuple[float, float] = (-1.0, 1.0),
) -> tf.Tensor:
    """Distance between the VGG features of `restored` and `sharp` (`[B, H, W, 1]`, network range).

    `features` maps a VGG19 input (`vgg_input` with `window`) to one layer's activations; the
    sharp image's features are constants (no gradient flows into the target).
    """
    target = tf.stop_gradient(features(vgg_input(sharp, window)))
    return feature_distance(features(vgg_input(restored, window)), target, distance)


def charbonnier_loss(restored: tf.Tensor, sharp: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Mean of sqrt(d^2 + epsilon^2) - epsilon, d = restored - sharp (`[B, H, W, C]`, network units).

    A smooth l1: quadratic for |d| << epsilon, |d| beyond; 0 for equal images.
    """
    diff = tf.cast(restored, tf.float32) - tf.cast(sharp, tf.float32)
    return tf.reduce_mean(tf.sqrt(tf.square(diff) + epsilon * epsilon) - epsilon)


def _crop_mse(restored: tf.Tensor, sharp: tf.Tensor) -> tf.Tensor:
    """Mean squared difference of each `[H, W, C]` crop of a batch, `[B]` (network units)."""
    diff = tf.cast(restored, tf.float32) - tf.cast(sharp, tf.float32)
    return tf.reduce_mean(tf.square(diff), axis=[1, 2, 3])


def log_mse_loss(restored: tf.Tensor, sharp: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Mean over the batch of 10 log10(MSE + epsilon^2), MSE of each `[H, W, C]` crop of
    restored - sharp (network units): -PSNR up to a constant, so every crop's relative error counts
    alike (a crop's gradient weighs 1 / its MSE), as in the mean PSNR gain the evaluation reports:
    mildly blurred crops, with little to gain and much to lose, count as much as strongly blurred ones."""
    return tf.reduce_mean(10.0 * tf.math.log(_crop_mse(restored, sharp) + epsilon * epsilon)) / tf.math.log(10.0)


def rmse_loss(restored: tf.Tensor, sharp: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Mean over the batch of sqrt(MSE + epsilon^2), MSE of each `[H, W, C]` crop of restored -
    sharp (network units): between a pooled MSE and `log_mse_loss`, a crop's gradient weighs
    1 / its RMSE."""
    return tf.reduce_mean(tf.sqrt(_crop_mse(restored, sharp) + epsilon * epsilon))


PIXEL_LOSSES: dict[str, Callable[[tf.Tensor, tf.Tensor, float], tf.Tensor]] = {
    "charbonnier": charbonnier_loss,
    "log_mse": log_mse_loss,
    "rmse": rmse_loss,
}
"""The pixel content terms of `ours`/`deblurgan` by `TrainConfig.pixel_loss` name: (restored,
sharp, epsilon in network units) -> scalar."""


def _bce_with_logits(logits: tf.Tensor, label: float) -> tf.Tensor:
    """Mean binary cross entropy of patch logits against one label (1 real, 0 fake)."""
    logits = tf.cast(logits, tf.float32)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(logits), label), logits=logits))


def discriminator_bce_loss(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> tf.Tensor:
    """pix2pix's discriminator loss: (BCE(D(blurry, sharp), 1) + BCE(D(blurry, restored), 0)) / 2.

    Halved as in Isola et al. 2017, to slow the discriminator relative to the generator.
    """
    return 0.5 * (_bce_with_logits(real_logits, 1.0) + _bce_with_logits(fake_logits, 0.0))


def generator_bce_loss(fake_logits: tf.Tensor) -> tf.Tensor:
    """pix2pix's adversarial generator loss BCE(D(blurry, restored), 1) (the non-saturating -log D)."""
    return _bce_with_logits(fake_logits, 1.0)


def pixel_l1_loss(restored: tf.Tensor, sharp: tf.Tensor) -> tf.Tensor:
    """Mean absolute difference of two images `[B, H, W, C]` (network range: 1 = 2047.5 HU by default)."""
    return tf.reduce_mean(tf.abs(tf.cast(restored, tf.float32) - tf.cast(sharp, tf.float32)))
