"""`ctdeblur-deblur` end to end on DICOM made here: a phantom series with real-world quirks, pydicom's
CT_small.dcm and JPEG 2000 CT, an Enhanced (multi-frame) CT, zips, bad inputs; PNG and NIfTI; every
DICOM output kind judged by the standard's validator, dciodvfy (dicom3tools), where installed.

The models are tiny generators exported by the test: untrained (the identity, so output HU must
equal input HU) and one with random last-layer weights (a real change of the image).
"""

from __future__ import annotations

import copy
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
    generate_uid,
)

from ct_io.dicom import dataset_padding
from ct_io.hu import stored_from_hu
from ct_io.series import CTSeries, Frame, check_series
from model.deblur import main
from pipeline.phantom import phantom_dataset, phantom_series

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICES = 4
SIZE = 64


def hu_of(dataset: Dataset) -> np.ndarray:
    return dataset.pixel_array.astype(np.float64) * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)


def save(dataset: Dataset, path: str, *, preamble: bool = True) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if preamble:
        dataset.save_as(path, enforce_file_format=True)
    else:
        bare = copy.deepcopy(dataset)
        del bare.file_meta
        bare.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)


def phantom_slices(patient: int = 1, slices: int = SLICES, size: int = SIZE) -> list[Dataset]:
    series = phantom_series(patient, slices, size, 0)
    return [phantom_dataset(series, index) for index in range(slices)]


def deblur(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_dir(directory: str) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in sorted(glob.glob(os.path.join(directory, "*.dcm")))]


def sitk_series(directory: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(directory))
    return reader.Execute()


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def entries(directory: str) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"identity": untrained tiny generator export, "perturbed": random last-layer weights and a bias
    (a correction of several HU even where the image is flat)}."""
    from model.config import preset_config
    from model.export import export_generator
    from model.networks import build_generator

    root = tmp_path_factory.mktemp("models")
    config = preset_config("tiny")
    generator = build_generator(config)
    export_generator(generator, config, str(root / "identity"), {"model": "tiny-identity"})
    tail = generator.get_layer("tail_conv")
    kernel, bias = tail.get_weights()
    tail.set_weights([np.random.default_rng(0).normal(0, 0.05, kernel.shape).astype(np.float32),
                      np.full_like(bias, 0.03)])
    export_generator(generator, config, str(root / "perturbed"), {"model": "tiny-perturbed"})
    return {"identity": str(root / "identity"), "perturbed": str(root / "perturbed")}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """(quirky input dir, clean copy of the CT slices, input datasets by SOP UID).

    Quirks: file names in reverse order of position, scrambled InstanceNumbers, one file without
    preamble or file meta (implicit VR), a README, a DICOMDIR and a localizer in the same series.
    """
    root = tmp_path_factory.mktemp("phantom")
    quirky, clean = str(root / "quirky"), str(root / "clean")
    slices = phantom_slices()
    for index, dataset in enumerate(slices):
        dataset.InstanceNumber = [3, 1, 4, 2][index]
        save(dataset, os.path.join(clean, f"{index}.dcm"))
        save(dataset, os.path.join(quirky, "sub" if index % 2 else "", f"IM{SLICES - index:03d}"), preamble=index != 2)
    with open(os.path.join(quirky, "README"), "w") as handle:
        handle.write("exported by a PACS\n")
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    directory.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.FileSetID = "PHANTOM"
    directory.SOPClassUID = MediaStorageDirectoryStorage
    save(directory, os.path.join(quirky, "DICOMDIR"))
    localizer = copy.deepcopy(slices[0])
    localizer.SOPInstanceUID = localizer.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    save(localizer, os.path.join(quirky, "scout.dcm"))
    return quirky, clean, {str(d.SOPInstanceUID): d for d in slices}


@pytest.fixture(scope="module")
def phantom_output(phantom, models, tmp_path_factory):
    """The identity model's DICOM output of the quirky phantom directory: (output dir, stdout)."""
    output = str(tmp_path_factory.mktemp("out") / "deblurred")
    code = main([phantom[0], output, "--model", models["identity"], "--no-progress", "--batch_size", "3"])
    assert code == 0
    return output


