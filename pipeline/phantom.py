"""Procedural CT phantoms written as real DICOM CT series (the embedded default source).

Each patient is a 3-D model in mm and HU, and each slice is the axial plane through it at one
height, so neighbouring slices look alike and every structure moves smoothly along z. A series
spans its whole body site whatever its number of slices (slice 0 at the top):
- head (140 mm from the hard palate up): scalp; skull with cortical outer and inner tables around
  trabecular diploe; grey and white matter with CSF-filled sulci (1-3 mm) at the cortex; falx in
  the interhemispheric fissure; lateral, third and fourth ventricles whose shape changes with z;
  basal ganglia, thalami, brainstem and cerebellar folia; at the skull base orbits, nasal cavity,
  maxillary, ethmoid and sphenoid sinuses and mastoid air cells with thin bony septa;
- thorax (280 mm from the diaphragm domes up): skin, fat with fibrous septa, muscle, breasts;
  ribs and sternum with cortical shell and trabecular interior; vertebrae with discs; lungs with
  fissures, branching arteries and veins tapering to 1-2 pixels and bronchi with air lumen and
  wall; contrast-enhanced heart chambers, aorta, pulmonary arteries and venae cavae;
- abdomen/pelvis (360 mm from the hips up): liver with enhanced portal and hepatic veins, spleen,
  stomach and bowel loops with gas-fluid levels, colon with stool, mesenteric fat and vessels,
  pancreas, kidneys with cortex, medulla and sinus, aorta, IVC and iliac vessels, lumbar
  vertebrae, sacrum, iliac wings and femoral heads with trabecular bone, bladder, lung bases.
Values are typical contrast-enhanced CT HU; organs get low-frequency texture. A slice is what a
scanner reconstructs, not the plane through the model: the anatomy is averaged over the slice
thickness (surfaces that cross the slab obliquely become partial-volume ramps) and blurred by an
in-plane PSF drawn per series, as reconstruction kernels blur. The image is noise-free: the
pipeline's noise model adds CT-like noise to each pair. The scanner table lies
under the body and pixels outside the circular field of view carry the PixelPaddingValue, as many
scanners write them. Anatomy (sizes, positions, vessel trees, number of bowel loops, ...) varies
per patient and comes from (seed, patient index) only.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pydicom
from scipy import ndimage
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipeline.hashing import derive_rng

BODY_SITES = ("head", "thorax", "abdomen")
RESCALE_INTERCEPT = -1024.0
PADDING_STORED = -2000
"""Stored value of pixels outside the reconstruction circle (PixelPaddingValue)."""

_SITE_LENGTH_MM = {"head": 140.0, "thorax": 280.0, "abdomen": 360.0}
"""Height of the body part a series covers, from its lower end (level 0) to slice 0."""

AIR, FAT, CSF, MUSCLE, BLOOD = -1000.0, -100.0, 6.0, 50.0, 40.0

SLICE_THICKNESS_MM = (2.5, 5.0)
"""Range of the slice thickness (mm), drawn per series: standard to thick clinical axial
reconstructions, written as SliceThickness. The slices' spacing is the body site's length over the
number of slices (`slice_level_mm`), written in ImagePositionPatient: a series of few slices has
gaps between them, as a gapped axial protocol has."""

SLAB_PLANES_PER_MM = 1.0
MIN_SLAB_PLANES = 3
"""Planes of the 3-D anatomy averaged across a slice's thickness (at the centres of equal
sub-slabs): one per mm of thickness, at least `MIN_SLAB_PLANES`."""

PSF_FWHM_MM = (0.9, 1.6)
"""Range of the in-plane scanner PSF's full width at half maximum (mm), drawn per series: a Gaussian
whose MTF falls to 50% at 0.49 to 0.28 line pairs/mm, from standard to soft clinical
reconstruction kernels."""

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


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
    psf_fwhm_mm: float

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
    psf_fwhm_mm = rng.uniform(*PSF_FWHM_MM)
    thickness = rng.uniform(*SLICE_THICKNESS_MM)
    return PhantomSeries(patient_index, site, size, slices, fov_mm / size, thickness, seed, psf_fwhm_mm)


# --- geometry on points -------------------------------------------------------------------------

def _smoothstep(value, low: float, high: float):
    """0 below `low`, 1 above `high`, C1-smooth in between (scalars or arrays)."""
    t = np.clip((np.asarray(value, dtype=np.float32) - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _rotation(yaw: float = 0.0, pitch: float = 0.0) -> np.ndarray:
    """3x3 rotation: `pitch` rad about x (y towards z), then `yaw` rad about z (x towards y)."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    return np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])


@dataclasses.dataclass(frozen=True)
class _Ellipsoid:
    """An ellipsoid: centre (x, y, z) mm, semi-axes mm, rotation (columns = its axes in the body)."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    rotation: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))

    def distance(self, x, y, z, in_plane: bool = True):
        """Approximate signed distance (mm, > 0 inside) of points; `in_plane` measures it within the
        axial plane (edges of a cut stay one pixel wide), otherwise in 3-D."""
        d = (x - self.centre[0], y - self.centre[1], z - self.centre[2])
        r = self.rotation
        local = [(r[0, i] * d[0] + r[1, i] * d[1] + r[2, i] * d[2]) / self.semi[i] for i in range(3)]
        f = local[0] ** 2 + local[1] ** 2 + local[2] ** 2 - 1.0
        g = [local[i] / self.semi[i] for i in range(3)]
        gx = r[0, 0] * g[0] + r[0, 1] * g[1] + r[0, 2] * g[2]
        gy = r[1, 0] * g[0] + r[1, 1] * g[1] + r[1, 2] * g[2]
        norm = gx * gx + gy * gy
        if not in_plane:
            gz = r[2, 0] * g[0] + r[2, 1] * g[1] + r[2, 2] * g[2]
            norm = norm + gz * gz
        return -f / (2.0 * np.sqrt(norm) + 1e-6)

    def extent(self) -> np.ndarray:
        """Half-sizes (mm) of the axis-aligned box around the ellipsoid."""
        return np.sqrt((self.rotation ** 2) @ np.square(self.semi))

    def grown(self, mm: float) -> "_Ellipsoid":
        return _Ellipsoid(self.centre, tuple(s + mm for s in self.semi), self.rotation)


class _Waves:
    """A smooth random field of unit variance over 3-D space (mm): a sum of `count` plane waves with
    wavelengths log-uniform in [shortest, longest] mm, directions uniform (z components scaled by
    `z_scale`: < 1 makes the field vary more slowly along z)."""

    def __init__(self, rng: np.random.Generator, count: int, shortest_mm: float, longest_mm: float,
                 z_scale: float = 1.0):
        direction = rng.standard_normal((count, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        direction[:, 2] *= z_scale
        wavelength = shortest_mm * (longest_mm / shortest_mm) ** rng.uniform(0.0, 1.0, count)
        self.k = direction * (2.0 * math.pi / wavelength)[:, None]
        self.phase = rng.uniform(0.0, 2.0 * math.pi, count)

    def grid(self, xs: np.ndarray, ys: np.ndarray, z: float, spacing_mm: float) -> np.ndarray:
        """Field [len(ys), len(xs)] float32 on the plane at height z; waves shorter than ~2.5
        pixels of `spacing_mm` fade out (no aliasing on coarse grids)."""
        k_plane = np.hypot(self.k[:, 0], self.k[:, 1])
        keep = np.clip(2.0 - k_plane * spacing_mm * 2.5 / math.pi, 0.0, 1.0) * math.sqrt(2.0 / len(self.phase))
        py = ys[:, None] * self.k[:, 1] + (self.k[:, 2] * z + self.phase)
        px = xs[:, None] * self.k[:, 0]
        left = np.concatenate([np.cos(py) * keep, -np.sin(py) * keep], axis=1).astype(np.float32)
        right = np.concatenate([np.cos(px), np.sin(px)], axis=1).astype(np.float32)
        return left @ right.T

    def at(self, x, y, z):
        """Field at points (arrays in mm) and its gradient along x and y (per mm)."""
        shape = np.broadcast(x, y, z).shape
        total, gx, gy = (np.zeros(shape, dtype=np.float32) for _ in range(3))
        for (kx, ky, kz), phase in zip(self.k, self.phase):
            angle = kx * x + ky * y + (kz * z + phase)
            total += np.cos(angle)
            sin = np.sin(angle)
            gx -= kx * sin
            gy -= ky * sin
        scale = math.sqrt(2.0 / len(self.phase))
        return total * scale, gx * scale, gy * scale


@dataclasses.dataclass(frozen=True)
class _Tubes:
    """Straight tapered tube segments in 3-D: axis from `start` to `end` [N, 3] mm, radius `r0` to
    `r1` [N] mm along it."""

    start: np.ndarray
    end: np.ndarray
    r0: np.ndarray
    r1: np.ndarray

    @staticmethod
    def path(points, radii) -> "_Tubes":
        """The segments joining consecutive `points` [M, 3] mm with `radii` [M] mm."""
        points, radii = np.asarray(points, dtype=np.float64), np.asarray(radii, dtype=np.float64)
        return _Tubes(points[:-1], points[1:], radii[:-1], radii[1:])

    @staticmethod
    def join(parts: list["_Tubes"]) -> "_Tubes":
        return _Tubes(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(_Tubes)))

    def __len__(self) -> int:
        return len(self.r0)


def _smooth_path(points, step_mm: float) -> np.ndarray:
    """Catmull-Rom curve [M, 3] through `points` [N, 3] mm, sampled about every `step_mm`."""
    p = np.asarray(points, dtype=np.float64)
    p = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    out = []
    for i in range(1, len(p) - 2):
        n = max(1, int(math.ceil(np.linalg.norm(p[i + 1] - p[i]) / step_mm)))
        t = (np.arange(n) / n)[:, None]
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3))
    out.append(p[-2:-1])
    return np.concatenate(out)


def _sample_inside(rng: np.random.Generator, inside, low, high, count: int) -> np.ndarray:
    """`count` points [count, 3] mm drawn uniformly in the box [low, high] where `inside` holds."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    found = []
    total = 0
    while total < count:
        points = rng.uniform(low, high, (count * 2, 3))
        points = points[inside(points)]
        found.append(points)
        total += len(points)
    return np.concatenate(found)[:count]


