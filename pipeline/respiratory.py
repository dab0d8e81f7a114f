"""Respiratory motion during a CT scan: a breathing trace, a deformation of the series volume, and the
fan-beam or cone-beam acquisition of one slice of the breathing patient, reconstructed by FBP.

Pure functions. The random part is `sample_breathing(rng, config, duration_s)`; everything after it
(`breathing_trace`, `breathing_anatomy`, `deformed_slice`, `deform_volume`, `view_times_s`,
`respiratory_pair`) is deterministic given its arguments. docs/respiratory-motion.md explains the
model, the units, the sources of the default ranges and the approximations.

Model:
- Breathing is one dimensionless signal b(t): cycle k (start s_k, period T_k) is
  c_k sin^(2n)(pi (t - s_k) / T_k), 0 at end-exhale and c_k at end-inhale (the Lujan et al. 1999
  curve, which Seppenwoolde et al. 2002 fitted to lung tumour traces, with its exhale at the cycle
  boundaries so irregular cycles join smoothly), plus a linear baseline drift. Periods and
  amplitude factors c_k vary from cycle to cycle (log-normal). The diaphragm moves
  b(t) * si_amplitude_mm towards the feet, the anterior chest / abdominal wall
  b(t) * ap_amplitude_mm forwards.
- The volume [Z, H, W] (HU, voxel spacing (slice, row, column) in mm; rows run anterior to
  posterior, i.e. the patient lies supine with the front at row 0) deforms by a smooth displacement
  field: superior-inferior motion weighted along z by distance from the diaphragm (1 there, falling
  to `APEX_WEIGHT` at the lung apex and to 0 in the pelvis) and in-plane by the body mask; an
  anterior-posterior stretch, 0 at the back (table) and 1 at the front of the body; nothing moves
  outside the body; the spine stays still. The head does not move unless asked.
- A view at time t sees the slice plane of the volume deformed by the breathing state b(t),
  resampled bilinearly in (slice, row) (anatomy from neighbouring slices passes through the plane). The scan is
  simulated per slice in parallel beam, each parallel view taking the time of its central ray
  (fan beam rebinned to parallel; cone beam as the fan beam of the slice's plane, cone angle
  neglected), projected and reconstructed by pipeline.projection's Fourier-slice projector and FBP.
  The static slice through the same projector and FBP is the sharp target.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from cli_shell.settings import setting
from pipeline.projection import (
    FBP_FILTERS,
    ProjectionConfig,
    hu_to_attenuation,
    interpolated_sinogram,
    project,
    reconstruct_pair,
    scan_geometry,
)

GEOMETRIES = ("fan", "cone")
BODY_SITES = ("thorax", "abdomen", "head")
CONE_ARCS_DEG = (200.0, 360.0)

BODY_HU = -500.0
"""Pixels above this HU, with the holes they enclose (lungs, bowel gas), are the body."""
LUNG_HU = -400.0
"""Body pixels below this HU are air inside the body: lung (or bowel gas)."""
SPINE_HU = 300.0
"""Bone threshold of the vertebrae (HU; their cortex stays above it even at 4 mm pixels)."""
SPINE_SLAB_MM = 10.0
"""The spine is looked for in the maximum over the slices within this distance (at least the
neighbouring ones), so that an intervertebral disc stays still like the vertebrae around it."""
SPINE_WINDOW = (0.6, 0.25)
"""The spine's centre is the centroid of the bone in the posterior 40% of the body's
anterior-posterior extent and within 25% of its half-width of the midline."""
SPINE_RADIUS_MM = 25.0
"""Within this distance of the spine's centre nothing moves (vertebral body, canal, the arch's base);
the motion recovers over another `SPINE_RAMP_MM`."""
SPINE_RAMP_MM = 10.0
MIN_LUNG_FRACTION = 0.1
"""A slice holds lungs if at least this fraction of its body area is air (bowel gas rarely is)."""
DIAPHRAGM_LUNG_FRACTION = 0.5
"""The diaphragm level is the most inferior slice of the run of slices around the largest air fraction
of the body area whose air fraction is at least this fraction of the largest one (about mid-dome,
where the domes have taken half of the lung bases); bowel gas further down, apart from the lungs,
does not count."""
HEAD_BODY_AREA_MM2 = 30000.0
"""A series without lungs or BodyPartExamined whose largest body cross-section is below this (mm²; an
adult head is about 15,000-25,000, an adult abdomen 40,000 or more) is taken for a head."""
APEX_WEIGHT = 0.2
"""Superior-inferior motion at the lung apex relative to the diaphragm: upper-lobe structures move a
few mm where lower-lobe ones move 10-20 mm (Seppenwoolde et al. 2002)."""
SUPERIOR_FALLOFF_MM = 250.0
"""Distance above the diaphragm over which the weight falls (raised cosine) from 1 to `APEX_WEIGHT`."""
INFERIOR_FALLOFF_MM = 250.0
"""Distance below the diaphragm over which the weight falls from 1 to 0: the liver moves almost with
the diaphragm, the kidneys about half as much, the pelvis not at all."""
BODY_SMOOTHING_MM = 10.0
"""Gaussian sigma of the in-plane superior-inferior weight: it rises from the skin into the body."""
WALL_MARGIN_MM = 15.0
"""The anterior-posterior stretch reaches this far outside the body (a straight skin; less at convex
corners), so the expanding wall has room: where the smoothed body mask exceeds `_WALL_LEVEL`."""
_WALL_LEVEL = 0.5 * math.erfc(WALL_MARGIN_MM / (BODY_SMOOTHING_MM * math.sqrt(2.0)))


FAN_STATE_STEP_MM = 1.0
CONE_STATE_STEP_MM = 2.0
"""Default spacing (mm at the diaphragm) of the simulated breathing states. Measured on a 512 x 512
thorax slice (docs/respiratory-motion.md): against a 0.25 mm step, the blurry image's RMS error is
2-9% of the breathing artifact for the fan beam at 1 mm, and 1.5-1.7% for the cone beam at 2 mm,
whose views sample the states all over the scan, so the blending errors average out."""


@dataclasses.dataclass(frozen=True)
class RespiratoryConfig:
    """Breathing and scan settings of the respiratory blur model (docs/respiratory-motion.md).

    Default ranges follow published respiratory motion data: superior-inferior motion of lower-lobe
    lung structures and the diaphragm of about 10-20 mm peak to peak (Seppenwoolde et al. 2002: 12 +-
    2 mm for lower-lobe tumours not attached to rigid structures; AAPM TG-76, Keall et al. 2006),
    breathing periods of 3-5 s, a few mm of chest-wall motion, and cycle-to-cycle irregularity and
    baseline drift (both reported in those papers; the ranges here are our choice).
    """

    geometry: str = setting("fan", "scanner: fan = clinical CT, one gantry rotation per slice; cone = linac cone-beam "
                                   "CT, one slow arc for the whole volume (name; also --geometry)", choices=GEOMETRIES,
                            flag_aliases=("geometry",))
    views: int = setting(360, "parallel-beam views per slice (rebinned from the fan), evenly spaced in angle "
                              "(count)")
    fan_rotation_s: float = setting(0.5, "fan beam: time of one 360 degree gantry rotation (s; clinical 0.3-1)")
    cone_arc_s: float = setting(60.0, "cone beam: duration of the arc (s)")
    cone_arc_deg: float = setting(360.0, "cone beam: gantry arc, 200 (short scan, 180 + fan angle) or 360 (degrees)",
                                  choices=CONE_ARCS_DEG)
    fbp_filter: str = setting("ramp", "FBP filter: ramp = Ram-Lak, shepp-logan or hann (name)", choices=FBP_FILTERS)
    period_s_min: float = setting(3.0, "shortest mean breathing period (s)")
    period_s_max: float = setting(5.0, "longest mean breathing period (s)")
    si_amplitude_mm_min: float = setting(5.0, "smallest superior-inferior diaphragm motion, exhale to inhale (mm)")
    si_amplitude_mm_max: float = setting(20.0, "largest superior-inferior diaphragm motion, exhale to inhale (mm)")
    ap_amplitude_mm_min: float = setting(1.0, "smallest anterior-posterior chest/abdominal wall motion (mm)")
    ap_amplitude_mm_max: float = setting(5.0, "largest anterior-posterior chest/abdominal wall motion (mm)")
    period_variation_max: float = setting(0.2, "largest cycle-to-cycle variation of the period, drawn per trace from "
                                               "[0, max] (coefficient of variation)")
    amplitude_variation_max: float = setting(0.2, "largest cycle-to-cycle variation of the amplitude, drawn per "
                                                  "trace from [0, max] (coefficient of variation)")
    drift_mm_per_min_max: float = setting(2.0, "largest superior-inferior baseline drift, drawn from [-max, max] "
                                               "(mm per minute)")
    centre_motion: bool = setting(True, "subtract each slice's mean breathing state over its views, so the blurry "
                                        "image is not displaced from the target on average (true/false)")
    state_step_mm: float = setting(0.0, "breathing states are simulated this far apart at the diaphragm; a view "
                                        "between two states sees their linear blend; 0 = by geometry, "
                                        f"{FAN_STATE_STEP_MM:g} fan, {CONE_STATE_STEP_MM:g} cone (mm)")
    move_head: bool = setting(False, "head series breathe too, as one block (true/false; off: a head never moves)")

    def validate(self) -> "RespiratoryConfig":
        """Returns self, or raises ValueError naming the bad setting."""
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"respiratory geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.views < 2:
            raise ValueError(f"respiratory views must be >= 2, got {self.views}")
        if self.cone_arc_deg not in CONE_ARCS_DEG:
            raise ValueError(f"cone_arc_deg must be 200 or 360 degrees, got {self.cone_arc_deg}")
        if self.fbp_filter not in FBP_FILTERS:
            raise ValueError(f"fbp_filter must be one of {FBP_FILTERS}, got {self.fbp_filter!r}")
        for name in ("fan_rotation_s", "cone_arc_s", "period_s_min"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.state_step_mm >= 0:
            raise ValueError(f"state_step_mm must be > 0, or 0 for the geometry's default, got {self.state_step_mm}")
        for low, high in (("period_s_min", "period_s_max"), ("si_amplitude_mm_min", "si_amplitude_mm_max"),
                          ("ap_amplitude_mm_min", "ap_amplitude_mm_max")):
            if not 0.0 <= getattr(self, low) <= getattr(self, high):
                raise ValueError(f"need 0 <= {low} <= {high}, got {getattr(self, low)}, {getattr(self, high)}")
        for name in ("period_variation_max", "amplitude_variation_max", "drift_mm_per_min_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        return self

    @property
    def parallel_scan_deg(self) -> float:
        """Angular span of the rebinned parallel views: 180 for a 200 degree short scan, else 360."""
        return 180.0 if self.geometry == "cone" and self.cone_arc_deg == 200.0 else 360.0

    @property
    def state_step(self) -> float:
        """Spacing (mm) of the simulated breathing states: `state_step_mm`, or the geometry's default."""
        if self.state_step_mm > 0:
            return self.state_step_mm
        return FAN_STATE_STEP_MM if self.geometry == "fan" else CONE_STATE_STEP_MM

    @property
    def scan_s(self) -> float:
        """Duration of one slice's acquisition (s): the gantry rotation (fan) or the arc (cone)."""
        return self.fan_rotation_s if self.geometry == "fan" else self.cone_arc_s


