"""Generator and critic networks (Keras 3 on TensorFlow), single-channel CT in and out.

Images are `[B, H, W, 1]` float32 in the network range [-1, 1] (see `model.data.hu_to_unit`).
`GENERATORS` and `CRITICS` map the config names to builders so other networks can be plugged in:
the ResNet generator (DeblurGAN, the reference paper) and the U-Net generator (pix2pix).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import keras
import tensorflow as tf

from model.config import TrainConfig

SIZE_MULTIPLE = 4
"""The generator downsamples twice by 2: inputs are padded to a multiple of this and cropped back."""


class ReflectPad(keras.layers.Layer):
    """Reflection padding of `pad` pixels on each side of H and W (`[B, H, W, C]`)."""

    def __init__(self, pad: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = pad

    def call(self, x):
        p = self.pad
        return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h + 2 * self.pad, None if w is None else w + 2 * self.pad, c)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


class PadToMultiple(keras.layers.Layer):
    """Pads H and W at the bottom/right (mirror, edge included) up to a multiple of `multiple`."""

    def __init__(self, multiple: int, **kwargs):
        super().__init__(**kwargs)
        self.multiple = multiple

    def call(self, x):
        shape = tf.shape(x)
        pad_h = (-shape[1]) % self.multiple
        pad_w = (-shape[2]) % self.multiple
        return tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, self._padded(h), self._padded(w), c)

    def _padded(self, size: int | None) -> int | None:
        return None if size is None else -(-size // self.multiple) * self.multiple

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


def mirror_indices(size: tf.Tensor, padded: tf.Tensor) -> tf.Tensor:
    """Indices 0..padded-1 into an axis of length `size`, mirrored (edge included) as often as needed.

    For `padded - size <= size` this is what `tf.pad(..., mode="SYMMETRIC")` takes; beyond that the
    mirror image repeats (0, 1, .., n-1, n-1, .., 0, 0, 1, ..).
    """
    index = tf.range(padded) % (2 * size)
    return tf.where(index < size, index, 2 * size - 1 - index)


class MirrorPadToMultiple(PadToMultiple):
    """Pads H and W at the bottom/right up to a multiple of `multiple` with repeated mirroring.

    The same values as `PadToMultiple` where that works; unlike `tf.pad`, the padding may exceed
    the image (a U-Net of depth 8 pads a 37-pixel side to 256).
    """

    def call(self, x):
        shape = tf.shape(x)
        rows = mirror_indices(shape[1], shape[1] + (-shape[1]) % self.multiple)
        cols = mirror_indices(shape[2], shape[2] + (-shape[2]) % self.multiple)
        return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)


class CropLike(keras.layers.Layer):
    """Crops `x` (`[B, H', W', C]`, H' >= H) to the H and W of `reference` from the top left."""

    def call(self, x, reference):
        shape = tf.shape(reference)
        return x[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


class LeakyReLU(keras.layers.Layer):
    """max(x, slope * x) for 0 <= slope < 1.

    Written as a maximum rather than `tf.nn.leaky_relu` so that TensorFlow's graph remapper does
    not fuse it into the preceding conv: that fusion fails on the gradient-of-gradient of the
    WGAN-GP penalty, and the failed pass would leave the whole train step unoptimised.
    """

    def __init__(self, slope: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.slope = slope

    def call(self, x):
        return tf.maximum(x, self.slope * x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "slope": self.slope}


class SkipSafeLeakyReLU(LeakyReLU):
    """The same function as `LeakyReLU`, as relu(x) - slope * relu(-x) (bit-identical values).

    For the U-Net, whose first conv feeds both this activation and a skip connection: the graph
    remapper's conv + bias + leaky-ReLU fusion fails on that fan-out (and then leaves the whole
    graph unoptimised, with an error in the log); this form is not fused.
    """

    def call(self, x):
        return tf.nn.relu(x) - self.slope * tf.nn.relu(-x)


class GlobalSkip(keras.layers.Layer):
    """output = clip(input + residual, -1, 1): the generator learns the correction only."""

    def call(self, image, residual):
        return tf.clip_by_value(image + tf.cast(residual, image.dtype), -1.0, 1.0)

    def compute_output_shape(self, image_shape, residual_shape):
        return image_shape


def instance_norm(name: str) -> keras.layers.Layer:
    """Instance normalisation (per image and channel over H, W) with learned scale and offset,
    in float32 under a mixed policy too (a variance over a whole image needs float32)."""
    return keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, dtype="float32", name=name)


def normalisation(kind: str, name: str) -> keras.layers.Layer:
    """The normalisation layer `kind`: batch, instance, layer (per sample over H, W and channels,
    with a learned scale and offset per channel) or none (the identity); float32 under a mixed
    policy too."""
    if kind == "batch":
        return keras.layers.BatchNormalization(dtype="float32", name=name)
    if kind == "instance":
        return instance_norm(name)
    if kind == "layer":
        return keras.layers.GroupNormalization(groups=1, epsilon=1e-5, dtype="float32", name=name)
    if kind == "none":
        return keras.layers.Identity(name=name)
    raise ValueError(f"unknown normalisation {kind!r}: batch, instance, layer or none")


class ScaledResidual(keras.layers.Layer):
    """residual = `scale` x x: a linear residual whose size suits corrections of a few HU."""

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        return x * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def _res_block(x, filters: int, dropout: float, norm: str, name: str):
    """conv - norm - ReLU - dropout - conv - norm, added to the block input."""
    y = ReflectPad(1, name=f"{name}_pad1")(x)
    y = keras.layers.Conv2D(filters, 3, name=f"{name}_conv1")(y)
    y = normalisation(norm, f"{name}_norm1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu")(y)
    if dropout:
        y = keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = ReflectPad(1, name=f"{name}_pad2")(y)
    y = keras.layers.Conv2D(filters, 3, name=f"{name}_conv2")(y)
    y = normalisation(norm, f"{name}_norm2")(y)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def build_resnet_generator(filters: int = 64, blocks: int = 9, dropout: float = 0.5, norm: str = "instance",
                           residual_output: str = "tanh", residual_scale: float = 1.0,
                           name: str = "generator") -> keras.Model:
    """DeblurGAN's ResNet generator, fully convolutional, `[B, H, W, 1]` -> `[B, H, W, 1]` in [-1, 1].

    7x7 conv, two stride-2 3x3 convs (x2, x4 filters), `blocks` ResBlocks, two stride-2 transposed
    convs, 7x7 conv to one channel, then tanh (`residual_output` "tanh") or x `residual_scale`
    ("linear"); the result is a residual added to the input and clipped. `norm`: the normalisation
    after each conv (instance in DeblurGAN; none as in EDSR). The last conv starts at zero, so the
    untrained generator is the identity (restored = blurry) and training learns the correction.
    Any H x W: the input is mirror-padded to a multiple of 4 and the output cropped back. Paper
    defaults: filters 64, blocks 9, dropout 0.5, instance norm, tanh.
    """
    image = keras.Input(shape=(None, None, 1), name="blurry")
    x = PadToMultiple(SIZE_MULTIPLE, name="pad_to_multiple")(image)
    x = ReflectPad(3, name="head_pad")(x)
    x = keras.layers.Conv2D(filters, 7, name="head_conv")(x)
    x = normalisation(norm, "head_norm")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    for i, mult in enumerate((2, 4)):
        x = keras.layers.Conv2D(filters * mult, 3, strides=2, padding="same", name=f"down{i}_conv")(x)
        x = normalisation(norm, f"down{i}_norm")(x)
        x = keras.layers.ReLU(name=f"down{i}_relu")(x)
    for i in range(blocks):
        x = _res_block(x, filters * 4, dropout, norm, name=f"res{i}")
    for i, mult in enumerate((2, 1)):
        x = keras.layers.Conv2DTranspose(filters * mult, 3, strides=2, padding="same", name=f"up{i}_conv")(x)
        x = normalisation(norm, f"up{i}_norm")(x)
        x = keras.layers.ReLU(name=f"up{i}_relu")(x)
    x = ReflectPad(3, name="tail_pad")(x)
    x = keras.layers.Conv2D(1, 7, kernel_initializer="zeros", name="tail_conv")(x)
    if residual_output == "tanh":
        residual = keras.layers.Activation("tanh", dtype="float32", name="residual")(x)
    else:
        residual = ScaledResidual(residual_scale, dtype="float32", name="residual")(x)
    residual = CropLike(name="crop_back")(residual, image)
    restored = GlobalSkip(dtype="float32", name="restored")(image, residual)
    return keras.Model(image, restored, name=name)


MAX_UNET_DEPTH_FROM_CROP = 8
"""pix2pix's depth: 8 levels take its 256-pixel crops to a 1-pixel bottleneck."""


def unet_depth(config: TrainConfig) -> int:
    """Levels of the U-Net: `config.unet_depth`, or if 0 the levels that take a `crop_size` crop
    to a 1-pixel bottleneck (floor(log2(crop_size))), at most 8 (pix2pix at 256 pixels)."""
    return config.unet_depth or min(MAX_UNET_DEPTH_FROM_CROP, int(math.log2(config.crop_size)))


def build_unet_generator(filters: int = 64, depth: int = 8, dropout: float = 0.5, name: str = "generator") -> keras.Model:
    """pix2pix's U-Net generator (Isola et al. 2017), `[B, H, W, 1]` -> `[B, H, W, 1]` in [-1, 1].

    Encoder: `depth` 4x4 stride-2 convs with `filters` x 1, 2, 4, 8, 8, .. filters (pix2pix at
    depth 8 and 64 filters: C64-C128-C256-C512-C512-C512-C512-C512), each but the first preceded
    by LeakyReLU 0.2, instance norm on all but the first and the innermost. Decoder: per level
    ReLU, 4x4 stride-2 transposed conv back to the encoder level's filters, instance norm,
    dropout `dropout` in the first 3 blocks, concatenation with the encoder level's output (the
    skip connection); then ReLU, a 4x4 stride-2 transposed conv to one channel and tanh: the
    output is the restored image (no global skip, as in pix2pix). Instance norm, not batch
    norm: what pix2pix's batch norm computes at its batch size 1, the same in training and
    inference. Any H x W: mirror-padded to a multiple of 2^depth and cropped back.
    """
    if depth < 1:
        raise ValueError(f"the U-Net needs at least one level, got depth {depth}")
    widths = [filters * min(2**level, 8) for level in range(depth)]
    image = keras.Input(shape=(None, None, 1), name="blurry")
    x = MirrorPadToMultiple(2**depth, name="pad_to_multiple")(image)
    skips = []
    for level, width in enumerate(widths):
        if level > 0:
            x = SkipSafeLeakyReLU(0.2, name=f"down{level}_lrelu")(x)
        x = keras.layers.Conv2D(width, 4, strides=2, padding="same", name=f"down{level}_conv")(x)
        if 0 < level < depth - 1:
            x = instance_norm(f"down{level}_norm")(x)
        skips.append(x)
    for block, level in enumerate(range(depth - 2, -1, -1)):
        x = keras.layers.ReLU(name=f"up{level}_relu")(x)
        x = keras.layers.Conv2DTranspose(widths[level], 4, strides=2, padding="same", name=f"up{level}_conv")(x)
        x = instance_norm(f"up{level}_norm")(x)
        if dropout and block < 3:
            x = keras.layers.Dropout(dropout, name=f"up{level}_dropout")(x)
        x = keras.layers.Concatenate(name=f"up{level}_skip")([x, skips[level]])
    x = keras.layers.ReLU(name="tail_relu")(x)
    x = keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", name="tail_conv")(x)
    x = keras.layers.Activation("tanh", dtype="float32", name="tanh")(x)
    restored = CropLike(dtype="float32", name="restored")(x, image)
    return keras.Model(image, restored, name=name)


def build_patchgan_critic(filters: int = 64, blocks: int = 4, channels: int = 1, norm: str = "batch",
                          name: str = "critic") -> keras.Model:
    """PatchGAN critic: `[B, H, W, channels]` in [-1, 1] -> unbounded patch scores `[B, h, w, 1]` (float32).

    `blocks` 4x4 conv blocks (filters doubling from `filters`, at most x8; stride 2 except the
    last), `norm` (batch in DeblurGAN and pix2pix) on all but the first, LeakyReLU 0.2; then a
    4x4 conv to one score per patch.
    No sigmoid: the scores are a Wasserstein critic's, or a pix2pix discriminator's logits (then
    `channels` 2: the blurry image and the image judged). Paper defaults: filters 64, blocks 4.
    """
    image = keras.Input(shape=(None, None, channels), name="image")
    x = image
    for i in range(blocks):
        stride = 2 if i < blocks - 1 else 1
        x = keras.layers.Conv2D(filters * min(2**i, 8), 4, strides=stride, padding="same", name=f"block{i}_conv")(x)
        if i > 0 and norm != "none":
            x = normalisation(norm, f"block{i}_norm")(x)
        x = LeakyReLU(0.2, name=f"block{i}_lrelu")(x)
    scores = keras.layers.Conv2D(1, 4, padding="same", dtype="float32", name="scores")(x)
    return keras.Model(image, scores, name=name)


GENERATORS: Mapping[str, Callable[[TrainConfig], keras.Model]] = {
    "resnet": lambda c: build_resnet_generator(c.generator_filters, c.generator_blocks, c.generator_dropout,
                                               c.generator_norm, c.residual_output, c.residual_scale),
    "unet": lambda c: build_unet_generator(c.generator_filters, unet_depth(c), c.generator_dropout),
}
CRITICS: Mapping[str, Callable[[TrainConfig, int], keras.Model]] = {
    "patchgan": lambda c, channels: build_patchgan_critic(c.critic_filters, c.critic_blocks, channels, c.critic_norm),
}


def build_generator(config: TrainConfig) -> keras.Model:
    """The generator named by `config.generator`, sized by the config."""
    return GENERATORS[config.generator](config)


def build_critic(config: TrainConfig, channels: int = 1) -> keras.Model:
    """The critic named by `config.critic`, sized by the config, judging `channels`-channel inputs."""
    return CRITICS[config.critic](config, channels)