def _vessel_tree(rng: np.random.Generator, root, radius: float, territory: np.ndarray, *, reach: float = 0.55,
                 min_points: int = 2, wiggle: float = 0.12) -> _Tubes:
    """A branching vessel tree that fills a territory. Each node owns tissue points [P, 3] mm and
    splits them across their main axis (with random tilt and asymmetry); each half gets a child
    segment from the node `reach` of the way to the half's centroid, with Murray's law for the
    radius (r^3 proportional to the tissue supplied: r = radius x (points / P)^(1/3), mm).
    Stops when a node owns fewer than `min_points` points."""
    points = np.asarray(territory, dtype=np.float64)
    total = len(points)
    label = np.zeros(total, dtype=np.int64)
    position = np.asarray(root, dtype=np.float64)[None]
    starts, ends, r0s, r1s = [], [], [], []
    while len(points):
        nodes = len(position)
        count = np.bincount(label, minlength=nodes).astype(np.float64)
        mean = np.stack([np.bincount(label, points[:, k], nodes) for k in range(3)], axis=1) / np.maximum(count, 1)[:, None]
        centred = points - mean[label]
        cov = np.stack([np.stack([np.bincount(label, centred[:, i] * centred[:, j], nodes) for j in range(3)], axis=1)
                        for i in range(3)], axis=1) / np.maximum(count, 1)[:, None, None]
        values, vectors = np.linalg.eigh(cov)
        axis = vectors[:, :, -1] + rng.normal(0.0, 0.35, (nodes, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True) + 1e-9
        cut = rng.normal(0.0, 0.25, nodes) * np.sqrt(np.maximum(values[:, -1], 0.0))
        side = (np.sum(centred * axis[label], axis=1) > cut[label]).astype(np.int64)
        child = label * 2 + side
        child_count = np.bincount(child, minlength=2 * nodes).astype(np.float64)
        child_mean = np.stack([np.bincount(child, points[:, k], 2 * nodes) for k in range(3)], axis=1) \
            / np.maximum(child_count, 1)[:, None]
        parent = np.repeat(np.arange(nodes), 2)
        step = child_mean - position[parent]
        length = np.linalg.norm(step, axis=1, keepdims=True)
        tip = position[parent] + reach * step + rng.normal(0.0, 1.0, step.shape) * wiggle * reach * length
        r = radius * (child_count / total) ** (1.0 / 3.0)
        made = child_count > 0
        starts.append(position[parent][made]), ends.append(tip[made]), r0s.append(r[made] * 1.04), r1s.append(r[made] * 0.96)
        grow = child_count >= min_points
        new_id = np.cumsum(grow) - 1
        keep = grow[child]
        points, label, position = points[keep], new_id[child[keep]], tip[grow]
    return _Tubes(*(np.concatenate(a) for a in (starts, ends, r0s, r1s)))


# --- painting on one axial plane ----------------------------------------------------------------

@dataclasses.dataclass
class _Hits:
    """Pixels near tube segments: flat pixel index, distance to the axis (mm), radius there (mm),
    y (mm) of the pixel and segment index, one entry per (pixel, segment) pair."""

    flat: np.ndarray
    distance: np.ndarray
    radius: np.ndarray
    y: np.ndarray
    segment: np.ndarray


class _Canvas:
    """An HU image [size, size] of the axial plane at height `z` mm. x (columns) grows to the
    patient's left, y (rows) to the back, both in mm from the image centre."""

    def __init__(self, size: int, spacing_mm: float, z_mm: float):
        self.size, self.spacing, self.z = size, float(spacing_mm), float(z_mm)
        self.axis = ((np.arange(size) - (size - 1) / 2.0) * self.spacing).astype(np.float32)
        self.hu = np.full((size, size), AIR, dtype=np.float32)

    def window(self, x0: float, x1: float, y0: float, y1: float):
        """(rows, cols) slices of the pixels with centres in [x0, x1] x [y0, y1] mm, or None."""
        half = (self.size - 1) / 2.0
        c0, c1 = max(0, math.floor(x0 / self.spacing + half)), min(self.size, math.ceil(x1 / self.spacing + half) + 1)
        r0, r1 = max(0, math.floor(y0 / self.spacing + half)), min(self.size, math.ceil(y1 / self.spacing + half) + 1)
        return (slice(r0, r1), slice(c0, c1)) if c0 < c1 and r0 < r1 else None

    def grid(self, window):
        """Pixel coordinates of a window: x [1, C] and y [R, 1] mm."""
        return self.axis[window[1]][None, :], self.axis[window[0]][:, None]

    def edge(self, signed_mm):
        """Partial-volume weight 0..1 of pixels at a signed distance (mm, > 0 inside) from an edge."""
        return np.clip(signed_mm / self.spacing + 0.5, 0.0, 1.0)

    def ellipse(self, cx: float, cy: float, a: float, b: float, angle: float = 0.0):
        """(window, weight) of the ellipse centred (cx, cy) mm, semi-axes a (along `angle` rad) and b."""
        reach = max(a, b) + self.spacing
        window = self.window(cx - reach, cx + reach, cy - reach, cy + reach)
        if window is None or a <= 0 or b <= 0:
            return None
        x, y = self.grid(window)
        c, s = math.cos(angle), math.sin(angle)
        u, v = ((x - cx) * c + (y - cy) * s) / a, (-(x - cx) * s + (y - cy) * c) / b
        grad = 2.0 * np.sqrt((u / a) ** 2 + (v / b) ** 2) + 1e-6
        return window, self.edge((1.0 - u * u - v * v) / grad)

    def ellipsoid(self, body: _Ellipsoid, grow_mm: float = 0.0):
        """(window, weight) of the cut of an ellipsoid (grown by `grow_mm`) with this plane, or None."""
        ext = body.extent() + grow_mm + self.spacing
        if abs(self.z - body.centre[2]) >= ext[2] - self.spacing:
            return None
        window = self.window(body.centre[0] - ext[0], body.centre[0] + ext[0],
                             body.centre[1] - ext[1], body.centre[1] + ext[1])
        if window is None:
            return None
        x, y = self.grid(window)
        return window, self.edge(body.distance(x, y, self.z) + grow_mm)

    def weight(self, region) -> np.ndarray:
        """Full-image weight [size, size] of a region (0 outside it)."""
        image = np.zeros_like(self.hu)
        if region is not None:
            (rows, cols), weight = region
            image[rows, cols] = weight
        return image

    def carve(self, image: np.ndarray, region) -> None:
        """Removes a region from a full-image weight (in place)."""
        if region is not None:
            (rows, cols), weight = region
            image[rows, cols] *= 1.0 - weight

    def paint(self, region, hu) -> None:
        """Blends `hu` (a value or an array of the window's shape) into the region by its weight."""
        if region is None:
            return
        (rows, cols), weight = region
        self.hu[rows, cols] += weight * (hu - self.hu[rows, cols])

    def hits(self, tubes: _Tubes, grow_mm: float = 0.0) -> _Hits | None:
        """Pixels of this plane within `grow_mm` + radius + 1 pixel of each tube segment's axis."""
        z, sp = self.z, self.spacing
        reach = np.maximum(tubes.r0, tubes.r1) + grow_mm + sp
        low = np.minimum(tubes.start[:, 2], tubes.end[:, 2]) - reach
        high = np.maximum(tubes.start[:, 2], tubes.end[:, 2]) + reach
        index = np.flatnonzero((low <= z) & (z <= high))
        if not len(index):
            return None
        a, b, reach = tubes.start[index], tubes.end[index], reach[index]
        d = b - a
        dz = np.where(np.abs(d[:, 2]) < 1e-9, 1e-9, d[:, 2])
        t1, t2 = (z - reach - a[:, 2]) / dz, (z + reach - a[:, 2]) / dz
        t_lo, t_hi = np.clip(np.minimum(t1, t2), 0, 1), np.clip(np.maximum(t1, t2), 0, 1)
        flat_dz = np.abs(d[:, 2]) < 1e-9
        t_lo[flat_dz], t_hi[flat_dz] = 0.0, 1.0
        p_lo, p_hi = a + d * t_lo[:, None], a + d * t_hi[:, None]
        above = np.maximum(0.0, np.maximum(np.minimum(a[:, 2], b[:, 2]) - z, z - np.maximum(a[:, 2], b[:, 2])))
        reach = np.sqrt(np.maximum(reach * reach - above * above, 0.0)) + sp
        half = (self.size - 1) / 2.0
        c0 = np.floor((np.minimum(p_lo[:, 0], p_hi[:, 0]) - reach) / sp + half).astype(int)
        c1 = np.ceil((np.maximum(p_lo[:, 0], p_hi[:, 0]) + reach) / sp + half).astype(int)
        r0 = np.floor((np.minimum(p_lo[:, 1], p_hi[:, 1]) - reach) / sp + half).astype(int)
        r1 = np.ceil((np.maximum(p_lo[:, 1], p_hi[:, 1]) + reach) / sp + half).astype(int)
        on_image = (c1 >= 0) & (c0 < self.size) & (r1 >= 0) & (r0 < self.size)
        sizes = np.unique(np.round(4 * 1.4 ** np.arange(20)).astype(int))
        wide = sizes[np.searchsorted(sizes, c1 - c0 + 1)]
        tall = sizes[np.searchsorted(sizes, r1 - r0 + 1)]
        parts = []
        for w, h in set(zip(wide[on_image].tolist(), tall[on_image].tolist())):
            chosen = np.flatnonzero(on_image & (wide == w) & (tall == h))
            cols = c0[chosen, None] + np.arange(w)
            rows = r0[chosen, None] + np.arange(h)
            xs = (cols - half) * sp
            ys = (rows - half) * sp
            ai, di = a[chosen], d[chosen]
            length2 = np.maximum(np.sum(di * di, axis=1), 1e-9)
            ax, ay, az = (ai[:, i, None, None] for i in range(3))
            ddx, ddy, ddz = (di[:, i, None, None] for i in range(3))
            px, py = xs[:, None, :] - ax, ys[:, :, None] - ay
            pz = z - az
            t = np.clip((px * ddx + py * ddy + pz * ddz) / length2[:, None, None], 0.0, 1.0)
            qx, qy, qz = px - t * ddx, py - t * ddy, pz - t * ddz
            dist = np.sqrt(qx * qx + qy * qy + qz * qz)
            radius = tubes.r0[index[chosen], None, None] + t * (tubes.r1 - tubes.r0)[index[chosen], None, None]
            valid = ((cols >= 0) & (cols < self.size) & (cols <= c1[chosen, None]))[:, None, :] & \
                    ((rows >= 0) & (rows < self.size) & (rows <= r1[chosen, None]))[:, :, None] & \
                    (dist < radius + grow_mm + sp)
            k, i, j = np.nonzero(valid)
            parts.append((rows[k, i] * self.size + cols[k, j], dist[k, i, j], radius[k, i, j],
                          ys[k, i], index[chosen][k]))
        if not parts:
            return None
        return _Hits(*(np.concatenate([p[f] for p in parts]) for f in range(5)))

    def splat(self, flat: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Image [size, size] holding, per pixel, the largest of the `weight`s given to it."""
        image = np.zeros(self.size * self.size, dtype=np.float32)
        np.maximum.at(image, flat, weight.astype(np.float32))
        return image.reshape(self.size, self.size)

    def tube_weight(self, distance: np.ndarray, radius: np.ndarray) -> np.ndarray:
        """Partial-volume weight of pixels at `distance` mm from the axis of a tube of `radius` mm;
        tubes thinner than a pixel keep a one-pixel trace with proportionally lower contrast."""
        least = 0.5 * self.spacing
        wide = np.maximum(radius, least)
        return self.edge(wide - distance) * np.minimum(1.0, np.maximum(radius, 0.0) / least)

    def paint_tubes(self, tubes: _Tubes, layers, mask=None) -> None:
        """Paints tube layers outside in: each (HU, radius change mm) blends HU into the tubes with
        radius + change; `mask` [size, size] limits them (e.g. to the lungs)."""
        if tubes is None or not len(tubes):
            return
        hits = self.hits(tubes)
        if hits is None:
            return
        for hu, change in layers:
            weight = self.splat(hits.flat, self.tube_weight(hits.distance, hits.radius + change))
            if mask is not None:
                weight *= mask
            self.hu += weight * (hu - self.hu)

    def honeycomb(self, body: _Ellipsoid, seeds: np.ndarray, septum_mm: float, air_hu: float, bone_hu: float,
                  fluid=None) -> None:
        """Air cells with thin bony septa inside an ellipsoid (mastoid, ethmoid): cells are the
        Voronoi regions of `seeds` [N, 3] mm, septa `septum_mm` thick. `fluid` = (HU, fraction of
        cells) fills the back of some cells."""
        region = self.ellipsoid(body)
        if region is None:
            return
        near = seeds[np.abs(seeds[:, 2] - self.z) < max(body.semi) * 0.6]
        (rows, cols), weight = region
        if len(near) < 2:
            self.paint(region, bone_hu)
            return
        x, y = self.grid((rows, cols))
        dist = np.sqrt((x[..., None] - near[:, 0]) ** 2 + (y[..., None] - near[:, 1]) ** 2 + (self.z - near[:, 2]) ** 2)
        two = np.partition(dist, 1, axis=-1)
        septum = self.edge(septum_mm / 2.0 - (two[..., 1] - two[..., 0]) / 2.0)
        self.paint(region, air_hu + (bone_hu - air_hu) * septum)


# --- shared anatomy -----------------------------------------------------------------------------

class _Outline:
    """A body outline: an ellipse with a few harmonics, semi-axes a(z), b(z) mm, centre (0, cy(z))."""

    def __init__(self, rng: np.random.Generator, a: float, b: float, wobble: float):
        self.a0, self.b0 = a, b
        self.harmonics = [(m, rng.normal(0.0, wobble / m), rng.uniform(0, 2 * math.pi)) for m in (2, 3, 4, 5)]

    def radius(self, cos, sin, a, b):
        """Distance (mm) from the centre to the outline in the direction (cos, sin)."""
        base = 1.0 / np.sqrt((cos / a) ** 2 + (sin / b) ** 2)
        unit = (cos + 1j * sin).astype(np.complex64)
        power, wobble = unit * unit, 0.0
        for _, e, p in self.harmonics:
            wobble = wobble + e * (power * complex(math.cos(p), math.sin(p))).real
            power = power * unit
        return base * (1.0 + wobble)

    def depth(self, x, y, a, b, cy):
        """Depth (mm, > 0 inside) of points below the outline, and their direction (cos, sin)."""
        dx, dy = x, y - cy
        r = np.sqrt(dx * dx + dy * dy) + 1e-6
        cos, sin = dx / r, dy / r
        return self.radius(cos, sin, a, b) - r, cos, sin


def _fat_septa(canvas: _Canvas, waves: _Waves, window) -> None:
    """Fibrous septa (thin -30 HU lines) and lobules in the fat pixels of a window."""
    x, y = canvas.grid(window)
    field = waves.grid(x[0], y[:, 0], canvas.z, canvas.spacing)
    septa = np.exp(-(field / 0.08) ** 2) * min(1.0, 0.5 / canvas.spacing)
    hu = canvas.hu[window]
    fat = np.clip((hu + 150.0) / 30.0, 0.0, 1.0) * np.clip((-40.0 - hu) / 30.0, 0.0, 1.0)
    hu += fat * (60.0 * septa + 3.0 * field)


def _texture(canvas: _Canvas, waves: _Waves, window, amplitude_hu: float) -> None:
    """Low-frequency organ texture (+-amplitude HU) on the soft-tissue pixels (-60..300 HU) of a window."""
    x, y = canvas.grid(window)
    field = waves.grid(x[0], y[:, 0], canvas.z, canvas.spacing)
    hu = canvas.hu[window]
    soft = np.clip((hu + 60.0) / 40.0, 0.0, 1.0) * np.clip((400.0 - hu) / 150.0, 0.0, 1.0)
    hu += soft * field * amplitude_hu


class _Spine:
    """Vertebrae along z: body with cortical shell and trabecular core, discs, canal with cord,
    neural arch, spinous and transverse processes. `y(z)` is the body centre (mm)."""

    def __init__(self, rng: np.random.Generator, body_rx: float, body_ry: float, period_mm: float, disc_mm: float,
                 y_of_z, bottom_mm: float = -math.inf):
        self.rx, self.ry = body_rx * rng.uniform(0.9, 1.1), body_ry * rng.uniform(0.9, 1.1)
        self.period, self.disc, self.phase = period_mm, disc_mm, rng.uniform(0, period_mm)
        self.y_of_z, self.bottom = y_of_z, bottom_mm
        self.cortical = rng.uniform(750, 1000)
        self.marrow = rng.uniform(150, 260)
        self.trabecular = _Waves(rng, 48, 1.4, 4.0)

    def trabecular_hu(self, canvas: _Canvas, window, marrow: float) -> np.ndarray:
        x, y = canvas.grid(window)
        field = self.trabecular.grid(x[0], y[:, 0], canvas.z, canvas.spacing)
        return marrow + 70.0 * np.tanh(1.2 * field)

    def paint(self, canvas: _Canvas) -> None:
        if canvas.z < self.bottom:
            return
        z, y = canvas.z, self.y_of_z(canvas.z)
        rx, ry = self.rx, self.ry
        level = (z + self.phase) % self.period
        disc = 1.0 - _smoothstep(abs(level - self.disc / 2.0), self.disc / 2.0 - 0.8, self.disc / 2.0 + 0.8)
        arch = 1.0 - _smoothstep(abs(level - self.disc / 2.0), self.disc / 2.0 + 1.0, self.disc / 2.0 + 4.0)
        canal_y = y + ry + 9.0
        canvas.paint(canvas.ellipse(0, canal_y + 5, rx * 1.5, 16), MUSCLE)
        if arch < 1.0:
            for side in (-1, 1):
                canvas.paint(canvas.ellipse(side * (rx + 8), canal_y, 16, 5.5, side * 0.35), self.cortical * 0.85)
            region = canvas.ellipse(0, canal_y + 14, 5.0, 15.0 * (1 - arch) + 0.1)
            canvas.paint(region, self.cortical * 0.85)
            canvas.paint(canvas.ellipse(0, canal_y, rx * 0.55 + 4, 11), self.cortical)
        canvas.paint(canvas.ellipse(0, canal_y, rx * 0.55, 8.5), CSF)
        canvas.paint(canvas.ellipse(0, canal_y, 5.0, 4.0), 30.0)
        body = canvas.ellipse(0, y, rx, ry)
        canvas.paint(body, self.cortical * (1 - disc) + 110.0 * disc)
        core = canvas.ellipse(0, y, rx - 1.2, ry - 1.2)
        if core is not None:
            canvas.paint(core, self.trabecular_hu(canvas, core[0], self.marrow) * (1 - disc) + 85.0 * disc)


def _rib_tubes(rng: np.random.Generator, head_z, wall):
    """Ribs as bony tube paths around the chest wall (ribs [N] bone, cartilage [N]): each starts
    at its head height (mm) beside the spine and descends towards the front. `wall(psi, z)` gives
    the (x, y) mm of the inner chest wall at angle psi from the back (0) to the front (pi)."""
    bone, cartilage = [], []
    for number, z0 in enumerate(head_z):
        for side in (-1.0, 1.0):
            end = rng.uniform(0.78, 0.86) * math.pi if number < len(head_z) - 2 else rng.uniform(0.5, 0.6) * math.pi
            drop = rng.uniform(55, 80)
            psi = np.linspace(0.1 * math.pi, end, 24)
            zs = z0 - drop * (psi / math.pi) ** 1.4
            x, y = wall(psi, zs)
            points = np.stack([side * x, y, zs], axis=1)
            radius = np.full(len(psi), rng.uniform(4.0, 5.2))
            split = int(len(psi) * 0.8) if end > 0.7 * math.pi else len(psi)
            bone.append(_Tubes.path(points[:split], radius[:split]))
            if split < len(psi):
                cartilage.append(_Tubes.path(points[split - 1:], radius[split - 1:] * 0.9))
    return _Tubes.join(bone), (_Tubes.join(cartilage) if cartilage else None)


def _paint_bone_tubes(canvas: _Canvas, tubes: _Tubes, cortical: float, spine: _Spine) -> None:
    """Tube bones (ribs, clavicles): cortical shell ~1.2 mm around a trabecular core."""
    hits = canvas.hits(tubes)
    if hits is None:
        return
    outer = canvas.splat(hits.flat, canvas.tube_weight(hits.distance, hits.radius))
    if not outer.any():
        return
    inner = canvas.splat(hits.flat, canvas.tube_weight(hits.distance, hits.radius - 1.2))
    rows = np.flatnonzero(outer.any(axis=1))
    cols = np.flatnonzero(outer.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    canvas.hu += outer * (cortical - canvas.hu)
    core = spine.trabecular_hu(canvas, window, spine.marrow)
    canvas.hu[window] += inner[window] * (core - canvas.hu[window])


# --- head ---------------------------------------------------------------------------------------

class _Head:
    """Head from the hard palate (level 0) to the high convexity (140 mm)."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        self.outline = _Outline(rng, u(66, 76), u(84, 96), 0.012)
        self.cy = u(-4, 4)
        self.top = u(165, 180)
        self.scalp, self.outer_table, self.diploe, self.inner_table = u(4, 6.5), u(1.2, 2.2), u(1.5, 4.0), u(0.9, 1.5)
        self.cortical, self.diploe_hu = u(1500, 1900), u(450, 700)
        self.csf_gap, self.sulcus = u(0.6, 2.5), u(0.5, 1.4)
        self.grey, self.white = u(36, 42), u(24, 30)
        self.ventricle = u(0.75, 1.5)
        # gyral field over (arc length, depth below the brain surface, z) mm: slower along the
        # depth, so sulci run inwards from the surface
        self.gyri = _Waves(rng, 40, 12.0, 24.0, z_scale=0.6)
        self.gyri.k[:, 1] *= 0.5
        self.gyri_depth = _Waves(rng, 8, 40.0, 90.0)
        self.folia = _Waves(rng, 32, 6.0, 10.0)
        self.trabecular = _Waves(rng, 48, 1.6, 4.5)
        self.texture = _Waves(rng, 24, 15.0, 60.0)
        a, b = self.outline.a0, self.outline.b0
        self.brain_a, self.brain_b = a - 10, b - 10
        self.ventricles = self._ventricles(rng)
        self.mastoid = [self._cells(rng, _Ellipsoid((s * (a - 14), self.cy + 0.3 * b, 28), (12, 13, 13)),
                                    u(2.5, 4.5)) for s in (-1, 1)]
        self.ethmoid = self._cells(rng, _Ellipsoid((0, self.cy - 0.62 * b, 36), (11, 16, 11)), u(3.5, 5.0))
        self.sinus_fluid = (u(5, 25), u(0.0, 0.6) if u() < 0.35 else 0.0)
        self.calcified = u() < 0.6

    def _ventricles(self, rng: np.random.Generator) -> _Tubes:
        """Lateral ventricles as C-shaped tube paths (frontal horn, body, atrium, occipital and
        temporal horns) in head coordinates (mm)."""
        b, v, cy = self.brain_b, self.ventricle, self.cy
        parts = []
        for side in (-1, 1):
            jitter = rng.normal(0.0, 2.0, (8, 3))
            main = np.array([[5.5, -0.34 * b, 84], [6.5, -0.24 * b, 95], [8.0, -0.05 * b, 100],
                             [12.0, 0.15 * b, 97], [19.0, 0.32 * b, 86], [16.0, 0.52 * b, 80]]) + jitter[:6]
            temporal = np.array([main[4], [28.0, 0.25 * b, 68], [31.0, 0.02 * b, 55], [28.0, -0.14 * b, 50]])
            temporal[1:] += jitter[6:8].mean(axis=0)
            for points, radii in ((main, [3.2, 4.2, 3.6, 4.0, 6.0, 2.0]), (temporal, [5.0, 2.6, 1.8, 1.0])):
                points = points * [side * (0.75 + 0.25 * v), 1, 1] + [0, cy, 0]
                parts.append(_Tubes.path(points, np.asarray(radii) * v))
        return _Tubes.join(parts)

    @staticmethod
    def _cells(rng, body: _Ellipsoid, cell_mm: float):
        count = int(4.19 * np.prod(body.semi) / cell_mm ** 3)
        local = rng.uniform(-1, 1, (count * 2, 3))
        local = local[np.sum(local ** 2, axis=1) < 1][:count]
        return body, np.asarray(body.centre) + local * body.semi

    def floor(self, x, y):
        """Height (mm) of the floor of the cranial cavity over (x, y) mm: anterior fossa over the
        orbits, deeper middle fossae, sella, posterior fossa and foramen magnum."""
        xn, yn = x / self.brain_a, (y - self.cy) / self.brain_b
        g = lambda cx, cyy, sx, sy: np.exp(-0.5 * (((xn - cx) / sx) ** 2 + ((yn - cyy) / sy) ** 2))
        ridge = np.exp(-0.5 * ((np.abs(xn) * 0.55 - (yn - 0.05) * 0.83 - 0.12) / 0.06) ** 2) \
            * np.exp(-0.5 * (((np.abs(xn) - 0.45) / 0.35) ** 2 + ((yn - 0.2) / 0.3) ** 2))
        return (54 - 30 * (g(0.6, -0.05, 0.3, 0.22) + g(-0.6, -0.05, 0.3, 0.22))
                - 50 * g(0, 0.62, 0.55, 0.38) - 8 * g(0, -0.08, 0.12, 0.1) - 45 * g(0, 0.3, 0.13, 0.1)
                + 28 * ridge + 20 * np.clip(-yn - 0.3, 0.0, None) ** 1.5 + 8 * xn * xn)

    def paint(self, canvas: _Canvas) -> float:
        """Paints the head's cut at the canvas height; returns the y (mm) where the table lies."""
        z = canvas.z
        rise = _smoothstep(z, -40.0, 75.0)
        top = np.sqrt(max(0.0, 1.0 - (max(0.0, z - 75.0) / (self.top - 75.0)) ** 2))
        a = self.outline.a0 * (0.85 + 0.15 * rise) * top
        b = self.outline.b0 * (0.95 + 0.05 * rise) * top
        reach = max(a, b) * 1.15
        window = canvas.window(-reach, reach, self.cy - reach, self.cy + reach)
        x, y = canvas.grid(window)
        depth, cos, sin = self.outline.depth(x, y, a, b, self.cy)
        hu = canvas.hu[window]
        temporalis = 7.0 * np.exp(-((np.abs(cos) - 1.0) / 0.25) ** 2) * (1 - _smoothstep(z, 60, 100))
        outer = depth - self.scalp - temporalis
        diploe = self.diploe * (1.0 + 0.35 * sin * sin)
        inner = outer - self.outer_table - diploe - self.inner_table
        hu += canvas.edge(depth) * (55.0 - hu)
        hu += canvas.edge(depth - 1.5) * (-40.0 - hu) * (1 - _smoothstep(depth, 2.5, 4.0))
        hu += canvas.edge(outer) * (self.cortical - hu)
        trab = self.diploe_hu + 250.0 * np.tanh(1.5 * self.trabecular.grid(x[0], y[:, 0], z, canvas.spacing))
        hu += canvas.edge(outer - self.outer_table) * (trab - hu)
        hu += canvas.edge(outer - self.outer_table - diploe) * (self.cortical - hu)
        hu += canvas.edge(inner) * (CSF - hu)
        self._brain(canvas, window, x, y, inner - self.csf_gap, cos, sin)
        self._deep(canvas)
        if z < 75:
            self._skull_base(canvas, window, x, y, depth)
        _texture(canvas, self.texture, window, 1.5)
        return self.cy + self.outline.b0 * 1.05

    def _brain(self, canvas, window, x, y, depth, cos, sin) -> None:
        """Grey/white matter with sulci: CSF where the gyral field crosses zero (|field| /
        gradient < half the sulcal width) down to a depth that varies, grey cortex ~2.7 mm around."""
        z, hu = canvas.z, canvas.hu[window]
        hu += canvas.edge(depth) * (self.white - hu)
        shell = (depth > -canvas.spacing) & (depth < 24.0)
        d = depth[shell]
        r0 = 0.5 * (self.brain_a + self.brain_b)
        field, gu, gv = self.gyri.at(np.arctan2(sin[shell], cos[shell]) * r0, d, z)
        dist = np.abs(field) / (np.hypot(gu, gv) + 0.02)
        xs, ys = np.broadcast_to(x, depth.shape)[shell], np.broadcast_to(y, depth.shape)[shell]
        sulcal_depth = 13.0 + 5.0 * self.gyri_depth.at(xs, ys, z)[0]
        cortex = 2.7
        half = self.sulcus * (0.6 + 0.6 * _smoothstep(d, 0, 8))
        grey = np.maximum(canvas.edge(cortex - d), canvas.edge(half + cortex - dist) * canvas.edge(sulcal_depth + cortex - d))
        csf = canvas.edge(half - dist) * canvas.edge(sulcal_depth - d)
        value = self.white + (self.grey - self.white) * grey
        value += (CSF - value) * csf
        hu[shell] += canvas.edge(d) * (value - hu[shell])
        if z < 52:
            cerebellum = (depth > -canvas.spacing) & (y - self.cy > 0.08 * self.brain_b)
            px, py = np.broadcast_to(x, depth.shape)[cerebellum], np.broadcast_to(y, depth.shape)[cerebellum]
            folia, fx, fy = self.folia.at(px, py, z)
            fdist = np.abs(folia) / (np.hypot(fx, fy) + 0.02)
            d = depth[cerebellum]
            fade = (1 - _smoothstep(z, 44, 52)) * _smoothstep((py - self.cy) / self.brain_b, 0.08, 0.2)
            value = self.grey - 3.0 + 3.0 * canvas.edge(2.0 - d)
            value += (CSF - value) * canvas.edge(0.35 - fdist) * canvas.edge(12.0 - d)
            hu[cerebellum] += fade * canvas.edge(d) * (value - hu[cerebellum])
        yn = (y - self.cy) / self.brain_b
        fissure = np.maximum(_smoothstep(z, 98, 104),
                             np.maximum(_smoothstep(z, 45, 50) * _smoothstep(-yn, 0.28, 0.34),
                                        _smoothstep(z, 52, 58) * _smoothstep(yn, 0.4, 0.46)))
        mid = x - 1.5 * np.sin(yn * 2.0)
        brain = canvas.edge(depth)
        hu += brain * fissure * canvas.edge(1.2 + 0.8 * self.csf_gap - np.abs(mid)) * (CSF - hu)
        hu += brain * fissure * canvas.edge(0.45 - np.abs(mid)) * (85.0 - hu)

    def _deep(self, canvas: _Canvas) -> None:
        """Deep grey nuclei, Sylvian fissures, ventricles, cisterns, brainstem, calcifications."""
        b, cy, v = self.brain_b, self.cy, self.ventricle
        for side in (-1, 1):
            canvas.paint(canvas.ellipsoid(_Ellipsoid((side * 15, cy - 0.2 * b, 86), (6, 9, 11))), self.grey)
            lentiform = _Ellipsoid((side * 24, cy - 0.04 * b, 74), (6, 15, 11), _rotation(side * 0.25))
            canvas.paint(canvas.ellipsoid(lentiform), self.grey + 1)
            canvas.paint(canvas.ellipsoid(_Ellipsoid((side * 10, cy + 0.06 * b, 76), (9, 13, 11))), self.grey - 2)
            sylvian = _Ellipsoid((side * (self.brain_a - 16), cy - 0.08 * b, 70), (18, 1.2 + 1.2 * v, 9), _rotation(side * 0.45))
            canvas.paint(canvas.ellipsoid(sylvian, 2.5), self.grey)
            canvas.paint(canvas.ellipsoid(sylvian), CSF)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy - 0.12 * b, 53), (13, 9, 4.5))), CSF)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy + 0.1 * b, 35), (13, 11, 24))), CSF)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy + 0.1 * b, 35), (11.5, 9.5, 24))), self.white + 3)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy + 0.02 * b, 58), (13, 11, 7))), CSF)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy + 0.02 * b, 58), (11, 9, 7))), self.white + 4)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy + 0.3 * b, 27), (5 * v, 3.5 * v, 7))), CSF)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy - 0.02 * b, 74), (1.2 + 1.2 * v, 12, 8))), CSF)
        canvas.paint_tubes(self.ventricles, [(CSF, 0.0)])
        if self.calcified:
            for side in (-1, 1):
                plexus = _Ellipsoid((side * 18.5 * (0.75 + 0.25 * v), cy + 0.32 * b, 86), (2.5, 3, 2.5))
                canvas.paint(canvas.ellipsoid(plexus), 220.0)
            canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy + 0.14 * b, 74), (2, 2, 2))), 180.0)

    def _skull_base(self, canvas, window, x, y, depth) -> None:
        """Below the cranial floor: skull base bone, soft tissue of the face and neck, orbits,
        nasal cavity, paranasal sinuses and mastoid air cells."""
        z, b, cy, sp = canvas.z, self.outline.b0, self.cy, canvas.spacing
        floor = self.floor(x, y)
        gy, gx = np.gradient(floor, sp)
        slope = np.maximum(np.hypot(gx, gy), 0.15)
        below = canvas.edge((floor - z) / slope) * canvas.edge(depth - self.scalp)
        base = canvas.edge((floor - 4.0 - z) / slope)
        hu = canvas.hu[window]
        trab = self.diploe_hu + 200.0 * np.tanh(1.5 * self.trabecular.grid(x[0], y[:, 0], z, sp))
        tissue = trab + (MUSCLE - trab) * base
        hu += below * (tissue - hu)
        for side in (-1, 1):
            petrous = _Ellipsoid((side * 0.5 * self.brain_a, cy + 0.12 * b, 33), (30, 8, 9), _rotation(side * 0.65))
            canvas.paint(canvas.ellipsoid(petrous), self.cortical + 150)
            body, seeds = self.mastoid[(side + 1) // 2]
            canvas.paint(canvas.ellipsoid(body, 1.5), self.cortical)
            canvas.honeycomb(body, seeds, 0.7, AIR, self.cortical * 0.8)
            orbit = _Ellipsoid((side * 31, cy - 0.6 * b, 33), (15, 21, 15), _rotation(side * -0.3))
            canvas.paint(canvas.ellipsoid(orbit, 2.0), self.cortical * 0.9)
            canvas.paint(canvas.ellipsoid(orbit), FAT + 20)
            canvas.paint(canvas.ellipsoid(_Ellipsoid((side * 33, cy - 0.76 * b, 33), (12, 12, 12))), 45.0)
            canvas.paint(canvas.ellipsoid(_Ellipsoid((side * 33, cy - 0.76 * b, 33), (11, 11, 11))), 10.0)
            canvas.paint(canvas.ellipsoid(_Ellipsoid((side * 33, cy - 0.76 * b - 9.5, 33), (4.5, 1.8, 4.5))), 110.0)
            canvas.paint_tubes(_Tubes.path([[side * 30, cy - 0.66 * b, 33], [side * 9, cy - 0.3 * b, 44]], [2.4, 2.0]),
                               [(35.0, 0.0)])
            maxillary = _Ellipsoid((side * 26, cy - 0.62 * b, 10), (14, 17, 17), _rotation(side * 0.15))
            canvas.paint(canvas.ellipsoid(maxillary, 1.6), self.cortical * 0.8)
            canvas.paint(canvas.ellipsoid(maxillary), AIR)
            fluid_hu, fluid = self.sinus_fluid
            if fluid > 0:
                region = canvas.ellipsoid(maxillary)
                if region is not None:
                    (rows, cols), weight = region
                    level = maxillary.centre[1] + maxillary.semi[1] * (1 - 2 * fluid)
                    canvas.paint(((rows, cols), weight * canvas.edge(canvas.grid((rows, cols))[1] - level)), fluid_hu)
            zygoma = _Tubes.path([[side * 52, cy - 0.6 * b, 28], [side * (self.brain_a + 4), cy - 0.2 * b, 27],
                                  [side * (self.brain_a + 2), cy + 0.05 * b, 28]], [4.0, 3.0, 3.5])
            canvas.paint_tubes(zygoma, [(self.cortical * 0.9, 0.0), (self.diploe_hu, -1.2)])
        nasal = _Ellipsoid((0, cy - 0.72 * b, 14), (13, 26, 22))
        canvas.paint(canvas.ellipsoid(nasal, 1.5), self.cortical * 0.7)
        canvas.paint(canvas.ellipsoid(nasal), AIR)
        for side in (-1, 1):
            for height, reach in ((4, 5.5), (14, 6.5), (24, 4.5)):
                canvas.paint(canvas.ellipsoid(_Ellipsoid((side * 11, cy - 0.72 * b, height), (reach, 18, 3.5))), MUSCLE - 5)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy - 0.74 * b, 16), (1.0, 24, 20))), self.cortical * 0.5)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0, cy - 0.2 * b, 8), (14, 9, 13))), AIR)
        sphenoid = _Ellipsoid((0, cy - 0.32 * b, 32), (15, 12, 11))
        canvas.paint(canvas.ellipsoid(sphenoid, 1.5), self.cortical)
        canvas.paint(canvas.ellipsoid(sphenoid), AIR)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((2.5, cy - 0.32 * b, 32), (0.6, 11, 10), _rotation(0.2))), self.cortical * 0.8)
        body, seeds = self.ethmoid
        canvas.paint(canvas.ellipsoid(body, 1.2), self.cortical * 0.8)
        canvas.honeycomb(body, seeds, 0.6, AIR, self.cortical * 0.7)
        frontal = _Ellipsoid((0, cy - 0.86 * b, 62), (16, 6, 11))
        canvas.paint(canvas.ellipsoid(frontal, 1.2), self.cortical)
        canvas.honeycomb(frontal, np.array([[-6, cy - 0.86 * b, 62], [7, cy - 0.86 * b, 62]]), 1.0, AIR, self.cortical)


