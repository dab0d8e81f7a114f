"""One `train_step` of the tiny model: both networks change, 5 critic updates per generator update."""

import numpy as np
import pytest
import tensorflow as tf
from test_model_support import PAPER_RECIPE

from model.config import PRESETS, config_from_dict
from model.perceptual import VGG19_WEIGHTS_FILE, PerceptualWeightsError, load_vgg19
from model.train import build_model


@pytest.fixture(scope="module")
def vgg():
    model, source = load_vgg19("random-init")
    assert source.kind == "random-init" and "NOT ImageNet" in source.description
    return model


@pytest.fixture
def batch():
    sharp = tf.random.stateless_uniform((2, 32, 32, 1), seed=[1, 2], minval=-1, maxval=1)
    blurry = tf.nn.avg_pool2d(sharp, 3, 1, "SAME")
    return blurry, sharp


def paper_tiny():
    """The tiny networks with the reference paper's recipe (5 critic steps, 100 x perceptual)."""
    return config_from_dict({**PRESETS["tiny"], **PAPER_RECIPE})


def weights(model):
    return [w.copy() for w in model.get_weights()]


def changed(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_train_step_updates_both_networks_with_five_critic_steps(vgg, batch):
    gan = build_model(paper_tiny(), vgg)
    generator_before, critic_before = weights(gan.generator), weights(gan.critic)
    features_before = weights(gan.features)
    logs = gan.train_step(batch)
    assert int(gan.critic_optimizer.iterations) == 5
    assert int(gan.generator_optimizer.iterations) == 1
    assert changed(generator_before, weights(gan.generator))
    assert changed(critic_before, weights(gan.critic))
    assert not changed(features_before, weights(gan.features))
    expected = {"critic/loss", "critic/gradient_penalty", "critic/wasserstein_estimate",
                "generator/adversarial", "generator/perceptual", "generator/total"}
    assert set(logs) == expected
    assert all(np.isfinite(float(v)) for v in logs.values())
    total = float(logs["generator/adversarial"]) + 100.0 * float(logs["generator/perceptual"])
    assert float(logs["generator/total"]) == pytest.approx(total, rel=1e-5)
    gan.train_step(batch)
    assert int(gan.critic_optimizer.iterations) == 5 * int(gan.generator_optimizer.iterations) == 10


def test_warmup_step_trains_the_generator_alone(vgg, batch):
    gan = build_model(paper_tiny(), vgg)
    generator_before, critic_before = weights(gan.generator), weights(gan.critic)
    logs = gan.warmup_step(batch)
    assert set(logs) == {"generator/perceptual", "generator/total"}
    assert changed(generator_before, weights(gan.generator))
    assert not changed(critic_before, weights(gan.critic))
    assert int(gan.critic_optimizer.iterations) == 0


def test_missing_weights_file_names_the_expected_file(tmp_path):
    with pytest.raises(PerceptualWeightsError) as error:
        load_vgg19(str(tmp_path / "vgg.h5"))
    message = str(error.value)
    assert str(tmp_path / "vgg.h5") in message and VGG19_WEIGHTS_FILE in message and "--perceptual_weights" in message
    wrong = tmp_path / "wrong.h5"
    wrong.write_bytes(b"not hdf5")
    with pytest.raises(PerceptualWeightsError, match="not a VGG19"):
        load_vgg19(str(wrong))
