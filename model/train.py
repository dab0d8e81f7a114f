"""`ctdeblur-train`: training of the CT deblurring generator with tf.distribute.

    ctdeblur-train --data DIR --logdir DIR [--preset paper|small|tiny] [--model ours|deblurgan|pix2pix]
                   [--config YAML] [--export DIR] [--strategy auto|default|mirrored|multi_worker] [...]

`--model` picks the recipe: ours (the reference paper's WGAN-GP, the default), or the learned
baselines deblurgan and pix2pix, trained by the same schedule at the same budget.

DIR may be local or gs://. The train sub-datasets are fed one after another, `epochs` epochs
each; checkpoints in LOGDIR/checkpoints store the models, optimizers and the schedule position,
and rerunning the same command resumes exactly there. TensorBoard reads LOGDIR.
"""

from __future__ import annotations

import cli_shell.quiet_start  # noqa: F401  (first: quiets TensorFlow / absl / Google noise unless --verbose)

import argparse
import dataclasses
import hashlib
import signal
import sys
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
import yaml
from tqdm import tqdm

from cli_shell.command import EXIT_SIGTERM, UserError, run_command
from cli_shell.quiet import add_verbose_flag
from model import schedule
from model.config import NO_PERCEPTUAL, RUNTIME_FIELDS, TrainConfig, add_config_flags, config_from_args
from model.data import (
    DatasetError,
    InputShard,
    concatenate,
    dataset_splits,
    epoch_seed,
    epochs_batches,
    hu_to_unit,
    unit_to_hu,
    validation_pairs,
)
from model.distribute import (
    chief_seconds,
    is_chief,
    make_strategy,
    strategy_name,
    task_id,
)
from model.export import SIGNATURE_NAME, export_generator
from model.gan import ConditionalGAN, DeblurWGAN, Pix2Pix
from model.metrics import body_mask, display, psnr, ssim
from model.schedule import WarmupCosine
from model.networks import build_critic, build_generator
from model.perceptual import (
    RANDOM_INIT,
    WeightsSource,
    feature_extractor,
    load_vgg19,
)
from tfrecords_schema import SchemaVersionError, join_path

CHECKPOINT_DIR = "checkpoints"
CONFIG_NAME = "train_config.yaml"
PROGRESS_LOGS = {"critic/wasserstein_estimate": "W", "critic/gradient_penalty": "gp", "discriminator/loss": "D",
                 "generator/total": "G"}
NO_PERCEPTUAL_LOSS = WeightsSource(NO_PERCEPTUAL, "", "none (no perceptual term)")
BEST_DIR = "best_generator"
"""LOGDIR subdirectory holding the generator of the best validation step."""


class ResumeError(UserError):
    """The logdir holds a run that this command cannot continue; the message says why."""


def make_optimizer(learning_rate: float, config: TrainConfig, total_steps: int, steps_per_update: int = 1,
                   budget_fraction: tf.Variable | None = None) -> keras.optimizers.Optimizer:
    """Adam with the config's betas and learning-rate schedule over `total_steps` generator steps
    (`steps_per_update` optimizer updates each; the cosine also follows `budget_fraction`, see
    `WarmupCosine`), wrapped for loss scaling under mixed precision."""
    rate: float | WarmupCosine = learning_rate
    if config.learning_rate_schedule == "cosine":
        rate = WarmupCosine(learning_rate, total_steps * steps_per_update,
                            config.learning_rate_warmup_steps * steps_per_update, config.learning_rate_final_fraction,
                            budget_fraction)
    adam = keras.optimizers.Adam(rate, beta_1=config.adam_beta_1, beta_2=config.adam_beta_2)
    return keras.optimizers.LossScaleOptimizer(adam) if config.mixed_precision else adam


def network_window(window_hu: tuple[float, float], hu_window: tuple[float, float]) -> tuple[float, float]:
    """An HU window in the network's units (`hu_to_unit`: `hu_window` maps to [-1, 1], beyond clips)."""
    low, high = hu_to_unit(tf.constant(window_hu, tf.float32), hu_window).numpy()
    return float(low), float(high)


