import math

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000, JPEG2000Lossless

from ct_io.dicom import lossy_compression_ratio
from ct_io.errors import CTInputError
from ct_io.hu import AIR_HU
from pipeline.slice_scan import read_file_hu, scan_file
from pipeline.phantom import PADDING_STORED, phantom_dataset, phantom_series
from tests.conftest import dicom_bytes
from tests.ct_files import ellipse_hu, enhanced_ct, unsigned_padding_slice


def test_ct_small_hu_matches_stored_pixels_and_rescale(ct_small_path):
    dataset = pydicom.dcmread(ct_small_path)
    stored = dataset.pixel_array.astype(np.float64)
    expected = stored * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    hu = read_file_hu(open(ct_small_path, "rb").read(), ct_small_path)[0]
    assert hu.shape == (128, 128) and hu.dtype == np.float32
    valid = expected >= -1024
    np.testing.assert_allclose(hu[valid], expected[valid])
    assert float(dataset.RescaleIntercept) == -1024 and hu.max() == pytest.approx(2191 - 1024)
    header, = scan_file(open(ct_small_path, "rb").read(), ct_small_path, -500.0)
    assert header.rows == 128 and header.pixel_spacing_mm == pytest.approx((0.661468, 0.661468))
    assert header.series_uid == str(dataset.SeriesInstanceUID)
    assert 0.1 < header.body_fraction < 1.0


def test_padding_and_out_of_field_values_become_air():
    series = phantom_series(1, 4, 64, seed=0)
    dataset = phantom_dataset(series, 2)
    stored = np.frombuffer(dataset.PixelData, dtype="<i2").reshape(64, 64)
    hu = read_file_hu(dicom_bytes(dataset), "x.dcm")[0]
    assert (stored == PADDING_STORED).any()
    assert np.all(hu[stored == PADDING_STORED] == AIR_HU)
    assert hu.min() >= -1024
    inside = stored != PADDING_STORED
    np.testing.assert_allclose(hu[inside & (stored - 1024 >= -1024)], (stored - 1024)[inside & (stored - 1024 >= -1024)])


def test_phantom_series_is_real_dicom_that_simpleitk_reads(tmp_path):
    series = phantom_series(1, 5, 128, seed=3)
    for index in range(series.slices):
        (tmp_path / f"{index}.dcm").write_bytes(dicom_bytes(phantom_dataset(series, index)))
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(tmp_path))
    reader.SetFileNames(names)
    volume = reader.Execute()
    assert volume.GetSize() == (128, 128, 5)
    assert volume.GetSpacing() == pytest.approx((series.pixel_spacing_mm, series.pixel_spacing_mm, 280.0 / 4), rel=1e-4)  # a thorax: 280 mm over 5 slices
    hu = sitk.GetArrayFromImage(volume)
    assert hu.shape == (5, 128, 128) and hu.max() > 500 and hu[:, 64, 64].min() >= -1024
    first = pydicom.dcmread(tmp_path / "0.dcm")
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.PixelRepresentation == 1
    assert pydicom.uid.UID(first.SeriesInstanceUID).is_valid
    assert first.SeriesInstanceUID == pydicom.dcmread(tmp_path / "4.dcm").SeriesInstanceUID
    assert first.SOPInstanceUID != pydicom.dcmread(tmp_path / "4.dcm").SOPInstanceUID


def test_phantom_tissues_have_realistic_hu():
    thorax = phantom_series(1, 20, 256, seed=0)
    dataset = phantom_dataset(thorax, 10)
    hu = read_file_hu(dicom_bytes(dataset), "t.dcm")[0]
    assert np.percentile(hu, 1) <= -950            # outside air
    assert np.mean((hu > -920) & (hu < -750)) > 0.03  # lungs
    assert np.mean(hu > 500) > 0.002                # bone
    soft = hu[(hu > -150) & (hu < 150)]
    assert soft.size > 0.1 * hu.size
    head = read_file_hu(dicom_bytes(phantom_dataset(phantom_series(0, 20, 256, seed=0), 10)), "h.dcm")[0]
    brain = head[(head > 0) & (head < 80)]
    assert 20 < np.median(brain) < 50
    assert np.mean(head > 900) > 0.01  # skull


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda ds: setattr(ds, "Modality", "MR"), "non_ct_modality"),
        (lambda ds: delattr(ds, "PixelData"), "missing_pixel_data"),
        (lambda ds: delattr(ds, "RescaleIntercept"), "missing_rescale"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]), "non_axial_orientation"),
        (lambda ds: setattr(ds, "NumberOfFrames", 3), "unplaceable_frames"),
        (lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), "localizer_image"),
        (lambda ds: delattr(ds, "SeriesInstanceUID"), "missing_series_uid"),
        (lambda ds: delattr(ds, "PixelSpacing"), "missing_pixel_spacing"),
    ],
)
def test_bad_slices_are_rejected_with_reason(mutate, reason):
    dataset = phantom_dataset(phantom_series(2, 3, 64, seed=0), 1)
    mutate(dataset)
    with pytest.raises(CTInputError) as error:
        scan_file(dicom_bytes(dataset), "bad.dcm", -500.0)
    assert error.value.reason == reason
    assert "bad.dcm" in error.value.detail