# --- thorax -------------------------------------------------------------------------------------

class _Trunk:
    """What thorax and abdomen share: outline, wall layers, spine, ribs, table height."""

    def __init__(self, rng: np.random.Generator, a: float, b: float, fat: float):
        self.outline = _Outline(rng, a, b, 0.02)
        self.fat = fat
        self.muscle_hu = rng.uniform(45, 58)
        self.septa = _Waves(rng, 48, 8.0, 25.0)
        self.texture = _Waves(rng, 32, 15.0, 60.0)
        self.table_y = b + 4.0

    def axes(self, z):
        """Semi-axes a, b and centre y (mm) of the outline at height z (the back lies on the table)."""
        raise NotImplementedError

    def muscle(self, cos, sin, z):
        """Muscle thickness (mm) under the fat in direction (cos, sin)."""
        raise NotImplementedError

    def wall(self, psi, z):
        """(x, y) mm of the inner chest/abdominal wall at angle psi from the back, right side."""
        a, b, cy = self.axes(z)
        cos, sin = np.sin(psi), np.cos(psi)
        radius = self.outline.radius(cos, sin, a, b) - self.fat - self.muscle(cos, sin, z) - 2.0
        return radius * cos, cy + radius * sin

    def cavity(self, x, y, z):
        """Signed depth (mm) of points inside the body cavity (within the muscle layer)."""
        a, b, cy = self.axes(z)
        depth, cos, sin = self.outline.depth(x, y, a, b, cy)
        return depth - self.fat - self.muscle(cos, sin, z) - 3.0

    def paint_wall(self, canvas: _Canvas, cavity_hu: float):
        """Skin, subcutaneous fat, muscle and the cavity filled with `cavity_hu`; returns the body
        window and the cavity depth map on it (mm)."""
        a, b, cy = (float(v) for v in self.axes(canvas.z))
        reach = max(a, b) * 1.15
        window = canvas.window(-reach, reach, cy - reach, cy + reach)
        x, y = canvas.grid(window)
        depth, cos, sin = self.outline.depth(x, y, a, b, cy)
        muscle = self.muscle(cos, sin, canvas.z)
        hu = canvas.hu[window]
        hu += canvas.edge(depth) * (35.0 - hu)
        hu += canvas.edge(depth - 1.8) * (FAT - hu)
        hu += canvas.edge(depth - self.fat) * (self.muscle_hu - hu)
        hu += canvas.edge(depth - self.fat - muscle) * (FAT + 10 - hu)
        cavity = depth - self.fat - muscle - 3.0
        hu += canvas.edge(cavity) * (cavity_hu - hu)
        return window, cavity

    def finish(self, canvas: _Canvas, window) -> None:
        _fat_septa(canvas, self.septa, window)
        _texture(canvas, self.texture, window, 5.0)


