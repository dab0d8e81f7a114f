"""Projection-blur output is byte-stable: sha256 of arrays and of whole shards, pinned.

The golden digests were made before the projector and FBP were sped up (issue 13) and must not
change with speed work. The inputs are a real CT slice (pydicom's `CT_small.dcm`, 128 x 128) and
DICOM series written here from it, not procedural phantoms. The shard run turns the noise model
off (`--noise_ct_hu 0 --no-noise_match_archive`) so its digests depend on the projection model,
the planning and the record layout, not on the noise model's draws. Digests are of float32
bytes: they hold for the pinned numpy/scipy on this machine kind (x86-64 with AVX2); another
SIMD level may round transcendental functions differently.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import os

import numpy as np
import pydicom
import pytest

from pipeline.make_dataset import run
from pipeline.projection import ProjectionConfig, RigidMotion, projection_pair
from tests.conftest import dicom_bytes, golden_machine

pytestmark = golden_machine

SCANS = {"90 views": ProjectionConfig(views=90), "120 views": ProjectionConfig(views=120),
         "75 views": ProjectionConfig(views=75), "90 views, 180 deg": ProjectionConfig(views=90, scan_deg=180.0),
         "64 views, hann": ProjectionConfig(views=64, fbp_filter="hann")}
PAIR_DIGESTS = {
    "breathing, 112 x 128, anisotropic": "a70917057de0c8214292b1a75b67f5829c9626c40f44a594202dfd0b01dab5b5",
    "jerk, 112 x 128, anisotropic": "424ad049876992d08c9ae4f821172aad00c9525b81f2142a6f2ee0c8c3a02b06",
    "none, 112 x 128, anisotropic": "6b6b69bea1a112f0a3fb2c6fa847f758499f60a9deac349dca3870eb897deb0e",
    "shift only, 112 x 128, anisotropic": "4e14d15c5593e08d6ada38ec6f833a457fc80c675fd76d20a7875d54989275d0",
    "smooth, 112 x 128, anisotropic": "79353aff07d51500f19ee79c0c955ff7d151e1bc9e19649c4395cbc913f0efe5",
    "breathing, 90 views": "7461e90de6e3684cf658de34ab12d48c7ae403f54a5f3aa32c79244f2a2480cc",
    "breathing, 120 views": "dbb663723c2db455e553011323c4d5bcfd6ab075233215c4f99a2248226a3703",
    "breathing, 75 views": "4a3731229b2e5a83d53452dcc3715b1e5b9abce4d9188511030ec4a6a74614f1",
    "breathing, 90 views, 180 deg": "150c7ba15482d0f8081e28b3107ce89ddce13b4f2f41a96d30fe0435e7715420",
    "breathing, 64 views, hann": "b5a4dabd33baf49b3059681a30a60f8a4b46d839a788addef013ff980f415e98",
    "jerk, 90 views": "ae353664943e346fa99c8075486ee5017bae62d5be02759476ee265673903cd1",
    "jerk, 120 views": "c599fe766cb63f9bdd41df2bfe7a3f63a0c007dce1ebcdca5fc0ac44ff330596",
    "jerk, 75 views": "7ab0c97ee3d90356c7b6186aa03f6900120644928c559a4e2170379c426593af",
    "jerk, 90 views, 180 deg": "0cb836dbddb671ffd267aedf169f8a67a371925152d0e16231106195eeafd5c6",
    "jerk, 64 views, hann": "a19ff2dad1907a23110ed184bbfdd11daf008393cb427e6ac74d678a77f26eff",
    "none, 90 views": "ed6cc06b49d077215e4aadb3dcd1f2f235ec084b0b845b5b5b5da8f85fe64123",
    "none, 120 views": "0b4ed086b45b126765359b32dc77c66246f848a78ee3a358f8a8ac89ae1a2b64",
    "none, 75 views": "fccf135d76375f040de198b4ce79fe2eba0794fb6978ea2666695194f04f8e89",
    "none, 90 views, 180 deg": "51227796213fe6a404c716085f9f5a2f627828a2019a4697e708170cb1f8f870",
    "none, 64 views, hann": "1d872f4c9f2f30e09cb00c885a01c754f5048dbbc94f2b665c8b04780b494f1f",
    "shift only, 90 views": "fd9fd445d2fa141dc4f10375586c28b00674be0032594e6198dadbe6622d349d",
    "shift only, 120 views": "674b2e52bbb707ece5085d3dd11b7642f771af6eda8753a45d8ccc96c38d1ef3",
    "shift only, 75 views": "d52ab8cab559fd013b6f49dbaa80c0772be4efa21e256d5b5e39dade44fdc228",
    "shift only, 90 views, 180 deg": "4816f2a19446fc9ce3270a0ca9ebcb8ea93e4fe4e979862678e0baf82b848e39",
    "shift only, 64 views, hann": "d88f605776ba8bf0fd5bbc8c687a112d08813deba7e1fccb9f1bdc05678a9e19",
    "smooth, 90 views": "fe852bf399d1b258b95f13018630dcf1abaa7240f1d19aa3ac3faf0a4b8d637c",
    "smooth, 120 views": "2eab657f46cbc6becd4a8c48491171cc60d6c5599be832439c9b773cd045aa12",
    "smooth, 75 views": "cb8f3a459a08dd201a99ede0e3406c050ea02cdc799ff73d3dff505d26bfaef4",
    "smooth, 90 views, 180 deg": "02c41f651e2e794f9dbc4782bf190654e9fda0ee138691614922685e7614b192",
    "smooth, 64 views, hann": "a82606bcaf889e1afeb9a6825eb336da63042b243078f808cfd7ae16799dad4d",
}
SHARD_DIGESTS = {
    "test/pairs-00000-of-00001.tfrecord": "ec0347772e1aeda628f4b055e2e56a7b94399f7af66f97a4c8b3cde97d197e09",
    "train-0/pairs-00000-of-00002.tfrecord": "47e0642c3acfbd5940a1bb9eab219e20fe4ac4d9c70e6d209c4a29f4e4237e0f",
    "train-0/pairs-00001-of-00002.tfrecord": "2b60c0ed9906fc09a24fbae47dadadaa3cc589cef3cb7bfb46f722893bc576d0",
}
"""Re-pinned 2026-12-03: the noise record's `input_measured_hu` is now measured on the input slice
(4.2 HU for CT_small) instead of on the static reconstruction (10.4 HU); every image array of
these shards was checked equal to the earlier run's, only that recorded value changed."""

