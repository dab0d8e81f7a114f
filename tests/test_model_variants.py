"""`ctdeblur-train --model ours|deblurgan|pix2pix`: the recipes' settings, the U-Net, the pix2pix
and DeblurGAN losses on known tensors, and each model trained, exported and loaded (tiny)."""

import dataclasses
import glob
import json
import math
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2
from test_model_support import PAPER_FLAGS, run_main, write_dataset

from model.config import MODEL_SETTINGS, MODELS, PRESETS, config_from_args, config_from_dict, preset_config
from model.export import load_exported_generator
from model.gan import DeblurWGAN, Pix2Pix
from model.losses import (
    discriminator_bce_loss,
    generator_bce_loss,
    pixel_l1_loss,
    vgg_input,
)
from model.networks import (
    MirrorPadToMultiple,
    build_unet_generator,
    unet_depth,
)
from model.perceptual import load_vgg19
from model.train import build_model, build_parser

STEPS = 3
RUN = ["--preset", "tiny", "--perceptual_weights", "random-init", "--subdatasets", "0", "--max_steps_per_epoch",
       str(STEPS), "--generator_warmup_steps", "1", "--critic_steps", "1"]


def parse(argv):
    return config_from_args(build_parser().parse_args(["--data", "D", "--logdir", "L", *argv]))