@dataclasses.dataclass(frozen=True)
class BreathingTrace:
    """One patient's breathing during a scan: cycles from `cycle_starts_s[0]` (<= 0) to beyond `duration_s`.

    Cycle k starts at cycle_starts_s[k] (s), lasts cycle_periods_s[k] (s) and reaches
    cycle_amplitudes[k] (a factor around 1) at end-inhale; the signal is
    b(t) = cycle_amplitudes[k] sin^(2 shape_power)(pi (t - start_k) / period_k) + drift t, and the
    diaphragm moves b(t) si_amplitude_mm towards the feet, the anterior wall b(t) ap_amplitude_mm
    forwards. `drift_mm_per_min` is the superior-inferior baseline drift (mm per minute).
    """

    si_amplitude_mm: float
    ap_amplitude_mm: float
    period_s: float
    shape_power: int
    drift_mm_per_min: float
    duration_s: float
    cycle_starts_s: tuple[float, ...]
    cycle_periods_s: tuple[float, ...]
    cycle_amplitudes: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.si_amplitude_mm < 0 or self.ap_amplitude_mm < 0 or self.shape_power < 1:
            raise ValueError(f"need amplitudes >= 0 mm and shape_power >= 1, got {self.si_amplitude_mm}, "
                             f"{self.ap_amplitude_mm}, {self.shape_power}")
        if not (len(self.cycle_starts_s) == len(self.cycle_periods_s) == len(self.cycle_amplitudes) >= 1):
            raise ValueError("cycle_starts_s, cycle_periods_s and cycle_amplitudes must have the same length >= 1")


