"""The adversarial deblurring models: `keras.Model`s holding generator, critic and their losses.

`ConditionalGAN` is the shared schedule: `train_step` does `critic_steps` critic updates then
one generator update on one batch; `warmup_step` updates the generator alone on its weighted
content terms (the paper's generator-first recipe). Both run per replica (inside
`strategy.run`): losses are per-replica batch means and are divided by the number of replicas
before differentiation, so the optimizers' all-reduce (a sum) yields the gradient of the
global-batch mean.

A model is a subclass defining `critic_step` (critic update on one batch), `generator_losses`
(the generator's loss terms, "generator/total" being the one minimised), `content_losses` and
`content_weights`: `DeblurWGAN` (the reference paper, DeblurGAN with the l2 distance, and ours
with a pixel term) and `Pix2Pix` (Isola et al. 2017).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from model.losses import (
    PIXEL_LOSSES,
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
    critic_channels: channels of the critic's input (1: the image; 2: blurry and image).
    """

    critic_label = "critic"
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
    def adversarial(self) -> bool:
        """Whether `train_step` trains the critic and uses its verdict (else it is `warmup_step`)."""
        return True

    def content_losses(self, restored: tf.Tensor, sharp: tf.Tensor) -> dict[str, tf.Tensor]:
        """The generator's content terms, unweighted, by TensorBoard tag."""
        raise NotImplementedError

    def content_weights(self) -> dict[str, float]:
        """The fixed weight of each content term (same tags as `content_losses`)."""
        raise NotImplementedError

    def critic_step(self, blurry: tf.Tensor, sharp: tf.Tensor, restored: tf.Tensor) -> dict[str, tf.Tensor]:
        """One critic update; returns its named losses."""
        raise NotImplementedError

    def generator_losses(self, blurry: tf.Tensor, restored: tf.Tensor, sharp: tf.Tensor,
                         tape: tf.GradientTape) -> dict[str, tf.Tensor]:
        """The generator's named loss terms; "generator/total" is minimised. `tape` (persistent,
        recording the generator) lets a model weigh its terms by their gradients."""
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
        if not self.adversarial:
            return self.warmup_step(data)
        blurry, sharp = data
        with tf.GradientTape(persistent=True) as tape:
            restored = self.generator(blurry, training=True)
            with tape.stop_recording():
                fixed = tf.stop_gradient(restored)
                steps = [self.critic_step(blurry, sharp, fixed) for _ in range(self.critic_steps)]
            logs = self.generator_losses(blurry, restored, sharp, tape)
            scaled = self.generator_optimizer.scale_loss(logs["generator/total"] / _num_replicas())
        self._apply(self.generator_optimizer, tape, scaled, self.generator.trainable_variables)
        del tape
        for name in steps[0]:
            logs[name] = tf.add_n([s[name] for s in steps]) / len(steps)
        return logs

    def warmup_step(self, data) -> dict[str, tf.Tensor]:
        """One generator update on its weighted content terms alone (the critic is left untouched)."""
        blurry, sharp = data
        with tf.GradientTape() as tape:
            restored = self.generator(blurry, training=True)
            logs = self.content_losses(restored, sharp)
            total = tf.add_n([weight * logs[tag] for tag, weight in self.content_weights().items()])
            scaled = self.generator_optimizer.scale_loss(total / _num_replicas())
        self._apply(self.generator_optimizer, tape, scaled, self.generator.trainable_variables)
        return {**logs, "generator/total": total}


