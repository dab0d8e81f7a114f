"""`ctdeblur-train` end to end in subprocesses: TensorBoard, export, SIGKILL resume, multi-worker,
missing VGG19 weights. The tiny preset on a tiny synthetic dataset."""

import contextlib
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2
from test_model_support import (
    NO_NETWORK,
    PAPER_FLAGS,
    PAPER_RECIPE,
    REPO,
    TRAIN_BIN,
    run_train,
    train_env,
    write_dataset,
)

from model.config import PRESETS, config_from_dict
from model.data import hu_to_unit, unit_to_hu
from model.networks import build_generator
from model.perceptual import VGG19_WEIGHTS_FILE

RUN = [
    "--preset", "tiny", *PAPER_FLAGS, "--perceptual_weights", "random-init", "--critic_steps", "2",
    "--subdatasets", "0", "1", "2", "--epochs", "2", "--max_steps_per_epoch", "2", "--crop_size", "48",
    "--checkpoint_every", "3", "--validation_every", "4", "--generator_warmup_steps", "2", "--validation_pairs", "2",
    "--validation_crop", "40",
]
FINAL_STEP = 12
VALIDATION_STEPS = (4, 8, 12)
POSITION_NAMES = ("stage", "epoch", "step", "global_step")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data")), train_pairs=8, test_pairs=2, size=(56, 60))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """An uninterrupted run with an export: (logdir, export dir, completed process)."""
    root = tmp_path_factory.mktemp("trained")
    logdir, export = str(root / "logs"), str(root / "generator")
    done = run_train(["--data", dataset, "--logdir", logdir, "--export", export, *RUN])
    assert done.returncode == 0, done.stderr[-3000:]
    return logdir, export, done


def digest(stdout: str) -> str:
    return re.search(r"generator weights sha256: (\w+)", stdout).group(1)


def checkpoint_values(logdir: str) -> dict:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
    return {name: int(reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")) for name in POSITION_NAMES}


GENERATOR_CONFIG = config_from_dict({**PRESETS["tiny"], **PAPER_RECIPE})
"""Builds the generator that `RUN` trains."""


def generator_weights(checkpoint_prefix: str) -> list:
    """The generator's weights in a checkpoint (the trainer's, or LOGDIR/best_generator's)."""
    generator = build_generator(GENERATOR_CONFIG)
    tf.train.Checkpoint(generator=generator).read(checkpoint_prefix).assert_existing_objects_matched()
    return generator.get_weights()


def summaries(logdir: str) -> dict:
    found = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(value)
    return found


def test_run_finishes_the_schedule_and_logs_random_init(trained):
    logdir, _, done = trained
    assert "WARNING: perceptual loss uses random-init" in done.stdout
    assert checkpoint_values(logdir) == {"stage": 3, "epoch": 0, "step": 0, "global_step": FINAL_STEP}
    assert "schedule complete at global step 12" in done.stdout


def test_tensorboard_has_every_scalar_the_images_and_the_config(trained):
    found = summaries(trained[0])
    validation = [f"validation/{region}{name}{suffix}" for region in ("", "body/") for name in ("psnr_db", "ssim")
                  for suffix in ("", "_blurry")]
    validation += [f"validation/{region}delta_{name}" for region in ("", "body/") for name in ("psnr_db", "ssim")]
    for tag in ("critic/loss", "critic/gradient_penalty", "critic/wasserstein_estimate", "generator/adversarial",
                "generator/perceptual", "generator/total", "learning_rate/generator", "learning_rate/critic",
                *validation):
        assert tag in found, tag
        assert all(value.metadata.plugin_data.plugin_name == "scalars" for value in found[tag])
    for tag in validation:
        assert len(found[tag]) == len(VALIDATION_STEPS), tag
    for region in ("", "body/"):
        for name in ("psnr_db", "ssim"):
            restored, blurry, delta = (
                [tf.make_ndarray(v.tensor) for v in found[f"validation/{region}{tag}"]]
                for tag in (name, f"{name}_blurry", f"delta_{name}"))
            np.testing.assert_allclose(delta, np.subtract(restored, blurry), rtol=1e-4, atol=1e-5)
    for index in (0, 1):
        images = found[f"validation/blurry_restored_sharp/{index}"]
        assert len(images) == len(VALIDATION_STEPS) and images[0].metadata.plugin_data.plugin_name == "images"
        assert images[0].tensor.string_val[:2] == [b"120", b"40"]  # width 3 x 40 (blurry | restored | sharp), height 40
    assert "validation/blurry_restored_sharp" not in found
    config_text = tf.make_ndarray(found["config"][0].tensor).item().decode()
    assert "random-init" in config_text and "critic_steps | 2" in config_text
    assert len(found["generator/total"]) == FINAL_STEP and len(found["critic/loss"]) == FINAL_STEP - 2


