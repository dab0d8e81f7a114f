"""Helpers shared by the model and trainer tests: tiny synthetic datasets on disk (no tests here).

Datasets are written with the schema's own `encode_pair` + `write_records`, in the layout the
pipeline writes (manifest.json, test/, train-K/), so the trainer is tested independently of the
pipeline code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys

import numpy as np
from scipy import ndimage

from tfrecords_schema import (
    MOTION_PARAM_NAMES,
    SCHEMA_VERSION,
    Pair,
    encode_pair,
    shard_name,
    split_dir,
    write_records,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_BIN = os.path.join(os.path.dirname(sys.executable), "ctdeblur-train")


def phantom_pair(rng: np.random.Generator, size: tuple[int, int], split: str, subdataset: int, index: int) -> Pair:
    """An ellipse phantom (air, soft tissue, bone HU) and its horizontally motion-blurred copy."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    sharp = np.full(size, -1000.0)
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    sharp[body] = 40.0
    for _ in range(4):
        cy, cx, r = rng.uniform(0.3 * h, 0.7 * h), rng.uniform(0.3 * w, 0.7 * w), rng.uniform(0.03, 0.1) * min(h, w)
        sharp[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.choice([-800.0, 300.0, 1200.0])
    length = int(rng.integers(3, 8))
    psf = np.zeros((length, length), np.float32)
    psf[length // 2, :] = 1.0 / length
    blurry = ndimage.convolve(sharp, psf, mode="reflect")
    return Pair(
        sharp_hu=sharp.astype(np.int16), blurry_hu=np.round(blurry).astype(np.int16), psf=psf,
        record_key=f"{split}-{subdataset}-{index}", pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=1.0,
        slice_position_mm=float(index), collection="test-phantom", patient_key=f"p{index % 3}", patient_id="",
        series_uid=f"1.2.3.{subdataset}", sop_instance_uid=f"1.2.3.{subdataset}.{index}", slice_index=index,
        kernel_index=0, source_kind="synthetic", split=split, subdataset=subdataset,
        motion={name: 1.0 for name in MOTION_PARAM_NAMES},
    )


PAPER_RECIPE = {
    "generator_norm": "instance", "residual_output": "tanh", "generator_dropout": 0.5, "critic_norm": "batch",
    "pixel_weight": 0.0, "adversarial_weight": 1.0, "adversarial_gradient_share": 0.0, "perceptual_weight": 100.0,
    "perceptual_distance": "l1", "perceptual_gradient_share": 0.0, "perceptual_window_hu": (-1024.0, 3071.0),
    "gp_weight": 10.0, "generator_learning_rate": 1e-4, "critic_learning_rate": 1e-4, "adam_beta_1": 0.5,
    "adam_beta_2": 0.999, "learning_rate_schedule": "constant", "learning_rate_warmup_steps": 0, "crop_candidates": 1,
    "random_orientation": False,
    "residual_scale": 1.0, "critic_steps": 5,
}
"""The reference paper's recipe (WGAN-GP, 100 x l1 VGG19 perceptual, Adam 1e-4 / 0.5 / 0.999), spelt
out so that tests of it do not depend on what `--model ours` currently sets."""


def recipe_flags(settings: dict) -> list[str]:
    """`settings` as ctdeblur-train flags."""
    flags = []
    for name, value in settings.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags += [f"--{name}", *(str(v) for v in value)] if isinstance(value, tuple) else [f"--{name}", str(value)]
    return flags


PAPER_FLAGS = recipe_flags(PAPER_RECIPE)


def write_dataset(root: str, *, train_pairs: int = 8, test_pairs: int = 2, size=(40, 44), subdatasets: int = 7,
                  shards: int = 2, seed: int = 0, manifest: bool = True) -> str:
    """Writes a dataset directory; returns `root`."""
    rng = np.random.default_rng(seed)
    splits = {"test": ("test", -1, test_pairs)}
    splits.update({f"train-{k}": ("train", k, train_pairs) for k in range(subdatasets)})
    info = {}
    for name, (split, subdataset, count) in splits.items():
        os.makedirs(os.path.join(root, split_dir(split, subdataset)), exist_ok=True)
        records = [encode_pair(phantom_pair(rng, size, split, subdataset, i)) for i in range(count)]
        shard_info = []
        for s in range(shards):
            path = os.path.join(split_dir(split, subdataset), shard_name(s, shards))
            part = records[s::shards]
            with open(os.path.join(root, path), "wb") as handle:
                write_records(handle, part)
            shard_info.append({"file": path, "pairs": len(part)})
        info[name] = {"pairs": count, "patients": 3, "series": 1, "shards": shard_info}
    if manifest:
        with open(os.path.join(root, "manifest.json"), "w") as handle:
            json.dump({"schema_version": SCHEMA_VERSION, "compression": "none", "config": {}, "splits": info}, handle)
    return root


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """`ctdeblur-train ARGV` in this process: (exit code, stdout, stderr); SIGTERM handling restored after."""
    from model.train import main

    out, err = io.StringIO(), io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        signal.signal(signal.SIGTERM, handler)
    return code, out.getvalue(), err.getvalue()


def run_train(args: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs `ctdeblur-train ARGS` in a subprocess; returns the completed process (text output)."""
    return subprocess.run([TRAIN_BIN, *args], check=False, capture_output=True, text=True, timeout=timeout,
                          env=train_env(env), cwd=REPO)


NO_NETWORK = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
"""Proxy settings that make every HTTP(S) download fail at once (the port refuses connections).
Not for multi-worker runs: gRPC would route the workers' own connections through it too."""


def train_env(extra: dict | None = None) -> dict:
    """Environment of trainer subprocesses: quiet TensorFlow logs, plus `extra`."""
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env
