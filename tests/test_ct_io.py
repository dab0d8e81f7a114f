"""The shared CT I/O layer: HU, padding, frames, series order, zips; and that the pipeline and
`ctdeblur-deblur` read the same HU from the same file."""

import hashlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from pydicom.dataset import Dataset

from ct_io.dicom import dataset_frames, parse_dicom, skip_reason
from ct_io.errors import CTInputError
from ct_io.hu import AIR_HU, hu_from_stored, padding_mask, stored_from_hu, with_air
from ct_io.series import check_series, position_along_normal, slice_order_key
from ct_io.zips import ZipLimits, ZipReader, extract_zip, safe_member_name
from model.deblur import with_air as deblur_network_hu
from model.dicom_series import InputFiles, checked_series, iter_decoded, scan_input
from pipeline.slice_scan import read_file_hu
from tests.conftest import dicom_bytes
from tests.ct_files import ct_slice, ellipse_hu, enhanced_ct, unsigned_padding_slice


def test_hu_of_stored_values_and_the_air_rule():
    stored = np.array([[-2000, 0], [24, 1100]], np.int16)
    hu = hu_from_stored(stored, 1.0, -1024.0)
    assert hu.dtype == np.float32 and hu.tolist() == [[-3024.0, -1024.0], [-1000.0, 76.0]]
    padding = padding_mask(stored, 24, None, True, 16)
    assert with_air(hu, padding).tolist() == [[AIR_HU, -1024.0], [AIR_HU, 76.0]]
    assert padding_mask(stored, 63536, None, True, 16).tolist() == [[True, False], [False, False]]
    assert padding_mask(stored, 63536, 0, True, 16).tolist() == [[True, True], [False, False]]
    assert padding_mask(stored, None, None, True, 16) is None
    assert stored_from_hu(np.array([-3024.0, 76.2, 1e6]), 1.0, -1024.0)[0].tolist() == [-2000, 1100, 32767]


def test_position_along_the_normal_and_slice_order():
    assert position_along_normal((5.0, 7.0, -12.5), (1, 0, 0, 0, 1, 0)) == -12.5
    assert position_along_normal((5.0, 7.0, -12.5), (1, 0, 0, 0, -1, 0)) == 12.5
    assert position_along_normal((5.0, 7.0, -12.5), None) == -12.5
    keys = [slice_order_key(None, 1, "a"), slice_order_key(2.0, None, "b"), slice_order_key(2.0, 3, "c"),
            slice_order_key(-1.0, 9, "d", 2)]
    assert [k[2] for k in sorted(keys)] == ["d", "c", "b", "a"]


def test_enhanced_ct_frames_take_geometry_and_rescale_from_functional_groups():
    dataset = enhanced_ct(1, 3, 32, slope=2.0, intercept=-1000.0)
    frames = dataset_frames(parse_dicom(dicom_bytes(dataset), "e.dcm"), "e.dcm", "e.dcm")
    assert [f.frame_index for f in frames] == [0, 1, 2]
    assert [f.position_mm[2] for f in frames] == [0.0, -2.5, -5.0]
    assert all(f.rescale == (2.0, -1000.0) and f.pixel_spacing_mm == (0.8, 0.8) for f in frames)
    series = check_series("1.2", frames)
    assert [f.frame_index for f in series.frames] == [2, 1, 0] and series.slice_spacing_mm == (2.5, 2.5)
    assert series.regular_grid_problem() is None


def test_skip_reasons():
    image = ct_slice(1, 0)
    assert skip_reason(image) is None
    image.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert skip_reason(image) == ("localizer_image", "localizer (scout) image")
    image.Modality = "MR"
    assert skip_reason(image) == ("non_ct_modality", "non-CT image (Modality MR)")
    dose = Dataset()
    dose.Modality, dose.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.88.67"
    assert skip_reason(dose)[0] == "not_a_ct_image"
    with pytest.raises(CTInputError) as caught:
        parse_dicom(b"", "empty.dcm")
    assert caught.value.reason == "empty_file" and "empty.dcm" in str(caught.value)


def deblur_network_input(path: str) -> np.ndarray:
    """The HU `ctdeblur-deblur` feeds its generator for INPUT `path`, in file / frame order."""
    with InputFiles(path) as files:
        found, report = scan_input(files)
        series = checked_series(found[0])
        decoded = {}
        for obj in iter_decoded(files, series):
            for frame, hu, padding in zip(obj.frames, obj.hu, obj.padding):
                decoded[frame.frame_index or 0] = deblur_network_hu(hu, padding)
    return np.stack([decoded[index] for index in sorted(decoded)])


@pytest.mark.parametrize("kind", ["single-frame", "padded", "unsigned padding", "unsigned pixels", "multi-frame",
                                  "multi-frame rescaled"])