def build_model(config: TrainConfig, vgg: keras.Model | None, total_steps: int = 1,
                budget_fraction: tf.Variable | None = None) -> ConditionalGAN:
    """The `config.model`'s GAN (generator, critic and losses from `config`), compiled with both
    optimizers. `vgg`: VGG19 for the perceptual loss (None when there is none: pix2pix, or
    perceptual_weights none). `total_steps`: generator steps of the schedule (the learning rate's;
    the critic's schedule spans the steps after the generator-only warm-up). `budget_fraction`:
    the part of the time budget used, which both learning rates also decay along.

    Call inside `strategy.scope()` so the variables are distributed.
    """
    if config.model != "pix2pix":
        hu_low, hu_high = config.hu_window
        gan = DeblurWGAN(
            build_generator(config),
            build_critic(config),
            feature_extractor(vgg, config.perceptual_layer) if vgg is not None else None,
            critic_steps=config.critic_steps,
            gp_weight=config.gp_weight,
            perceptual_weight=config.perceptual_weight,
            perceptual_distance=config.perceptual_distance,
            perceptual_window=network_window(config.perceptual_window_hu, config.hu_window),
            pixel_weight=config.pixel_weight,
            charbonnier_epsilon=2.0 * config.charbonnier_epsilon_hu / (hu_high - hu_low),
            pixel_loss=config.pixel_loss,
            adversarial_weight=config.adversarial_weight,
            adversarial_share=config.adversarial_gradient_share,
            perceptual_share=config.perceptual_gradient_share,
            seed=config.seed,
        )
    else:
        gan = Pix2Pix(
            build_generator(config),
            build_critic(config, channels=Pix2Pix.critic_channels),
            critic_steps=config.critic_steps,
            l1_weight=config.l1_weight,
        )
    adversarial_steps = max(total_steps - config.generator_warmup_steps, 1)
    gan.compile(
        make_optimizer(config.generator_learning_rate, config, total_steps, budget_fraction=budget_fraction),
        make_optimizer(config.critic_learning_rate, config, adversarial_steps, config.critic_steps, budget_fraction),
    )
    return gan


def distributed_step(strategy: tf.distribute.Strategy, replica_fn: Callable, jit_compile: bool) -> Callable:
    """A tf.function running `replica_fn(batch)` on every replica and averaging its logs."""
    per_replica = tf.function(replica_fn, jit_compile=True) if jit_compile else replica_fn

    @tf.function
    def step(batch):
        logs = strategy.run(per_replica, args=(batch,))
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None) for name, value in logs.items()}

    return step


