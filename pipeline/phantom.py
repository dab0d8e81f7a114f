"""Procedural CT phantoms written as real DICOM CT series (the embedded default source).

Three body sites, each a stack of axial slices whose anatomy changes smoothly along z:
- head: scalp, skull (cortical bone), brain with grey/white matter, ventricles, sinus air cells;
- thorax: fat and muscle wall, lungs with branching vessels, heart, aorta, spine, ribs, sternum,
  trachea;
- abdomen/pelvis: fat and muscle wall, liver, spleen, kidneys, bowel with gas, spine, psoas,
  iliac wings and bladder at the lower end.
Values are typical HU; organs get low-frequency texture, the image gets quantum-like noise, the
scanner table lies under the body and pixels outside the circular field of view carry the
PixelPaddingValue, as many scanners write them. All randomness comes from (seed, patient index).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from pipeline.hashing import derive_rng

BODY_SITES = ("head", "thorax", "abdomen")
RESCALE_INTERCEPT = -1024.0
PADDING_STORED = -2000
"""Stored value of pixels outside the reconstruction circle (PixelPaddingValue)."""


@dataclasses.dataclass(frozen=True)
class PhantomSeries:
    """Geometry and identity of one phantom series. Lengths in mm."""

    patient_index: int
    body_site: str
    size: int
    slices: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    seed: int

    @property
    def patient_id(self) -> str:
        return f"PHANTOM-{self.patient_index:03d}"

    def uid(self, *parts: object) -> str:
        return generate_uid(entropy_srcs=["ctdeblur-phantom", str(self.seed), str(self.patient_index), *map(str, parts)])


def phantom_series(patient_index: int, slices: int, size: int, seed: int) -> PhantomSeries:
    """The series of phantom patient `patient_index`; body sites cycle head, thorax, abdomen."""
    site = BODY_SITES[patient_index % len(BODY_SITES)]
    rng = derive_rng(seed, "phantom-geometry", patient_index)
    fov_mm = {"head": 240.0, "thorax": 380.0, "abdomen": 420.0}[site] * rng.uniform(0.95, 1.1)
    thickness = {"head": 2.5, "thorax": 3.0, "abdomen": 3.0}[site]
    return PhantomSeries(patient_index, site, size, slices, fov_mm / size, thickness, seed)


class _Canvas:
    """An HU image [size, size] with painting helpers working in mm around the image centre."""

    def __init__(self, size: int, spacing_mm: float, fill_hu: float):
        self.size = size
        self.spacing = spacing_mm
        self.hu = np.full((size, size), fill_hu, dtype=np.float32)

    def ellipse_weight(self, cx: float, cy: float, a: float, b: float, angle: float = 0.0, edge_mm: float = 0.6):
        """(row slice, col slice, soft mask) of an ellipse centred (cx, cy) mm, semi-axes a, b mm."""
        reach = max(a, b) + 3 * edge_mm
        centre = (self.size - 1) / 2.0
        c0 = max(0, int(math.floor((cx - reach) / self.spacing + centre)))
        c1 = min(self.size, int(math.ceil((cx + reach) / self.spacing + centre)) + 1)
        r0 = max(0, int(math.floor((cy - reach) / self.spacing + centre)))
        r1 = min(self.size, int(math.ceil((cy + reach) / self.spacing + centre)) + 1)
        if c0 >= c1 or r0 >= r1 or a <= 0 or b <= 0:
            return None
        y, x = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        x = (x - centre) * self.spacing - cx
        y = (y - centre) * self.spacing - cy
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = x * cos + y * sin, -x * sin + y * cos
        radius = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        signed_mm = (1.0 - radius) * min(a, b)
        weight = 1.0 / (1.0 + np.exp(np.clip(-signed_mm / edge_mm, -60.0, 60.0)))
        return slice(r0, r1), slice(c0, c1), weight

    def paint(self, hu: float, cx: float, cy: float, a: float, b: float, angle: float = 0.0, edge_mm: float = 0.6) -> None:
        """Replaces the inside of an ellipse by `hu` (soft edge: partial-volume blend)."""
        region = self.ellipse_weight(cx, cy, a, b, angle, edge_mm)
        if region is None:
            return
        rows, cols, weight = region
        self.hu[rows, cols] += weight * (hu - self.hu[rows, cols])

    def ring(self, hu: float, cx: float, cy: float, a: float, b: float, thickness: float, angle: float = 0.0) -> None:
        """An elliptical shell of `thickness` mm (e.g. cortical bone) around the current content."""
        inner = self.hu.copy()
        self.paint(hu, cx, cy, a, b, angle)
        region = self.ellipse_weight(cx, cy, a - thickness, b - thickness, angle)
        if region is not None:
            rows, cols, weight = region
            self.hu[rows, cols] += weight * (inner[rows, cols] - self.hu[rows, cols])


def _profile(z: float, centre: float, half_length: float) -> float:
    """Smooth 0..1 extent factor of an organ along z (1 at `centre`, 0 beyond `half_length`)."""
    t = (z - centre) / half_length
    return math.sqrt(max(0.0, 1.0 - t * t))


def _head(canvas: _Canvas, t: float, rng: np.random.Generator, shape: dict) -> None:
    k = _profile(t, 0.45, 0.75)
    a, b = shape["a"] * (0.55 + 0.45 * k), shape["b"] * (0.55 + 0.45 * k)
    canvas.paint(45.0, 0, 0, a, b)
    canvas.paint(1300.0 + shape["bone"], 0, 0, a - 4, b - 4)
    canvas.paint(30.0, 0, 0, a - 4 - shape["skull"], b - 4 - shape["skull"])
    canvas.paint(24.0, 0, 2, (a - 16) * 0.8, (b - 16) * 0.8)
    if 0.3 < t < 0.75:
        w = _profile(t, 0.52, 0.22)
        canvas.paint(6.0, -9, -4, 5 * w + 1, 18 * w + 1, 0.15)
        canvas.paint(6.0, 9, -4, 5 * w + 1, 18 * w + 1, -0.15)
    if t < 0.3:
        for cx, cy, r in shape["cells"]:
            canvas.paint(-900.0, cx, cy - b * 0.55, r * (1 - t / 0.3) + 1, r * (1 - t / 0.3) + 1)


def _trunk_wall(canvas: _Canvas, a: float, b: float, fat: float) -> None:
    canvas.paint(-95.0, 0, 0, a, b, edge_mm=0.8)
    canvas.paint(50.0, 0, 0, a - fat, b - fat)
    canvas.paint(-80.0, 0, 0, a - fat - 12, b - fat - 12)


def _spine(canvas: _Canvas, b: float, fat: float, t: float) -> None:
    y = b - fat - 40
    canvas.paint(60.0, 0, y + 18, 30, 20)
    canvas.ring(750.0, 0, y, 19, 16, 2.5)
    canvas.paint(220.0, 0, y, 16.5, 13.5)
    canvas.ring(700.0, 0, y + 25, 12, 9, 2.0)
    canvas.paint(15.0, 0, y + 25, 9.5, 6.5)


def _thorax(canvas: _Canvas, t: float, rng: np.random.Generator, shape: dict) -> None:
    a, b, fat = shape["a"], shape["b"] * (0.9 + 0.1 * t), shape["fat"]
    _trunk_wall(canvas, a, b, fat)
    lung_a, lung_b = (a - fat - 25) * 0.42, (b - fat - 20) * 0.8 * (0.75 + 0.25 * _profile(t, 0.6, 0.8))
    for side in (-1, 1):
        canvas.paint(-860.0, side * (a - fat) * 0.45, -4, lung_a, lung_b, side * 0.1, edge_mm=0.8)
    for x0, y0, dx, dy, r in shape["vessels"]:
        canvas.paint(40.0, x0 + dx * t, y0 + dy * t, r, r)
    heart = _profile(t, 0.25, 0.55)
    if heart > 0:
        canvas.paint(45.0, 18, 10, 55 * heart + 5, 45 * heart + 5, 0.5)
        canvas.paint(160.0, 22, 14, 22 * heart + 2, 18 * heart + 2, 0.5)
    canvas.paint(45.0, -14, b - fat - 65, 13, 13)
    if t > 0.55:
        canvas.paint(-950.0, 0, -b * 0.25 + 30, 8, 7)
    canvas.paint(600.0, 0, -(b - fat - 14), 13, 6)
    for angle in shape["ribs"]:
        x, y = (a - fat - 8) * math.cos(angle), (b - fat - 8) * math.sin(angle)
        canvas.ring(900.0, x, y, 7, 5, 1.5, angle + math.pi / 2)
    _spine(canvas, b, fat, t)


def _abdomen(canvas: _Canvas, t: float, rng: np.random.Generator, shape: dict) -> None:
    a, b, fat = shape["a"], shape["b"], shape["fat"]
    _trunk_wall(canvas, a * (1.0 + 0.1 * (1 - t)), b, fat)
    liver = _profile(t, 0.85, 0.45)
    if liver > 0:
        canvas.paint(62.0, -a * 0.3, -5, 85 * liver + 5, 70 * liver + 5, 0.2)
        canvas.paint(52.0, a * 0.55, 15, 30 * liver + 3, 45 * liver + 3, -0.3)
    kidney = _profile(t, 0.6, 0.25)
    if kidney > 0:
        for side in (-1, 1):
            canvas.paint(150.0, side * 62, b - fat - 70, 24 * kidney + 2, 32 * kidney + 2, side * 0.4)
            canvas.paint(30.0, side * 62, b - fat - 70, 12 * kidney + 1, 18 * kidney + 1, side * 0.4)
    for x0, y0, r, gas in shape["bowel"]:
        if _profile(t, 0.4, 0.6) > 0.2:
            canvas.paint(25.0, x0, y0 - 20 * t, r, r * 0.8)
            if gas:
                canvas.paint(-950.0, x0, y0 - 20 * t - r * 0.4, r * 0.5, r * 0.3)
    for side in (-1, 1):
        canvas.paint(55.0, side * 35, b - fat - 55, 14 + 12 * (1 - t), 20)
    if t < 0.35:
        wing = 1 - t / 0.35
        for side in (-1, 1):
            canvas.ring(800.0, side * (a - fat) * 0.55, b * 0.35, 55 * wing + 10, 22 * wing + 8, 4.0, side * 0.5)
        canvas.paint(8.0, 0, -b * 0.1, 45 * wing + 5, 35 * wing + 5)
    _spine(canvas, b, fat, t)


def _patient_shape(site: str, rng: np.random.Generator) -> dict:
    u = rng.uniform
    if site == "head":
        return {"a": u(68, 78), "b": u(86, 98), "skull": u(5, 8), "bone": u(-150, 150),
                "cells": [(u(-25, 25), u(-5, 15), u(4, 9)) for _ in range(5)]}
    shape = {"a": u(150, 185), "b": u(105, 130), "fat": u(8, 30)}
    if site == "thorax":
        vessels = []
        for side in (-1, 1):
            for _ in range(28):
                vessels.append((side * u(25, 110), u(-60, 60), u(-25, 25), u(-25, 25), u(0.8, 4.0)))
        shape.update(vessels=vessels, ribs=[math.pi * k / 8 for k in range(-3, 4) if k] +
                     [math.pi - math.pi * k / 8 for k in range(-3, 4) if k])
    else:
        shape.update(bowel=[(u(-80, 80), u(-60, 40), u(12, 25), u() < 0.5) for _ in range(7)])
    return shape


def _table(canvas: _Canvas, body_b: float) -> None:
    canvas.paint(150.0, 0, body_b + 22, canvas.size * canvas.spacing * 0.45, 5, edge_mm=0.8)
    canvas.paint(-900.0, 0, body_b + 22, canvas.size * canvas.spacing * 0.43, 3.5, edge_mm=0.8)


def phantom_hu(series: PhantomSeries, slice_index: int) -> np.ndarray:
    """HU image float32 [size, size] of one slice (before the field-of-view padding)."""
    shape = _patient_shape(series.body_site, derive_rng(series.seed, "phantom-shape", series.patient_index))
    rng = derive_rng(series.seed, "phantom-slice", series.patient_index, slice_index)
    t = slice_index / max(1, series.slices - 1)
    canvas = _Canvas(series.size, series.pixel_spacing_mm, -1000.0)
    {"head": _head, "thorax": _thorax, "abdomen": _abdomen}[series.body_site](canvas, t, rng, shape)
    _table(canvas, shape["b"] + 12)
    tissue = (canvas.hu > -200) & (canvas.hu < 200)
    texture = ndimage.gaussian_filter(rng.standard_normal(canvas.hu.shape).astype(np.float32), 3.0 / 1.0)
    canvas.hu += tissue * texture * 60.0
    canvas.hu += rng.normal(0.0, 12.0, canvas.hu.shape).astype(np.float32)
    return canvas.hu


def _outside_fov(size: int) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    centre = (size - 1) / 2.0
    return (x - centre) ** 2 + (y - centre) ** 2 > (size / 2.0) ** 2


def phantom_dataset(series: PhantomSeries, slice_index: int) -> pydicom.Dataset:
    """One slice as a CT Image Storage dataset (signed int16 stored, rescale to HU, padding)."""
    hu = phantom_hu(series, slice_index)
    stored = np.clip(np.rint(hu - RESCALE_INTERCEPT), -1024, 32767).astype(np.int16)
    stored[_outside_fov(series.size)] = PADDING_STORED

    sop_uid = series.uid("sop", slice_index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = series.uid("study")
    ds.SeriesInstanceUID = series.uid("series")
    ds.FrameOfReferenceUID = series.uid("frame")
    ds.PatientID = series.patient_id
    ds.PatientName = f"Phantom^{series.patient_index:03d}"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality = "CT"
    ds.Manufacturer = "ctdeblur procedural phantom"
    ds.BodyPartExamined = {"head": "HEAD", "thorax": "CHEST", "abdomen": "ABDOMEN"}[series.body_site]
    ds.StudyDescription = "ctdeblur phantom"
    ds.SeriesDescription = f"phantom {series.body_site}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = slice_index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = 120
    ds.SliceThickness = f"{series.slice_thickness_mm:.2f}"
    z = -slice_index * series.slice_thickness_mm
    half = (series.size - 1) / 2.0 * series.pixel_spacing_mm
    ds.ImagePositionPatient = [f"{-half:.4f}", f"{-half:.4f}", f"{z:.4f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.4f}"
    ds.PixelSpacing = [f"{series.pixel_spacing_mm:.6f}", f"{series.pixel_spacing_mm:.6f}"]
    ds.Rows = ds.Columns = series.size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelPaddingValue = PADDING_STORED
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:.0f}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40" if series.body_site != "thorax" else "-600"
    ds.WindowWidth = "400" if series.body_site != "thorax" else "1500"
    ds.PixelData = stored.astype("<i2").tobytes()
    return ds


def slice_file_name(series: PhantomSeries, slice_index: int) -> str:
    """Relative path of a slice file: <patient>/<series uid>/CT.<index>.dcm."""
    return f"{series.patient_id}/{series.uid('series')}/CT.{slice_index:05d}.dcm"