def test_pipeline_and_deblur_read_identical_hu(kind, tmp_path):
    dataset = {
        "single-frame": lambda: ct_slice(1, 2, padding=None, slope=0.5, intercept=-1000.0),
        "padded": lambda: ct_slice(1, 2),
        "unsigned padding": lambda: unsigned_padding_slice(2, 1),
        "unsigned pixels": lambda: ct_slice(3, 0, unsigned=True, padding=0),
        "multi-frame": lambda: enhanced_ct(1, 3),
        "multi-frame rescaled": lambda: enhanced_ct(2, 2, slope=0.25, intercept=-1024.0),
    }[kind]()
    path = tmp_path / "ct.dcm"
    path.write_bytes(dicom_bytes(dataset))
    pipeline_hu = read_file_hu(path.read_bytes(), str(path))
    deblur_hu = deblur_network_input(str(path))
    assert pipeline_hu.dtype == deblur_hu.dtype == np.float32
    np.testing.assert_array_equal(pipeline_hu, deblur_hu)
    frames = len(pipeline_hu)
    expected = np.stack([ellipse_hu(int(str(dataset.PatientID)[-3:]), i, 64) for i in range(frames)]) \
        if "multi" in kind else None
    if expected is not None:
        np.testing.assert_allclose(pipeline_hu, expected, atol=0.25)
    if "padd" in kind or kind == "unsigned pixels":
        assert (pipeline_hu == AIR_HU).sum() > 100 and pipeline_hu.min() == AIR_HU


def test_zip_extraction_refuses_escapes_duplicates_and_bombs(tmp_path):
    assert safe_member_name("a/./b\\c.dcm") == "a/b/c.dcm"
    for name in ("../x.dcm", "a/../../x.dcm", "/etc/x", "C:/x.dcm", "..\\x.dcm"):
        with pytest.raises(CTInputError) as caught:
            safe_member_name(name)
        assert caught.value.reason == "zip_slip"
    duplicate = tmp_path / "dup.zip"
    with zipfile.ZipFile(duplicate, "w") as archive:
        archive.writestr("a.dcm", b"1")
        archive.writestr("./a.dcm", b"2")
    with pytest.raises(CTInputError, match="twice"):
        extract_zip(str(duplicate), str(tmp_path / "out1"), ZipLimits())
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as archive:
        for index in range(5):
            archive.writestr(f"{index}.dcm", b"x")
    with pytest.raises(CTInputError) as caught:
        extract_zip(str(many), str(tmp_path / "out2"), ZipLimits(max_files=4))
    assert caught.value.reason == "zip_bomb"
    files = extract_zip(str(many), str(tmp_path / "out3"), ZipLimits(max_files=5))
    assert [f.name for f in files] == [f"{i}.dcm" for i in range(5)] and files[0].md5 == hashlib.md5(b"x").hexdigest()
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CTInputError) as caught:
        extract_zip(str(tmp_path / "junk.zip"), str(tmp_path / "out4"), ZipLimits())
    assert caught.value.reason == "bad_zip"


def test_zip_reader_reads_members_in_memory_and_refuses_bombs(tmp_path):
    path = tmp_path / "series.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/1.dcm", b"one")
        archive.writestr("big.bin", np.random.default_rng(0).integers(0, 4, 4 << 20, dtype=np.uint8).tobytes())
    with ZipReader(str(path)) as reader:
        assert reader.members == ["a/1.dcm", "big.bin"] and reader.read("a/1.dcm") == b"one"
    with pytest.raises(CTInputError) as caught:
        ZipReader(str(path), ZipLimits(max_ratio=2.0))
    assert caught.value.reason == "zip_bomb" and "zip bomb" in caught.value.detail
    with pytest.raises(CTInputError) as caught:
        ZipReader(str(path), ZipLimits(member_bytes=1 << 20))
    assert caught.value.reason == "zip_bomb"


def test_pure_ct_modules_import_without_pydicom():
    code = ("import sys; sys.modules['pydicom'] = None; import ct_io.hu, ct_io.series; "
            "print(ct_io.hu.AIR_HU)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "-1000.0"


def test_pipeline_turns_enhanced_ct_into_pairs_with_the_hu_deblur_reads(tmp_path):
    import tfrecords_schema as schema
    from pipeline.make_dataset import run

    inputs = tmp_path / "in"
    inputs.mkdir()
    for patient in range(3):
        (inputs / f"enhanced{patient}.dcm").write_bytes(dicom_bytes(enhanced_ct(patient, 4)))
    output = tmp_path / "ds"
    manifest = run(["--preset", "tiny", "--source", "dicom-dir", "--input", str(inputs), "--target_pairs", "6",
                    "--test_pairs", "2", "--subdatasets", "1", "--kernels_per_slice", "1", "--output", str(output)])
    assert manifest["inputs"] == {"files": 3, "slices": 12, "series": 3, "readable_slices": 12}
    assert manifest["written"]["pairs"] == 6 and manifest["accounting"]["balanced"]
    pairs = [schema.decode_pair(record) for path in sorted(output.glob("*/pairs-*"))
             for record in schema.read_records(open(path, "rb"))]
    assert len(pairs) == 6 and len({p.record_key for p in pairs}) == 6
    deblur_hu = {str(path): deblur_network_input(str(path)) for path in sorted(inputs.iterdir())}
    by_sop = {str(enhanced_ct(patient, 4).SOPInstanceUID): str(inputs / f"enhanced{patient}.dcm") for patient in range(3)}
    for pair in pairs:
        frame = round(-pair.slice_position_mm / 2.5)
        np.testing.assert_array_equal(pair.sharp_hu, deblur_hu[by_sop[pair.sop_instance_uid]][frame])