def sample_breathing(rng: np.random.Generator, config: RespiratoryConfig, duration_s: float) -> BreathingTrace:
    """Draws one patient's breathing for times [0, duration_s] (s): amplitudes, mean period and drift
    uniform in their ranges, shape power 1-3, a random phase at t = 0, then cycle by cycle a
    log-normal period and amplitude factor with the trace's variation (coefficient of variation)."""
    config.validate()
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    si = rng.uniform(config.si_amplitude_mm_min, config.si_amplitude_mm_max)
    ap = rng.uniform(config.ap_amplitude_mm_min, config.ap_amplitude_mm_max)
    period = rng.uniform(config.period_s_min, config.period_s_max)
    power = int(rng.integers(1, 4))
    drift = rng.uniform(-config.drift_mm_per_min_max, config.drift_mm_per_min_max)
    period_sigma = rng.uniform(0.0, config.period_variation_max)
    amplitude_sigma = rng.uniform(0.0, config.amplitude_variation_max)
    start = -rng.uniform() * period
    starts, periods, amplitudes = [], [], []
    while start <= duration_s:
        length = period * math.exp(period_sigma * rng.standard_normal())
        starts.append(start)
        periods.append(length)
        amplitudes.append(math.exp(amplitude_sigma * rng.standard_normal()))
        start += length
    return BreathingTrace(float(si), float(ap), float(period), power, float(drift), float(duration_s),
                          tuple(starts), tuple(periods), tuple(amplitudes))