MOTIONS = {
    "smooth": RigidMotion("smooth", dx_mm=4.0, dy_mm=-2.5, rotation_deg=1.5, dx2_mm=1.0, dy2_mm=0.5, rotation2_deg=-0.5),
    "breathing": RigidMotion("breathing", dx_mm=0.8, dy_mm=6.0, breathing_cycles=2.3, breathing_phase=0.2,
                             breathing_power=2),
    "jerk": RigidMotion("jerk", dx_mm=-3.0, dy_mm=5.0, rotation_deg=2.0, jerk_time=0.4, jerk_duration=0.03),
    "shift only": RigidMotion("jerk", dx_mm=2.0, dy_mm=-1.0, jerk_time=0.5),
    "none": RigidMotion("none"),
}


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _ct_small(ct_small_path: str) -> tuple[np.ndarray, tuple[float, float]]:
    dataset = pydicom.dcmread(ct_small_path)
    hu = dataset.pixel_array.astype(np.float32) * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    return hu, (float(dataset.PixelSpacing[0]), float(dataset.PixelSpacing[1]))


@pytest.mark.parametrize("kind", sorted(MOTIONS))
def test_projection_pair_bytes_are_pinned(ct_small_path, kind):
    hu, spacing = _ct_small(ct_small_path)
    for scan, config in SCANS.items():
        sharp, blurry = projection_pair(hu, spacing, MOTIONS[kind], config)
        assert sharp.dtype == blurry.dtype == np.float32
        assert _digest(sharp, blurry) == PAIR_DIGESTS[f"{kind}, {scan}"], f"{kind}, {scan}"
    sharp, blurry = projection_pair(hu[8:120], (1.25 * spacing[0], spacing[1]), MOTIONS[kind], SCANS["90 views"])
    assert _digest(sharp, blurry) == PAIR_DIGESTS[f"{kind}, 112 x 128, anisotropic"], kind


def write_series(ct_small_path: str, root: str, patients: int = 4, slices: int = 3) -> None:
    """`patients` one-series studies of `slices` slices each, every slice a shifted and flipped
    copy of CT_small's pixels with its own ids and position."""
    source = pydicom.dcmread(ct_small_path)
    pixels = source.pixel_array
    for patient in range(patients):
        series_uid = f"1.2.826.0.1.3680043.8.498.13{patient}"
        for index in range(slices):
            dataset = copy.deepcopy(source)
            image = np.roll(pixels, (7 * patient - 5 * index, 3 * index), axis=(0, 1))
            if (patient + index) % 2:
                image = image[:, ::-1]
            dataset.PixelData = np.ascontiguousarray(image, dtype=pixels.dtype).tobytes()
            dataset.PatientID = f"golden-{patient}"
            dataset.StudyInstanceUID = f"{series_uid}.1"
            dataset.SeriesInstanceUID = series_uid
            dataset.SOPInstanceUID = f"{series_uid}.2.{index}"
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            dataset.InstanceNumber = index + 1
            dataset.ImagePositionPatient = [0.0, 0.0, 5.0 * index]
            path = os.path.join(root, f"patient{patient}", f"{index}.dcm")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(dicom_bytes(dataset))


def test_projection_shards_are_pinned(ct_small_path, tmp_path):
    write_series(ct_small_path, str(tmp_path / "in"))
    output = str(tmp_path / "ds")
    run(["--preset", "tiny", "--source", "dicom-dir", "--input", str(tmp_path / "in"), "--output", output,
         "--blur_model", "projection", "--target_pairs", "9", "--test_pairs", "3", "--subdatasets", "1",
         "--pairs_per_shard", "3", "--noise_ct_hu", "0", "--no-noise_match_archive", "--collection", "golden"])
    shards = sorted(glob.glob(os.path.join(output, "*", "pairs-*")))
    digests = {os.path.relpath(path, output): hashlib.sha256(open(path, "rb").read()).hexdigest() for path in shards}
    assert digests == SHARD_DIGESTS
