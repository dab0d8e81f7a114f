"""The adversarial deblurring models: `keras.Model`s holding generator, critic and their losses.

`ConditionalGAN` is the shared schedule: `train_step` does `critic_steps` critic updates then
one generator update on one batch; `warmup_step` updates the generator alone on its weighted
content loss (the paper's generator-first recipe). Both run per replica (inside
`strategy.run`): losses are per-replica batch means and are divided by the number of replicas
before differentiation, so the optimizers' all-reduce (a sum) yields the gradient of the
global-batch mean.

A model is a subclass defining `critic_step` (critic update on one batch), `generator_losses`
(the generator's loss terms, "generator/total" being the one minimised), `content_loss` and
`content_weight`: `DeblurWGAN` (the reference paper, and DeblurGAN with the l2 distance) and
`Pix2Pix` (Isola et al. 2017).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from model.losses import (
    critic_wasserstein_loss,
    discriminator_bce_loss,
    generator_adversarial_loss,
    generator_bce_loss,
    gradient_penalty,
    perceptual_loss,
    pixel_l1_loss,
)


def _num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


class ConditionalGAN(keras.Model):
    """Generator and critic trained in turns on `(blurry, sharp)` batches `[B, H, W, 1]` in [-1, 1].

    critic_label: the critic's name in TensorBoard tags ("critic" or "discriminator").
    content_tag: the TensorBoard tag of the unweighted content loss.
    critic_channels: channels of the critic's input (1: the image; 2: blurry and image).
    """

    critic_label = "critic"
    content_tag: str
    critic_channels = 1

    def __init__(self, generator: keras.Model, critic: keras.Model, *, critic_steps: int, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.critic = critic
        self.critic_steps = critic_steps
        self.generator_optimizer: keras.optimizers.Optimizer | None = None
        self.critic_optimizer: keras.optimizers.Optimizer | None = None

    def compile(self, generator_optimizer: keras.optimizers.Optimizer, critic_optimizer: keras.optimizers.Optimizer):
        """Sets the two optimizers (built here, so checkpoints can restore their slots)."""
        super().compile()
        self.generator_optimizer = generator_optimizer
        self.critic_optimizer = critic_optimizer
        generator_optimizer.build(self.generator.trainable_variables)
        critic_optimizer.build(self.critic.trainable_variables)

    def call(self, blurry, training=False):
        return self.generator(blurry, training=training)

    @property
    def content_weight(self) -> float:
        """lambda: the weight of `content_loss` in the generator's total loss."""
        raise NotImplementedError

    def content_loss(self, restored: tf.Tensor, sharp: tf.Tensor) -> tf.Tensor:
        """The generator's content loss (unweighted) between restored and sharp `[B, H, W, 1]`."""
        raise NotImplementedError

    def critic_step(self, blurry: tf.Tensor, sharp: tf.Tensor, restored: tf.Tensor) -> dict[str, tf.Tensor]:
        """One critic update; returns its named losses."""
        raise NotImplementedError

    def generator_losses(self, blurry: tf.Tensor, restored: tf.Tensor, sharp: tf.Tensor) -> dict[str, tf.Tensor]:
        """The generator's named loss terms; "generator/total" is minimised."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, tf.Variable]:
        """Random-number state of the model's own (beyond the networks' variables) to checkpoint."""
        return {}

    def _apply(self, optimizer: keras.optimizers.Optimizer, tape: tf.GradientTape, loss, variables) -> None:
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))

    def train_step(self, data) -> dict[str, tf.Tensor]:
        """`critic_steps` critic updates, then one generator update, on one `(blurry, sharp)` batch.

        The generator runs once; the critic steps see its output as a constant (as DeblurGAN and
        pix2pix). Returns the generator's losses and the critic's averaged over its steps.
        """
        blurry, sharp = data
        with tf.GradientTape() as tape:
            restored = self.generator(blurry, training=True)
            with tape.stop_recording():
                fixed = tf.stop_gradient(restored)
                steps = [self.critic_step(blurry, sharp, fixed) for _ in range(self.critic_steps)]
            logs = self.generator_losses(blurry, restored, sharp)
            scaled = self.generator_optimizer.scale_loss(logs["generator/total"] / _num_replicas())
        self._apply(self.generator_optimizer, tape, scaled, self.generator.trainable_variables)
        for name in steps[0]:
            logs[name] = tf.add_n([s[name] for s in steps]) / len(steps)
        return logs

    def warmup_step(self, data) -> dict[str, tf.Tensor]:
        """One generator update on lambda x content loss alone (the critic is left untouched)."""
        blurry, sharp = data
        with tf.GradientTape() as tape:
            restored = self.generator(blurry, training=True)
            content = self.content_loss(restored, sharp)
            total = self.content_weight * content
            scaled = self.generator_optimizer.scale_loss(total / _num_replicas())
        self._apply(self.generator_optimizer, tape, scaled, self.generator.trainable_variables)
        return {self.content_tag: content, "generator/total": total}


class DeblurWGAN(ConditionalGAN):
    """Conditional WGAN-GP with a perceptual content loss (the reference paper's model, and with
    `perceptual_distance` "l2" the original DeblurGAN's).

    generator: `[B, H, W, 1]` blurry -> restored, both in [-1, 1]. critic: image -> patch scores.
    features: frozen VGG19 sub-model for the perceptual loss (VGG input `[B, H, W, 3]`).
    critic_steps: critic updates per generator update (5). gp_weight: alpha (10).
    perceptual_weight: lambda. perceptual_distance: "l1" (paper) or "l2" (DeblurGAN).
    seed: seed of the penalty's interpolation weights.
    """

    content_tag = "generator/perceptual"

    def __init__(
        self,
        generator: keras.Model,
        critic: keras.Model,
        features: Callable[[tf.Tensor], tf.Tensor],
        *,
        critic_steps: int = 5,
        gp_weight: float = 10.0,
        perceptual_weight: float = 100.0,
        perceptual_distance: str = "l1",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(generator, critic, critic_steps=critic_steps, **kwargs)
        self.features = features
        self.gp_weight = gp_weight
        self.perceptual_weight = perceptual_weight
        self.perceptual_distance = perceptual_distance
        self.interpolation_seed = keras.random.SeedGenerator(seed, name="interpolation_seed")

    @property
    def content_weight(self) -> float:
        return self.perceptual_weight

    def checkpoint_state(self) -> dict[str, tf.Variable]:
        return {"interpolation_seed": self.interpolation_seed.state}

    def content_loss(self, restored: tf.Tensor, sharp: tf.Tensor) -> tf.Tensor:
        """Perceptual loss (unweighted) between restored and sharp `[B, H, W, 1]`."""
        return perceptual_loss(self.features, restored, sharp, self.perceptual_distance)

    def critic_step(self, blurry: tf.Tensor, sharp: tf.Tensor, restored: tf.Tensor) -> dict[str, tf.Tensor]:
        """One critic update: Wasserstein loss + alpha x gradient penalty (uniform interpolation)."""
        del blurry  # the critic judges images alone, as in DeblurGAN
        batch = tf.shape(sharp)[0]
        weight = keras.random.uniform([batch, 1, 1, 1], 0.0, 1.0, seed=self.interpolation_seed)
        with tf.GradientTape() as tape:
            real_scores = self.critic(sharp, training=True)
            fake_scores = self.critic(restored, training=True)
            wasserstein_loss = critic_wasserstein_loss(real_scores, fake_scores)
            penalty = gradient_penalty(lambda x: self.critic(x, training=True), sharp, restored, weight)
            loss = wasserstein_loss + self.gp_weight * penalty
            scaled = self.critic_optimizer.scale_loss(loss / _num_replicas())
        self._apply(self.critic_optimizer, tape, scaled, self.critic.trainable_variables)
        return {
            "critic/loss": loss,
            "critic/gradient_penalty": penalty,
            "critic/wasserstein_estimate": -wasserstein_loss,
        }

    def generator_losses(self, blurry: tf.Tensor, restored: tf.Tensor, sharp: tf.Tensor) -> dict[str, tf.Tensor]:
        """Adversarial + lambda x perceptual; "generator/total" is minimised."""
        del blurry
        adversarial = generator_adversarial_loss(self.critic(restored, training=True))
        perceptual = self.content_loss(restored, sharp)
        return {
            "generator/adversarial": adversarial,
            "generator/perceptual": perceptual,
            "generator/total": adversarial + self.perceptual_weight * perceptual,
        }


class Pix2Pix(ConditionalGAN):
    """pix2pix (Isola et al. 2017): conditional GAN with a BCE discriminator and a pixel l1 loss.

    generator: `[B, H, W, 1]` blurry -> restored in [-1, 1] (the U-Net). critic: the
    discriminator, `[B, H, W, 2]` (blurry, image) pairs -> patch logits (a 2-channel PatchGAN).
    critic_steps: discriminator updates per generator update (1). l1_weight: lambda (100).
    """

    critic_label = "discriminator"
    content_tag = "generator/l1"
    critic_channels = 2

    def __init__(self, generator: keras.Model, critic: keras.Model, *, critic_steps: int = 1, l1_weight: float = 100.0,
                 **kwargs):
        super().__init__(generator, critic, critic_steps=critic_steps, **kwargs)
        self.l1_weight = l1_weight

    @property
    def content_weight(self) -> float:
        return self.l1_weight

    def content_loss(self, restored: tf.Tensor, sharp: tf.Tensor) -> tf.Tensor:
        """Mean absolute difference of restored and sharp `[B, H, W, 1]` (network range)."""
        return pixel_l1_loss(restored, sharp)

    def judge(self, blurry: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        """The discriminator's patch logits for the pairs (blurry, image), each `[B, H, W, 1]`."""
        return self.critic(tf.concat([blurry, tf.cast(image, blurry.dtype)], axis=-1), training=True)

    def critic_step(self, blurry: tf.Tensor, sharp: tf.Tensor, restored: tf.Tensor) -> dict[str, tf.Tensor]:
        """One discriminator update on (blurry, sharp) as real and (blurry, restored) as fake."""
        with tf.GradientTape() as tape:
            real_logits = self.judge(blurry, sharp)
            fake_logits = self.judge(blurry, restored)
            loss = discriminator_bce_loss(real_logits, fake_logits)
            scaled = self.critic_optimizer.scale_loss(loss / _num_replicas())
        self._apply(self.critic_optimizer, tape, scaled, self.critic.trainable_variables)
        return {
            "discriminator/loss": loss,
            "discriminator/probability_sharp": tf.reduce_mean(tf.sigmoid(tf.cast(real_logits, tf.float32))),
            "discriminator/probability_restored": tf.reduce_mean(tf.sigmoid(tf.cast(fake_logits, tf.float32))),
        }

    def generator_losses(self, blurry: tf.Tensor, restored: tf.Tensor, sharp: tf.Tensor) -> dict[str, tf.Tensor]:
        """BCE against "real" for (blurry, restored) + lambda x pixel l1; "generator/total" is minimised."""
        adversarial = generator_bce_loss(self.judge(blurry, restored))
        l1 = self.content_loss(restored, sharp)
        return {
            "generator/adversarial": adversarial,
            "generator/l1": l1,
            "generator/total": adversarial + self.l1_weight * l1,
        }