def breathing_signal(trace: BreathingTrace, times_s: np.ndarray) -> np.ndarray:
    """The dimensionless breathing state b(t), float64 [T], at `times_s` in [0, trace.duration_s] (s):
    0 at end-exhale, about 1 at end-inhale, plus the baseline drift."""
    times = np.asarray(times_s, dtype=np.float64)
    if times.size and (times.min() < 0 or times.max() > trace.duration_s):
        raise ValueError(f"times must lie in the trace's [0, {trace.duration_s}] s, got "
                         f"[{times.min()}, {times.max()}]")
    starts = np.asarray(trace.cycle_starts_s)
    cycle = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(starts) - 1)
    phase = (times - starts[cycle]) / np.asarray(trace.cycle_periods_s)[cycle]
    signal = np.asarray(trace.cycle_amplitudes)[cycle] * np.sin(np.pi * phase) ** (2 * trace.shape_power)
    if trace.si_amplitude_mm > 0:
        signal = signal + trace.drift_mm_per_min / 60.0 / trace.si_amplitude_mm * times
    return signal


def breathing_trace(trace: BreathingTrace, times_s: np.ndarray) -> np.ndarray:
    """Displacements float64 [T, 2] (mm) at `times_s` (s): column 0 the diaphragm's superior-inferior
    motion (positive towards the feet), column 1 the anterior wall's motion (positive forwards)."""
    return breathing_signal(trace, times_s)[:, None] * np.array([trace.si_amplitude_mm, trace.ap_amplitude_mm])


@dataclasses.dataclass(frozen=True)
class BreathingAnatomy:
    """Where breathing moves a series volume: its body site, whether it moves, and the diaphragm.

    `diaphragm_mm` is the diaphragm's position along the volume's first axis, mm from the centre of
    slice 0; `head_first` says slice 0 is the most superior (as the phantom writes them).
    """

    body_site: str
    moves: bool
    diaphragm_mm: float
    head_first: bool

    def longitudinal_weight(self, z_mm: np.ndarray | float) -> np.ndarray:
        """Superior-inferior motion at positions `z_mm` along the first axis relative to the diaphragm's
        (0 to 1): raised-cosine falloffs to `APEX_WEIGHT` above and to 0 below; 1 everywhere in a head
        asked to move; 0 when the site does not move."""
        z = np.asarray(z_mm, dtype=np.float64)
        if not self.moves:
            return np.zeros_like(z)
        if self.body_site == "head":
            return np.ones_like(z)
        superior = (self.diaphragm_mm - z) if self.head_first else (z - self.diaphragm_mm)
        above = np.clip(superior / SUPERIOR_FALLOFF_MM, 0.0, 1.0)
        below = np.clip(-superior / INFERIOR_FALLOFF_MM, 0.0, 1.0)
        up = APEX_WEIGHT + (1.0 - APEX_WEIGHT) * 0.5 * (1.0 + np.cos(np.pi * above))
        down = 0.5 * (1.0 + np.cos(np.pi * below))
        return np.where(superior >= 0, up, down)

    def shifted(self, first_slice: int, slice_mm: float) -> "BreathingAnatomy":
        """The same anatomy for the slab of the volume that starts at slice `first_slice`."""
        return dataclasses.replace(self, diaphragm_mm=self.diaphragm_mm - first_slice * slice_mm)