def weights_digest(model: keras.Model) -> str:
    """SHA-256 (first 16 hex digits) of a model's weights: equal digests, equal weights."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


def config_differences(saved: dict, current: TrainConfig) -> list[str]:
    """Settings (other than `RUNTIME_FIELDS`) whose values differ between a saved run and now.

    A setting missing from the saved file (written before the setting existed) has its default
    value, which is what that run used.
    """
    now, defaults = current.to_dict(), TrainConfig().to_dict()
    return [
        f"{name}: {saved.get(name, defaults[name])!r} in the logdir, {now[name]!r} now"
        for name in now
        if name not in RUNTIME_FIELDS and saved.get(name, defaults[name]) != now[name]
    ]


class Training:
    """One invocation of the trainer: builds everything, resumes, runs the schedule, exports."""

    def __init__(self, config: TrainConfig, data_dir: str, logdir: str, strategy: tf.distribute.Strategy):
        self.config = config
        self.data_dir = data_dir
        self.logdir = logdir
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self.global_batch = config.batch_per_replica * strategy.num_replicas_in_sync
        self.stop_signal: int | None = None
        self.budget_reached = False
        self.validation_result: dict[str, float] = {}

    def say(self, message: str) -> None:
        prefix = "" if self.chief else f"[worker {task_id(self.strategy)}] "
        tqdm.write(prefix + message, file=sys.stdout)

    def prepare(self) -> None:
        """Finds the data, loads VGG19, builds the model and checkpointing; fails fast."""
        config = self.config
        self.train_splits, validation_split = dataset_splits(self.data_dir, config.subdatasets)
        self.steps = [
            schedule.steps_per_epoch(self.train_splits[s].pairs, self.global_batch, config.max_steps_per_epoch)
            for s in config.subdatasets
        ]
        if not any(self.steps):
            raise DatasetError(
                f"no train sub-dataset of {self.data_dir} holds a full global batch of {self.global_batch} pairs"
            )
        keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            vgg, self.weights_source = (
                load_vgg19(config.perceptual_weights) if config.perceptual else (None, NO_PERCEPTUAL_LOSS)
            )
            self.budget_fraction = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="budget_fraction")
            self.gan = build_model(config, vgg, schedule.total_steps(self.steps, config.epochs), self.budget_fraction)
        if self.weights_source.kind == RANDOM_INIT:
            self.say(f"WARNING: perceptual loss uses {self.weights_source.description} (--perceptual_weights {RANDOM_INIT})")
        if config.validation_pairs:
            if validation_split is not None:
                sources, self.validation_source = [validation_split], "the validation/ split"
            else:
                sources = [self.train_splits[s] for s in config.subdatasets]
                self.validation_source = "train pairs (the dataset has no validation/ split; the test split is never used)"
            self.validation_hu = [(b.astype(np.float32), s.astype(np.float32))
                                  for b, s in validation_pairs(sources, config.validation_pairs, config.validation_crop)]
            self.validation_masks = [body_mask(sharp) for _, sharp in self.validation_hu]
        self._prepare_checkpoints()

    def _prepare_checkpoints(self) -> None:
        self.position_vars = {
            name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
            for name in ("stage", "epoch", "step", "global_step", "global_batch")
        }
        self.best_vars = {
            "best_validation_step": tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_validation_step"),
            "best_validation_delta_db": tf.Variable(-np.inf, dtype=tf.float64, trainable=False,
                                                    name="best_validation_delta_db"),
        }
        gan = self.gan
        self.checkpoint = tf.train.Checkpoint(
            generator=gan.generator,
            critic=gan.critic,
            generator_optimizer=gan.generator_optimizer,
            critic_optimizer=gan.critic_optimizer,
            generator_state=list(gan.generator.non_trainable_variables),
            critic_state=list(gan.critic.non_trainable_variables),
            **gan.checkpoint_state(),
            **self.position_vars,
            **self.best_vars,
            budget_fraction=self.budget_fraction,
        )
        self.best_checkpoint = tf.train.Checkpoint(generator=gan.generator)
        self.checkpoint_dir = join_path(self.logdir, CHECKPOINT_DIR)
        directory = self.checkpoint_dir if self.chief else join_path(self.checkpoint_dir, f"workertemp_{task_id(self.strategy)}")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, directory, max_to_keep=self.config.checkpoints_to_keep,
            step_counter=self.position_vars["global_step"],
        )

    def resume_or_start(self) -> schedule.Position:
        """Restores the latest checkpoint of the logdir, if any (refusing other settings), writes the
        run's config there, and returns the position to run next."""
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        config_path = join_path(self.logdir, CONFIG_NAME)
        if latest and tf.io.gfile.exists(config_path):
            with tf.io.gfile.GFile(config_path, "r") as handle:
                saved = yaml.safe_load(handle.read()) or {}
            saved_model = saved.get("model", TrainConfig.model)
            if saved_model != self.config.model:
                raise ResumeError(
                    f"{self.logdir} holds a run of --model {saved_model}, this command trains --model "
                    f"{self.config.model}; a run cannot change its model: pass --model {saved_model} to resume it, "
                    "or use a new --logdir"
                )
            differences = config_differences(saved, self.config)
            if differences:
                raise ResumeError(
                    f"{self.logdir} holds a run with other settings; resuming needs the same ones "
                    f"(or use a new --logdir):\n  " + "\n  ".join(differences)
                )
        if self.chief:
            tf.io.gfile.makedirs(self.logdir)
            with tf.io.gfile.GFile(config_path, "w") as handle:
                handle.write(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        if not latest:
            self.position_vars["global_batch"].assign(self.global_batch)
            self.say(f"starting a new run in {self.logdir}")
            return schedule.Position()
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise ResumeError(f"checkpoint {latest} does not fit this model configuration: {error}") from error
        saved_batch = int(self.position_vars["global_batch"].numpy())
        if saved_batch != self.global_batch:
            raise ResumeError(
                f"{latest} was trained with a global batch of {saved_batch} pairs, this run has "
                f"{self.global_batch} ({self.config.batch_per_replica} x {self.strategy.num_replicas_in_sync} replicas); "
                "resume with the same number of replicas or set --batch_per_replica to match"
            )
        position = schedule.Position(*(int(self.position_vars[n].numpy()) for n in ("stage", "epoch", "step")))
        position = schedule.normalise(position, self.steps, self.config.epochs)
        self.say(f"resuming from {latest} at {self.describe(position)} (global step {self.global_step})")
        return position

    @property
    def global_step(self) -> int:
        return int(self.position_vars["global_step"].numpy())

    def describe(self, position: schedule.Position) -> str:
        if schedule.finished(position, self.steps):
            return "the end of the schedule"
        sub = self.config.subdatasets[position.stage]
        return (
            f"train-{sub} epoch {position.epoch + 1}/{self.config.epochs} "
            f"step {position.step + 1}/{self.steps[position.stage]}"
        )

    def save(self, position: schedule.Position) -> None:
        """Checkpoints models, optimizers and `position` (all workers must call it together)."""
        for name, value in dataclasses.asdict(position).items():
            self.position_vars[name].assign(value)
        self.manager.save(checkpoint_number=self.global_step)
        if not self.chief:
            tf.io.gfile.rmtree(self.manager.directory)

    def remaining_epochs(self, position: schedule.Position) -> list[tuple[int, int, int]]:
        """(stage, epoch, first step) of every epoch from `position` to the end of the schedule."""
        epochs = []
        while not schedule.finished(position, self.steps):
            epochs.append((position.stage, position.epoch, position.step))
            end_of_epoch = dataclasses.replace(position, step=self.steps[position.stage])
            position = schedule.normalise(end_of_epoch, self.steps, self.config.epochs)
        return epochs

    def schedule_dataset(self, position: schedule.Position):
        """The distributed batches of the rest of the schedule from `position`: one pipeline, so
        that input keeps flowing across epoch and sub-dataset boundaries."""
        config, strategy = self.config, self.strategy
        epochs = self.remaining_epochs(position)

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            shard = InputShard(
                count=context.num_input_pipelines,
                index=context.input_pipeline_id,
                replicas=strategy.num_replicas_in_sync // context.num_input_pipelines,
                batch=config.batch_per_replica,
            )
            datasets = []
            for stage in sorted({stage for stage, _, _ in epochs}):
                sub = config.subdatasets[stage]
                stage_epochs = [(epoch, first_step) for s, epoch, first_step in epochs if s == stage]
                datasets.append(epochs_batches(
                    self.train_splits[sub], crop_size=config.crop_size, hu_window=config.hu_window,
                    shuffle_buffer=config.shuffle_buffer, seeds=[epoch_seed(config.seed, sub, e) for e, _ in stage_epochs],
                    shard=shard, steps=self.steps[stage], skip_steps=stage_epochs[0][1],
                    crop_candidates=config.crop_candidates, random_orientation=config.random_orientation,
                    shared_softening=config.shared_softening, shared_softening_sigma=config.shared_softening_sigma,
                    still_fraction=config.still_fraction,
                ))
            return concatenate(datasets).prefetch(tf.data.AUTOTUNE)

        return strategy.distribute_datasets_from_function(dataset_fn)

    def write_config_summary(self) -> None:
        rows = [("setting", "value"), ("---", "---"), ("data", self.data_dir), ("strategy", strategy_name(self.strategy)),
                ("global batch", str(self.global_batch)), ("perceptual weights", self.weights_source.description)]
        rows += [(k, str(v)) for k, v in self.config.to_dict().items()]
        table = "\n".join(f"| {a} | {b} |" for a, b in rows)
        tf.summary.text("config", table, step=self.global_step)

    def write_scalars(self, logs: dict, seconds_per_step: float) -> None:
        for name, value in logs.items():
            tf.summary.scalar(name, float(value), step=self.global_step)
        for name, optimizer in (("generator", self.gan.generator_optimizer), (self.gan.critic_label, self.gan.critic_optimizer)):
            rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            tf.summary.scalar(f"learning_rate/{name}", rate, step=self.global_step)
        if seconds_per_step > 0:
            tf.summary.scalar("throughput/pairs_per_second", self.global_batch / seconds_per_step, step=self.global_step)

    def score_validation_pairs(self) -> None:
        """Scores the fixed validation pairs (PSNR/SSIM, full field and body mask, and their gains
        over the blurry input) to TensorBoard with image triplets; keeps the generator of the best
        mean PSNR gain in LOGDIR/best_generator."""
        window = self.config.validation_window_hu
        rows = []
        for index, ((blurry_hu, sharp_hu), mask) in enumerate(zip(self.validation_hu, self.validation_masks)):
            restored_hu = self.deblur_hu(tf.constant(blurry_hu[None, ..., None]))[0, ..., 0].numpy()
            row = {}
            for region, region_mask in (("", None), ("body/", mask if mask.any() else None)):
                for name, metric in (("psnr_db", psnr), ("ssim", ssim)):
                    restored = metric(restored_hu, sharp_hu, window, region_mask)
                    blurry = metric(blurry_hu, sharp_hu, window, region_mask)
                    row.update({f"{region}{name}": restored, f"{region}{name}_blurry": blurry,
                                f"{region}delta_{name}": restored - blurry})
            rows.append(row)
            triplet = tf.concat([display(tf.constant(image[None, ..., None]), window)
                                 for image in (blurry_hu, restored_hu, sharp_hu)], axis=2)
            tf.summary.image(f"validation/blurry_restored_sharp/{index}", triplet, step=self.global_step)
        result = {f"validation/{name}": float(np.mean([row[name] for row in rows])) for name in rows[0]}
        for name, value in result.items():
            tf.summary.scalar(name, value, step=self.global_step)
        self.validation_result = result
        gain = result["validation/delta_psnr_db"]
        best = gain > float(self.best_vars["best_validation_delta_db"].numpy())
        self.say(f"validation at step {self.global_step}: PSNR {gain:+.2f} dB over blurry "
                 f"(body {result['validation/body/delta_psnr_db']:+.2f}), SSIM {result['validation/delta_ssim']:+.4f}"
                 + (" (best so far)" if best else ""))
        if best:
            self.best_vars["best_validation_delta_db"].assign(gain)
            self.best_vars["best_validation_step"].assign(self.global_step)
            directory = self.best_dir if self.chief else join_path(self.best_dir, f"workertemp_{task_id(self.strategy)}")
            self.best_checkpoint.write(join_path(directory, "generator"))
            if not self.chief:
                tf.io.gfile.rmtree(directory)

    @property
    def best_dir(self) -> str:
        return join_path(self.logdir, BEST_DIR)

    @property
    def best_step(self) -> int:
        """Global step of the best validation so far (-1: none)."""
        return int(self.best_vars["best_validation_step"].numpy())

    def restore_best_generator(self) -> None:
        """Loads the generator weights of the best validation step (from LOGDIR/best_generator)."""
        self.best_checkpoint.read(join_path(self.best_dir, "generator")).assert_existing_objects_matched()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
    def deblur_hu(self, blurry_hu: tf.Tensor) -> tf.Tensor:
        """The generator's inference on HU `[B, H, W, 1]` -> deblurred HU (dropout off)."""
        restored = self.gan.generator(hu_to_unit(blurry_hu, self.config.hu_window), training=False)
        return unit_to_hu(restored, self.config.hu_window)

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def run(self, position: schedule.Position) -> schedule.Position:
        """Runs the schedule from `position`; returns where it stopped (the end unless signalled)."""
        config, steps = self.config, self.steps
        writer = tf.summary.create_file_writer(self.logdir) if self.chief else tf.summary.create_noop_writer()
        train_step = distributed_step(self.strategy, self.gan.train_step, config.jit_compile)
        warmup_step = distributed_step(self.strategy, self.gan.warmup_step, config.jit_compile)
        multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        previous_handler = None if multi_worker else signal.signal(signal.SIGTERM, self._on_signal)
        try:
            return self._run(position, writer, train_step, warmup_step)
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)

    def _run(self, position: schedule.Position, writer, train_step: Callable, warmup_step: Callable) -> schedule.Position:
        config, steps = self.config, self.steps
        total = schedule.total_steps(steps, config.epochs)
        started = time.perf_counter()
        progress = tqdm(total=None if config.time_budget_minutes else total,  # a budget ends it, not the step count
                        initial=schedule.steps_done(position, steps, config.epochs), unit="step",
                        disable=not self.chief, dynamic_ncols=True)
        last_saved, last_validated = self.global_step, -1
        budget = 60.0 * config.time_budget_minutes
        start_fraction, stage_started = float(self.budget_fraction.numpy()), 0.0
        with writer.as_default():
            self.write_config_summary()
            batches = iter(self.schedule_dataset(position)) if not schedule.finished(position, steps) else None
            tick = time.perf_counter()
            while not schedule.finished(position, steps) and self.stop_signal is None:
                elapsed = chief_seconds(self.strategy, time.perf_counter() - started) if budget else 0.0
                if stage_started is None:
                    stage_started = elapsed
                if budget and elapsed > budget:
                    self.budget_reached = True
                    break
                if budget:
                    self.budget_fraction.assign(schedule.budget_fraction(start_fraction, elapsed, budget))
                    stages = schedule.stages_left(position, steps)
                    if schedule.stage_share_used(elapsed, stage_started, budget, stages):
                        self.say(f"  train-{config.subdatasets[position.stage]}: its share of the time budget "
                                 f"({(budget - stage_started) / stages / 60.0:.1f} min) used before "
                                 f"{self.describe(position)}; moving on")
                        position, stage_started = schedule.next_stage(position, steps, config.epochs), elapsed
                        self.save(position)
                        last_saved = self.global_step
                        batches = iter(self.schedule_dataset(position))
                        continue
                stage = position.stage
                step_fn = warmup_step if self.global_step < config.generator_warmup_steps else train_step
                logs = step_fn(next(batches))
                self.position_vars["global_step"].assign_add(1)
                position = schedule.advance(position, steps, config.epochs)
                progress.update(1)
                step = self.global_step
                if step % config.summary_every == 0:
                    now = time.perf_counter()
                    self.write_scalars(logs, (now - tick) / config.summary_every)
                    tick = now
                    progress.set_postfix({short: f"{float(logs[name]):.3g}" for name, short in PROGRESS_LOGS.items() if name in logs})
                if config.validation_pairs and step % config.validation_every == 0:
                    self.score_validation_pairs()
                    last_validated = step
                if step % config.checkpoint_every == 0 or position.stage != stage:
                    self.save(position)
                    last_saved = step
                if position.stage != stage:
                    stage_started = None  # the next step's (agreed) clock reading
            if self.global_step != last_saved:
                self.save(position)
            if config.validation_pairs and self.global_step != last_validated:
                self.score_validation_pairs()
        writer.flush()
        progress.close()
        return position


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctdeblur-train",
        description="Train the CT deblurring generator on a ctdeblur dataset (local or gs://), with TensorBoard "
        "summaries, resumable checkpoints and a SavedModel export. --model ours (default) is the reference "
        "paper's WGAN-GP; deblurgan and pix2pix are the learned baselines, trained by the same schedule.",
        epilog="Rerun the same command with the same --logdir to resume after an interruption. "
        "See docs/training.md.",
    )
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="dataset directory (local or gs://) with manifest.json, test/ and train-0/ .. train-6/")
    parser.add_argument("--logdir", required=True, metavar="DIR",
                        help="TensorBoard summaries, checkpoints and train_config.yaml (local or gs://); reuse it to resume")
    parser.add_argument("--export", metavar="DIR",
                        help="at the end, write the generator as a SavedModel here (serving signature: HU in, HU out)")
    add_verbose_flag(parser)
    add_config_flags(parser)
    return parser