class _Thorax(_Trunk):
    """Chest from the diaphragm domes (level 0) to the thoracic inlet (280 mm)."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        super().__init__(rng, u(145, 180), u(100, 125), u(6, 30))
        a, b = self.outline.a0, self.outline.b0
        self.pectoral = u(8, 18)
        self.spine_y = b - self.fat - 38.0
        self.spine = _Spine(rng, 16.0, 13.5, 24.0, 5.0, lambda z: self.spine_y + 6.0 * math.sin(z / 180.0 * math.pi))
        self.breast = u(0.6, 1.1) if u() < 0.5 else 0.0
        self.gland = _Waves(rng, 48, 3.0, 10.0)
        self.left_blood, self.right_blood = u(250, 400), u(200, 400)
        self.svc_hu = u(250, 700)
        self.lung_hu = u(-880, -840)
        self.heart = _Ellipsoid((0.11 * a, -0.12 * b, 62), (u(55, 65), u(40, 48), u(48, 58)), _rotation(-0.55, -0.25))
        self.lungs = [_Ellipsoid((s * 0.46 * a, 0.02 * b, 130), (0.47 * a, 0.95 * b, 160)) for s in (-1, 1)]
        self.domes = [_Ellipsoid((-0.3 * a, 0.12 * b, -70 + u(0, 10)), (0.62 * a, 1.05 * b, 150)),
                      _Ellipsoid((0.32 * a, 0.12 * b, -85 + u(0, 10)), (0.6 * a, 1.0 * b, 150))]
        self.hila = [np.array([s * 0.3 * a, self.spine_y - 45.0, 160.0]) for s in (-1, 1)]
        self.mediastinum = _Ellipsoid((5.0, self.spine_y - 52.0, 150.0), (u(24, 30), 64.0, 1e4))
        self.fissure_slope = u(0.55, 0.75)
        self.ribs, self.cartilage = _rib_tubes(rng, 300.0 - 23.0 * np.arange(12) + u(-8, 8), self.wall)
        self.vessels, self.bronchi = self._lung_trees(derive_rng(int(rng.integers(2 ** 31)), "lung-trees"))
        self.great = self._great_vessels()
        self.nodes = [(u(-25, 25), self.spine_y - u(40, 75), u(120, 230), u(3, 6)) for _ in range(int(u(3, 9)))]
        self.scapulae = [_Ellipsoid((s * 0.5 * a, 0.62 * b, 220), (42, 4.5, 55), _rotation(s * -0.6)) for s in (-1, 1)]

    def axes(self, z):
        shoulder = _smoothstep(z, 200, 280)
        a = self.outline.a0 * (0.96 - 0.06 * _smoothstep(z, 0, 120) + 0.08 * shoulder)
        b = self.outline.b0 * (0.97 + 0.05 * _smoothstep(z, 0, 120) - 0.08 * shoulder)
        return a, b, self.table_y - 4.0 - b

    def muscle(self, cos, sin, z):
        back, front = np.clip(sin, 0, 1), np.clip(-sin, 0, 1)
        back *= back
        return 6.0 + back * back * 30.0 + front * front * (self.pectoral * _smoothstep(z, 120, 200))

    def lung_inside(self, points: np.ndarray, side: int) -> np.ndarray:
        """Which points [N, 3] mm lie inside the lung of `side` (-1 right, 1 left), away from the
        mediastinum, heart, spine and diaphragm."""
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        lung = self.lungs[(side + 1) // 2]
        ok = (lung.distance(x, y, z, False) > 2) & (self.cavity(x, y, z) > 2)
        ok &= self.heart.distance(x, y, z, False) < -4
        ok &= self.domes[(side + 1) // 2].distance(x, y, z, False) < -2
        ok &= (self.mediastinum.distance(x, y, z) < -3) & (np.hypot(x, y - self.spine_y) > 35)
        return ok

    def fissure(self, x, z, side: int):
        """y (mm) of the oblique (major) fissure of the lung of `side` over (x, z) mm: it runs from
        high at the back to low at the front."""
        hilum = self.hila[(side + 1) // 2]
        return hilum[1] + (z - hilum[2]) * self.fissure_slope + 0.25 * np.abs(x - hilum[0])

    def _lung_trees(self, rng: np.random.Generator):
        """Pulmonary arteries (with bronchi alongside) and veins of both lungs as 3-D trees that
        fill each lobe from the hilum (arteries) or the left atrium (veins)."""
        arteries, veins, bronchi = [], [], []
        a, b = self.outline.a0, self.outline.b0
        for side in (-1, 1):
            hilum = self.hila[(side + 1) // 2]
            inside = functools.partial(self.lung_inside, side=side)
            low, high = [min(0, side) * a, -b, 0.0], [max(0, side) * a, b, 280.0]
            vein_root = np.array([side * 0.22 * a, self.spine_y - 38.0, 125.0])
            for tree, root, radius in ((arteries, hilum, 9.0), (veins, vein_root, 8.5)):
                points = _sample_inside(rng, inside, low, high, 9000)
                upper = points[:, 1] < self.fissure(points[:, 0], points[:, 2], side)
                lobes = [upper & (points[:, 2] > hilum[2] - 15), upper & (points[:, 2] <= hilum[2] - 15), ~upper]
                if side > 0:
                    lobes = [upper, ~upper]
                for lobe in lobes:
                    if lobe.sum() > 20:
                        share = (lobe.sum() / len(points)) ** (1 / 3)
                        tree.append(_vessel_tree(rng, root, radius * share, points[lobe]))
            for tree in arteries[-3 if side < 0 else -2:]:
                big = tree.r0 > 1.0
                offset = np.cross(tree.end - tree.start, [0.0, 0.0, 1.0])
                offset /= np.linalg.norm(offset, axis=1, keepdims=True) + 1e-9
                shift = offset[big] * (tree.r0[big] * 2.1)[:, None]
                bronchi.append(_Tubes(tree.start[big] + shift, tree.end[big] + shift, tree.r0[big], tree.r1[big]))
        return _Tubes.join(arteries + veins), _Tubes.join(bronchi)

    def _great_vessels(self):
        """(tubes, HU) of aorta, arch branches, pulmonary trunk and arteries, venae cavae, airway, oesophagus."""
        s, a = self.spine_y, self.outline.a0
        rl, rr = self.left_blood, self.right_blood
        path = _smooth_path([[-6, s - 78, 100], [-10, s - 82, 150], [-10, s - 75, 195], [0, s - 60, 212],
                             [16, s - 38, 210], [22, s - 24, 192], [20, s - 22, 120], [14, s - 20, -10]], 6.0)
        radius = np.interp(np.arange(len(path)), [0, len(path) * 0.3, len(path) * 0.6, len(path)], [16, 14, 12, 11])
        aorta = _Tubes.path(path, radius)
        branches = _Tubes.join([_Tubes.path(_smooth_path(p, 6.0), np.full(len(_smooth_path(p, 6.0)), r)) for p, r in (
            ([[-4, s - 70, 210], [-14, s - 72, 235], [-28, s - 70, 290]], 6.5),
            ([[4, s - 62, 214], [10, s - 66, 240], [14, s - 68, 290]], 4.5),
            ([[12, s - 52, 213], [24, s - 50, 240], [40, s - 45, 290]], 5.5))])
        trunk = _smooth_path([[16, s - 95, 120], [18, s - 85, 150], [14, s - 70, 165]], 5.0)
        rpa = _smooth_path([[14, s - 70, 165], [-8, s - 62, 166], [-0.3 * a, s - 45, 161]], 5.0)
        lpa = _smooth_path([[14, s - 70, 165], [30, s - 55, 170], [0.3 * a, s - 45, 161]], 5.0)
        svc = _smooth_path([[-34, s - 75, 110], [-33, s - 78, 180], [-32, s - 76, 225], [-42, s - 72, 290]], 6.0)
        lbcv = _smooth_path([[-32, s - 76, 225], [0, s - 88, 240], [40, s - 78, 255], [60, s - 70, 290]], 6.0)
        trachea = _smooth_path([[0, s - 50, 300], [0, s - 46, 230], [0, s - 40, 180]], 6.0)
        main_r = _smooth_path([[0, s - 40, 180], [-25, s - 42, 168], [-0.3 * a, s - 45 + 2.1 * 4, 160]], 5.0)
        main_l = _smooth_path([[0, s - 40, 180], [25, s - 40, 170], [0.3 * a, s - 45 + 2.1 * 4, 160]], 5.0)
        oesophagus = _smooth_path([[4, s - 30, 300], [6, s - 28, 150], [20, s - 40, -10]], 8.0)
        full = lambda p, r: _Tubes.path(p, np.full(len(p), r))
        blood = [(aorta, rl), (branches, rl), (full(trunk, 13.0), rr), (full(rpa, 11.0), rr), (full(lpa, 10.0), rr),
                 (full(svc, 10.0), self.svc_hu), (full(lbcv, 6.5), self.svc_hu * 0.8)]
        air = [(full(trachea, 9.0), 2.0), (_Tubes.join([full(main_r, 7.0), full(main_l, 6.0)]), 1.8)]
        return blood, air, full(oesophagus, 8.0)

    def paint(self, canvas: _Canvas) -> float:
        """Paints the chest's cut at the canvas height; returns the y (mm) where the table lies."""
        z = canvas.z
        window, cavity = self.paint_wall(canvas, FAT + 10)
        self._breasts(canvas)
        x, y = canvas.grid(window)
        hu = canvas.hu[window]
        lung = np.maximum(canvas.weight(canvas.ellipsoid(self.lungs[0])), canvas.weight(canvas.ellipsoid(self.lungs[1])))
        lung[window] *= canvas.edge(cavity - 1.0)
        for carved in (*self.domes, self.mediastinum):
            canvas.carve(lung, canvas.ellipsoid(carved, 2.0))
        canvas.carve(lung, canvas.ellipsoid(self.heart, 4.0))
        canvas.carve(lung, canvas.ellipse(0, self.spine.y_of_z(z), 35, 35))
        lung_w = lung[window]
        gradient = self.lung_hu + 70.0 * _smoothstep(y - self.spine_y, -150, 30)
        hu += lung_w * (gradient - hu)
        for side in (-1, 1):
            hilum = self.hila[(side + 1) // 2]
            plane = hilum[1] + (z - hilum[2]) * self.fissure_slope + 0.25 * np.abs(x - hilum[0])
            dist = np.abs(y - plane) / math.sqrt(1.0 + 0.25 ** 2)
            line = np.exp(-(dist / max(0.4, 0.5 * canvas.spacing)) ** 2) * min(1.0, 0.7 / canvas.spacing)
            hu += lung_w * canvas.edge(x * side) * line * 260.0
        for side, dome in zip((-1, 1), self.domes):
            canvas.paint(canvas.ellipsoid(dome), 60.0 if side < 0 else 50.0)
        canvas.paint(canvas.ellipsoid(_Ellipsoid((0.45 * self.outline.a0, -0.2 * self.outline.b0, -20), (40, 35, 40))), AIR)
        canvas.paint_tubes(self.vessels, [(BLOOD, 0.0)], lung)
        self._bronchi(canvas, lung)
        self._mediastinum(canvas)
        _paint_bone_tubes(canvas, self.ribs, self.spine.cortical * 1.1, self.spine)
        if self.cartilage is not None:
            canvas.paint_tubes(self.cartilage, [(140.0, 0.0)])
        self._sternum(canvas)
        for scapula in self.scapulae:
            canvas.paint(canvas.ellipsoid(scapula), self.spine.cortical)
            canvas.paint(canvas.ellipsoid(scapula, -1.2), self.spine.marrow)
        self.spine.paint(canvas)
        self.finish(canvas, window)
        return self.table_y

    def _bronchi(self, canvas: _Canvas, mask: np.ndarray) -> None:
        hits = canvas.hits(self.bronchi)
        if hits is None:
            return
        wall = np.maximum(0.35, 0.18 * hits.radius)
        outer = canvas.splat(hits.flat, canvas.tube_weight(hits.distance, hits.radius)) * mask
        lumen = canvas.splat(hits.flat, canvas.tube_weight(hits.distance, hits.radius - wall)) * mask
        canvas.hu += outer * (-20.0 - canvas.hu)
        canvas.hu += lumen * (AIR + 20 - canvas.hu)

    def _breasts(self, canvas: _Canvas) -> None:
        if not self.breast:
            return
        a, b, cy = (float(v) for v in self.axes(canvas.z))
        for side in (-1, 1):
            body = _Ellipsoid((side * 0.42 * a, cy - b + 8, 150), (60 * self.breast, 45 * self.breast, 55 * self.breast),
                              _rotation(side * 0.3))
            region = canvas.ellipsoid(body)
            if region is None:
                continue
            (rows, cols), weight = region
            x, y = canvas.grid((rows, cols))
            trunk_depth = self.outline.depth(x, y, a, b, cy)[0]
            weight = weight * (1.0 - canvas.edge(trunk_depth - self.fat + 2.0))
            canvas.paint(((rows, cols), weight), 35.0)
            field = self.gland.grid(x[0], y[:, 0], canvas.z, canvas.spacing)
            inside = body.distance(x, y, canvas.z)
            core = _smoothstep(inside, 5.0, 30.0)
            gland = _smoothstep(field + 1.8 * core - 1.2, -0.15, 0.15)
            canvas.paint(((rows, cols), canvas.edge(inside - 1.8) * weight), FAT + 135.0 * gland)

    def _mediastinum(self, canvas: _Canvas) -> None:
        h = self.heart
        canvas.paint(canvas.ellipsoid(h, 5.0), FAT)
        canvas.paint(canvas.ellipsoid(h, 1.0), 30.0)
        canvas.paint(canvas.ellipsoid(h), MUSCLE)
        c, r = np.asarray(h.centre), h.rotation
        chamber = lambda offset, semi, hu: canvas.paint(canvas.ellipsoid(_Ellipsoid(tuple(c + r @ offset), semi, r)), hu)
        chamber(np.array([12.0, 14.0, -8.0]), (30.0, 20.0, 34.0), self.left_blood)
        chamber(np.array([-6.0, -20.0, -6.0]), (34.0, 13.0, 36.0), self.right_blood)
        chamber(np.array([-30.0, 28.0, 28.0]), (22.0, 15.0, 17.0), self.left_blood)
        chamber(np.array([-44.0, -4.0, 18.0]), (16.0, 18.0, 24.0), self.right_blood)
        chamber(np.array([20.0, 10.0, -14.0]), (6.0, 4.0, 14.0), MUSCLE)
        chamber(np.array([16.0, 24.0, -10.0]), (5.0, 4.0, 12.0), MUSCLE)
        for x0, y0, z0, rad in self.nodes:
            canvas.paint(canvas.ellipsoid(_Ellipsoid((x0, y0, z0), (rad, rad * 0.8, rad))), 45.0)
        blood, air, oesophagus = self.great
        for tubes, hu in blood:
            canvas.paint_tubes(tubes, [(hu, 0.0)])
        for tubes, wall in air:
            canvas.paint_tubes(tubes, [(40.0, 0.0), (AIR, -wall)])
        canvas.paint_tubes(oesophagus, [(45.0, 0.0), (AIR, -6.5)])

    def _sternum(self, canvas: _Canvas) -> None:
        z = canvas.z
        if not 95 < z < 275:
            return
        a, b, cy = (float(v) for v in self.axes(z))
        depth_front = self.fat + self.pectoral * float(_smoothstep(z, 120, 200)) + 10.0
        width = 9.0 + 8.0 * float(_smoothstep(z, 200, 240)) - 5.0 * float(1 - _smoothstep(z, 95, 125))
        y = cy - b + depth_front
        canvas.paint(canvas.ellipse(0, y, width, 6.0), self.spine.cortical)
        inner = canvas.ellipse(0, y, width - 1.3, 4.7)
        if inner is not None:
            canvas.paint(inner, self.spine.trabecular_hu(canvas, inner[0], self.spine.marrow))


# --- abdomen ------------------------------------------------------------------------------------

class _Abdomen(_Trunk):
    """Abdomen and pelvis from the femoral heads (level 0) to the liver dome (360 mm)."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        super().__init__(rng, u(150, 185), u(105, 130), u(8, 40))
        a, b = self.outline.a0, self.outline.b0
        self.spine_y = b - self.fat - 45.0
        self.spine = _Spine(rng, 22.0, 16.5, 34.0, 9.0, lambda z: self.spine_y - 8.0 * _smoothstep(z, 120, 260),
                            bottom_mm=128.0)
        s = self.spine_y
        self.aorta_hu, self.vein_hu, self.portal_hu = u(170, 300), u(120, 170), u(160, 210)
        self.liver_hu, self.spleen_hu, self.kidney_hu = u(95, 120), u(105, 125), u(150, 200)
        self.oral = u(150, 300) if u() < 0.4 else None
        self.liver = [_Ellipsoid((-0.45 * a, -0.05 * b, 300), (0.5 * a, 0.78 * b, 80), _rotation(0.1)),
                      _Ellipsoid((0.05 * a, -0.42 * b, 322), (0.42 * a, 0.4 * b, 42), _rotation(-0.3))]
        self.spleen = _Ellipsoid((0.62 * a, 0.3 * b, 305), (0.2 * a, 0.45 * b, 50), _rotation(0.6))
        self.stomach = _Ellipsoid((0.3 * a, -0.25 * b, 300), (0.3 * a, 0.38 * b, 50), _rotation(-0.3))
        self.stomach_level = u(-0.6, 0.3)
        self.gallbladder = _Ellipsoid((-0.25 * a, -0.38 * b, 262), (14, 28, 24), _rotation(0.4)) if u() < 0.85 else None
        self.kidneys = [_Ellipsoid((side * 66, s - 2, u(215, 240)), (27, 23, 55), _rotation(side * 0.5, side * 0.15))
                        for side in (-1, 1)]
        self.lung_bases = [_Ellipsoid((side * 0.45 * a, 0.1 * b, 480), (0.45 * a, 0.85 * b, 160)) for side in (-1, 1)]
        self.ribs, self.cartilage = _rib_tubes(rng, 450.0 - 23.0 * np.arange(6) + u(-8, 8), self.wall)
        fill = u(0.6, 1.2)
        self.bladder = _Ellipsoid((0, -0.35 * b, 35), (38 * fill, 32 * fill, 32 * fill))
        self.femoral = u(22, 26)
        self.vessels = self._vessels(rng)
        self.organ_trees = self._organ_trees(derive_rng(int(rng.integers(2 ** 31)), "abdomen-trees"))
        self.bowel = self._bowel(rng)
        self.stool = _Waves(rng, 32, 2.5, 8.0)

    def axes(self, z):
        hips = 1 - _smoothstep(z, 60, 150)
        a = self.outline.a0 * (0.92 + 0.1 * hips + 0.04 * _smoothstep(z, 250, 360))
        b = self.outline.b0 * (1.0 - 0.04 * hips)
        return a, b, self.table_y - 4.0 - b

    def muscle(self, cos, sin, z):
        back = np.clip(sin, 0, 1)
        return 9.0 + back * back * back * (38.0 + 25.0 * (1 - _smoothstep(z, 40, 120)))

    def _vessels(self, rng: np.random.Generator):
        s, a = self.spine_y, self.outline.a0
        full = lambda p, r: _Tubes.path(p, np.full(len(p), r))
        aorta = full(_smooth_path([[10, s - 33, 380], [10, s - 34, 250], [8, s - 36, 135]], 8.0), rng.uniform(9, 12))
        ivc = full(_smooth_path([[-22, s - 25, 380], [-22, s - 30, 250], [-18, s - 34, 125]], 8.0), rng.uniform(10, 12))
        arteries, veins = [aorta], [ivc]
        for side in (-1, 1):
            arteries.append(full(_smooth_path([[8, s - 36, 135], [side * 40, s - 30, 80], [side * 62, s - 55, 30],
                                               [side * 66, s - 75, -20]], 6.0), 6.0))
            veins.append(full(_smooth_path([[-18, s - 34, 125], [side * 38, s - 18, 80], [side * 58, s - 45, 30],
                                            [side * 62, s - 68, -20]], 6.0), 7.5))
            kidney = self.kidneys[(side + 1) // 2].centre
            renal = [[10, s - 34, kidney[2] + 8], [side * 45, kidney[1] - 8, kidney[2] + 4]]
            arteries.append(full(_smooth_path(renal, 5.0), 2.8))
            veins.append(full(_smooth_path([[-22 if side < 0 else 10, s - 40 if side > 0 else s - 28, kidney[2] + 10],
                                            [side * 45, kidney[1] - 14, kidney[2] + 6]], 5.0), 4.5))
        sma = full(_smooth_path([[10, s - 40, 262], [8, s - 62, 245], [2, s - 72, 200]], 5.0), 3.5)
        portal = [full(_smooth_path([[-4, s - 62, 258], [-30, s - 70, 282], [-60, s - 60, 292]], 5.0), 7.0),
                  full(_smooth_path([[-4, s - 62, 258], [-8, s - 78, 200]], 5.0), 5.5),
                  full(_smooth_path([[-4, s - 62, 258], [0.25 * a, s - 40, 272], [0.5 * a, s - 20, 285]], 6.0), 4.5)]
        return {"arteries": _Tubes.join(arteries + [sma]), "veins": _Tubes.join(veins), "portal": _Tubes.join(portal)}

    def in_liver(self, points: np.ndarray) -> np.ndarray:
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        return np.maximum(self.liver[0].distance(x, y, z, False), self.liver[1].distance(x, y, z, False)) > 3

    def _organ_trees(self, rng: np.random.Generator):
        """Portal and hepatic vein trees in the liver; mesenteric vessels in the mesentery."""
        s, a, b = self.spine_y, self.outline.a0, self.outline.b0
        low, high = [-a, -b, 200.0], [0.6 * a, b, 400.0]
        portal = _vessel_tree(rng, [-60, s - 60, 292], 7.0, _sample_inside(rng, self.in_liver, low, high, 5000))
        hepatic = _vessel_tree(rng, [-22, s - 25, 355], 7.0, _sample_inside(rng, self.in_liver, low, high, 5000))
        mesentery = _Ellipsoid((0, -0.2 * b, 160), (0.6 * a, 0.55 * b, 110))
        inside = lambda p: mesentery.distance(p[:, 0], p[:, 1], p[:, 2], False) > 0
        mesenteric = _vessel_tree(rng, [2, s - 72, 200], 4.0, _sample_inside(rng, inside, low=[-a, -b, 40], high=[a, b, 280],
                                                                             count=2500))
        return {"portal": portal, "hepatic": hepatic, "mesenteric": mesenteric}

    def _bowel(self, rng: np.random.Generator):
        """Small-bowel loops and the colon as tube paths with wall, content and a gas-fluid level:
        (tubes, wall mm, content HU per segment, gas depth fraction per segment)."""
        a, b, s = self.outline.a0, self.outline.b0, self.spine_y
        cavity = _Ellipsoid((0, -0.2 * b, 150), (0.62 * a, 0.58 * b, 115))
        tubes, walls, contents, gas = [], [], [], []
        for _ in range(int(rng.integers(10, 26))):
            point = np.asarray(cavity.centre) + rng.uniform(-0.7, 0.7, 3) * cavity.semi
            direction = rng.normal(0, 1, 3)
            points = [point]
            for _ in range(int(rng.integers(12, 30))):
                direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.45, 3)
                direction /= np.linalg.norm(direction)
                step = points[-1] + direction * 7.0
                if cavity.distance(*step, in_plane=False) < 8:
                    direction = np.asarray(cavity.centre) - points[-1] + rng.normal(0, 20, 3)
                    direction /= np.linalg.norm(direction)
                    step = points[-1] + direction * 7.0
                points.append(step)
            path = _smooth_path(points, 6.0)
            radius = rng.uniform(8, 13)
            segment = _Tubes.path(path, np.full(len(path), radius))
            tubes.append(segment)
            walls.append(np.full(len(segment), rng.uniform(1.5, 2.8)))
            content = self.oral if self.oral is not None and rng.uniform() < 0.7 else rng.uniform(5, 30)
            contents.append(np.full(len(segment), content))
            gas.append(np.full(len(segment), rng.uniform(0.15, 0.6) if rng.uniform() < 0.35 else 0.0))
        colon = np.array([[0, s - 10, -10], [0, s - 20, 40], [20, -0.2 * b, 70], [-10, -0.3 * b, 95], [0.45 * a, 0.0, 110],
                          [0.6 * a, 0.05 * b, 170], [0.58 * a, 0.0, 250], [0.45 * a, -0.35 * b, 275], [0.1 * a, -0.7 * b, 225],
                          [-0.35 * a, -0.55 * b, 240], [-0.55 * a, -0.2 * b, 260], [-0.6 * a, 0.05 * b, 180],
                          [-0.5 * a, -0.1 * b, 100], [-0.45 * a, -0.15 * b, 75]])
        colon = colon + rng.normal(0, 6, colon.shape)
        path = _smooth_path(colon, 5.0)
        along = np.cumsum(np.r_[0, np.linalg.norm(np.diff(path, axis=0), axis=1)])
        radius = rng.uniform(15, 22) * (1 + 0.14 * np.cos(2 * np.pi * along / rng.uniform(18, 28)))
        radius = radius * np.interp(along, [0, 80, along[-1] * 0.9, along[-1]], [0.8, 1.0, 1.0, 1.3])
        segment = _Tubes.path(path, radius)
        tubes.append(segment)
        walls.append(np.full(len(segment), 2.0))
        contents.append(np.full(len(segment), np.nan))
        gas.append(np.clip(rng.uniform(0.1, 0.5) + 0.3 * np.sin(along[:-1] / 90.0 + rng.uniform(0, 6)), 0, 0.9))
        return _Tubes.join(tubes), np.concatenate(walls), np.concatenate(contents), np.concatenate(gas)

    def paint(self, canvas: _Canvas) -> float:
        """Paints the abdomen's cut at the canvas height; returns the y (mm) where the table lies."""
        z = canvas.z
        window, cavity = self.paint_wall(canvas, FAT)
        lung = np.maximum(*(canvas.weight(canvas.ellipsoid(base)) for base in self.lung_bases))
        if lung.any():
            lung[window] *= canvas.edge(cavity - 1.0)
            canvas.carve(lung, canvas.ellipse(0, self.spine.y_of_z(z), 40, 40))
            canvas.hu += lung * (-850.0 - canvas.hu)
        canvas.paint_tubes(self.organ_trees["mesenteric"], [(self.aorta_hu * 0.8, 0.0)])
        self._paint_bowel(canvas)
        self._organs(canvas)
        self._retroperitoneum(canvas)
        self._pelvis(canvas)
        _paint_bone_tubes(canvas, self.ribs, self.spine.cortical * 1.1, self.spine)
        if self.cartilage is not None:
            canvas.paint_tubes(self.cartilage, [(140.0, 0.0)])
        self.spine.paint(canvas)
        self.finish(canvas, window)
        return self.table_y

    def _retroperitoneum(self, canvas: _Canvas) -> None:
        s = self.spine_y
        for side in (-1, 1):
            psoas = _smooth_path([[side * 18, s, 270], [side * 32, s - 4, 190], [side * 48, s - 18, 100],
                                  [side * 62, s - 40, 40], [side * 70, s - 55, -20]], 6.0)
            radius = np.interp(np.arange(len(psoas)), [0, len(psoas) * 0.3, len(psoas)], [3, 16, 20])
            canvas.paint_tubes(_Tubes.path(psoas, radius), [(MUSCLE, 0.0)])
            kidney = self.kidneys[(side + 1) // 2]
            canvas.paint(canvas.ellipsoid(kidney, 12.0), FAT + 10)
            canvas.paint(canvas.ellipsoid(kidney), self.kidney_hu)
            c, r = np.asarray(kidney.centre), kidney.rotation
            for angle in np.linspace(0.4, 2 * math.pi - 0.4, 7):
                offset = np.array([math.cos(angle) * 13, 0.0, math.sin(angle) * 30])
                canvas.paint(canvas.ellipsoid(_Ellipsoid(tuple(c + r @ offset), (7, 8, 9), r)), self.kidney_hu * 0.55)
            sinus = _Ellipsoid(tuple(c + r @ np.array([0.0, -12.0, 0.0]) + np.array([-side * 12, 0, 0])), (9, 10, 24), r)
            canvas.paint(canvas.ellipsoid(sinus), FAT + 20)
            canvas.paint(canvas.ellipsoid(_Ellipsoid(sinus.centre, (4, 5, 14), r)), 10.0)
        canvas.paint_tubes(self.vessels["arteries"], [(self.aorta_hu, 0.0)])
        canvas.paint_tubes(self.vessels["veins"], [(self.vein_hu, 0.0)])
        canvas.paint_tubes(self.vessels["portal"], [(self.portal_hu, 0.0)])

    def _organs(self, canvas: _Canvas) -> None:
        for part in self.liver:
            canvas.paint(canvas.ellipsoid(part), self.liver_hu)
        canvas.paint_tubes(self.organ_trees["portal"], [(self.portal_hu, 0.0)], self._mask(canvas, self.liver))
        canvas.paint_tubes(self.organ_trees["hepatic"], [(self.vein_hu + 20, 0.0)], self._mask(canvas, self.liver))
        if self.gallbladder is not None:
            canvas.paint(canvas.ellipsoid(self.gallbladder, 1.5), 60.0)
            canvas.paint(canvas.ellipsoid(self.gallbladder), 8.0)
        canvas.paint(canvas.ellipsoid(self.spleen), self.spleen_hu)
        region = canvas.ellipsoid(self.stomach, 4.0)
        canvas.paint(region, 70.0)
        region = canvas.ellipsoid(self.stomach)
        if region is not None:
            (rows, cols), weight = region
            x, y = canvas.grid((rows, cols))
            canvas.paint(region, 25.0 + 15.0 * self.stool.grid(x[0], y[:, 0], canvas.z, canvas.spacing))
            level = self.stomach.centre[1] + self.stomach.semi[1] * self.stomach_level
            canvas.paint(((rows, cols), weight * canvas.edge(level - y)), AIR)
        s = self.spine_y
        pancreas = _smooth_path([[-40, s - 60, 250], [-5, s - 70, 258], [0.25 * self.outline.a0, s - 52, 268],
                                 [0.48 * self.outline.a0, s - 28, 282]], 5.0)
        radius = np.interp(np.arange(len(pancreas)), [0, len(pancreas) * 0.3, len(pancreas)], [14, 10, 8])
        canvas.paint_tubes(_Tubes.path(pancreas, radius), [(95.0, 0.0)])

    def _mask(self, canvas: _Canvas, parts) -> np.ndarray:
        mask = np.zeros_like(canvas.hu)
        for part in parts:
            region = canvas.ellipsoid(part, -1.0)
            if region is not None:
                (rows, cols), weight = region
                mask[rows, cols] = np.maximum(mask[rows, cols], weight)
        return mask

    def _paint_bowel(self, canvas: _Canvas) -> None:
        """Bowel: enhancing wall, content (fluid, oral contrast or mottled stool) and gas above a
        horizontal gas-fluid level (gas rises to the front, lower y)."""
        tubes, walls, contents, gas = self.bowel
        hits = canvas.hits(tubes)
        if hits is None:
            return
        seg = hits.segment
        top = np.minimum(tubes.start[seg, 1], tubes.end[seg, 1]) - hits.radius
        level = top + 2.0 * hits.radius * gas[seg]
        outer = canvas.splat(hits.flat, canvas.tube_weight(hits.distance, hits.radius))
        lumen_w = canvas.tube_weight(hits.distance, hits.radius - walls[seg])
        lumen = canvas.splat(hits.flat, lumen_w)
        content = contents[seg]
        stool = np.isnan(content)
        canvas.hu += outer * (90.0 - canvas.hu)
        fluid_hu = np.zeros_like(canvas.hu)
        np.maximum.at(fluid_hu.reshape(-1), hits.flat[~stool], np.nan_to_num(content[~stool]) + 1000.0)
        rows, cols = np.unravel_index(hits.flat, canvas.hu.shape)
        lumen_stool = canvas.splat(hits.flat[stool], lumen_w[stool])
        if lumen_stool.any():
            r, c = np.flatnonzero(lumen_stool.any(axis=1)), np.flatnonzero(lumen_stool.any(axis=0))
            window = (slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1))
            x, y = canvas.grid(window)
            field = self.stool.grid(x[0], y[:, 0], canvas.z, canvas.spacing)
            mottled = 30.0 + 40.0 * field - 930.0 * _smoothstep(field, 1.0, 1.3)
            fluid_hu[window] = np.where(lumen_stool[window] > 0, mottled + 1000.0, fluid_hu[window])
        canvas.hu += lumen * (fluid_hu - 1000.0 - canvas.hu)
        gas_w = canvas.splat(hits.flat, lumen_w * canvas.edge(level - hits.y))
        canvas.hu += gas_w * (AIR - canvas.hu)

    def sacrum_y(self, z):
        """y (mm) of the sacrum's centre at height z: it tilts backwards as it goes down."""
        return self.spine_y + 8.0 + 32.0 * (1.0 - _smoothstep(z, 30, 135))

    def _pelvis(self, canvas: _Canvas) -> None:
        """Bladder, sacrum, iliac wings (curved plates drawn as in-plane bone paths that thicken and
        shorten towards the hip), acetabula and femoral heads: cortical shell, trabecular core."""
        z, s, a = canvas.z, self.spine_y, self.outline.a0
        if z > 160:
            return
        spine = self.spine
        canvas.paint(canvas.ellipsoid(self.bladder, 2.5), 40.0)
        canvas.paint(canvas.ellipsoid(self.bladder), 8.0)
        t = float(_smoothstep(z, 50, 150))
        crest = float(_smoothstep(158.0 - z, 0.0, 10.0)) * float(_smoothstep(z - 38.0, 0.0, 10.0))
        sacrum_y = float(self.sacrum_y(z))
        wings = []
        for side in (-1, 1):
            points = [[side * (30 + 12 * t), sacrum_y + 4, z], [side * (0.42 * a + 0.1 * a * t), s - 2 - 12 * t, z],
                      [side * (0.48 * a + 0.1 * a * t), s - 38 - 40 * t, z]]
            path = _smooth_path(points, 4.0)
            wings.append(_Tubes.path(path, np.full(len(path), (4.5 + 9.0 * (1 - t)) * crest + 0.01)))
        if crest > 0.05:
            _paint_bone_tubes(canvas, _Tubes.join(wings), spine.cortical, spine)
        if z < 135:
            width = 22 + 32 * float(_smoothstep(z, 40, 130))
            canvas.paint(canvas.ellipse(0, sacrum_y, width, 15, 0.0), spine.cortical)
            inner = canvas.ellipse(0, sacrum_y, width - 1.5, 13.5)
            if inner is not None:
                canvas.paint(inner, spine.trabecular_hu(canvas, inner[0], spine.marrow))
            canvas.paint(canvas.ellipse(0, sacrum_y + 5, 7, 3.5), CSF)
        for side in (-1, 1):
            head = _Ellipsoid((side * (0.5 * a + 5), s - 45, 12), (self.femoral,) * 3)
            for grow, hu in ((9.0, spine.cortical), (7.5, None), (2.0, 60.0)):
                region = canvas.ellipsoid(head, grow)
                if region is not None:
                    (rows, cols), weight = region
                    x, _ = canvas.grid((rows, cols))
                    weight = weight * canvas.edge((head.centre[0] - x) * side + 6.0)
                    value = hu if hu is not None else spine.trabecular_hu(canvas, (rows, cols), spine.marrow)
                    canvas.paint(((rows, cols), weight), value)
            canvas.paint(canvas.ellipsoid(head), spine.cortical)
            inner = canvas.ellipsoid(head, -1.5)
            if inner is not None:
                canvas.paint(inner, spine.trabecular_hu(canvas, inner[0], spine.marrow))


# --- slices -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=6)
def _patient(site: str, seed: int, patient_index: int):
    """The 3-D anatomy of one phantom patient (drawn once from its seeded generator)."""
    rng = derive_rng(seed, "phantom-shape", patient_index)
    return {"head": _Head, "thorax": _Thorax, "abdomen": _Abdomen}[site](rng)


def _table(canvas: _Canvas, top_y: float) -> None:
    width = canvas.size * canvas.spacing * 0.45
    canvas.paint(canvas.ellipse(0, top_y + 5, width, 5), 150.0)
    canvas.paint(canvas.ellipse(0, top_y + 5, width - 8, 3.5), -900.0)


def slice_level_mm(series: PhantomSeries, slice_index: int) -> float:
    """Height (mm) of a slice above the lower end of its body site, slice 0 the top: the patient z
    of its ImagePositionPatient."""
    length = _SITE_LENGTH_MM[series.body_site]
    if series.slices < 2:
        return length / 2.0
    return length * (1.0 - slice_index / (series.slices - 1))


def anatomy_hu(series: PhantomSeries, slice_index: int, offset_mm: float = 0.0) -> np.ndarray:
    """HU float32 [size, size] of the 3-D anatomy itself in the plane `offset_mm` above the centre
    of slice `slice_index`: edges are one pixel wide (partial volume in-plane only), no scanner blur."""
    anatomy = _patient(series.body_site, series.seed, series.patient_index)
    canvas = _Canvas(series.size, series.pixel_spacing_mm, slice_level_mm(series, slice_index) + offset_mm)
    _table(canvas, anatomy.paint(canvas) + 4.0)
    return canvas.hu


def slab_offsets_mm(series: PhantomSeries) -> np.ndarray:
    """Heights (mm, relative to the slice centre) of the planes averaged into one slice: the
    centres of equal sub-slabs, one per mm of the slice thickness and at least `MIN_SLAB_PLANES`."""
    planes = max(MIN_SLAB_PLANES, math.ceil(series.slice_thickness_mm * SLAB_PLANES_PER_MM))
    return ((np.arange(planes) + 0.5) / planes - 0.5) * series.slice_thickness_mm


def phantom_hu(series: PhantomSeries, slice_index: int) -> np.ndarray:
    """The scanner's noise-free HU image float32 [size, size] of one slice (before the field-of-view
    padding): the anatomy averaged over the slab (`slab_offsets_mm` planes across the slice
    thickness), blurred in-plane by a Gaussian PSF of the series' `psf_fwhm_mm`."""
    slab = np.mean([anatomy_hu(series, slice_index, float(offset)) for offset in slab_offsets_mm(series)], axis=0)
    sigma_pixels = series.psf_fwhm_mm / FWHM_PER_SIGMA / series.pixel_spacing_mm
    return ndimage.gaussian_filter(slab, sigma_pixels, mode="nearest").astype(np.float32)


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
    ds.ConvolutionKernel = f"GAUSS {series.psf_fwhm_mm:.2f}MM"
    ds.SliceThickness = f"{series.slice_thickness_mm:.2f}"
    z = slice_level_mm(series, slice_index)
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