def _check_volume(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float],
                  trace: "BreathingTrace | None" = None, slice_index: int = 0) -> np.ndarray:
    """The volume as an array, or ValueError naming what is wrong with it. NaN or infinite values
    are looked for in the whole volume or, given a `trace`, in the planes that slice `slice_index`
    can read under it (`reach_slices`)."""
    volume = np.asarray(volume_hu)
    if volume.ndim != 3 or volume.shape[0] < 2 or min(volume.shape[1:]) < 8:
        raise ValueError(f"volume_hu must be [Z, H, W] with Z >= 2 and H, W >= 8, got shape {volume.shape}")
    if len(spacing_mm) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_mm):
        raise ValueError(f"spacing_mm must be three positive mm values (slice, row, column), got {spacing_mm}")
    read = volume
    if trace is not None:
        reach = reach_slices(trace, float(spacing_mm[0]))
        read = volume[max(0, slice_index - reach): slice_index + reach + 1]
    if not (np.isfinite(read.min()) and np.isfinite(read.max())):
        raise ValueError("volume_hu holds NaN or infinite values; replace them (e.g. by air, -1000 HU) first")
    return volume


def body_of_slice(slice_hu: np.ndarray) -> np.ndarray:
    """The largest region above `BODY_HU` with its holes filled, bool [H, W]."""
    labels, count = ndimage.label(slice_hu > BODY_HU)
    if count == 0:
        return np.zeros(slice_hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    region = labels == 1 + int(np.argmax(sizes))
    outside, count = ndimage.label(~region)
    body = np.ones(count + 1, dtype=bool)
    body[np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]])] = False
    body[0] = True
    return body[outside]


def air_fraction(slice_hu: np.ndarray) -> float:
    """Share of a slice's body area (`body_of_slice`) that is air inside the body (< `LUNG_HU`): lungs, bowel gas."""
    body = body_of_slice(np.asarray(slice_hu))
    return float(np.count_nonzero(body & (slice_hu < LUNG_HU)) / max(np.count_nonzero(body), 1))


def body_site_of(body_part_examined: str, air_fractions: np.ndarray, body_areas_mm2: np.ndarray) -> str:
    """The breathing site of a series: from DICOM BodyPartExamined when it names one (head, neck and
    brain -> head; chest, thorax, lung, breast, heart -> thorax; abdomen, pelvis, liver, kidney ->
    abdomen), else thorax if a slice holds lungs (`air_fractions` >= `MIN_LUNG_FRACTION`), else head
    if its largest body cross-section (`body_areas_mm2`, mm²) is below `HEAD_BODY_AREA_MM2`, else abdomen."""
    part = body_part_examined.strip().upper()
    for site, words in (("thorax", ("CHEST", "THORAX", "LUNG", "BREAST", "HEART")),
                        ("abdomen", ("ABDOMEN", "PELVIS", "LIVER", "KIDNEY")),
                        ("head", ("HEAD", "BRAIN", "SKULL", "NECK"))):
        if any(word in part for word in words):
            return site
    if len(air_fractions) and np.max(air_fractions) >= MIN_LUNG_FRACTION:
        return "thorax"
    return "head" if len(body_areas_mm2) and np.max(body_areas_mm2) < HEAD_BODY_AREA_MM2 else "abdomen"


def diaphragm_anatomy(air_fractions: np.ndarray, slice_mm: float, body_site: str, head_first: bool = True,
                      move_head: bool = False) -> BreathingAnatomy:
    """`breathing_anatomy` from each slice's `air_fraction` (slices `slice_mm` apart, in volume order)."""
    if body_site not in BODY_SITES:
        raise ValueError(f"body_site must be one of {BODY_SITES}, got {body_site!r}")
    air = np.asarray(air_fractions, dtype=np.float64)
    moves = body_site != "head" or move_head
    superior_end = 0 if head_first else len(air) - 1
    if body_site == "head" or air.max() < MIN_LUNG_FRACTION:
        return BreathingAnatomy(body_site, moves, (superior_end - (1 if head_first else -1)) * slice_mm, head_first)
    diaphragm = int(np.argmax(air))
    inferior = 1 if head_first else -1
    while 0 <= diaphragm + inferior < len(air) and air[diaphragm + inferior] >= DIAPHRAGM_LUNG_FRACTION * air.max():
        diaphragm += inferior
    return BreathingAnatomy(body_site, moves, float(diaphragm) * slice_mm, head_first)


def breathing_anatomy(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], body_site: str,
                      head_first: bool = True, move_head: bool = False) -> BreathingAnatomy:
    """Finds where breathing acts in a volume [Z, H, W] (HU, spacing (slice, row, column) mm).

    The diaphragm is at the most inferior slice of the run around the largest air fraction of the
    body area (< -400 HU inside the body) whose air fraction is at least half the largest one; a volume without lungs (no slice with 10% air, e.g.
    an abdomen below them) has it just above its superior end. Thorax and abdomen move; the head
    moves only with `move_head`.
    """
    volume = _check_volume(volume_hu, spacing_mm)
    return diaphragm_anatomy(np.array([air_fraction(plane) for plane in volume]), float(spacing_mm[0]), body_site,
                             head_first, move_head)