def differences(a, b):
    return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def scalar_tags(logdir):
    tags = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            for value in event_pb2.Event.FromString(record.numpy()).summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    tags.add(value.tag)
    return tags


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each model trained 3 steps (1 warm-up) on a tiny dataset and exported: {model: (logdir, export, stdout)}."""
    root = tmp_path_factory.mktemp("variants")
    data = write_dataset(str(root / "data"), train_pairs=6, test_pairs=2, size=(40, 44), subdatasets=1, shards=1)
    runs = {}
    for model in MODELS:
        logdir, export = str(root / model / "logs"), str(root / model / "generator")
        code, stdout, stderr = run_main(["--data", data, "--logdir", logdir, "--export", export, "--model", model, *RUN])
        assert code == 0, stderr[-3000:]
        runs[model] = (logdir, export, stdout)
    runs["data"] = data
    return runs


@pytest.fixture(scope="module")
def vgg():
    return load_vgg19("random-init")[0]


# --- recipes and settings -------------------------------------------------------------------


def test_model_settings_apply_on_top_of_the_preset_only():
    small = preset_config("small")
    assert parse(["--preset", "small", "--model", "ours"]) == parse(["--preset", "small"]) == small
    preset_only = config_from_dict(PRESETS["small"])
    for model in MODELS:
        config = parse(["--preset", "small", "--model", model])
        changed = {name for name, value in MODEL_SETTINGS[model].items() if getattr(preset_only, name) != value}
        assert differences(config, preset_only) == changed | ({"model"} if model != preset_only.model else set())
    deblurgan = parse(["--preset", "small", "--model", "deblurgan"])
    assert (deblurgan.perceptual_distance, deblurgan.generator_warmup_steps) == ("l2", 0)
    pix2pix = parse(["--preset", "small", "--model", "pix2pix"])
    assert (pix2pix.generator, pix2pix.critic_steps, pix2pix.generator_learning_rate) == ("unet", 1, 2e-4)
    assert (pix2pix.crop_size, pix2pix.batch_per_replica, pix2pix.epochs, pix2pix.max_steps_per_epoch) == (
        small.crop_size, small.batch_per_replica, small.epochs, small.max_steps_per_epoch)


def test_precedence_preset_then_model_then_yaml_then_flags(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("generator_warmup_steps: 7\nmodel: pix2pix\n")
    from_yaml = parse(["--preset", "tiny", "--config", str(path)])
    assert (from_yaml.model, from_yaml.generator, from_yaml.critic_steps, from_yaml.generator_warmup_steps) == (
        "pix2pix", "unet", 1, 7)
    flags = parse(["--preset", "tiny", "--config", str(path), "--model", "deblurgan", "--generator_warmup_steps", "9"])
    assert (flags.model, flags.generator, flags.critic_steps, flags.perceptual_distance) == ("deblurgan", "resnet", 5, "l2")
    assert flags.generator_warmup_steps == 9
    path.write_text("model: cyclegan\n")
    with pytest.raises(ValueError, match="unknown model 'cyclegan'.*" + ", ".join(MODELS)):
        parse(["--config", str(path)])


def test_help_documents_the_models():
    text = " ".join(build_parser().format_help().split())
    assert f"--model {{{','.join(MODELS)}}}" in text
    assert "deblurgan: perceptual_distance=l2 generator_warmup_steps=0" in text
    assert "pix2pix: generator=unet critic_steps=1" in text


def test_unet_depth_reaches_one_pixel_at_the_crop_size():
    for preset in PRESETS:
        config = preset_config(preset, "pix2pix")
        assert unet_depth(config) == min(8, int(math.log2(config.crop_size))), preset
    assert unet_depth(preset_config("paper", "pix2pix")) == 8  # 256-pixel crops: 1 pixel at depth 8
    assert unet_depth(dataclasses.replace(preset_config("tiny", "pix2pix"), crop_size=128)) == 7
    assert unet_depth(dataclasses.replace(preset_config("small", "pix2pix"), unet_depth=4)) == 4


# --- U-Net generator --------------------------------------------------------------------------


def conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def test_unet_layout_follows_pix2pix():
    f, depth = 8, 8
    generator = build_unet_generator(filters=f, depth=depth)
    widths = [f, 2 * f, 4 * f, 8 * f, 8 * f, 8 * f, 8 * f, 8 * f]  # C64-C128-C256-C512-C512-C512-C512-C512 at f = 64
    assert [generator.get_layer(f"down{i}_conv").filters for i in range(depth)] == widths
    norms = {layer.name for layer in generator.layers if layer.name.endswith("_norm")}
    assert norms == {f"down{i}_norm" for i in range(1, depth - 1)} | {f"up{i}_norm" for i in range(depth - 1)}
    assert {layer.name for layer in generator.layers if "dropout" in layer.name} == {"up6_dropout", "up5_dropout", "up4_dropout"}
    expected = conv_params(4, 1, widths[0])
    expected += sum(conv_params(4, widths[i - 1], widths[i]) for i in range(1, depth))
    expected += sum(2 * widths[i] for i in range(1, depth - 1))  # encoder instance norms
    expected += conv_params(4, widths[depth - 1], widths[depth - 2])  # innermost up: no skip to concatenate
    expected += sum(conv_params(4, 2 * widths[i + 1], widths[i]) + 2 * widths[i] for i in range(depth - 2))
    expected += 2 * widths[depth - 2] + conv_params(4, 2 * widths[0], 1)
    assert generator.count_params() == expected


@pytest.mark.parametrize("depth, shape", [(3, (33, 35)), (6, (37, 53)), (2, (1, 7))])
def test_unet_keeps_odd_sizes_even_when_padding_exceeds_the_image(depth, shape):
    generator = build_unet_generator(filters=4, depth=depth)
    image = tf.random.uniform((2, *shape, 1), -1.0, 1.0, seed=4)
    restored = generator(image, training=False)
    assert restored.shape == (2, *shape, 1) and restored.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(restored))) <= 1.0


def test_mirror_pad_is_symmetric_padding_repeated():
    image = tf.reshape(tf.range(12, dtype=tf.float32), (1, 3, 4, 1))
    padded = MirrorPadToMultiple(4)(image)
    np.testing.assert_array_equal(padded.numpy(), tf.pad(image, [[0, 0], [0, 1], [0, 0], [0, 0]], "SYMMETRIC").numpy())
    wide = MirrorPadToMultiple(8)(image)
    assert wide.shape == (1, 8, 8, 1)
    np.testing.assert_array_equal(wide.numpy()[0, :, 0, 0], [0, 4, 8, 8, 4, 0, 0, 4])
    np.testing.assert_array_equal(wide.numpy()[0, 0, :, 0], [0, 1, 2, 3, 3, 2, 1, 0])


# --- losses on known tensors --------------------------------------------------------------------


def test_deblurgan_content_loss_is_l2_of_the_features(vgg):
    gan = build_model(preset_config("tiny", "deblurgan"), vgg)
    assert isinstance(gan, DeblurWGAN) and gan.perceptual_distance == "l2"
    restored = tf.zeros((2, 16, 16, 1))
    sharp = tf.concat([tf.fill((2, 8, 16, 1), 0.25), tf.fill((2, 8, 16, 1), -0.5)], axis=1)
    diff = gan.features(vgg_input(restored)) - gan.features(vgg_input(sharp))
    losses = gan.content_losses(restored, sharp)
    assert set(losses) == {"generator/perceptual"} and gan.content_weights() == {"generator/perceptual": 100.0}
    loss = float(losses["generator/perceptual"])
    assert loss == pytest.approx(float(tf.reduce_mean(tf.square(diff))), rel=1e-5)
    assert loss != pytest.approx(float(tf.reduce_mean(tf.abs(diff))), rel=1e-2)
    paper = build_model(parse(["--preset", "tiny", *PAPER_FLAGS]), vgg)
    assert float(paper.content_losses(restored, sharp)["generator/perceptual"]) == pytest.approx(
        float(tf.reduce_mean(tf.abs(diff))), rel=1e-5)


def test_pix2pix_content_loss_is_pixel_l1_weighted_100():
    gan = build_model(preset_config("tiny", "pix2pix"), None)
    assert isinstance(gan, Pix2Pix) and gan.l1_weight == 100.0
    blurry = tf.zeros((2, 32, 32, 1))
    sharp = tf.concat([tf.fill((2, 16, 32, 1), 0.25), tf.fill((2, 16, 32, 1), -0.5)], axis=1)
    assert float(pixel_l1_loss(blurry, sharp)) == pytest.approx(0.375)
    assert {tag: float(loss) for tag, loss in gan.content_losses(blurry, sharp).items()} == {
        "generator/l1": pytest.approx(0.375)}
    assert gan.content_weights() == {"generator/l1": 100.0}
    with tf.GradientTape(persistent=True) as tape:
        logs = gan.generator_losses(blurry, blurry, sharp, tape)
    assert set(logs) == {"generator/adversarial", "generator/l1", "generator/total"}
    assert float(logs["generator/l1"]) == pytest.approx(0.375)
    assert float(logs["generator/total"]) == pytest.approx(float(logs["generator/adversarial"]) + 37.5, rel=1e-6)


def test_bce_losses_on_known_logits():
    zeros, big = tf.zeros((2, 4, 4, 1)), tf.fill((2, 4, 4, 1), 30.0)
    assert float(discriminator_bce_loss(zeros, zeros)) == pytest.approx(math.log(2.0))
    assert float(generator_bce_loss(zeros)) == pytest.approx(math.log(2.0))
    assert float(discriminator_bce_loss(big, -big)) == pytest.approx(0.0, abs=1e-9)
    assert float(generator_bce_loss(-big)) == pytest.approx(30.0, rel=1e-6)
    logits = tf.constant([[1.0, -2.0], [0.5, 3.0]])[..., None, None]
    expected = 0.5 * (np.mean(np.log1p(np.exp(-logits.numpy()))) + np.mean(np.log1p(np.exp(logits.numpy()))))
    assert float(discriminator_bce_loss(logits, logits)) == pytest.approx(expected, rel=1e-6)


def test_pix2pix_discriminator_sees_the_blurry_input():
    gan = build_model(preset_config("tiny", "pix2pix"), None)
    assert gan.critic.input_shape == (None, None, None, 2)
    image = tf.random.uniform((2, 32, 32, 1), -1.0, 1.0, seed=5)
    blurry_a = tf.random.uniform((2, 32, 32, 1), -1.0, 1.0, seed=6)
    blurry_b = -blurry_a
    assert float(tf.reduce_max(tf.abs(gan.judge(blurry_a, image) - gan.judge(blurry_b, image)))) > 1e-3
    with tf.GradientTape(persistent=True) as tape:
        adversarial = [float(gan.generator_losses(b, image, image, tape)["generator/adversarial"])
                       for b in (blurry_a, blurry_b)]
    assert adversarial[0] != pytest.approx(adversarial[1], rel=1e-4)


def test_pix2pix_steps_one_discriminator_update_and_l1_warmup():
    gan = build_model(preset_config("tiny", "pix2pix"), None)
    sharp = tf.random.stateless_uniform((2, 32, 32, 1), seed=[1, 2], minval=-1, maxval=1)
    blurry = tf.nn.avg_pool2d(sharp, 3, 1, "SAME")
    critic_before = [w.copy() for w in gan.critic.get_weights()]
    warm = gan.warmup_step((blurry, sharp))
    assert set(warm) == {"generator/l1", "generator/total"}
    assert float(warm["generator/total"]) == pytest.approx(100.0 * float(warm["generator/l1"]), rel=1e-6)
    assert int(gan.critic_optimizer.iterations) == 0
    assert all(np.array_equal(a, b) for a, b in zip(critic_before, gan.critic.get_weights()))
    logs = gan.train_step((blurry, sharp))
    assert set(logs) == {"generator/adversarial", "generator/l1", "generator/total", "discriminator/loss",
                         "discriminator/probability_sharp", "discriminator/probability_restored"}
    assert int(gan.critic_optimizer.iterations) == 1 and int(gan.generator_optimizer.iterations) == 2
    assert 0.0 < float(logs["discriminator/probability_sharp"]) < 1.0


OURS_TINY_FIRST_LOSSES = {
    "warmup/generator/perceptual": 3.213061809539795,
    "generator/adversarial": -0.21053089201450348,
    "generator/perceptual": 3.2000114917755127,
    "generator/total": 319.7906188964844,
    "critic/loss": 6.588525295257568,
    "critic/gradient_penalty": 0.6556905508041382,
    "critic/wasserstein_estimate": -0.03161981329321861,
}
"""Losses of one warm-up step then one train step of the tiny preset, seed 0, recorded with the
trainer as it was before `--model` existed (the reference paper's recipe)."""


def test_paper_recipe_first_step_losses_are_those_from_before_the_models():
    keras.utils.set_random_seed(0)
    vgg = load_vgg19("random-init")[0]
    gan = build_model(parse(["--preset", "tiny", "--model", "ours", *PAPER_FLAGS]), vgg)
    assert type(gan) is DeblurWGAN
    sharp = tf.random.stateless_uniform((2, 32, 32, 1), seed=[1, 2], minval=-1, maxval=1)
    blurry = tf.nn.avg_pool2d(sharp, 3, 1, "SAME")
    warm = gan.warmup_step((blurry, sharp))
    logs = {f"warmup/{k}": v for k, v in warm.items() if k != "generator/total"} | gan.train_step((blurry, sharp))
    assert {k: pytest.approx(float(v), rel=1e-4) for k, v in logs.items()} == OURS_TINY_FIRST_LOSSES


# --- the trainer end to end ---------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_each_model_trains_exports_and_deblurs_any_size(trained, model):
    _, export, stdout = trained[model]
    assert f"schedule complete at global step {STEPS}" in stdout and f"model {model}:" in stdout
    described = re.findall(rf"model {model}: .*", stdout)
    assert len(described) == 1, described
    assert ("conditional PatchGAN" in described[0]) == (model == "pix2pix"), described
    with open(os.path.join(export, "ctdeblur_generator.json")) as handle:
        info = json.load(handle)
    assert info["model"] == model and info["config"]["model"] == model
    assert info["config"]["generator"] == ("unet" if model == "pix2pix" else "resnet")
    loaded = load_exported_generator(export)
    assert loaded.name == model
    hu = np.random.default_rng(1).uniform(-1100, 2000, (1, 37, 53)).astype(np.float32)
    restored = loaded.deblur(hu)
    assert restored.shape == (1, 37, 53) and np.all(np.isfinite(restored))
    assert restored.min() >= -1024.01 and restored.max() <= 3071.01


def test_tensorboard_names_each_models_terms(trained):
    pix2pix = scalar_tags(trained["pix2pix"][0])
    assert {"discriminator/loss", "discriminator/probability_sharp", "discriminator/probability_restored",
            "generator/adversarial", "generator/l1", "generator/total", "learning_rate/generator",
            "learning_rate/discriminator", "validation/psnr_db"} <= pix2pix
    assert not any(tag.startswith("critic/") or "perceptual" in tag for tag in pix2pix)
    deblurgan = scalar_tags(trained["deblurgan"][0])
    assert {"critic/gradient_penalty", "generator/perceptual", "learning_rate/critic"} <= deblurgan
    assert "100 x l2 of VGG19 block2_conv2" in trained["deblurgan"][2]


def test_resuming_with_another_model_is_refused(trained):
    logdir = trained["ours"][0]
    code, _, stderr = run_main(["--data", trained["data"], "--logdir", logdir, "--model", "pix2pix", *RUN])
    assert code == 2
    assert f"{logdir} holds a run of --model ours, this command trains --model pix2pix" in stderr
    assert "pass --model ours to resume it, or use a new --logdir" in stderr and "Traceback" not in stderr