def print_start(training: Training) -> None:
    config = training.config
    training.say(f"ctdeblur-train: {strategy_name(training.strategy)}, global batch {training.global_batch} "
                 f"({config.batch_per_replica} per replica), {config.crop_size}x{config.crop_size} crops")
    if config.model != "pix2pix":
        training.say(f"  model {config.model}: {config.generator} generator ({config.generator_norm} norm, "
                     f"{config.residual_output} residual), " + (
                         f"WGAN-GP ({config.critic_steps} critic steps, alpha {config.gp_weight:g}, "
                         f"{config.critic_norm} norm in the critic)" if config.adversarial else "no critic"))
        terms = []
        if config.pixel_weight:
            terms.append(f"{config.pixel_weight:g} x pixel Charbonnier (eps {config.charbonnier_epsilon_hu:g} HU)"
                         if config.pixel_loss == "charbonnier" else
                         f"{config.pixel_weight:g} x {'log MSE' if config.pixel_loss == 'log_mse' else 'RMSE'} per crop "
                         f"(floor {config.charbonnier_epsilon_hu:g} HU)")
        if config.perceptual:
            weight = (f"{config.perceptual_gradient_share:g} of the pixel gradient" if config.perceptual_gradient_share
                      else f"{config.perceptual_weight:g}")
            terms.append(f"{weight} x {config.perceptual_distance} of VGG19 {config.perceptual_layer} "
                         f"(window {config.perceptual_window_hu[0]:g}..{config.perceptual_window_hu[1]:g} HU, weights "
                         f"{training.weights_source.description})")
        if config.adversarial:
            terms.append(f"{config.adversarial_gradient_share:g} of the pixel gradient x adversarial"
                         if config.adversarial_gradient_share else f"{config.adversarial_weight:g} x adversarial")
        training.say("  generator loss: " + " + ".join(terms))
        if config.generator_warmup_steps:
            training.say(f"  first {config.generator_warmup_steps} steps: content terms only")
        if config.learning_rate_schedule == "cosine":
            training.say(f"  learning rate: {config.generator_learning_rate:g} after {config.learning_rate_warmup_steps} "
                         f"warm-up steps, cosine decay to x{config.learning_rate_final_fraction:g} over the schedule"
                         + (f" or the time budget, whichever is further along" if config.time_budget_minutes else ""))
    else:
        training.say(f"  model {config.model}: {config.generator} generator, conditional PatchGAN discriminator "
                     f"({config.critic_steps} step(s)), BCE + {config.l1_weight:g} x pixel l1")
    if config.time_budget_minutes:
        training.say(f"  time budget: {config.time_budget_minutes:g} min, an equal share of what is left for each "
                     "sub-dataset left")
    for sub, steps in zip(config.subdatasets, training.steps):
        split = training.train_splits[sub]
        note = "" if steps else f"  (skipped: fewer pairs than the global batch {training.global_batch})"
        training.say(f"  train-{sub}: {split.pairs} pairs, {steps} steps/epoch x {config.epochs} epochs{note}")


