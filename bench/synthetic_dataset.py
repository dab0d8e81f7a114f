"""A synthetic ctdeblur dataset of CT-sized pairs for the trainer benchmarks.

Ellipse phantoms in HU (air, soft tissue, lung, bone) blurred along a random line, written with
the schema's own encoder and TFRecord framing in the pipeline's layout. Only the sizes matter
for throughput; the content is plausible so that compression ratios are realistic.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
from scipy import ndimage

from tfrecords_schema import (
    MOTION_PARAM_NAMES,
    SCHEMA_VERSION,
    Pair,
    encode_pair,
    frame_record,
    shard_name,
    split_dir,
)


def phantom_pair(rng: np.random.Generator, size: int, split: str, subdataset: int, index: int) -> Pair:
    """One `size` x `size` phantom slice and its motion-blurred copy (int16 HU)."""
    yy, xx = np.mgrid[:size, :size] / size
    sharp = np.full((size, size), -1000.0)
    sharp[((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.45) ** 2 < 1] = 40.0
    for _ in range(12):
        cy, cx, ry, rx = rng.uniform(0.25, 0.75, 2).tolist() + rng.uniform(0.02, 0.12, 2).tolist()
        sharp[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.choice([-850.0, -100.0, 60.0, 700.0, 1500.0])
    sharp += rng.normal(0.0, 12.0, sharp.shape)
    length = int(rng.integers(5, 31))
    psf = np.zeros((length, length), np.float32)
    psf[length // 2, :] = 1.0 / length
    psf = ndimage.rotate(psf, rng.uniform(0, 180), reshape=False, order=1)
    psf = np.clip(psf, 0, None) / max(psf.sum(), 1e-6)
    blurry = ndimage.convolve(sharp, psf, mode="reflect")
    return Pair(
        sharp_hu=np.clip(sharp, -1024, 3071).astype(np.int16), blurry_hu=np.clip(blurry, -1024, 3071).astype(np.int16),
        psf=psf.astype(np.float32), record_key=f"{split}-{subdataset}-{index}", pixel_spacing_mm=(0.7, 0.7),
        slice_thickness_mm=1.0, slice_position_mm=float(index), collection="bench-phantom", patient_key=f"b{index}",
        patient_id="", series_uid=f"2.25.{subdataset}", sop_instance_uid=f"2.25.{subdataset}.{index}",
        slice_index=index, kernel_index=0, source_kind="synthetic", split=split, subdataset=subdataset,
        motion={name: 1.0 for name in MOTION_PARAM_NAMES},
    )


def write_dataset(root: str, *, pairs: int = 128, size: int = 512, shards: int = 4, compression: str = "none",
                  subdatasets: int = 1, test_pairs: int = 4, seed: int = 0) -> str:
    """Writes `pairs` pairs into each of train-0..train-(subdatasets-1) and `test_pairs` into test."""
    rng = np.random.default_rng(seed)
    records = [encode_pair(phantom_pair(rng, size, "train", 0, i)) for i in range(pairs)]
    test_records = [encode_pair(phantom_pair(rng, size, "test", -1, i)) for i in range(test_pairs)]
    splits = {}
    for split, subdataset, items in [("test", -1, test_records)] + [("train", k, records) for k in range(subdatasets)]:
        name = split_dir(split, subdataset)
        os.makedirs(os.path.join(root, name), exist_ok=True)
        files = []
        for s in range(shards):
            path = os.path.join(name, shard_name(s, shards, compression))
            data = b"".join(frame_record(r) for r in items[s::shards])
            opener = gzip.open if compression == "gzip" else open
            with opener(os.path.join(root, path), "wb") as handle:
                handle.write(data)
            files.append({"file": path, "pairs": len(items[s::shards])})
        splits[name] = {"pairs": len(items), "shards": files}
    with open(os.path.join(root, "manifest.json"), "w") as handle:
        json.dump({"schema_version": SCHEMA_VERSION, "compression": compression, "config": {}, "splits": splits}, handle)
    return root