def _smoothed(mask: np.ndarray, sigma_pixels: tuple[float, float]) -> np.ndarray:
    """`mask` (bool [H, W]) blurred by a Gaussian of `sigma_pixels` (rows, columns) with zeros
    outside, float32. Wide Gaussians are computed on a grid coarser by a factor of a third of the
    smaller sigma (block means, their own spread taken off the coarse Gaussian) and interpolated back
    linearly (extrapolated at the borders): within 0.01 of the exact filter (0.004-0.005 on phantom
    bodies) at a fraction of its cost."""
    factor = max(1, int(min(sigma_pixels) // 3))
    if factor == 1:
        return ndimage.gaussian_filter(mask.astype(np.float32), sigma_pixels, mode="constant")
    height, width = mask.shape
    padded = np.zeros((-(-height // factor) * factor, -(-width // factor) * factor), dtype=np.float32)
    padded[:height, :width] = mask
    coarse = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    block_variance = (factor * factor - 1) / 12.0
    coarse = ndimage.gaussian_filter(coarse, [math.sqrt(sigma * sigma - block_variance) / factor for sigma in sigma_pixels],
                                     mode="constant")
    for axis, size in ((0, height), (1, width)):
        position = (np.arange(size, dtype=np.float32) - (factor - 1) / 2) / factor
        below = np.clip(np.floor(position).astype(np.intp), 0, coarse.shape[axis] - 2)
        weight = (position - below)[:, None] if axis == 0 else (position - below)[None, :]
        first, second = np.take(coarse, below, axis=axis), np.take(coarse, below + 1, axis=axis)
        coarse = first + weight * (second - first)
    return coarse.astype(np.float32)


def plane_weights(slice_hu: np.ndarray, pixel_spacing_mm: tuple[float, float],
                  bone_hu: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """In-plane weights float32 [H, W] (0 to 1) of the superior-inferior motion and of the
    anterior-posterior stretch in a slice (HU, rows anterior to posterior): the first rises from
    the skin into the body (0 outside); the second is 0 at the back of the body and 1 at its front
    and beyond it (up to `WALL_MARGIN_MM` outside the body, 0 further out); both are 0 within
    `SPINE_RADIUS_MM` of the spine's centre (bone above `SPINE_HU` in `bone_hu`, default the slice
    itself, inside `SPINE_WINDOW`)."""
    row_mm, col_mm = (float(s) for s in pixel_spacing_mm)
    body = body_of_slice(slice_hu)
    if not body.any():
        zeros = np.zeros(slice_hu.shape, dtype=np.float32)
        return zeros, zeros.copy()
    smooth = _smoothed(body, (BODY_SMOOTHING_MM / row_mm, BODY_SMOOTHING_MM / col_mm))
    si = body * smooth
    rows = np.flatnonzero(body.any(axis=1))
    front, back = rows.min(), rows.max()
    stretch = np.clip((back - np.arange(slice_hu.shape[0])) / max(back - front, 1), 0.0, 1.0).astype(np.float32)
    ap = (smooth > _WALL_LEVEL) * stretch[:, None]
    cols = np.flatnonzero(body.any(axis=0))
    middle, half_width = (cols.min() + cols.max()) / 2.0, (cols.max() - cols.min()) / 2.0
    bone = (slice_hu if bone_hu is None else bone_hu) > SPINE_HU
    posterior, midline = SPINE_WINDOW
    bone[: int(math.ceil(front + posterior * (back - front)))] = False
    bone[:, np.abs(np.arange(slice_hu.shape[1]) - middle) > midline * half_width] = False
    if bone.any():
        centre_row, centre_col = ndimage.center_of_mass(bone)
        rows_mm = (np.arange(slice_hu.shape[0]) - centre_row) * row_mm
        cols_mm = (np.arange(slice_hu.shape[1]) - centre_col) * col_mm
        distance = np.hypot(rows_mm[:, None], cols_mm[None, :])
        still = np.clip((distance - SPINE_RADIUS_MM) / SPINE_RAMP_MM, 0.0, 1.0)
        si = si * still
        ap = ap * still
    return si.astype(np.float32), ap.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Plane:
    """What deforming one slice plane needs: its index, the flat indices [N] of its pixels that move
    and their weights in voxels per mm of motion at the diaphragm (slices towards the feet, rows
    towards the back), float32 [N], with their rows (float32) and columns (int); every other pixel
    stays as it is."""

    index: int
    pixels: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    si_voxels_per_mm: np.ndarray
    ap_voxels_per_mm: np.ndarray

    @property
    def moves(self) -> bool:
        return bool(self.pixels.size)


def _plane(volume: np.ndarray, spacing_mm: tuple[float, float, float], anatomy: BreathingAnatomy,
           slice_index: int) -> _Plane:
    if not 0 <= slice_index < len(volume):
        raise ValueError(f"slice_index must be in [0, {len(volume)}), got {slice_index}")
    slice_mm, row_mm, col_mm = (float(s) for s in spacing_mm)
    along = float(anatomy.longitudinal_weight(slice_index * slice_mm))
    if along == 0.0:
        nothing, none = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.intp)
        return _Plane(slice_index, none, nothing, none, nothing, nothing)
    reach = math.ceil(SPINE_SLAB_MM / slice_mm)
    slab = volume[max(0, slice_index - reach): slice_index + reach + 1]
    si, ap = plane_weights(volume[slice_index], (row_mm, col_mm), slab.max(axis=0))
    pixels = np.flatnonzero((si != 0) | (ap != 0))
    rows, cols = np.divmod(pixels, volume.shape[2])
    towards_feet = 1.0 if anatomy.head_first else -1.0
    return _Plane(slice_index, pixels, rows.astype(np.float32), cols,
                  np.float32(along * towards_feet / slice_mm) * si.ravel()[pixels],
                  np.float32(along / row_mm) * ap.ravel()[pixels])


def _deform_plane(volume: np.ndarray, plane: _Plane, si_mm: float, ap_mm: float) -> np.ndarray:
    """The plane of `volume` deformed by (si_mm, ap_mm) at the diaphragm, float32 [H, W] (HU):
    its moving pixels bilinear in (slice, row) at their source positions, clamped to the volume
    (columns do not move); the others as they are."""
    image = volume[plane.index].astype(np.float32)
    if (si_mm == 0 and ap_mm == 0) or not plane.moves:
        return image
    slices, height, width = volume.shape
    z = np.clip(plane.index - np.float32(si_mm) * plane.si_voxels_per_mm, 0, slices - 1)
    r = np.clip(plane.rows + np.float32(ap_mm) * plane.ap_voxels_per_mm, 0, height - 1)
    z0 = np.minimum(np.floor(z), slices - 2)
    r0 = np.minimum(np.floor(r), height - 2)
    z_weight, r_weight = z - z0, r - r0
    flat = volume.reshape(-1)
    base = (z0.astype(np.intp) * height + r0.astype(np.intp)) * width + plane.cols
    upper = flat[base] + r_weight * (flat[base + width] - flat[base])
    base += height * width
    lower = flat[base] + r_weight * (flat[base + width] - flat[base])
    image.ravel()[plane.pixels] = upper + z_weight * (lower - upper)
    return image


def deformed_slice(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], anatomy: BreathingAnatomy,
                   slice_index: int, displacement_mm: tuple[float, float]) -> np.ndarray:
    """Slice `slice_index` of the volume [Z, H, W] (HU, spacing (slice, row, column) mm) while the
    diaphragm is displaced by `displacement_mm` = (superior-inferior mm towards the feet, anterior
    wall mm forwards), float32 [H, W] (HU).

    Each pixel p shows the tissue that was at p - u(p), with u the displacement field at p
    (bilinear in slice and row; a first-order inverse of the forward motion, good while the field
    varies slowly on the scale of its own size); beyond the volume's ends the end slices repeat.
    """
    volume = _check_volume(volume_hu, spacing_mm)
    plane = _plane(volume, spacing_mm, anatomy, slice_index)
    return _deform_plane(volume, plane, float(displacement_mm[0]), float(displacement_mm[1]))


def deform_volume(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], anatomy: BreathingAnatomy,
                  displacement_mm: tuple[float, float]) -> np.ndarray:
    """The whole volume [Z, H, W] (HU) deformed by `displacement_mm` (see `deformed_slice`), float32."""
    volume = _check_volume(volume_hu, spacing_mm)
    return np.stack([_deform_plane(volume, _plane(volume, spacing_mm, anatomy, index), *map(float, displacement_mm))
                     for index in range(len(volume))])


def trace_duration_s(config: RespiratoryConfig, slices: int) -> float:
    """Time (s) a series of `slices` slices takes to scan: one rotation per slice (fan), one arc (cone)."""
    return slices * config.fan_rotation_s if config.geometry == "fan" else config.cone_arc_s


def slice_start_s(config: RespiratoryConfig, scan_position: int) -> float:
    """Start (s) of the acquisition of the slice scanned `scan_position`-th (0 = first): fan beam
    slices one rotation after another (table moves not timed); cone beam all at 0."""
    return scan_position * config.fan_rotation_s if config.geometry == "fan" else 0.0


def reach_slices(trace: BreathingTrace, slice_mm: float) -> int:
    """Slices on either side of a slice that its pair may read: the largest superior-inferior motion
    the trace can give (its largest cycle plus its drift over the trace, mm), plus one for the
    bilinear sampling, and at least the spine search slab (`SPINE_SLAB_MM`)."""
    motion_mm = trace.si_amplitude_mm * max(trace.cycle_amplitudes) + abs(trace.drift_mm_per_min) * trace.duration_s / 60
    return max(math.ceil(motion_mm / slice_mm) + 1, math.ceil(SPINE_SLAB_MM / slice_mm))


def slice_motion_mm(trace: BreathingTrace, config: RespiratoryConfig, anatomy: BreathingAnatomy, slice_index: int,
                    slice_mm: float, start_s: float = 0.0) -> float:
    """Superior-inferior motion (mm, peak to peak over the slice's views) of tissue deep in the body
    (in-plane weight 1; less towards the skin, none at the spine) in slice `slice_index` (slices
    `slice_mm` apart) scanned from `start_s` (s)."""
    states = breathing_signal(trace, view_times_s(config, start_s))
    return float(np.ptp(states) * trace.si_amplitude_mm * anatomy.longitudinal_weight(slice_index * slice_mm))


def view_times_s(config: RespiratoryConfig, start_s: float = 0.0) -> np.ndarray:
    """Time (s) of each parallel view, float64 [views]: the moment the source passed its central ray.

    View i at angle (i + 0.5) * span / views of the parallel span (360 degrees; 180 for a 200 degree
    cone-beam short scan, taken from the middle of the arc) is measured at
    start_s + scan_s * (offset + angle) / arc, with arc = 360 degrees (fan) or cone_arc_deg.
    """
    config.validate()
    span = config.parallel_scan_deg
    arc = 360.0 if config.geometry == "fan" else config.cone_arc_deg
    angles = (np.arange(config.views) + 0.5) * span / config.views
    return start_s + config.scan_s * ((arc - span) / 2.0 + angles) / arc


def respiratory_pair(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], anatomy: BreathingAnatomy,
                     slice_index: int, trace: BreathingTrace, config: RespiratoryConfig,
                     start_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(sharp_hu, blurry_hu), float32 [H, W] in HU, of slice `slice_index` of a breathing patient.

    `volume_hu` [Z, H, W] (HU, spacing (slice, row, column) mm) is the static (breath-hold) series;
    the slice is scanned from `start_s` (s into `trace`): fan beam, one rotation per slice (a series
    scanned slice by slice passes start_s = slice time); cone beam, one arc for all slices (start_s
    the same for every slice). View i sees the plane deformed by the breathing state at its time
    (`view_times_s`), centred over the views with `config.centre_motion`. States are simulated
    `config.state_step` apart at this plane and a view between two sees their linear blend (projection
    is linear, so this is the blend of their views). Sharp: the static slice through the same
    projector and FBP; no motion gives bit-identical images.
    """
    config.validate()
    volume = _check_volume(volume_hu, spacing_mm, trace, slice_index)
    plane = _plane(volume, spacing_mm, anatomy, slice_index)
    projection = ProjectionConfig(views=config.views, scan_deg=config.parallel_scan_deg, fbp_filter=config.fbp_filter)
    geometry = scan_geometry(volume.shape[1:], spacing_mm[1:], projection)
    static = project(hu_to_attenuation(volume[slice_index]), geometry, np.zeros((config.views, 3)))
    states = breathing_signal(trace, view_times_s(config, start_s))
    if config.centre_motion:
        states = states - states.mean()
    along = float(anatomy.longitudinal_weight(slice_index * float(spacing_mm[0])))
    reach_mm = np.ptp(states) * along * max(trace.si_amplitude_mm, trace.ap_amplitude_mm)
    if reach_mm == 0 or not plane.moves:
        return reconstruct_pair(static, static, geometry, config.fbp_filter)
    levels = np.linspace(states.min(), states.max(), 1 + math.ceil(reach_mm / config.state_step))
    position = (states - levels[0]) / (levels[1] - levels[0])
    lower = np.minimum(np.floor(position).astype(np.intp), len(levels) - 2)

    def level_attenuation(level: int) -> np.ndarray:
        state = levels[level]
        return hu_to_attenuation(_deform_plane(volume, plane, state * trace.si_amplitude_mm,
                                               state * trace.ap_amplitude_mm))

    moving = interpolated_sinogram(level_attenuation, lower, position - lower, geometry)
    return reconstruct_pair(static, moving, geometry, config.fbp_filter)