def print_end(training: Training, position: schedule.Position, steps_run: int, seconds: float,
              export_dir: str | None, exported_step: int | None, trained_digest: str) -> None:
    config = training.config
    if training.stop_signal is not None:
        training.say(f"stopped by signal {training.stop_signal} at global step {training.global_step} "
                     f"(next: {training.describe(position)}); checkpoint saved, rerun the same command to resume")
    elif training.budget_reached:
        training.say(f"ctdeblur-train: stopped by the time budget at global step {training.global_step} "
                     f"({steps_run} steps in this run, {seconds:.1f} s)")
    else:
        training.say(f"ctdeblur-train: schedule complete at global step {training.global_step} "
                     f"({steps_run} steps in this run, {seconds:.1f} s)")
    training.say(f"  checkpoints: {training.checkpoint_dir} (latest: {training.manager.latest_checkpoint})")
    training.say(f"  TensorBoard: tensorboard --logdir {training.logdir}")
    if training.budget_reached:
        training.say(f"  time budget of {config.time_budget_minutes:g} min reached at global step {training.global_step} "
                     f"(next: {training.describe(position)}); rerun with a larger --time_budget_minutes to continue")
    result = training.validation_result
    if result:
        window = config.validation_window_hu
        training.say(
            f"  validation at step {training.global_step} ({len(training.validation_hu)} pairs of {training.validation_source}, "
            f"window [{window[0]:g}, {window[1]:g}] HU): PSNR {result['validation/psnr_db']:.2f} dB "
            f"(blurry {result['validation/psnr_db_blurry']:.2f}, {result['validation/delta_psnr_db']:+.2f}), "
            f"SSIM {result['validation/ssim']:.4f} (blurry {result['validation/ssim_blurry']:.4f}); in the body "
            f"{result['validation/body/delta_psnr_db']:+.2f} dB, SSIM {result['validation/body/delta_ssim']:+.4f}"
        )
        training.say(f"  best validation: step {training.best_step}, "
                     f"{float(training.best_vars['best_validation_delta_db'].numpy()):+.2f} dB over blurry")
    if exported_step is not None:
        training.say(f"  exported generator of step {exported_step} ({config.export_weights}): {export_dir} "
                     f"(signature serving_default / {SIGNATURE_NAME}: float32 HU [H, W] or [B, H, W, 1] -> HU)")
    training.say(f"  generator weights sha256: {trained_digest} (step {training.global_step})")
    if exported_step is not None and exported_step != training.global_step:
        training.say(f"  exported generator weights sha256: {weights_digest(training.gan.generator)} (step {exported_step})")


