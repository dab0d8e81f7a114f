"""Classical deconvolution baselines with the true PSF: Wiener and Richardson-Lucy (oracle bounds).

Pure numpy/scipy, FFT-based. Both use the PSF stored in a record (`psf` float32 `[k, k]`, centre
at index k // 2, as `pipeline.kernels` writes it) and so are upper bounds for classical methods,
which in practice would have to estimate it. Records without an image-space PSF (blur_model
`projection` or `none`: `psf` is all zero) have no oracle: `has_psf` tells them apart.

Boundaries follow the pipeline's blur: blurry = valid convolution of the sharp image extended by
reflection (`np.pad(..., mode="reflect")`) by the PSF's radius.
- Richardson-Lucy uses exactly that forward operator and its adjoint (`ReflectBlur`), so the
  border is modelled, not guessed.
- Wiener is a closed-form filter and needs a circular model: the blurry image is extended by
  reflection by the PSF's size (more up to a fast FFT length), filtered, and cropped back.

Both work on HU + 1024 (air at 0, a non-negative image as Richardson-Lucy requires; RL clips the
blurry image at -1024 HU, the low end of both metric windows); results are HU float `[H, W]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import fft, sparse

from model.metrics import DEFAULT_WINDOW_HU, psnr

AIR_OFFSET_HU = 1024.0
"""Added to HU before deconvolution so that air is 0 and the image is non-negative."""
RL_START_FLOOR = 1.0
"""Richardson-Lucy starts from the blurry image floored at this value (HU + 1024): a pixel that
starts at 0 would stay 0 for ever."""
RL_UNSEEN = 1e-3
"""Richardson-Lucy keeps the estimate of pixels whose A^T 1 is below this: (almost) no blurred pixel
sees them (image corners under some motion PSFs), and dividing by ~0 overflows."""
PSF_SUM_TOLERANCE = 1e-3
TUNING_PSNR_CAP_DB = 100.0
"""An infinite PSNR (perfect restoration) counts as this in the tuning means."""
DEFAULT_WIENER_NSR_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DEFAULT_RL_ITERATIONS_GRID = (10, 20, 50, 100, 200)


def has_psf(psf: np.ndarray) -> bool:
    """True when a record's `psf` `[k, k]` is an image-space PSF (non-zero), False for the all-zero
    placeholder of projection-blurred and registered pairs."""
    return bool(np.size(psf) and np.any(np.asarray(psf) != 0))


def odd_psf(psf: np.ndarray) -> np.ndarray:
    """The PSF as float64, odd-sized and normalised to sum 1.

    An even-sized `[k, k]` PSF (centre at index k // 2, the `scipy.ndimage.convolve` convention)
    gets a zero row and column at the end, which keeps its centre. ValueError for a PSF that is
    not square, has negative entries, or does not sum to 1 within 1e-3 (a damaged record).
    """
    kernel = np.asarray(psf, np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or not kernel.size:
        raise ValueError(f"psf must be a square [k, k] array, got shape {kernel.shape}")
    if kernel.min() < 0 or abs(kernel.sum() - 1.0) > PSF_SUM_TOLERANCE:
        raise ValueError(f"psf must be non-negative and sum to 1, got min {kernel.min():.3g}, sum {kernel.sum():.6g}")
    if kernel.shape[0] % 2 == 0:
        kernel = np.pad(kernel, ((0, 1), (0, 1)))
    return kernel / kernel.sum()


def transfer_function(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """rfft2 of an odd PSF `[k, k]` centred at the origin of a periodic grid `shape` (complex128)."""
    k = psf.shape[0]
    if k > shape[0] or k > shape[1]:
        raise ValueError(f"psf of size {k} does not fit the FFT grid {shape}")
    grid = np.zeros(shape, np.float64)
    grid[:k, :k] = psf
    return fft.rfft2(np.roll(grid, (-(k // 2), -(k // 2)), axis=(0, 1)))


def _reflect_matrix(length: int, radius: int) -> sparse.csr_array:
    """0/1 matrix `[length + 2 radius, length]` that extends a vector by reflection (numpy's `reflect`)."""
    source = np.pad(np.arange(length), radius, mode="reflect")
    rows = np.arange(len(source))
    return sparse.csr_array((np.ones(len(source)), (rows, source)), shape=(len(source), length))


class ReflectBlur:
    """The pipeline's blur as a linear operator on images `[H, W]`, with its adjoint.

    `blur(x)` = valid convolution of x extended by reflection by the PSF's radius r (equal to
    `pipeline.kernels.blur_hu` up to float rounding); `adjoint(u)` is its transpose. Both by FFT on
    a grid of at least `[H + 2r, W + 2r]` (no wrap-around), in `dtype`.
    """

    def __init__(self, psf: np.ndarray, shape: tuple[int, int], dtype=np.float32):
        kernel = odd_psf(psf)
        self.shape = (int(shape[0]), int(shape[1]))
        self.radius = kernel.shape[0] // 2
        self.dtype = np.dtype(dtype)
        height, width = self.shape
        r = self.radius
        self.extended = (height + 2 * r, width + 2 * r)
        self.grid = (fft.next_fast_len(self.extended[0], real=True), fft.next_fast_len(self.extended[1], real=True))
        complex_type = np.result_type(self.dtype, np.complex64)
        self._transfer = transfer_function(kernel, self.grid).astype(complex_type)
        self._conjugate = np.conj(self._transfer)
        self._rows_t = _reflect_matrix(height, r).T.tocsr().astype(self.dtype)
        self._columns = _reflect_matrix(width, r).astype(self.dtype)

    def _convolve(self, image: np.ndarray, transfer: np.ndarray, top: int, left: int) -> np.ndarray:
        grid = np.zeros(self.grid, self.dtype)
        grid[top:top + image.shape[0], left:left + image.shape[1]] = image
        return fft.irfft2(fft.rfft2(grid) * transfer, s=self.grid)

    def blur(self, image: np.ndarray) -> np.ndarray:
        """Blurred `[H, W]` of an image `[H, W]`, as the pipeline blurs."""
        r = self.radius
        extended = np.pad(np.asarray(image, self.dtype), r, mode="reflect")
        return self._convolve(extended, self._transfer, 0, 0)[r:r + self.shape[0], r:r + self.shape[1]]

    def adjoint(self, image: np.ndarray) -> np.ndarray:
        """Transpose of `blur` applied to `[H, W]`: correlation with the PSF, reflections folded back."""
        r = self.radius
        correlated = self._convolve(np.asarray(image, self.dtype), self._conjugate, r, r)
        extended = correlated[:self.extended[0], :self.extended[1]]
        return np.asarray(self._rows_t @ extended @ self._columns, self.dtype)


def wiener_filter_all(blurry_hu: np.ndarray, psf: np.ndarray, nsrs: Sequence[float]) -> dict[float, np.ndarray]:
    """Wiener deconvolution of blurry HU `[H, W]` with `psf` for each noise-to-signal ratio in `nsrs`.

    Filter conj(K) / (|K|^2 + nsr) on the image extended by reflection by the PSF's size (to a fast
    FFT length), with the mean removed first (so the filter's DC gain 1 / (1 + nsr) does not
    darken the image). Returns {nsr: restored HU float64 `[H, W]`}; one forward FFT for all.
    """
    if np.ndim(blurry_hu) != 2:
        raise ValueError(f"blurry_hu must be [H, W], got shape {np.shape(blurry_hu)}")
    kernel = odd_psf(psf)
    height, width = np.shape(blurry_hu)
    margin = kernel.shape[0]
    grid = (fft.next_fast_len(height + 2 * margin, real=True), fft.next_fast_len(width + 2 * margin, real=True))
    image = np.asarray(blurry_hu, np.float64) + AIR_OFFSET_HU
    padded = np.pad(image, ((margin, grid[0] - height - margin), (margin, grid[1] - width - margin)), mode="reflect")
    mean = float(padded.mean())
    spectrum = fft.rfft2(padded - mean)
    transfer = transfer_function(kernel, grid)
    power = np.abs(transfer) ** 2
    restored = {}
    for nsr in nsrs:
        if not nsr > 0:
            raise ValueError(f"Wiener noise-to-signal ratio must be > 0, got {nsr}")
        estimate = fft.irfft2(spectrum * np.conj(transfer) / (power + nsr), s=grid)
        restored[nsr] = estimate[margin:margin + height, margin:margin + width] + mean - AIR_OFFSET_HU
    return restored


def wiener_deconvolve(blurry_hu: np.ndarray, psf: np.ndarray, nsr: float) -> np.ndarray:
    """Wiener deconvolution (see `wiener_filter_all`) of blurry HU `[H, W]`: restored HU `[H, W]`."""
    return wiener_filter_all(blurry_hu, psf, [nsr])[nsr]


def richardson_lucy_all(blurry_hu: np.ndarray, psf: np.ndarray, iterations: Sequence[int],
                        dtype=np.float32) -> dict[int, np.ndarray]:
    """Richardson-Lucy deconvolution of blurry HU `[H, W]`, the estimate after each count in `iterations`.

    Works on y = max(HU + 1024, 0) with the pipeline's exact blur A (`ReflectBlur`), from
    x0 = max(y, 1): x <- x * A^T(y / A x) / A^T 1 (x kept where A^T 1 < `RL_UNSEEN`). One run to the
    largest count; returns {iterations: restored HU `[H, W]`}. FFTs in `dtype` (float32: errors far below 1 HU).
    """
    counts = sorted({int(n) for n in iterations})
    if not counts or counts[0] < 1:
        raise ValueError(f"Richardson-Lucy iterations must be >= 1, got {list(iterations)}")
    if np.ndim(blurry_hu) != 2:
        raise ValueError(f"blurry_hu must be [H, W], got shape {np.shape(blurry_hu)}")
    operator = ReflectBlur(psf, np.shape(blurry_hu), dtype)
    observed = np.maximum(np.asarray(blurry_hu, operator.dtype) + AIR_OFFSET_HU, 0)
    tiny = np.finfo(operator.dtype).tiny
    normaliser = operator.adjoint(np.ones_like(observed))
    seen = normaliser >= RL_UNSEEN
    estimate = np.maximum(observed, RL_START_FLOOR)
    restored = {}
    for step in range(1, counts[-1] + 1):
        predicted = operator.blur(estimate)
        ratio = np.divide(observed, predicted, out=np.zeros_like(observed), where=predicted > tiny)
        estimate = np.where(seen, estimate * operator.adjoint(ratio) / np.where(seen, normaliser, 1), estimate)
        if step in counts:
            restored[step] = estimate.astype(np.float64) - AIR_OFFSET_HU
    return restored


def richardson_lucy(blurry_hu: np.ndarray, psf: np.ndarray, iterations: int) -> np.ndarray:
    """Richardson-Lucy deconvolution (see `richardson_lucy_all`): restored HU `[H, W]`."""
    return richardson_lucy_all(blurry_hu, psf, [iterations])[int(iterations)]


@dataclasses.dataclass(frozen=True)
class BaselineSettings:
    """The Wiener and Richardson-Lucy settings of an evaluation and how they were chosen.

    wiener_psnr / rl_psnr: mean PSNR (dB, tuning window) on the tuning pairs per grid value;
    empty when the grid had one value (set, not tuned). tuning_pairs: how many pairs were used.
    """

    wiener_nsr: float
    rl_iterations: int
    wiener_psnr: dict[float, float] = dataclasses.field(default_factory=dict)
    rl_psnr: dict[int, float] = dataclasses.field(default_factory=dict)
    tuning_pairs: int = 0
    window: tuple[float, float] = DEFAULT_WINDOW_HU

    def restore(self, blurry_hu: np.ndarray, psf: np.ndarray) -> dict[str, np.ndarray]:
        """{"wiener_oracle": HU, "rl_oracle": HU} for one blurry image `[H, W]` and its true PSF."""
        return {
            "wiener_oracle": wiener_deconvolve(blurry_hu, psf, self.wiener_nsr),
            "rl_oracle": richardson_lucy(blurry_hu, psf, self.rl_iterations),
        }


def _best(scores: dict, prefer_last: bool) -> float:
    """The grid value with the highest mean PSNR (ties: the first, or the last if `prefer_last`)."""
    values = list(scores)
    ordered = values[::-1] if prefer_last else values
    return max(ordered, key=lambda value: scores[value])


def tune_baselines(pairs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], nsr_grid: Sequence[float],
                   iteration_grid: Sequence[int], window: tuple[float, float] = DEFAULT_WINDOW_HU) -> BaselineSettings:
    """Chooses the Wiener NSR and the Richardson-Lucy iterations by mean PSNR in `window`.

    pairs: (blurry HU `[H, W]`, sharp HU `[H, W]`, psf `[k, k]`) with an image-space PSF. Each grid
    value is scored on every pair (an infinite PSNR, a perfect restoration, counts as 100 dB in the
    mean). Ties go to the stronger regularisation
    (larger NSR, fewer iterations). A one-value grid is used as given, without reading `pairs`.
    ValueError when a grid needs tuning but `pairs` is empty.
    """
    nsrs = sorted({float(v) for v in nsr_grid})
    counts = sorted({int(v) for v in iteration_grid})
    if not nsrs or not counts:
        raise ValueError("the Wiener NSR and Richardson-Lucy iteration grids need at least one value each")
    if len(nsrs) == 1 and len(counts) == 1:
        return BaselineSettings(nsrs[0], counts[0], window=tuple(window))
    wiener_sums = dict.fromkeys(nsrs, 0.0)
    rl_sums = dict.fromkeys(counts, 0.0)
    used = 0
    for blurry, sharp, psf in pairs:
        used += 1
        if len(nsrs) > 1:
            for nsr, restored in wiener_filter_all(blurry, psf, nsrs).items():
                wiener_sums[nsr] += _capped(psnr(restored, sharp, window))
        if len(counts) > 1:
            for count, restored in richardson_lucy_all(blurry, psf, counts).items():
                rl_sums[count] += _capped(psnr(restored, sharp, window))
    if not used:
        raise ValueError("no pairs with an image-space PSF to tune the Wiener and Richardson-Lucy settings on")
    wiener_psnr = {nsr: total / used for nsr, total in wiener_sums.items()} if len(nsrs) > 1 else {}
    rl_psnr = {count: total / used for count, total in rl_sums.items()} if len(counts) > 1 else {}
    return BaselineSettings(
        wiener_nsr=_best(wiener_psnr, prefer_last=True) if wiener_psnr else nsrs[0],
        rl_iterations=int(_best(rl_psnr, prefer_last=False)) if rl_psnr else counts[0],
        wiener_psnr=wiener_psnr, rl_psnr=rl_psnr, tuning_pairs=used, window=tuple(window),
    )


def _capped(value: float) -> float:
    return min(value, TUNING_PSNR_CAP_DB) if not math.isnan(value) else value