LOAD_EXPORT = """
import sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
hu = np.load(sys.argv[2])
single = loaded.signatures["serving_default"](hu=tf.constant(hu))["hu"].numpy()
batch = loaded.deblur_hu(tf.constant(np.stack([hu, hu])[..., None]))["hu"].numpy()
np.savez(sys.argv[3], single=single, batch=batch)
assert not any(m == "model" or m.startswith("model.") for m in sys.modules), "package code was imported"
"""


def test_export_deblurs_any_size_hu_without_package_code(trained, tmp_path):
    logdir, export, _ = trained
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 2000, (333, 517)).astype(np.float32)
    np.save(tmp_path / "hu.npy", hu)
    done = subprocess.run([sys.executable, "-c", LOAD_EXPORT, export, str(tmp_path / "hu.npy"), str(tmp_path / "out.npz")],
                          check=False, capture_output=True, text=True, cwd=str(tmp_path), env=train_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert out["single"].shape == (333, 517) and out["batch"].shape == (2, 333, 517, 1)
    np.testing.assert_allclose(out["batch"][0, ..., 0], out["single"], atol=0.01)

    config = GENERATOR_CONFIG
    generator = build_generator(config)
    generator.set_weights(generator_weights(os.path.join(logdir, "best_generator", "generator")))
    expected = unit_to_hu(generator(hu_to_unit(hu[None, ..., None], config.hu_window), training=False), config.hu_window)
    np.testing.assert_allclose(out["single"], expected.numpy()[0, ..., 0], atol=0.05)
    assert out["single"].min() >= -1024.01 and out["single"].max() <= 3071.01


def test_export_is_the_best_validation_step(trained):
    logdir, export, done = trained
    deltas = [float(tf.make_ndarray(v.tensor)) for v in summaries(logdir)["validation/delta_psnr_db"]]
    best_step = VALIDATION_STEPS[int(np.argmax(deltas))]
    with open(os.path.join(export, "ctdeblur_generator.json")) as handle:
        info = json.load(handle)
    assert info["hu_window"] == [-1024.0, 3071.0]
    assert (info["global_step"], info["final_step"]) == (best_step, FINAL_STEP)
    assert info["weights"] == ("best" if best_step != FINAL_STEP else "last")
    assert info["validation_delta_psnr_db"] == pytest.approx(max(deltas), abs=1e-4)
    latest = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
    reader = tf.train.load_checkpoint(latest)
    assert int(reader.get_tensor("best_validation_step/.ATTRIBUTES/VARIABLE_VALUE")) == best_step
    best, last = (generator_weights(p) for p in (os.path.join(logdir, "best_generator", "generator"), latest))
    assert all(np.array_equal(b, w) for b, w in zip(best, last)) == (best_step == FINAL_STEP)
    assert f"exported generator of step {best_step} " in done.stdout


def test_sigkill_then_rerun_ends_exactly_like_the_uninterrupted_run(dataset, trained, tmp_path):
    logdir = str(tmp_path / "logs")
    args = [TRAIN_BIN, "--data", dataset, "--logdir", logdir, *RUN]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=train_env(), cwd=REPO)
    index = os.path.join(logdir, "checkpoints", "checkpoint")
    deadline = time.monotonic() + 180
    while not os.path.exists(index) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = checkpoint_values(logdir)["global_step"]
    assert 3 <= killed_at < FINAL_STEP

    resumed = run_train(["--data", dataset, "--logdir", logdir, *RUN])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(global step {killed_at})" in resumed.stdout
    assert f"({FINAL_STEP - killed_at} steps in this run" in resumed.stdout
    assert checkpoint_values(logdir) == checkpoint_values(trained[0])
    final = [generator_weights(tf.train.latest_checkpoint(os.path.join(d, "checkpoints"))) for d in (logdir, trained[0])]
    assert len(final[0]) == len(final[1]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(*final))


def test_rerun_with_other_settings_is_refused(dataset, trained):
    done = run_train(["--data", dataset, "--logdir", trained[0], *RUN, "--perceptual_distance", "l2"])
    assert done.returncode == 2
    assert "perceptual_distance: 'l1' in the logdir, 'l2' now" in done.stderr


