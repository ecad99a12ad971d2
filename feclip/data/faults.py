"""Horizontal band faults on HDMAP images: the test faults' primitives and two training-fault families.

The synthetic test faults (`synthetic.py`, docs/data.md §3 and §5.2; this comparison: §5.5) and the default
training faults injected by `inject_band_faults` (`aux=synthetic_faults`, family "training") side by side,
test | training:
- process: image × (1 + A·v(y)·m(x)), the in-place texture amplified | + a cut-paste strip: a patch of the
  image itself (other rows, same columns), ÷ its max, × a·mean, added; the rest of the image untouched;
- rows: the domain's fixed fault row y_f | uniform per image (or `row`);
- profile across rows: Gaussian v(y), σ_y 0.8-1.0 (about 3 rows) | box, 1-3 rows;
- extent along x: several segments covering 60-80 % of the columns | one contiguous run of 10-80 columns;
- texture: lattice boosted, column fingerprint and smooth field weakened (`fault_mult`) | displaced texture;
- peaks: rows y_f ± 1 at columns with m > 0.5 | anywhere in the strip;
- whole image: gain and CV shift per domain and condition | `gain`, off by default.
The family "test_like" is the test faults' band process (Gaussian rows, segments, peaks on y_f ± 1) with
random parameters (`amplitude`, `sigma_y`, `coverage`), without the texture change.

`test_like` runs the test faults' own band function (`apply_band_faults`) on random parameters, so training on
it and testing on synthetic faults is in-distribution: its results are optimistic and must not be read as
HDMAP performance. The default `training` family follows the user's DRAEM-CutPaste augmentation
(docs/data.md §3, native variant: h 1-2 rows, w 10-80 columns) and shares no step with the test faults except
being horizontal.

Band (test faults and `test_like`):
- `v(y) = exp(-(y - y_f)² / (2 σ_y²))`: a Gaussian row profile around the fault row `y_f` (`row_profile`);
- `m(x) ∈ [0, 1]`: discontinuous segments along x. Smooth white noise over the columns (circular Gaussian,
  sd 3 px), standardise it, threshold at its (1 - coverage) quantile, soft ramp of width 0.5 sd above the
  threshold (`segment_weights`);
- peaks: pixels on rows `y_f + {-1, 0, +1}` at columns with `m > 0.5`, each raised by an absolute value
  (`peak_positions`, `apply_band_faults`).

Pixel masks (definitions, not observations; uint8 {0, 1}):
- band: the pixels where the band reaches at least half of its peak gain, `v(y)·m(x) >= 0.5` (the full width
  at half maximum; independent of the amplitude A, so faint faults have masks as large as strong ones), plus
  every peak pixel;
- cut-paste strip: the pasted rectangle (every pixel it changes) plus every peak pixel.
A whole-image gain is never in these masks (it would mark every pixel). The synthetic generator can add the
whole-image change of its test faults to their masks (`synthetic.Options.mask = "change"`). Images are never
clipped.
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


FAMILIES = ("training", "test_like")


@dataclass
class BandFaultConfig:
    """Ranges of the random training faults of `inject_band_faults`; each (lo, hi) is drawn uniformly.

    family: "training" (cut-paste strips, a process distinct from the test faults; the default) or
    "test_like" (the test faults' band process: in-distribution for synthetic test data, optimistic). Fields
    used by one family only say so; the others apply to both.
    """

    family: str = "training"
    # fault row y_f (training: the strip's top row): "random" (uniform per image) or a row index
    row: str | int = "random"
    # test_like: band gain A (image × (1 + A·v(y)·m(x))), 0.2-0.3 ≈ domain C cold contrast, 1.0: 2× on the row
    amplitude: tuple[float, float] = (0.2, 1.0)
    sigma_y: tuple[float, float] = (0.6, 1.2)  # test_like: band sd in rows (σ_y = 0.8: ≈ 3 visible rows)
    coverage: tuple[float, float] = (0.4, 0.9)  # test_like: fraction of the columns covered by segments
    # training: a in a·mean·patch/max(patch) added on the strip (about +a/2 × the mean on average)
    strip_amplitude: tuple[float, float] = (0.4, 2.0)
    strip_height: tuple[int, int] = (1, 3)  # training: strip rows, inclusive range
    strip_width: tuple[int, int] = (10, 80)  # training: strip columns, inclusive range
    n_peaks: tuple[int, int] = (0, 3)  # number of peaks, inclusive range
    peak_amplitude: tuple[float, float] = (0.3, 5.0)  # peak height × the image mean, log-uniform
    # whole-image level factor, not in the mask (real C faults ≈ ×1.12)
    gain: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise BandFaultError(
                f"BandFaultConfig.family: expected one of {list(FAMILIES)}, got {self.family!r}"
            )
        if not (self.row == "random" or (isinstance(self.row, int) and not isinstance(self.row, bool))):
            raise BandFaultError(
                f"BandFaultConfig.row: expected 'random' or an int row index, got {self.row!r}"
            )
        self.amplitude = _pair("amplitude", self.amplitude, 0.0, np.inf)
        self.sigma_y = _pair("sigma_y", self.sigma_y, 1e-3, np.inf)
        self.coverage = _pair("coverage", self.coverage, 1e-3, 1.0)
        self.strip_amplitude = _pair("strip_amplitude", self.strip_amplitude, 0.0, np.inf)
        self.strip_height = _pair("strip_height", self.strip_height, 1, 10_000, integer=True)
        self.strip_width = _pair("strip_width", self.strip_width, 1, 10_000, integer=True)
        self.n_peaks = _pair("n_peaks", self.n_peaks, 0, 10_000, integer=True)
        self.peak_amplitude = _pair("peak_amplitude", self.peak_amplitude, 1e-6, np.inf)
        self.gain = _pair("gain", self.gain, 0.0, np.inf)


class _Uniform:
    """Uniform draws (float64 numpy) from one torch generator, in call order."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, shape: tuple[int, ...], lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        draw = torch.rand(shape, generator=self.generator, dtype=torch.float64, device=self.generator.device)
        return lo + (hi - lo) * draw.cpu().numpy()

    def integers(self, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
        """Uniform ints in lo..hi inclusive."""
        return lo + (self(shape) * (hi - lo + 1)).astype(int)


def random_band_faults(
    images: np.ndarray, cfg: BandFaultConfig, generator: torch.Generator
) -> tuple[BandFaults, np.ndarray]:
    """(faults, gain): random test-like band faults for images (N, H, W) from `generator`, and gains (N,)."""
    n, height, width = images.shape
    uniform = _Uniform(generator)
    max_peaks = cfg.n_peaks[1]
    rows = uniform.integers((n,), 0, height - 1) if cfg.row == "random" else np.full(n, cfg.row)
    amplitude, sigma_y, coverage, gain = (
        uniform((n,), *bounds) for bounds in (cfg.amplitude, cfg.sigma_y, cfg.coverage, cfg.gain)
    )
    noise = torch.randn((n, width), generator=generator, dtype=torch.float64, device=generator.device)
    n_peaks = uniform.integers((n,), *cfg.n_peaks)
    u_col, u_row = uniform((n, max_peaks)), uniform((n, max_peaks))
    peak_factor = np.exp(uniform((n, max_peaks), *np.log(cfg.peak_amplitude)))

    segments = segment_weights(noise.cpu().numpy(), coverage)
    peak_rows, peak_cols = peak_positions(u_col, u_row, segments, rows, height)
    active = np.arange(max_peaks)[None, :] < n_peaks[:, None]
    peak_values = np.where(active, peak_factor * (gain * images.mean(axis=(1, 2)))[:, None], 0.0)
    profile = row_profile(rows, sigma_y, height)
    return BandFaults(profile, segments, amplitude, peak_rows, peak_cols, peak_values), gain


def cut_paste_strips(
    images: np.ndarray, cfg: BandFaultConfig, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(faulty, masks): one cut-paste strip per image of images (N, H, W) (the "training" family), float64 and
    uint8 (N, H, W).

    Per image: h rows × w columns (cfg.strip_height, cfg.strip_width) at a uniform target (top row `cfg.row`
    if fixed, kept inside the image); the source strip has the same columns and rows that do not overlap the
    target (circular in y); it is divided by its max and added × a·mean (a from cfg.strip_amplitude), after
    the whole image is scaled by the gain. Peaks: pixels of the target strip raised by factor·gain·mean."""
    n, height, width = images.shape
    uniform = _Uniform(generator)
    h = uniform.integers((n,), *cfg.strip_height)
    w = uniform.integers((n,), *cfg.strip_width)
    top = uniform.integers((n,), 0, height - 1) if cfg.row == "random" else np.full(n, cfg.row)
    top = np.minimum(top, height - h)
    left = (uniform((n,)) * (width - w + 1)).astype(int)
    # the source strip starts below the target strip and wraps around: it never overlaps the target rows
    source_top = top + h + (uniform((n,)) * (height - 2 * h + 1)).astype(int)
    amplitude, gain = uniform((n,), *cfg.strip_amplitude), uniform((n,), *cfg.gain)
    n_peaks = uniform.integers((n,), *cfg.n_peaks)
    u_peak = uniform((n, 2, cfg.n_peaks[1]))
    peak_factor = np.exp(uniform((n, cfg.n_peaks[1]), *np.log(cfg.peak_amplitude)))

    scaled = images * gain[:, None, None]
    y, x = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    inside_x = (x >= left[:, None, None]) & (x < (left + w)[:, None, None])
    masks = inside_x & (y >= top[:, None, None]) & (y < (top + h)[:, None, None])
    offset = (y - top[:, None, None]) % height  # row within the target strip
    source_rows = (source_top[:, None, None] + offset) % height
    source = np.take_along_axis(scaled, np.broadcast_to(source_rows, scaled.shape), axis=1)
    patch = np.where(masks, source, 0.0)
    patch /= np.maximum(patch.reshape(n, -1).max(axis=1), np.finfo(np.float64).tiny)[:, None, None]
    mean = scaled.mean(axis=(1, 2))
    faulty = scaled + (amplitude * mean)[:, None, None] * patch
    image, slot = np.nonzero(np.arange(cfg.n_peaks[1])[None, :] < n_peaks[:, None])
    rows = top[image] + (u_peak[image, 0, slot] * h[image]).astype(int)
    cols = left[image] + (u_peak[image, 1, slot] * w[image]).astype(int)
    np.add.at(faulty, (image, rows, cols), peak_factor[image, slot] * mean[image])
    return faulty, masks.astype(np.uint8)


def inject_band_faults(
    images: torch.Tensor, cfg: BandFaultConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(faulty, masks): one random training fault of `cfg.family` per image of images (N, H, W) -> faulty
    (N, H, W) of the same dtype and device (never clipped) and masks (N, H, W) uint8 {0, 1}. Draws come from
    `generator` only."""
    if images.ndim != 3:
        raise BandFaultError(f"inject_band_faults: images must be (N, H, W), got shape {tuple(images.shape)}")
    height, width = images.shape[1:]
    if cfg.row != "random" and not 0 <= cfg.row < height:
        raise BandFaultError(f"BandFaultConfig.row: expected 'random' or 0 <= row < {height}, got {cfg.row}")
    if cfg.family == "training" and (2 * cfg.strip_height[1] > height or cfg.strip_width[1] > width):
        raise BandFaultError(
            f"BandFaultConfig.strip_height/strip_width: expected at most {height // 2} rows and {width} "
            f"columns for images of {height}x{width}, got {cfg.strip_height} and {cfg.strip_width}"
        )
    clean = images.detach().to("cpu", torch.float64).numpy()
    if cfg.family == "training":
        faulty, masks = cut_paste_strips(clean, cfg, generator)
    else:
        faults, gain = random_band_faults(clean, cfg, generator)
        faulty, masks = apply_band_faults(clean * gain[:, None, None], faults)
    return (
        torch.from_numpy(faulty).to(images.device, images.dtype),
        torch.from_numpy(masks).to(images.device),
    )