class DeblurWGAN(ConditionalGAN):
    """Conditional WGAN-GP with content terms: the reference paper's model (perceptual ℓ1), the
    original DeblurGAN's (perceptual ℓ2), and `ours` (pixel Charbonnier + perceptual, weighted by
    gradient share).

    generator: `[B, H, W, 1]` blurry -> restored, both in [-1, 1]. critic: image -> patch scores.
    features: frozen VGG19 sub-model for the perceptual term (VGG input `[B, H, W, 3]`), or None
    for no perceptual term. critic_steps: critic updates per generator update (5). gp_weight:
    alpha (10). perceptual_weight: lambda. perceptual_distance: "l1" (paper) or "l2" (DeblurGAN).
    perceptual_window: the network-range window shown to VGG. pixel_weight: weight of the pixel
    term, `pixel_loss` "charbonnier" (per pixel, epsilon in network units), "log_mse" or "rmse" (per
    crop, epsilon their floor). adversarial_weight: weight of the
    adversarial term (0 and no share: no critic at all). adversarial_share / perceptual_share: if
    > 0, those terms' weights are set each step to this fraction of the weighted pixel term's
    gradient norm on the generator's last layer over their own. seed: seed of the penalty's interpolation
    weights.
    """

    def __init__(
        self,
        generator: keras.Model,
        critic: keras.Model,
        features: Callable[[tf.Tensor], tf.Tensor] | None,
        *,
        critic_steps: int = 5,
        gp_weight: float = 10.0,
        perceptual_weight: float = 100.0,
        perceptual_distance: str = "l1",
        perceptual_window: tuple[float, float] = (-1.0, 1.0),
        pixel_weight: float = 0.0,
        charbonnier_epsilon: float = 1e-3,
        pixel_loss: str = "charbonnier",
        adversarial_weight: float = 1.0,
        adversarial_share: float = 0.0,
        perceptual_share: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(generator, critic, critic_steps=critic_steps, **kwargs)
        self.features = features
        self.gp_weight = gp_weight
        self.perceptual_weight = perceptual_weight if features is not None else 0.0
        self.perceptual_distance = perceptual_distance
        self.perceptual_window = perceptual_window
        self.pixel_weight = pixel_weight
        self.charbonnier_epsilon = charbonnier_epsilon
        self.pixel_loss = PIXEL_LOSSES[pixel_loss]
        self.adversarial_weight = adversarial_weight
        self.adversarial_share = adversarial_share
        self.perceptual_share = perceptual_share if features is not None else 0.0
        self.interpolation_seed = keras.random.SeedGenerator(seed, name="interpolation_seed")

    @property
    def adversarial(self) -> bool:
        return bool(self.adversarial_weight or self.adversarial_share)

    def checkpoint_state(self) -> dict[str, tf.Variable]:
        return {"interpolation_seed": self.interpolation_seed.state}

    def content_losses(self, restored: tf.Tensor, sharp: tf.Tensor) -> dict[str, tf.Tensor]:
        """"generator/pixel" (the `pixel_loss` term) and "generator/perceptual" (VGG19), those in use."""
        losses = {}
        if self.pixel_weight:
            losses["generator/pixel"] = self.pixel_loss(restored, sharp, self.charbonnier_epsilon)
        if self.features is not None:
            losses["generator/perceptual"] = perceptual_loss(
                self.features, restored, sharp, self.perceptual_distance, self.perceptual_window)
        return losses

    def content_weights(self) -> dict[str, float]:
        weights = {}
        if self.pixel_weight:
            weights["generator/pixel"] = self.pixel_weight
        if self.features is not None:
            weights["generator/perceptual"] = self.perceptual_weight
        return weights

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

    def _gradient_share(self, tape: tf.GradientTape, anchor: tf.Tensor, term: tf.Tensor, share: float) -> tf.Tensor:
        """share x |d anchor/dW| / |d term/dW| on the generator's last conv kernel W, as a constant."""
        kernel = self.generator.get_layer("tail_conv").kernel
        with tape.stop_recording():
            anchor_norm = tf.norm(tf.cast(tape.gradient(anchor, kernel), tf.float32))
            term_norm = tf.norm(tf.cast(tape.gradient(term, kernel), tf.float32))
        return tf.stop_gradient(share * anchor_norm / (term_norm + 1e-12))

    def generator_losses(self, blurry: tf.Tensor, restored: tf.Tensor, sharp: tf.Tensor,
                         tape: tf.GradientTape) -> dict[str, tf.Tensor]:
        """Adversarial x its weight + the weighted content terms; "generator/total" is minimised."""
        del blurry
        logs = self.content_losses(restored, sharp)
        logs["generator/adversarial"] = generator_adversarial_loss(self.critic(restored, training=True))
        weights = {tag: tf.constant(weight, tf.float32) for tag, weight in self.content_weights().items()}
        weights["generator/adversarial"] = tf.constant(self.adversarial_weight, tf.float32)
        pixel = self.pixel_weight * logs["generator/pixel"] if self.pixel_weight else None
        if self.adversarial_share:
            weights["generator/adversarial"] = self._gradient_share(
                tape, pixel, logs["generator/adversarial"], self.adversarial_share)
            logs["generator/adversarial_weight"] = weights["generator/adversarial"]
        if self.perceptual_share:
            weights["generator/perceptual"] = self._gradient_share(
                tape, pixel, logs["generator/perceptual"], self.perceptual_share)
            logs["generator/perceptual_weight"] = weights["generator/perceptual"]
        logs["generator/total"] = tf.add_n([weight * logs[tag] for tag, weight in weights.items()])
        return logs


class Pix2Pix(ConditionalGAN):
    """pix2pix (Isola et al. 2017): conditional GAN with a BCE discriminator and a pixel l1 loss.

    generator: `[B, H, W, 1]` blurry -> restored in [-1, 1] (the U-Net). critic: the
    discriminator, `[B, H, W, 2]` (blurry, image) pairs -> patch logits (a 2-channel PatchGAN).
    critic_steps: discriminator updates per generator update (1). l1_weight: lambda (100).
    """

    critic_label = "discriminator"
    critic_channels = 2

    def __init__(self, generator: keras.Model, critic: keras.Model, *, critic_steps: int = 1, l1_weight: float = 100.0,
                 **kwargs):
        super().__init__(generator, critic, critic_steps=critic_steps, **kwargs)
        self.l1_weight = l1_weight

    def content_losses(self, restored: tf.Tensor, sharp: tf.Tensor) -> dict[str, tf.Tensor]:
        """"generator/l1": mean absolute difference of restored and sharp `[B, H, W, 1]` (network range)."""
        return {"generator/l1": pixel_l1_loss(restored, sharp)}

    def content_weights(self) -> dict[str, float]:
        return {"generator/l1": self.l1_weight}

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

    def generator_losses(self, blurry: tf.Tensor, restored: tf.Tensor, sharp: tf.Tensor,
                         tape: tf.GradientTape) -> dict[str, tf.Tensor]:
        """BCE against "real" for (blurry, restored) + lambda x pixel l1; "generator/total" is minimised."""
        del tape
        adversarial = generator_bce_loss(self.judge(blurry, restored))
        l1 = pixel_l1_loss(restored, sharp)
        return {
            "generator/adversarial": adversarial,
            "generator/l1": l1,
            "generator/total": adversarial + self.l1_weight * l1,
        }