def test_imagenet_weights_unavailable_exits_naming_the_file(dataset, tmp_path):
    keras_home = tmp_path / "keras"
    keras_home.mkdir()
    done = run_train(["--data", dataset, "--logdir", str(tmp_path / "logs"), "--preset", "tiny",
                      "--perceptual_weights", "imagenet"], env={"KERAS_HOME": str(keras_home), **NO_NETWORK})
    assert done.returncode == 2
    assert VGG19_WEIGHTS_FILE in done.stderr
    assert str(keras_home / "models" / VGG19_WEIGHTS_FILE) in done.stderr
    assert "--perceptual_weights /path/to/" in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "logs" / "checkpoints")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(args: list[str], tmp_path, count: int = 2, timeout: float = 150) -> list[str]:
    """Runs `count` ctdeblur-train processes as one multi-worker cluster on loopback ports; their
    outputs, after asserting that each exited with 0."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(count)]
    processes, paths = [], [tmp_path / f"worker{index}.log" for index in range(count)]
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [p.kill() for p in processes if p.poll() is None])
        for index, path in enumerate(paths):
            tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            log = stack.enter_context(open(path, "w"))
            processes.append(subprocess.Popen([TRAIN_BIN, *args, "--strategy", "multi_worker"], stdout=log,
                                              stderr=subprocess.STDOUT, text=True,
                                              env=train_env({"TF_CONFIG": tf_config}), cwd=REPO))
        for process in processes:
            process.wait(timeout=timeout)
    outputs = [path.read_text() for path in paths]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


MULTI_WORKER_RUN = ["--preset", "tiny", "--perceptual_weights", "random-init", "--critic_steps", "2",
                    "--subdatasets", "0", "1", "--max_steps_per_epoch", "2"]


def test_multi_worker_processes_end_with_identical_generators(dataset, tmp_path):
    outputs = run_workers(["--data", dataset, "--logdir", str(tmp_path / "logs"), *MULTI_WORKER_RUN], tmp_path)
    for output in outputs:
        assert "global batch 4 (2 per replica)" in output and "global step 4" in output
    assert digest(outputs[0]) == digest(outputs[1])
    assert checkpoint_values(str(tmp_path / "logs"))["global_step"] == 4
    assert not os.path.exists(tmp_path / "logs" / "checkpoints" / "workertemp_1")
    assert os.path.exists(tmp_path / "logs" / "best_generator" / "generator.index")
    assert not os.path.exists(tmp_path / "logs" / "best_generator" / "workertemp_1")


def test_multi_worker_time_budget_is_decided_by_one_clock(dataset, tmp_path):
    """Each worker reading its own clock would stop, move on to the next sub-dataset and decay the
    learning rate at different steps: the cluster would hang in a collective or end with different
    weights. With the chief's clock all workers stop at the same step with the same generator."""
    outputs = run_workers(["--data", dataset, "--logdir", str(tmp_path / "logs"), *MULTI_WORKER_RUN,
                           "--epochs", "100000", "--time_budget_minutes", "1.5"], tmp_path, timeout=300)
    stops = [re.search(r"stopped by the time budget at global step (\d+)", output) for output in outputs]
    assert all(stops), outputs[0][-3000:]
    steps = {int(stop.group(1)) for stop in stops}
    assert len(steps) == 1 and steps.pop() == checkpoint_values(str(tmp_path / "logs"))["global_step"] > 4
    moves = [re.findall(r"train-0: its share of the time budget", output) for output in outputs]
    assert moves[0] == moves[1] == ["train-0: its share of the time budget"]
    assert digest(outputs[0]) == digest(outputs[1])


def test_sigterm_saves_a_checkpoint_at_the_next_step_and_exits(dataset, tmp_path):
    logdir = str(tmp_path / "logs")
    args = [TRAIN_BIN, "--data", dataset, "--logdir", logdir, *RUN]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=train_env(),
                               cwd=REPO)
    index = os.path.join(logdir, "checkpoints", "checkpoint")
    deadline = time.monotonic() + 180
    while not os.path.exists(index) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 143, stdout[-2000:]
    stopped = int(re.search(r"stopped by signal 15 at global step (\d+)", stdout).group(1))
    assert checkpoint_values(logdir)["global_step"] == stopped < FINAL_STEP


def test_damaged_shard_is_reported_without_traceback(tmp_path):
    data = write_dataset(str(tmp_path / "data"), train_pairs=4, test_pairs=1, subdatasets=1, shards=1)
    shard = os.path.join(data, "train-0", "pairs-00000-of-00001.tfrecord")
    with open(shard, "r+b") as handle:
        handle.truncate(os.path.getsize(shard) - 100)
    done = run_train(["--data", data, "--logdir", str(tmp_path / "logs"), "--preset", "tiny",
                      "--perceptual_weights", "random-init", "--subdatasets", "0"])
    assert done.returncode == 2
    assert f"reading {data} failed" in done.stderr and "ctdeblur-shard-stats" in done.stderr
    assert "Traceback" not in done.stderr
