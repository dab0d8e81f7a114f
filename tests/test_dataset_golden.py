"""Datasets stay byte-identical across refactors: shard bytes of a fixed run, pinned by sha256.

The inputs are not procedural phantoms (their renderer may change): pydicom's real CT samples
and a dicom-dir of slices written by `tests.ct_files`. The hashes were made before the shared
CT I/O layer replaced the pipeline's own DICOM reader, when every pydicom sample was read (the run
passes --max_lossy_ratio 0 to keep it so; refusing lossy slices is a choice of inputs, tested in
test_slice_scan).
"""

import glob
import hashlib
import os

from pipeline.make_dataset import run
from tests.conftest import dicom_bytes, golden_machine
from tests.ct_files import ct_slice

GOLDEN_SHARDS_SHA256 = {
    "test/pairs-00000-of-00002.tfrecord": "1e42566ac3e948e6437ab529dfb1b18c4e828d0b5d71ace260b8c324080bb2fb",
    "test/pairs-00001-of-00002.tfrecord": "a8b524c05a5d3364550ceaf0d49da0677ddf67bc5b3192bb65db99ddde05ba16",
    "train-0/pairs-00000-of-00001.tfrecord": "a486a058fb80d75ebf3089e5c038096a7164b2b49311fb1ad9d00232f09632da",
    "train-1/pairs-00000-of-00001.tfrecord": "33a6edf4fd53ce56f836115b78ed08a68446be7cd8fc5608030586fdefd01ca8",
    "validation/pairs-00000-of-00001.tfrecord": "4241ba15d62cce34b0ea32bea20e560923cc521599374a77eb62d78fde2ffd92",
}
"""Made at d217b1e (before issue 12) by this test's run."""


def write_dicom_dir(root: str) -> None:
    for patient in range(3):
        for index in range(4):
            path = os.path.join(root, f"p{patient}", f"{index}.dcm")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            dataset = ct_slice(patient, index, slope=1.0 if patient else 0.5, intercept=-1024.0 if patient else -1000.0)
            with open(path, "wb") as handle:
                handle.write(dicom_bytes(dataset))


def shard_hashes(root: str) -> dict[str, str]:
    return {os.path.relpath(path, root): hashlib.sha256(open(path, "rb").read()).hexdigest()
            for path in sorted(glob.glob(os.path.join(root, "*", "pairs-*")))}


@golden_machine
def test_dataset_bytes_are_those_of_the_golden_run(tmp_path):
    write_dicom_dir(str(tmp_path / "in"))
    output = str(tmp_path / "ds")
    manifest = run(["--preset", "tiny", "--source", "dicom-dir", "--input", str(tmp_path / "in"), "--collection", "GOLD",
         "--source", "pydicom-samples", "--target_pairs", "12", "--test_pairs", "4", "--validation_pairs", "2",
         "--subdatasets", "2", "--kernels_per_slice", "2", "--pairs_per_shard", "3", "--seed", "7",
         "--max_lossy_ratio", "0", "--output", output])
    assert manifest["inputs"]["files"] == 12 + 3
    assert shard_hashes(output) == GOLDEN_SHARDS_SHA256