def run(config: TrainConfig, data_dir: str, logdir: str, export_dir: str | None) -> int:
    """Trains (or resumes) and exports; returns the process exit code."""
    strategy = make_strategy(config.strategy)
    training = Training(config, data_dir, logdir, strategy)
    training.prepare()
    print_start(training)
    position = training.resume_or_start()
    started, start_step = time.perf_counter(), training.global_step
    position = training.run(position)
    seconds = time.perf_counter() - started
    exported_step = None
    trained_digest = weights_digest(training.gan.generator)
    if export_dir and training.chief and training.stop_signal is None:
        exported_step = training.global_step
        if config.export_weights == "best" and training.best_step >= 0:
            training.restore_best_generator()
            exported_step = training.best_step
        export_generator(training.gan.generator, config, export_dir, {
            "global_step": exported_step,
            "final_step": training.global_step,
            "weights": config.export_weights if exported_step != training.global_step else "last",
            "validation_delta_psnr_db": float(training.best_vars["best_validation_delta_db"].numpy())
            if training.best_step >= 0 else None,
            "perceptual_weights": training.weights_source.description,
            "data": data_dir,
        })
    print_end(training, position, training.global_step - start_step, seconds, export_dir, exported_step, trained_digest)
    return EXIT_SIGTERM if training.stop_signal is not None else 0


def _train_command(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as error:
        raise UserError(f"invalid settings: {error}") from error
    try:
        return run(config, args.data, args.logdir, args.export)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise UserError(f"reading {args.data} failed: {error.message.strip()}\n"
                        "  (a damaged shard, or records this reader does not know); check the dataset with "
                        "ctdeblur-shard-stats, or rebuild it") from error


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `ctdeblur-train` (SIGTERM: checkpoint, then exit 143)."""
    args = build_parser().parse_args(argv)
    return run_command("ctdeblur-train", lambda: _train_command(args), user_errors=(SchemaVersionError,),
                       handle_sigterm=False)


if __name__ == "__main__":
    sys.exit(main())