def test_empty_text_and_truncated_files_are_rejected():
    good = dicom_bytes(phantom_dataset(phantom_series(2, 3, 64, seed=0), 1))
    cases = {b"": "empty_file", b"patient,notes\n1,hello\n" * 5: "not_dicom", good[: len(good) // 2]: "truncated_file"}
    for data, reason in cases.items():
        with pytest.raises(CTInputError) as error:
            scan_file(data, "f", -500.0)
        assert error.value.reason == reason


def test_enhanced_ct_gives_one_header_per_frame_in_file_order():
    dataset = enhanced_ct(4, 3, 48)
    headers = scan_file(dicom_bytes(dataset), "enhanced.dcm", -500.0)
    assert [h.frame_index for h in headers] == [0, 1, 2]
    assert [h.position_mm for h in headers] == [0.0, -2.5, -5.0]
    assert {h.sop_instance_uid for h in headers} == {str(dataset.SOPInstanceUID)}
    assert all(h.rows == 48 and h.pixel_spacing_mm == (0.8, 0.8) and h.slice_thickness_mm == 2.5 for h in headers)
    hu = read_file_hu(dicom_bytes(dataset), "enhanced.dcm")
    np.testing.assert_array_equal(hu, np.stack([ellipse_hu(4, i, 48) for i in range(3)]))


def test_padding_written_unsigned_becomes_air():
    dataset = unsigned_padding_slice(5, 0)
    hu = read_file_hu(dicom_bytes(dataset), "u.dcm")[0]
    stored = np.frombuffer(dataset.PixelData, "<i2").reshape(64, 64)
    assert (stored == -1).sum() > 100
    assert np.all(hu[stored == -1] == AIR_HU) and np.all(hu[stored != -1] == stored[stored != -1])


def test_a_slice_compressed_lossily_beyond_the_limit_is_no_sharp_reference():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("693_J2KI.dcm")
    data = open(path, "rb").read()
    assert lossy_compression_ratio(pydicom.dcmread(path)) == pytest.approx(338.687, abs=1e-3)
    with pytest.raises(CTInputError) as error:
        scan_file(data, path, -500.0, max_lossy_ratio=15.0)
    assert error.value.reason == "lossy_compressed" and "339:1" in error.value.detail and "15" in error.value.detail
    assert len(scan_file(data, path, -500.0, max_lossy_ratio=0.0)) == 1
    assert len(scan_file(data, path, -500.0, max_lossy_ratio=400.0)) == 1
    lossless = get_testdata_file("J2K_pixelrep_mismatch.dcm")
    assert lossy_compression_ratio(pydicom.dcmread(lossless)) is None
    assert len(scan_file(open(lossless, "rb").read(), lossless, -500.0, max_lossy_ratio=1.0)) == 1


def test_lossy_ratio_from_the_tags_or_measured_from_the_compressed_data():
    dataset = phantom_dataset(phantom_series(2, 3, 64, seed=0), 1)
    assert lossy_compression_ratio(dataset) is None
    dataset.LossyImageCompression = "01"
    assert math.isnan(lossy_compression_ratio(dataset))
    assert len(scan_file(dicom_bytes(dataset), "marked.dcm", -500.0, max_lossy_ratio=15.0)) == 1
    dataset.LossyImageCompressionRatio = [10, 2.5]
    assert lossy_compression_ratio(dataset) == pytest.approx(25.0)
    with pytest.raises(CTInputError, match="25:1"):
        scan_file(dicom_bytes(dataset), "twice.dcm", -500.0, max_lossy_ratio=15.0)
    untagged = phantom_dataset(phantom_series(2, 3, 64, seed=0), 1)
    untagged.compress(JPEG2000, j2k_cr=[40])
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in untagged:
            delattr(untagged, keyword)
    measured = lossy_compression_ratio(untagged)
    assert 20 < measured < 60
    with pytest.raises(CTInputError) as error:
        scan_file(dicom_bytes(untagged), "j2k.dcm", -500.0, max_lossy_ratio=15.0)
    assert error.value.reason == "lossy_compressed"
    lossless = phantom_dataset(phantom_series(2, 3, 64, seed=0), 1)
    lossless.compress(JPEG2000Lossless)
    assert lossy_compression_ratio(lossless) is None
