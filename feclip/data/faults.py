"""Horizontal band faults on HDMAP images: shared primitives and training-time injection.

A band fault (../shared/docs/hdmap.md sections 3 and 5.2) multiplies an image by `1 + A·v(y)·m(x)` and adds a
few isolated peaks on the fault row:
- `v(y) = exp(-(y - y_f)² / (2 σ_y²))`: a Gaussian row profile around the fault row `y_f` (`row_profile`);
- `m(x) ∈ [0, 1]`: discontinuous segments along x. Smooth white noise over the columns (circular Gaussian,
  sd 3 px), standardise it, threshold at its (1 - coverage) quantile, soft ramp of width 0.5 sd above the
  threshold (`segment_weights`);
- peaks: pixels on rows `y_f + {-1, 0, +1}` at columns with `m > 0.5`, each raised by an absolute value
  (`peak_positions`, `apply_band_faults`).

Pixel mask of a fault (a definition, not an observation): the pixels where the band reaches at least half of
its peak gain, `v(y)·m(x) >= 0.5` (the full width at half maximum of the band; the mask does not depend on
the amplitude A, so faint faults have masks as large as strong ones), plus every peak pixel.

`synthetic.py` renders its test faults with these primitives; `inject_band_faults` puts random band faults
into real or synthetic train normals for training. Images are never clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from feclip.errors import FeclipError

SEGMENT_SD = 3.0  # px, smoothing of the segment noise along x
SEGMENT_RAMP = 0.5  # width of the soft ramp above the threshold, in sd of the smoothed noise
PEAK_SPREAD = 1  # peaks lie on rows y_f - 1 .. y_f + 1
MASK_THRESHOLD = 0.5  # mask = v(y)·m(x) >= this, plus peak pixels


class BandFaultError(FeclipError):
    """Invalid band-fault configuration or input; the message names the key and what was expected."""


def circular_smooth(x: np.ndarray, sd: float, axes: tuple[int, ...]) -> np.ndarray:
    """Circular (periodic) Gaussian smoothing of `x` along `axes`, kernel sd `sd` in pixels, by real FFT."""
    axes = tuple(axis % x.ndim for axis in axes)
    spectrum = np.fft.rfftn(x, axes=axes)
    for axis in axes:
        shape = [1] * x.ndim
        shape[axis] = -1
        freq = np.fft.rfftfreq(x.shape[axis]) if axis == axes[-1] else np.fft.fftfreq(x.shape[axis])
        spectrum = spectrum * np.exp(-2.0 * (np.pi * sd * freq) ** 2).reshape(shape)
    return np.fft.irfftn(spectrum, s=[x.shape[axis] for axis in axes], axes=axes)


def standardize(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """`x` with zero mean and unit (population) std over `axes`."""
    centred = x - x.mean(axis=axes, keepdims=True)
    return centred / centred.std(axis=axes, keepdims=True)


def row_profile(rows: np.ndarray, sigma_y: np.ndarray, height: int) -> np.ndarray:
    """v: (N, H) Gaussian row profiles; rows (N,) fault rows, sigma_y (N,) widths in rows."""
    y = np.arange(height)[None, :]
    return np.exp(-((y - rows[:, None]) ** 2) / (2.0 * sigma_y[:, None] ** 2))


def segment_weights(noise: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """m: (N, W) segment weights in [0, 1] from white noise (N, W); coverage (N,) fraction in (0, 1]."""
    smooth = standardize(circular_smooth(noise, SEGMENT_SD, axes=(1,)), axes=(1,))
    ordered = np.sort(smooth, axis=1)
    position = (1.0 - coverage) * (noise.shape[1] - 1)  # numpy's linear quantile, one level per image
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, noise.shape[1] - 1)
    rows = np.arange(len(noise))
    threshold = ordered[rows, low] + (position - low) * (ordered[rows, high] - ordered[rows, low])
    return np.clip((smooth - threshold[:, None]) / SEGMENT_RAMP, 0.0, 1.0)


def peak_positions(
    u_col: np.ndarray, u_row: np.ndarray, segments: np.ndarray, rows: np.ndarray, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """(peak_rows, peak_cols): (N, P) int pixel positions from uniforms u_col, u_row (N, P) in [0, 1).

    Columns are drawn uniformly among those with m > 0.5 (the best-covered column when none is), rows
    uniformly among fault row ± PEAK_SPREAD, kept inside the image.
    """
    eligible = segments > 0.5
    eligible |= ~eligible.any(axis=1, keepdims=True) & (segments >= segments.max(axis=1, keepdims=True))
    counts = eligible.sum(axis=1, keepdims=True)
    rank = np.minimum((u_col * counts).astype(int), counts - 1)  # (N, P): which eligible column
    cols = np.argmax(np.cumsum(eligible, axis=1)[:, None, :] > rank[:, :, None], axis=2)
    offsets = (u_row * (2 * PEAK_SPREAD + 1)).astype(int) - PEAK_SPREAD
    return np.clip(rows[:, None] + offsets, 0, height - 1), cols


@dataclass
class BandFaults:
    """One band fault per image, as arrays over a batch of N images with H rows and W columns."""

    profile: np.ndarray  # v: (N, H) row profile
    segments: np.ndarray  # m: (N, W) segment weights in [0, 1]
    amplitude: np.ndarray  # A: (N,) band gain, image × (1 + A·v·m)
    peak_rows: np.ndarray  # (N, P) int
    peak_cols: np.ndarray  # (N, P) int
    peak_values: np.ndarray  # (N, P) value added to each peak pixel (image units); 0 = no peak


def apply_band_faults(images: np.ndarray, faults: BandFaults) -> tuple[np.ndarray, np.ndarray]:
    """(faulty, masks): images (N, H, W) with faults applied (float64, unclipped), masks (N, H, W) uint8."""
    weight = faults.profile[:, :, None] * faults.segments[:, None, :]  # (N, H, W)
    faulty = images * (1.0 + faults.amplitude[:, None, None] * weight)
    masks = weight >= MASK_THRESHOLD
    image, slot = np.nonzero(faults.peak_values > 0)
    pixels = (image, faults.peak_rows[image, slot], faults.peak_cols[image, slot])
    np.add.at(faulty, pixels, faults.peak_values[image, slot])
    masks[pixels] = True
    return faulty, masks.astype(np.uint8)


def _pair(name: str, value, low: float, high: float, integer: bool = False) -> tuple:
    """`value` as a (lo, hi) tuple with low <= lo <= hi <= high; one-line error naming `name` otherwise."""
    try:
        lo, hi = (int(v) if integer else float(v) for v in value)
    except (TypeError, ValueError):
        raise BandFaultError(f"BandFaultConfig.{name}: expected a pair (lo, hi), got {value!r}") from None
    if not low <= lo <= hi <= high:
        raise BandFaultError(f"BandFaultConfig.{name}: expected {low} <= lo <= hi <= {high}, got {value!r}")
    return lo, hi


@dataclass
class BandFaultConfig:
    """Ranges of the random band faults of `inject_band_faults`; each (lo, hi) is drawn uniformly per image.

    The defaults span faint faults (A = 0.2-0.3: the covered pixels of the fault row 1.2-1.3× brighter, about
    domain C cold, whose measured 1.32× row contrast also includes a ×1.12 global gain; peaks 0.3× the image
    mean) to strong ones (A = 1: 2× on the fault row; peaks up to 5× the image mean, like C warm).
    """

    # fault row y_f: "random" (uniform over the rows, per image) or a fixed row index
    row: str | int = "random"
    amplitude: tuple[float, float] = (0.2, 1.0)  # band gain A: image × (1 + A·v(y)·m(x))
    sigma_y: tuple[float, float] = (0.6, 1.2)  # band sd in rows (σ_y = 0.8: ≈ 3 visible rows)
    coverage: tuple[float, float] = (0.4, 0.9)  # fraction of the columns covered by segments
    n_peaks: tuple[int, int] = (0, 3)  # number of peaks, inclusive range
    peak_amplitude: tuple[float, float] = (0.3, 5.0)  # peak height × the image mean, log-uniform
    gain: tuple[float, float] = (
        1.0,
        1.0,
    )  # whole-image level factor (real C faults: ≈ ×1.12; off by default)

    def __post_init__(self) -> None:
        if not (self.row == "random" or (isinstance(self.row, int) and not isinstance(self.row, bool))):
            raise BandFaultError(
                f"BandFaultConfig.row: expected 'random' or an int row index, got {self.row!r}"
            )
        self.amplitude = _pair("amplitude", self.amplitude, 0.0, np.inf)
        self.sigma_y = _pair("sigma_y", self.sigma_y, 1e-3, np.inf)
        self.coverage = _pair("coverage", self.coverage, 1e-3, 1.0)
        self.n_peaks = _pair("n_peaks", self.n_peaks, 0, 10_000, integer=True)
        self.peak_amplitude = _pair("peak_amplitude", self.peak_amplitude, 1e-6, np.inf)
        self.gain = _pair("gain", self.gain, 0.0, np.inf)


def random_band_faults(
    images: np.ndarray, cfg: BandFaultConfig, generator: torch.Generator
) -> tuple[BandFaults, np.ndarray]:
    """(faults, gain): random faults for images (N, H, W) drawn from `generator`, and gains (N,)."""
    n, height, width = images.shape

    def uniform(shape: tuple[int, ...], lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        draw = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)
        return lo + (hi - lo) * draw.cpu().numpy()

    max_peaks = cfg.n_peaks[1]
    rows = (uniform((n,)) * height).astype(int) if cfg.row == "random" else np.full(n, cfg.row)
    amplitude, sigma_y, coverage, gain = (
        uniform((n,), *bounds) for bounds in (cfg.amplitude, cfg.sigma_y, cfg.coverage, cfg.gain)
    )
    noise = torch.randn((n, width), generator=generator, dtype=torch.float64, device=generator.device)
    n_peaks = cfg.n_peaks[0] + (uniform((n,)) * (max_peaks - cfg.n_peaks[0] + 1)).astype(int)
    u_col, u_row = uniform((n, max_peaks)), uniform((n, max_peaks))
    peak_factor = np.exp(uniform((n, max_peaks), *np.log(cfg.peak_amplitude)))

    segments = segment_weights(noise.cpu().numpy(), coverage)
    peak_rows, peak_cols = peak_positions(u_col, u_row, segments, rows, height)
    active = np.arange(max_peaks)[None, :] < n_peaks[:, None]
    peak_values = np.where(active, peak_factor * (gain * images.mean(axis=(1, 2)))[:, None], 0.0)
    profile = row_profile(rows, sigma_y, height)
    return BandFaults(profile, segments, amplitude, peak_rows, peak_cols, peak_values), gain


def inject_band_faults(
    images: torch.Tensor, cfg: BandFaultConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(faulty, masks): one random band fault per image of images (N, H, W) -> faulty (N, H, W) of the same
    dtype and device (never clipped) and masks (N, H, W) uint8 {0, 1}. Draws come from `generator` only."""
    if images.ndim != 3:
        raise BandFaultError(f"inject_band_faults: images must be (N, H, W), got shape {tuple(images.shape)}")
    if cfg.row != "random" and not 0 <= cfg.row < images.shape[1]:
        raise BandFaultError(
            f"BandFaultConfig.row: expected 'random' or 0 <= row < {images.shape[1]}, got {cfg.row}"
        )
    clean = images.detach().to("cpu", torch.float64).numpy()
    faults, gain = random_band_faults(clean, cfg, generator)
    faulty, masks = apply_band_faults(clean * gain[:, None, None], faults)
    return (
        torch.from_numpy(faulty).to(images.device, images.dtype),
        torch.from_numpy(masks).to(images.device),
    )