def test_phantom_series_becomes_a_new_series_with_the_same_geometry(phantom, phantom_output, models):
    _, clean, inputs = phantom
    assert entries(phantom_output) == [f"CT.{i:05d}.dcm" for i in range(1, SLICES + 1)]
    assert_same_geometry(sitk_series(clean), sitk_series(phantom_output))
    outputs = read_dir(phantom_output)
    positions = [float(d.ImagePositionPatient[2]) for d in outputs]
    assert positions == sorted(positions)
    source = next(iter(inputs.values()))
    series_uids = {str(d.SeriesInstanceUID) for d in outputs}
    sop_uids = [str(d.SOPInstanceUID) for d in outputs]
    assert len(series_uids) == 1 and series_uids != {str(source.SeriesInstanceUID)}
    assert len(set(sop_uids)) == SLICES and not set(sop_uids) & set(inputs)
    for uid in [*series_uids, *sop_uids]:
        assert UID(uid).is_valid
    for dataset in outputs:
        original = inputs[str(dataset.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "InstanceNumber",
                        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                        "RescaleSlope", "RescaleIntercept", "PixelPaddingValue", "WindowCenter", "Rows", "Columns"):
            assert dataset[keyword].value == original[keyword].value, keyword
        assert list(dataset.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert dataset.SeriesDescription == "phantom thorax deblurred"
        assert dataset.SeriesNumber == 1001
        assert "tiny-identity" in dataset.DerivationDescription and models["identity"] in dataset.DerivationDescription
        assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
        assert (dataset.PixelRepresentation, dataset.BitsAllocated, dataset.BitsStored) == (1, 16, 16)
        assert dataset.pixel_array.dtype == np.int16
        np.testing.assert_array_equal(dataset.pixel_array, original.pixel_array)


def test_summary_counts_what_was_skipped(phantom, models, tmp_path, capsys):
    code, out, _ = deblur([phantom[0], str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 0
    assert f"{SLICES} slices deblurred" in out and str(tmp_path / "out") in out
    assert "1 not DICOM" in out and "1 DICOMDIR" in out and "1 localizer (scout) image" in out


def test_ct_small_single_file(models, tmp_path, capsys):
    path = get_testdata_file("CT_small.dcm")
    code, _, err = deblur([path, str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 0, err
    assert "lossily" not in err
    [written] = glob.glob(str(tmp_path / "out" / "*.dcm"))
    assert_same_geometry(sitk.ReadImage(path), sitk.ReadImage(written))
    original, derived = pydicom.dcmread(path), pydicom.dcmread(written)
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
        assert UID(derived[keyword].value).is_valid and derived[keyword].value != original[keyword].value
    assert derived.StudyInstanceUID == original.StudyInstanceUID
    assert derived.SeriesNumber == original.SeriesNumber + 1000
    assert derived[0x0043, 0x1010].value == original[0x0043, 0x1010].value
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(written)),
                                  sitk.GetArrayFromImage(sitk.ReadImage(path)))


def run_subprocess(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "model.deblur", *args, "--no-progress"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120, check=False)


def test_non_ct_input_exits_nonzero_and_writes_nothing(models, tmp_path):
    inputs = tmp_path / "mr"
    inputs.mkdir()
    save(pydicom.dcmread(get_testdata_file("MR_small.dcm")), str(inputs / "mr.dcm"))
    (inputs / "notes.txt").write_text("not DICOM")
    before = entries(str(tmp_path))
    done = run_subprocess([str(inputs), str(tmp_path / "out" / "deblurred"), "--model", models["identity"]])
    assert done.returncode == 2
    assert "holds no CT image to deblur" in done.stderr and "non-CT image (Modality MR)" in done.stderr
    assert "Traceback" not in done.stderr
    assert entries(str(tmp_path)) == before


def test_empty_and_unreadable_inputs_write_nothing(phantom, models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = deblur([str(tmp_path / "empty"), str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 2 and "holds no CT image to deblur (no files" in err
    truncated = tmp_path / "truncated"
    shutil.copytree(phantom[1], truncated)
    victim = sorted(truncated.iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-3000])
    code, _, err = deblur([str(truncated), str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 2 and victim.name in err
    assert sorted(os.listdir(tmp_path)) == ["empty", "truncated"]


def test_a_directory_that_is_no_export_is_refused(phantom, tmp_path, capsys):
    code, _, err = deblur([phantom[1], str(tmp_path / "out"), "--model", str(tmp_path)], capsys)
    assert code == 2 and "is not an exported ctdeblur generator" in err
    assert entries(str(tmp_path)) == []


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def enhanced_ct(frames_hu: list[np.ndarray], sop_class: str = EnhancedCTImageStorage) -> Dataset:
    """A multi-frame CT that dciodvfy passes without error or warning: frames of `frames_hu`
    (unsigned 12-bit, shared rescale -1024), planes at z 4, 0, 2 mm (out of order), pixel spacing
    0.7 x 0.8 mm, every module and functional group of the Enhanced CT IOD (of the Legacy
    Converted Enhanced CT IOD for that `sop_class`: no CT acquisition macros, per-frame
    unassigned converted attributes)."""
    legacy = sop_class == LegacyConvertedEnhancedCTImageStorage
    rows, columns = frames_hu[0].shape
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate, dataset.PatientSex = "Phantom^Enhanced", "ENH-1", "", "O"
    dataset.StudyInstanceUID, dataset.StudyDate, dataset.StudyTime = generate_uid(), "20240101", "120000"
    dataset.ReferringPhysicianName, dataset.StudyID, dataset.AccessionNumber = "", "1", ""
    dataset.Modality, dataset.SeriesInstanceUID, dataset.SeriesNumber = "CT", generate_uid(), 2
    dataset.SeriesDescription, dataset.PatientPosition = "enhanced", "HFS"
    dataset.FrameOfReferenceUID, dataset.PositionReferenceIndicator = generate_uid(), ""
    dataset.Manufacturer, dataset.ManufacturerModelName = "ctdeblur", "phantom"
    dataset.DeviceSerialNumber, dataset.SoftwareVersions = "1", "0.1"
    dataset.InstanceNumber, dataset.ContentDate, dataset.ContentTime = 1, "20240101", "120000"
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    dataset.PixelPresentation, dataset.VolumetricProperties = "MONOCHROME", "VOLUME"
    dataset.VolumeBasedCalculationTechnique = "NONE"
    dataset.AcquisitionNumber, dataset.AcquisitionDateTime, dataset.AcquisitionDuration = 1, "20240101120000", 1.0
    dataset.ContentQualification, dataset.BurnedInAnnotation, dataset.RecognizableVisualFeatures = "PRODUCT", "NO", "NO"
    dataset.LossyImageCompression, dataset.PresentationLUTShape = "00", "IDENTITY"
    dataset.AcquisitionContextSequence = []
    dimensions = generate_uid()
    dataset.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=dimensions)]
    dataset.DimensionIndexSequence = [_item(DimensionOrganizationUID=dimensions, DimensionIndexPointer=0x00200032,
                                            FunctionalGroupPointer=0x00209113)]
    acquisition = {} if legacy else dict(
        CTAcquisitionTypeSequence=[_item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")],
        CTAcquisitionDetailsSequence=[_item(DataCollectionDiameter=500.0, GantryDetectorTilt=0.0, TableHeight=150.0,
                                            RotationDirection="CW", RevolutionTime=0.5, SingleCollimationWidth=0.6,
                                            TotalCollimationWidth=38.4)],
        CTTableDynamicsSequence=[_item(TableSpeed=50.0, TableFeedPerRotation=38.4, SpiralPitchFactor=1.0)],
        CTGeometrySequence=[_item(DistanceSourceToDetector=1000.0, DistanceSourceToDataCollectionCenter=600.0)],
        CTReconstructionSequence=[_item(ReconstructionAlgorithm="FILTER_BACK_PROJ", ConvolutionKernel="B30f",
                                        ConvolutionKernelGroup="SOFT_TISSUE", ReconstructionDiameter=35.0,
                                        ReconstructionPixelSpacing=[0.7, 0.8], ReconstructionAngle=360.0,
                                        ImageFilter="NONE")],
        CTExposureSequence=[_item(ExposureTimeInms=500.0, XRayTubeCurrentInmA=200.0, ExposureInmAs=100.0,
                                  ExposureModulationType="NONE")],
        CTXRayDetailsSequence=[_item(KVP=120.0, FocalSpots=[1.2], FilterType="FLAT", FilterMaterial=["ALUMINUM"])],
    )
    dataset.SharedFunctionalGroupsSequence = [_item(
        PixelMeasuresSequence=[_item(PixelSpacing=[0.7, 0.8], SliceThickness=2.0)],
        PlaneOrientationSequence=[_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])],
        PixelValueTransformationSequence=[_item(RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU")],
        CTImageFrameTypeSequence=[_item(FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                                        PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
                                        VolumeBasedCalculationTechnique="NONE")],
        FrameAnatomySequence=[_item(AnatomicRegionSequence=[_item(CodeValue="51185008", CodingSchemeDesignator="SCT",
                                                                  CodeMeaning="Chest")], FrameLaterality="U")],
        IrradiationEventIdentificationSequence=[_item(IrradiationEventUID=generate_uid())],
        **acquisition,
    )]
    per_frame = []
    for index, z in enumerate((4.0, 0.0, 2.0)):
        frame = _item(PlanePositionSequence=[_item(ImagePositionPatient=[-10.0, -12.0, z])],
                      FrameContentSequence=[_item(FrameAcquisitionDateTime="20240101120000",
                                                  FrameReferenceDateTime="20240101120000", FrameAcquisitionDuration=100.0,
                                                  DimensionIndexValues=[index + 1], StackID="1",
                                                  InStackPositionNumber=index + 1)])
        if legacy:
            frame.UnassignedPerFrameConvertedAttributesSequence = [_item(InstanceNumber=index + 1)]
        else:
            frame.CTPositionSequence = [_item(TablePosition=-z, ReconstructionTargetCenterPatient=[0.0, 0.0, z],
                                              DataCollectionCenterPatient=[0.0, 0.0, z])]
        per_frame.append(frame)
    dataset.PerFrameFunctionalGroupsSequence = per_frame
    dataset.NumberOfFrames, dataset.Rows, dataset.Columns = len(frames_hu), rows, columns
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = (np.stack(frames_hu) + 1024).astype("<u2").tobytes()
    return dataset


def enhanced_frames_hu() -> list[np.ndarray]:
    """Three 42x50 phantom frames in HU, within the 12-bit range of `enhanced_ct`."""
    return [np.clip(d.pixel_array[:42, :50].astype(np.int32) - 1024, -1024, 3071) for d in phantom_slices(slices=3)]


def test_enhanced_multiframe_ct_stays_multiframe(models, tmp_path, capsys):
    """Three 42x50 frames (unsigned 12-bit, shared rescale, per-frame positions out of order)."""
    frames_hu = enhanced_frames_hu()
    dataset = enhanced_ct(frames_hu)
    path = str(tmp_path / "enhanced.dcm")
    save(dataset, path)

    code, out, err = deblur([path, str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 0, err
    assert "multi-frame" in out
    assert entries(str(tmp_path / "out")) == ["CT.00001.dcm"]
    derived = pydicom.dcmread(str(tmp_path / "out" / "CT.00001.dcm"))
    assert derived.SOPClassUID == EnhancedCTImageStorage and derived.NumberOfFrames == 3
    assert derived.SOPInstanceUID != dataset.SOPInstanceUID and derived.SeriesInstanceUID != dataset.SeriesInstanceUID
    assert derived.FrameOfReferenceUID == dataset.FrameOfReferenceUID
    assert list(derived.ImageType) == ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    frame_type = derived.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0].FrameType
    assert list(frame_type) == ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    assert [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in derived.PerFrameFunctionalGroupsSequence] == [4.0, 0.0, 2.0]
    assert (derived.PixelRepresentation, derived.BitsStored) == (1, 16)
    assert derived.pixel_array.dtype == np.int16 and derived.pixel_array.shape == (3, 42, 50)
    np.testing.assert_array_equal(derived.pixel_array.astype(np.int32) - 1024, np.stack(frames_hu))


DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path: str) -> set[str]:
    """The Error lines dciodvfy (dicom3tools) prints for one file."""
    result = subprocess.run([DCIODVFY, path], capture_output=True, text=True, timeout=120, check=False)
    return {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy, the DICOM standard's validator, is not installed "
                                             "(Debian/Ubuntu: apt-get install dicom3tools)")
@pytest.mark.parametrize("kind", ["single-frame phantom series", "CT_small.dcm", "JPEG 2000 CT", "Enhanced CT",
                                  "Legacy Converted Enhanced CT"])
def test_dicom_output_adds_no_dciodvfy_error(kind, phantom, phantom_output, models, tmp_path, capsys):
    """Every DICOM output kind, judged by dciodvfy: no error its input did not already have (the
    Enhanced CT inputs have none, so their outputs must have none)."""
    if kind == "single-frame phantom series":
        inputs = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in glob.glob(os.path.join(phantom[1], "*.dcm"))}
        output = phantom_output
    else:
        if kind in ("CT_small.dcm", "JPEG 2000 CT"):
            path = get_testdata_file("CT_small.dcm" if kind == "CT_small.dcm" else "693_J2KI.dcm")
        else:
            sop_class = EnhancedCTImageStorage if kind == "Enhanced CT" else LegacyConvertedEnhancedCTImageStorage
            path = str(tmp_path / "input.dcm")
            save(enhanced_ct(enhanced_frames_hu(), sop_class), path)
            assert dciodvfy_errors(path) == set()
        inputs = {str(pydicom.dcmread(path).SOPInstanceUID): path}
        output = str(tmp_path / "out")
        code, _, err = deblur([path, output, "--model", models["identity"]], capsys)
        assert code == 0, err
    written = glob.glob(os.path.join(output, "*.dcm"))
    assert len(written) == len(inputs)
    for path in written:
        source = inputs[str(pydicom.dcmread(path).SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert dciodvfy_errors(path) - dciodvfy_errors(source) == set(), path


def test_zip_gives_the_same_series_as_the_directory(phantom, phantom_output, models, tmp_path, capsys):
    archive = str(tmp_path / "series.zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in glob.glob(os.path.join(phantom[0], "**", "*"), recursive=True):
            if os.path.isfile(path):
                handle.write(path, os.path.relpath(path, phantom[0]))
        handle.writestr("../../outside.txt", "a member whose name points outside")
    code, _, err = deblur([archive, str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 0, err
    assert not os.path.exists(tmp_path.parent / "outside.txt")
    from_zip, from_dir = read_dir(str(tmp_path / "out")), read_dir(phantom_output)
    assert [d.SOPInstanceUID for d in from_zip] == [d.SOPInstanceUID for d in from_dir]
    for a, b in zip(from_zip, from_dir):
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)


def test_zip_bomb_is_refused(models, tmp_path, capsys):
    archive = str(tmp_path / "bomb.zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("zeros.dcm", bytes(8 << 20))
    code, _, err = deblur([archive, str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 2 and "zip bomb" in err
    assert entries(str(tmp_path)) == ["bomb.zip"]


def test_mixed_sizes_and_several_series(models, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    big, small = phantom_slices(size=SIZE), phantom_slices(slices=2, size=48)
    for index, dataset in enumerate(small):
        dataset.SeriesInstanceUID = big[0].SeriesInstanceUID
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        save(dataset, str(mixed / f"small{index}.dcm"))
    for index, dataset in enumerate(big):
        save(dataset, str(mixed / f"big{index}.dcm"))
    code, _, err = deblur([str(mixed), str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 2 and "mixes image sizes: 64x64 (4 images" in err and "48x48 (2 images" in err
    assert not os.path.exists(tmp_path / "out")

    turned = tmp_path / "turned"
    for index, dataset in enumerate(big):
        if index == 3:
            dataset.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        save(dataset, str(turned / f"{index}.dcm"))
    code, _, err = deblur([str(turned), str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 2 and "mixes image orientations" in err and "3.dcm" in err
    assert not os.path.exists(tmp_path / "out")

    several = tmp_path / "several"
    others = phantom_slices(patient=2, slices=2)
    for index, dataset in enumerate(big + others):
        save(dataset, str(several / f"{index}.dcm"))
    code, _, err = deblur([str(several), str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 2 and "--series_uid" in err
    assert str(big[0].SeriesInstanceUID) in err and str(others[0].SeriesInstanceUID) in err
    code, _, err = deblur([str(several), str(tmp_path / "out"), "--model", models["identity"],
                           "--series_uid", str(others[0].SeriesInstanceUID)], capsys)
    assert code == 0, err
    assert len(read_dir(str(tmp_path / "out"))) == 2


def test_jpeg2000_input_becomes_uncompressed_with_the_same_hu(models, tmp_path, capsys):
    path = get_testdata_file("693_J2KI.dcm")
    code, _, err = deblur([path, str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 0, err
    assert "compressed lossily at 339:1" in err and err.count("warning") == 1
    original, derived = pydicom.dcmread(path), read_dir(str(tmp_path / "out"))[0]
    assert derived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (derived.Rows, derived.Columns) == (512, 512)
    np.testing.assert_allclose(hu_of(derived), hu_of(original), atol=0.5)


def test_trained_like_model_changes_the_body_and_keeps_padding(phantom, models, tmp_path, capsys):
    code, _, err = deblur([phantom[1], str(tmp_path / "out"), "--model", models["perturbed"]], capsys)
    assert code == 0, err
    inputs = {str(d.SOPInstanceUID): d for d in read_dir(phantom[1])}
    for derived in read_dir(str(tmp_path / "out")):
        original = inputs[str(derived.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        padding = original.pixel_array == original.PixelPaddingValue
        np.testing.assert_array_equal(derived.pixel_array[padding], original.PixelPaddingValue)
        hu_in, hu_out = hu_of(original), hu_of(derived)
        outside = (hu_in < -1024) | (hu_in > 3071)
        np.testing.assert_array_equal(hu_out[outside], hu_in[outside])
        inside = ~outside & ~padding
        assert np.mean(hu_out[inside] != hu_in[inside]) > 0.5
        assert -1024 <= hu_out[inside].min() and hu_out[inside].max() <= 3071


def test_precision_bf16_writes_the_series_within_a_few_hu_of_float32(phantom, models, tmp_path, capsys):
    outputs = {}
    for precision in ("float32", "bf16"):
        code, _, err = deblur([phantom[1], str(tmp_path / precision), "--model", models["perturbed"],
                               "--precision", precision], capsys)
        assert code == 0, err
        outputs[precision] = {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID): hu_of(d)
                              for d in read_dir(str(tmp_path / precision))}
    assert outputs["bf16"].keys() == outputs["float32"].keys()
    difference = np.concatenate([np.abs(outputs["bf16"][uid] - hu).ravel() for uid, hu in outputs["float32"].items()])
    assert np.percentile(difference, 99) <= 5.0 and difference.max() > 0


def test_threads_that_cannot_apply_are_said_to_stderr(phantom, models, tmp_path, capsys):
    code, _, err = deblur([phantom[1], str(tmp_path / "out"), "--model", models["identity"], "--threads", "1"], capsys)
    assert code == 0, err  # this test process already runs TensorFlow: its pools are fixed
    assert "note: --threads 1 not applied: TensorFlow already runs in this process" in err


def test_nifti_and_png(phantom, models, tmp_path, capsys):
    _, clean, inputs = phantom
    code, out, err = deblur([clean, str(tmp_path / "nii"), "--model", models["identity"], "--format", "nifti"], capsys)
    assert code == 0, err
    volume = sitk.ReadImage(str(tmp_path / "nii" / "deblurred.nii.gz"))
    reference = sitk_series(clean)
    assert_same_geometry(reference, volume)
    np.testing.assert_allclose(sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(reference), atol=1e-3)

    code, out, err = deblur([clean, str(tmp_path / "png"), "--model", models["identity"], "--format", "png",
                             "--png_window_hu", "-160", "240"], capsys)
    assert code == 0, err
    assert "window [-160, 240] HU" in out
    from PIL import Image

    lowest = min(inputs.values(), key=lambda d: float(d.ImagePositionPatient[2]))
    image = Image.open(tmp_path / "png" / "CT.00001.png")
    assert image.mode == "L" and image.size == (SIZE, SIZE)
    expected = np.rint(np.clip((hu_of(lowest) + 160) / 400, 0, 1) * 255)
    grey_error = np.abs(np.asarray(image, np.float64) - expected)     # the identity model's float32 HU
    assert grey_error.max() <= 1 and np.mean(grey_error == 0) > 0.999   # may round a .5 the other way


def test_gantry_tilt_is_kept_in_dicom_and_refused_for_nifti(models, tmp_path, capsys):
    tilted = tmp_path / "tilted"
    cos, sin = np.cos(np.radians(20)), np.sin(np.radians(20))
    for index, dataset in enumerate(phantom_slices(slices=3)):
        dataset.ImageOrientationPatient = [1, 0, 0, 0, float(cos), float(-sin)]
        dataset.ImagePositionPatient = [-100.0, -100.0, 3.0 * index]
        save(dataset, str(tilted / f"{index}.dcm"))
    code, _, err = deblur([str(tilted), str(tmp_path / "nii"), "--model", models["identity"], "--format", "nifti"], capsys)
    assert code == 2 and "gantry tilt" in err and "--format dicom" in err
    code, out, err = deblur([str(tilted), str(tmp_path / "dcm"), "--model", models["identity"]], capsys)
    assert code == 0, err
    assert "gantry tilt 20.0 deg kept" in out
    positions = [list(map(float, d.ImagePositionPatient)) for d in read_dir(str(tmp_path / "dcm"))]
    assert positions == [[-100.0, -100.0, 0.0], [-100.0, -100.0, 3.0], [-100.0, -100.0, 6.0]]


def test_existing_output_needs_overwrite_and_only_replaces_own_outputs(phantom, models, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    args = [phantom[1], str(output), "--model", models["identity"]]
    code, _, err = deblur(args, capsys)
    assert code == 2 and "--overwrite" in err
    code, _, err = deblur([*args, "--overwrite"], capsys)
    assert code == 2 and "keep.txt" in err
    assert entries(str(output)) == ["keep.txt"]
    (output / "keep.txt").unlink()
    (output / "CT.00001.dcm").write_text("an earlier output")
    code, _, err = deblur([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert entries(str(output)) == [f"CT.{i:05d}.dcm" for i in range(1, SLICES + 1)]
    assert entries(str(tmp_path)) == ["out"]


def test_interrupt_while_writing_leaves_nothing(phantom, models, tmp_path, capsys, monkeypatch):
    import model.deblur

    calls = []

    def interrupted(dataset, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        dataset.save_as(path, enforce_file_format=True)

    monkeypatch.setattr(model.deblur, "write_dataset", interrupted)
    code, _, err = deblur([phantom[1], str(tmp_path / "new" / "out"), "--model", models["identity"]], capsys)
    assert code == 130 and "nothing was written" in err
    assert len(calls) == 2 and entries(str(tmp_path)) == []


def test_missing_rescale_is_an_error_unless_identity_is_asked(models, tmp_path, capsys):
    dataset = phantom_slices(slices=1)[0]
    del dataset.RescaleSlope, dataset.RescaleIntercept
    save(dataset, str(tmp_path / "in" / "a.dcm"))
    code, _, err = deblur([str(tmp_path / "in"), str(tmp_path / "out"), "--model", models["identity"]], capsys)
    assert code == 2 and "--missing_rescale identity" in err
    code, _, err = deblur([str(tmp_path / "in"), str(tmp_path / "out"), "--model", models["identity"],
                           "--missing_rescale", "identity"], capsys)
    assert code == 0, err
    derived = read_dir(str(tmp_path / "out"))[0]
    assert (float(derived.RescaleSlope), float(derived.RescaleIntercept)) == (1.0, 0.0)


def test_stored_values_round_and_clip_to_int16_with_any_rescale():
    hu = np.array([-1024.0, 0.3, 40.26, 1e6, -1e6])
    stored, clipped = stored_from_hu(hu, 0.5, -1024.0)
    np.testing.assert_array_equal(stored, [0, 2049, 2129, 32767, -32768])
    np.testing.assert_array_equal(clipped, [False, False, False, True, True])


def test_padding_value_written_unsigned_matches_signed_pixels():
    dataset = Dataset()
    dataset.PixelRepresentation, dataset.BitsAllocated = 1, 16
    dataset.PixelPaddingValue = 63536
    stored = np.array([[-2000, 0], [100, -2000]], np.int16)
    np.testing.assert_array_equal(dataset_padding(dataset, stored), [[True, False], [False, True]])
    dataset.PixelPaddingRangeLimit = 0
    np.testing.assert_array_equal(dataset_padding(dataset, stored), [[True, True], [False, True]])


def test_slices_sort_along_the_normal_not_by_instance_number():
    def frame(z: float, instance: int) -> Frame:
        return Frame(f"{instance}", f"{instance}", f"1.2.{instance}", None, 4, 4, (0.0, 0.0, z),
                     (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), (1.0, 1.0), 1.0, instance, (1.0, -1024.0))

    series: CTSeries = check_series("1.2", (frame(0.0, 1), frame(-2.0, 2), frame(2.0, 3)))
    assert [f.position_mm[2] for f in series.frames] == [2.0, 0.0, -2.0]
    assert series.slice_spacing_mm == (2.0, 2.0) and series.regular_grid_problem() is None


def test_settings_from_yaml_then_flags(tmp_path):
    from model.deblur import DeblurError, build_parser, config_from_args

    settings = tmp_path / "deblur.yaml"
    settings.write_text("batch_size: 4\npng_window_hu: [-160, 240]\nformat: png\n")
    args = build_parser().parse_args(["in", "out", "--model", "m", "--config", str(settings), "--format", "nifti"])
    config = config_from_args(args)
    assert (config.batch_size, config.png_window_hu, config.format) == (4, (-160.0, 240.0), "nifti")
    settings.write_text("batch: 4\n")
    with pytest.raises(DeblurError, match="unknown setting 'batch'"):
        config_from_args(build_parser().parse_args(["in", "out", "--model", "m", "--config", str(settings)]))
    with pytest.raises(DeblurError, match="batch_size must be >= 1"):
        config_from_args(build_parser().parse_args(["in", "out", "--model", "m", "--batch_size", "0"]))
