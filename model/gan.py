"""The WGAN-GP deblurring model: a `keras.Model` holding generator, critic and the loss features.

`train_step` does `critic_steps` critic updates then one generator update on one batch;
`warmup_step` updates the generator alone on its content loss (the paper's generator-first
recipe). Both run per replica (inside `strategy.run`): losses are per-replica batch means and
are divided by the number of replicas before differentiation, so the optimizers' all-reduce
(a sum) yields the gradient of the global-batch mean.

Other adversarial set-ups plug in by overriding `critic_step` (critic update on one batch) and
`generator_losses` (the generator's loss terms, "generator/total" being the one minimised).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from model.losses import (
    critic_wasserstein_loss,
    generator_adversarial_loss,
    gradient_penalty,
    perceptual_loss,
)


def _num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


class DeblurWGAN(keras.Model):
    """Conditional WGAN-GP with a perceptual content loss (the reference paper's model).

    generator: `[B, H, W, 1]` blurry -> restored, both in [-1, 1]. critic: image -> patch scores.
    features: frozen VGG19 sub-model for the perceptual loss (VGG input `[B, H, W, 3]`).
    critic_steps: critic updates per generator update (5). gp_weight: alpha (10).
    perceptual_weight: lambda. perceptual_distance: "l1" (paper) or "l2" (DeblurGAN).
    seed: seed of the penalty's interpolation weights.
    """

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
        super().__init__(**kwargs)
        self.generator = generator
        self.critic = critic
        self.features = features
        self.critic_steps = critic_steps
        self.gp_weight = gp_weight
        self.perceptual_weight = perceptual_weight
        self.perceptual_distance = perceptual_distance
        self.interpolation_seed = keras.random.SeedGenerator(seed, name="interpolation_seed")
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

    def content_loss(self, restored: tf.Tensor, sharp: tf.Tensor) -> tf.Tensor:
        """Perceptual loss (unweighted) between restored and sharp `[B, H, W, 1]`."""
        return perceptual_loss(self.features, restored, sharp, self.perceptual_distance)

    def _apply(self, optimizer: keras.optimizers.Optimizer, tape: tf.GradientTape, loss, variables) -> None:
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))

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

    def train_step(self, data) -> dict[str, tf.Tensor]:
        """`critic_steps` critic updates, then one generator update, on one `(blurry, sharp)` batch.

        The generator runs once; the critic steps see its output as a constant (as DeblurGAN).
        Returns the generator's losses and the critic's averaged over its steps.
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
        """One generator update on lambda x perceptual loss alone (the critic is left untouched)."""
        blurry, sharp = data
        with tf.GradientTape() as tape:
            restored = self.generator(blurry, training=True)
            perceptual = self.content_loss(restored, sharp)
            total = self.perceptual_weight * perceptual
            scaled = self.generator_optimizer.scale_loss(total / _num_replicas())
        self._apply(self.generator_optimizer, tape, scaled, self.generator.trainable_variables)
        return {"generator/perceptual": perceptual, "generator/total": total}
