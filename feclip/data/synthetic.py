"""Calibrated synthetic HDMAP generator (docs/data.md §5), all four domains.

Writes the real layout `<out>/domain_X/{train/good,test/good,test/fault}/NNNNNN.tiff` (float32 (31, 95), never
clipped; test files 0 .. n_test//2 - 1 cold, the rest warm), uint8 {0, 1} pixel masks of every fault in
`<out>/domain_X/ground_truth/fault/NNNNNN.tiff` (what they cover: option `mask`), the sidecar
`<out>/synthetic_meta.csv` and the marker `<out>/synthetic_params.json` holding the generation parameters
(written last; `<out>/.generating.json` marks a generation in progress, so an interrupted one is redone).

Section numbers in this module ("5.2", "(6.5)", "section-6 targets") are those of docs/data.md.

Image model (5.2, VERSION 2): a per-image log-texture field L (fixed per domain and condition: column
fingerprint COL, row profile ROW, mesh lattice LAT; per image: smooth field SM, white noise N), rendered as
the shifted lognormal `x = μ_i·((1 - a_i) + a_i·exp(σL - σ²/2))`, plus isolated bright and dark pixels.
Faults: gain and CV shift, a different texture mix (`fault_mult` scales the five variance shares: the mesh
lattice gains, the column fingerprint and the smooth field lose), a horizontal band and peaks on the domain's
fault row. Train images with max > 1 are redrawn.

Changes from the VERSION 1 generator (the first calibrated prototype), each fitted to the section-6 targets
(`stats.acceptance`, `scripts/synthetic_stats.py`; summarised in docs/data.md §7):
- COL, ROW and LAT are random-phase fields with fixed amplitude spectra (the expected spectra of VERSION 1's
  white-noise constructions); warm phases are the cold ones plus noise. The spectral statistics (APE, SFM,
  radial bands) then no longer depend on the seed's draw of the domain fingerprint.
- isolated dark pixels (DARK_*): the fix of §7 for the too-high per-image min;
- isolated bright pixels with per-domain, per-condition rate, amplitude and spread (the fix of §7 for the
  narrow max spread);
- faults change all five texture shares (`fault_mult`), not only COL and LAT: B and D faults keep their
  CV and get the lower SFM of the real faults; the very-low band share drops in faults as measured;
- the warm level spread is a skewed Beta(2, 3) (LEVEL_BETA; measured skew 0.19-0.35, kurtosis -0.64 against
  the measured -0.8 .. -0.9);
- per-domain parameter changes, each marked "v2:" in PARAMS with the target it was fitted to.

Options (keyword arguments of `generate_domain`, `generate`, `ensure`):
- `tail_caps` (default True): redraw test images whose max exceeds the measured pooled max of their domain
  and split (5.2). Without them (seed 0) 97 B test files have max > 1 (target: at most 5) and the B pooled
  test-fault std misses.
- `isolated_pixels` (default True): the isolated bright and dark pixels (`_Renderer.isolated_pixels`).
  Without them (seed 0) 12 hard targets miss: the C per-image min and max of 6.2 (min too high, max spread
  too narrow), the cold max shares and max AUROC of 6.5.
- `fault_row` (default "fixed"): "fixed" = the domain's fault row (5.4) in every fault, "random" = uniform
  per image.
- `mask` (default "band"): what a fault's pixel mask covers. "band": the band's full width at half maximum
  (`v·m >= 0.5`) plus every peak pixel (`faults.apply_band_faults`). "change": that, plus every pixel the
  fault as a whole moves by at least MASK_CHANGE times the image's model std from its fault-free twin (the
  same file's draws rendered as a good image: no gain, CV shift, texture change, band or peaks), so the
  whole-image change (gain, texture) is in the mask where it is large.

Determinism: one seed. Domain assets come from the stream (seed, domain); every file has its own stream
(seed, domain, folder, file index), so any subset of domains or files gives identical images for those files.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy.stats import beta as beta_distribution
from scipy.stats import poisson
from tqdm.auto import tqdm

from feclip.cli import guard
from feclip.data.faults import (
    BandFaults,
    apply_band_faults,
    circular_smooth,
    peak_positions,
    row_profile,
    segment_weights,
    standardize,
)
from feclip.data.hdmap import COLD_WARM_SPLIT, DOMAINS, FOLDERS
from feclip.errors import FeclipError, note
from feclip.files import write_text

HEIGHT, WIDTH = 31, 95
VERSION = 2  # bump when the image model changes (`ensure` refuses a folder of another version)
MARKER = "synthetic_params.json"
PARTIAL = ".generating.json"  # the marker of a generation in progress (or interrupted): redone, never used
N_TEST_FOLDERS = ("test/good", "test/fault", "ground_truth/fault")  # folders holding n_test files each
SIDECAR = "synthetic_meta.csv"
SIDECAR_COLUMNS = (
    "domain", "split", "label", "condition", "file_index", "fault_row", "band_amplitude", "n_peaks",
    "n_bright", "n_dark", "mu_i", "cv_i", "tau", "path",
)  # fmt: skip

LEVEL_SD = (0.076, 0.065)  # r_c: relative sd of the per-image level, (cold, warm)
# Beta shapes (a, b) of the level spread, (cold, warm). v2: warm Beta(2, 3) (was Beta(2, 2), skew 0), skew
# 0.29 against the measured skew of the C warm per-image means 0.35 (good) / 0.19 (fault) (§2.2): a
# shorter lower tail of the warm images, for the C mean-threshold gate (6.4). Cold stays Beta(2, 2) (measured
# skew 0.15; a skewed cold spread lengthens the upper tail of the cold p90 and breaks the B p90 gate)
LEVEL_BETA = ((2.0, 2.0), (2.0, 3.0))
CV_SD = (0.024, 0.017)  # s_c: sd of the per-image CV
LEVEL_CV_CORR = (0.62, -0.20)  # ρ_c = corr(level, CV)
WARM_STRUCTURE_CORR = 0.7  # expected correlation of the warm and cold COL/ROW/LAT fields
PHASE_JITTER = np.sqrt(-2 * np.log(WARM_STRUCTURE_CORR))  # warm phase = cold + N(0, s²): E cos = 0.7
TRAIN_LEVEL_SD, TRAIN_CV_SD = 0.065, 0.02
TAU_RANGE = (-0.2, 1.3)
TRAIN_MAX = 1.0  # train images are redrawn above this (user_max is the training maximum)
CV_RANGE = (0.05, 0.9)
BAND_AMPLITUDE_SD = 0.3  # A = A_c·(1 + 0.3 z), floored at 0
MAX_PEAKS = 16  # peaks per fault image are capped here (Poisson draws beyond are negligible)
MAX_SPOTS = 8  # bright and dark isolated pixels per image are each capped here
# Isolated dark pixels (`_Renderer.isolated_pixels`): 1 + Poisson(1) per image at μ_i·(1 - 2·CV)·exp(0.03 z),
# CV halfway between the image's CV_i and its condition's CV_c; fitted to domain C's per-image min (6.2: group
# means and sd) and the min AUROCs (6.5), all domains alike
DARK_MIN, DARK_RATE, DARK_DEPTH, DARK_SD, DARK_CV_BLEND = 1, 1.0, 2.0, 0.03, 0.5
MASK_CHANGE = 0.5  # mask "change": |fault - fault-free twin| >= 0.5 × the twin's model std
MAX_ROUNDS = 200  # reject-and-redraw rounds before giving up


class SyntheticError(FeclipError):
    """Bad generator input (domain, counts, option, output folder); the message names it."""


@dataclass(frozen=True)
class DomainParams:
    """One domain's generator parameters (docs/data.md §5.3 and §5.4); pairs are (cold, warm)."""

    mu: tuple[float, float]  # condition level μ_c
    cv: tuple[float, float]  # condition CV_c
    sigma: float  # log shape σ
    train_tau: tuple[float, float]  # train temperature state τ: mean, sd
    weights: tuple[float, float, float, float, float]  # COL, ROW, LAT, SM, N
    col_alpha: float  # COL mix: α·smooth + (1 - α)·first difference
    col_len: float  # ℓ_col, px
    sm_len: float  # ℓ_sm, px
    lat_freqs: tuple[float, ...]  # f_j, cycles per mesh step
    lat_amps: tuple[float, ...]  # a_j
    fault_row: int  # y_f
    sigma_y: float  # band sd, rows
    coverage: float  # fraction of columns in segments
    fault_mult: tuple[float, float, float, float, float]  # factors of the 5 weights in faults
    gain: tuple[float, float]  # fault level factor
    dcv: tuple[float, float]  # fault CV shift
    band_amp: tuple[float, float]  # A_c
    peak_min: tuple[int, int]
    peak_rate: tuple[float, float]
    peak_amp: tuple[float, float]  # × μ_i
    peak_sd: tuple[float, float]
    bright_rate: tuple[float, float]  # isolated bright pixels: Poisson rate, amplitude (× image sd), log sd
    bright_amp: tuple[float, float]
    bright_sd: tuple[float, float]
    cap_good: float  # tail caps: measured pooled max of test/good, test/fault
    cap_fault: float


# The tables of docs/data.md §5.3 / §5.4 list these values: VERSION 1's calibration, except where a "v2:"
# comment gives the old value and the section-6 target the new one was fitted to (scripts/synthetic_stats.py,
# seeds 0-5). Weights that moved keep the others' proportions.
PARAMS = {
    "A": DomainParams(
        mu=(0.150, 0.288), cv=(0.24, 0.31), sigma=0.32, train_tau=(0.689, 0.266),
        weights=(0.29, 0.0163, 0.3901, 0.1604, 0.1432),  # v2: COL 0.261; APE normal (6.6)
        col_alpha=0.09, col_len=2.5, sm_len=2.2,
        lat_freqs=(0.1375, 0.4188, 0.3725, 0.2206), lat_amps=(0.58, 0.68, 0.75, 0.54),
        fault_row=12, sigma_y=0.8, coverage=0.6,
        # v2 (struct_mult 0.65 on COL and LAT): sign of fault - normal very_low, SFM fault (6.6)
        fault_mult=(0.5, 0.5, 2.0, 1.0, 1.0),
        gain=(1.12, 0.97), dcv=(0.0, -0.02),
        band_amp=(0.66, 0.66), peak_min=(0, 2),
        peak_rate=(0.8, 1.0),  # v2: cold 0.6; cold faults with max > 0.7522 (6.5)
        peak_amp=(3.0, 1.8), peak_sd=(0.15, 0.15),
        bright_rate=(1.0, 1.0), bright_amp=(5.0, 5.0), bright_sd=(0.3, 0.3),
        cap_good=1.09, cap_fault=1.27,
    ),
    "B": DomainParams(
        mu=(0.158, 0.292), cv=(0.27, 0.31), sigma=0.32, train_tau=(0.691, 0.231),
        weights=(0.465, 0.0249, 0.1183, 0.1377, 0.2541),  # v2: COL 0.422; APE normal (6.6)
        col_alpha=0.07, col_len=2.5, sm_len=7.1,
        lat_freqs=(0.3827, 0.1581, 0.0791, 0.1782, 0.3305), lat_amps=(0.79, 0.79, 0.51, 0.76, 0.80),
        fault_row=12, sigma_y=0.8, coverage=0.6,
        # v2 (struct_mult 0.3 on COL and LAT): SFM fault, very_low sign, one band row in warm faults (6.6)
        fault_mult=(0.0, 0.1, 2.0, 0.05, 0.4),
        gain=(0.83, 0.85),  # v2: (0.85, 0.86); pooled test-fault q75 and std (6.3)
        dcv=(0.0, -0.02),
        band_amp=(0.60, 0.60), peak_min=(0, 1), peak_rate=(0.0, 0.5), peak_amp=(0.0, 1.2), peak_sd=(0.3, 0.3),
        bright_rate=(1.0, 1.0), bright_amp=(5.0, 5.0), bright_sd=(0.3, 0.3),
        cap_good=0.93, cap_fault=0.945,
    ),
    "C": DomainParams(
        mu=(0.1904, 0.2654), cv=(0.242, 0.283), sigma=0.35, train_tau=(0.728, 0.230),
        weights=(0.0, 0.002, 0.572, 0.261, 0.166), col_alpha=0.5, col_len=2.5, sm_len=8.9,  # COL unused
        # v2: a_4 = 0.94 at f = 0.2358 (radius 0.198) split in two of equal power, the second at radius 0.223
        # (f = 746.43 / 2945); band low / mid shares (6.6)
        lat_freqs=(0.3561, 0.3480, 0.2709, 0.2358, 0.3436, 0.0233, 0.1077, 0.25346),
        lat_amps=(0.52, 0.70, 0.93, 0.665, 0.52, 0.66, 0.52, 0.665),
        fault_row=5, sigma_y=0.8, coverage=0.6,
        fault_mult=(0.50, 1.0, 0.50, 1.0, 1.0),
        gain=(1.12, 1.138),
        dcv=(0.016, 0.006),  # v2: (0.015, 0.0); min AUROC cold / warm and p5 AUROC warm (6.5), min (6.2)
        band_amp=(0.25, 0.50),  # v2: warm 0.46; one band row in warm faults (6.6)
        peak_min=(1, 1), peak_rate=(0.6, 2.17),
        peak_amp=(1.0, 4.05),  # v2: cold 0.3; cold max AUROC and cold faults with max > 0.6787 (6.5)
        peak_sd=(0.3, 0.28),  # v2: warm 0.23; fault/warm max sd (6.2), pooled test-fault max (6.3)
        # v2: (1, 5, 0.3) in both conditions; C per-image max (6.2) and the cold max shares (6.5)
        bright_rate=(0.8, 2.0), bright_amp=(6.0, 5.6), bright_sd=(0.4, 0.15),
        cap_good=1.09, cap_fault=2.94,
    ),
    "D": DomainParams(
        mu=(0.155, 0.239), cv=(0.34, 0.38), sigma=0.40, train_tau=(0.758, 0.05),
        weights=(0.311, 0.007, 0.322, 0.169, 0.191), col_alpha=0.60, col_len=1.4, sm_len=12.1,
        lat_freqs=(0.3857, 0.2272, 0.1470, 0.3372, 0.1847, 0.3360, 0.0822, 0.1808, 0.4078, 0.1404, 0.1138),
        lat_amps=(0.62, 0.62, 0.86, 0.78, 0.71, 0.56, 0.55, 0.68, 0.55, 0.50, 0.80),  # v2: a_11 0.9; mid
        fault_row=5, sigma_y=1.0, coverage=0.8,
        # v2 (struct_mult 0.1 on COL and LAT): SFM fault, sign of fault - normal very_low (6.6)
        fault_mult=(0.3, 0.3, 2.0, 1.0, 1.0),
        gain=(0.95, 0.82),  # v2: (0.93, 0.85); p90 gate accuracy fw (6.4), pooled test-fault mean (6.3)
        dcv=(0.0, -0.03),
        band_amp=(0.60, 0.90),  # v2: cold 0.90; cold faults with max > 0.6741 (6.5)
        peak_min=(0, 1), peak_rate=(0.35, 1.5), peak_amp=(2.6, 2.6), peak_sd=(0.3, 0.3),
        bright_rate=(1.0, 1.0), bright_amp=(4.0, 5.0), bright_sd=(0.3, 0.3),  # v2: cold 5.0; as band_amp
        cap_good=0.90, cap_fault=1.48,
    ),
}  # fmt: skip


OPTION_CHOICES = {"tail_caps": bool, "isolated_pixels": bool, "fault_row": ("fixed", "random"),
                  "mask": ("band", "change")}  # fmt: skip


@dataclass(frozen=True)
class Options:
    """Generator options (see the module docstring)."""

    tail_caps: bool = True
    isolated_pixels: bool = True
    fault_row: str = "fixed"
    mask: str = "band"

    def __post_init__(self) -> None:
        for name, allowed in OPTION_CHOICES.items():
            value = getattr(self, name)
            if not (isinstance(value, bool) if allowed is bool else value in allowed):
                expected = "true or false" if allowed is bool else f"one of {list(allowed)}"
                raise SyntheticError(f"option {name}: expected {expected}, got {value!r}")


def make_options(options: dict) -> Options:
    unknown = sorted(set(options) - set(Options.__dataclass_fields__))
    if unknown:
        raise SyntheticError(
            f"unknown generator option(s) {unknown}; expected {list(Options.__dataclass_fields__)}"
        )
    return Options(**options)


# ---------------------------------------------------------------- fixed structure per domain and condition


def _column_amplitudes(p: DomainParams) -> np.ndarray:
    """(W//2 + 1,) rfft amplitudes of COL: the expected spectrum of `α·std(G(w)) + (1 - α)·std(Δw')` (5.2),
    G a circular Gaussian smoothing of sd ℓ_col, Δw' the first difference of white noise; DC 0."""
    f = np.fft.rfftfreq(WIDTH)
    smooth, alternating = np.exp(-4 * (np.pi * p.col_len * f) ** 2), 4 * np.sin(np.pi * f) ** 2
    smooth[0] = alternating[0] = 0.0
    power = p.col_alpha**2 * smooth / smooth.sum() + (1 - p.col_alpha) ** 2 * alternating / alternating.sum()
    return np.sqrt(power)


def _random_phase_signal(amplitudes: np.ndarray, phases: np.ndarray, n: int) -> np.ndarray:
    """(n,) unit-variance real signal with rfft amplitudes `amplitudes` (n//2 + 1,) and the given phases."""
    return standardize(np.fft.irfft(amplitudes * np.exp(1j * phases), n), axes=(0,))


def _mesh_lattice(p: DomainParams, phases: np.ndarray) -> np.ndarray:
    """LAT: (H, W) unit variance; s(k) = Σ a_j cos(2π f_j k + φ_j) written into pixel (k mod H, k mod W)."""
    k = np.arange(HEIGHT * WIDTH)
    signal = (np.array(p.lat_amps) * np.cos(2 * np.pi * np.outer(k, p.lat_freqs) + phases)).sum(axis=1)
    lattice = np.empty((HEIGHT, WIDTH))
    lattice[k % HEIGHT, k % WIDTH] = signal
    return standardize(lattice, axes=(0, 1))


def _structure(p: DomainParams, rng: np.random.Generator) -> np.ndarray:
    """(3, 2, H, W): the unit-variance COL, ROW, LAT fields of the domain, index 1 cold (0) / warm (1).

    Random-phase fields with fixed amplitude spectra: COL as `_column_amplitudes` (constant down each column),
    ROW flat (constant along each row), LAT the a_j at f_j. A draw changes the phases only, so the spectral
    statistics of 6.6 (APE, SFM, bands) do not depend on the seed. Warm phases are the cold ones plus
    N(0, PHASE_JITTER²) noise: the warm and cold fields correlate by WARM_STRUCTURE_CORR on average."""
    col, row = _column_amplitudes(p), np.ones(HEIGHT // 2 + 1)
    renderers = (
        (len(col), lambda phases: _random_phase_signal(col, phases, WIDTH)[None, :]),
        (len(row), lambda phases: _random_phase_signal(row, phases, HEIGHT)[:, None]),
        (len(p.lat_freqs), lambda phases: _mesh_lattice(p, phases)),
    )
    fields = np.empty((3, 2, HEIGHT, WIDTH))
    for component, (n_phases, render) in enumerate(renderers):
        cold = rng.uniform(0.0, 2.0 * np.pi, n_phases)
        warm = cold + PHASE_JITTER * rng.standard_normal(n_phases)
        fields[component] = np.stack(
            [np.broadcast_to(render(phases), (HEIGHT, WIDTH)) for phases in (cold, warm)]
        )
    return fields


# ---------------------------------------------------------------- per-file random draws


@dataclass
class _Draws:
    """Everything one batch of files draws from its per-file streams (N files)."""

    level_u: np.ndarray  # (N,) uniform of the level spread (Beta quantile)
    z: np.ndarray  # (N, 3) standard normals: CV, train τ, band amplitude
    noise: np.ndarray  # (N, 2, H, W) white noise of SM and N
    segment_noise: np.ndarray  # (N, W)
    u_row: np.ndarray  # (N,) uniform: random fault row
    count_u: np.ndarray  # (N, 3) uniforms of the Poisson counts of peaks, bright and dark pixels
    peak_u: np.ndarray  # (N, 2, P) uniforms: peak column, peak row
    peak_z: np.ndarray  # (N, P)
    spot_u: np.ndarray  # (N, 2, K) uniform pixel positions of the bright (0) and dark (1) pixels
    spot_z: np.ndarray  # (N, 2, K) their standard normals


def _file_rng(seed: int, domain: str, folder: int, index: int) -> np.random.Generator:
    key = (DOMAINS.index(domain), 1 + folder, int(index))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _draw(rngs: list[np.random.Generator]) -> _Draws:
    """The draws of N files from their own streams (the same amount for every file)."""
    n, pixels = len(rngs), HEIGHT * WIDTH
    normals = np.empty((n, 3 + 2 * pixels + WIDTH + MAX_PEAKS + 2 * MAX_SPOTS))
    uniforms = np.empty((n, 5 + 2 * MAX_PEAKS + 2 * MAX_SPOTS))
    for i, rng in enumerate(rngs):
        normals[i] = rng.standard_normal(normals.shape[1])
        uniforms[i] = rng.random(uniforms.shape[1])
    cuts = np.cumsum([3, 2 * pixels, WIDTH, MAX_PEAKS])
    z, noise, segment_noise, peak_z, spot_z = np.split(normals, cuts, axis=1)
    return _Draws(
        level_u=uniforms[:, 4 + 2 * MAX_PEAKS + 2 * MAX_SPOTS],
        z=z,
        noise=noise.reshape(n, 2, HEIGHT, WIDTH),
        segment_noise=segment_noise,
        u_row=uniforms[:, 0],
        count_u=uniforms[:, 1:4],
        peak_u=uniforms[:, 4 : 4 + 2 * MAX_PEAKS].reshape(n, 2, MAX_PEAKS),
        peak_z=peak_z,
        spot_u=uniforms[:, 4 + 2 * MAX_PEAKS : 4 + 2 * MAX_PEAKS + 2 * MAX_SPOTS].reshape(n, 2, MAX_SPOTS),
        spot_z=spot_z.reshape(n, 2, MAX_SPOTS),
    )


def _unit_beta(u: np.ndarray, warm: np.ndarray) -> np.ndarray:
    """(N,) standardised Beta(LEVEL_BETA[condition]) draws from uniforms u (N,): mean 0, sd 1."""
    a, b = (np.take([shape[k] for shape in LEVEL_BETA], warm) for k in range(2))
    mean, sd = a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    return (beta_distribution.ppf(u, a, b) - mean) / sd


def _poisson(u: np.ndarray, rate) -> np.ndarray:
    """Poisson(rate) counts (int) from uniforms u in [0, 1), by the inverse CDF."""
    return np.maximum(poisson.ppf(u, rate), 0).astype(int)


# ---------------------------------------------------------------- rendering


@dataclass
class _Batch:
    """Rendered files of one folder: images (N, H, W) float64, masks (N, H, W) uint8, per-file columns."""

    images: np.ndarray
    masks: np.ndarray
    columns: dict[str, np.ndarray]

    def replace(self, rows: np.ndarray, other: _Batch) -> None:
        self.images[rows], self.masks[rows] = other.images, other.masks
        for name, values in other.columns.items():
            self.columns[name][rows] = values


class _Renderer:
    """Renders the files of one domain from their draws (vectorised over the files of one folder)."""

    def __init__(self, domain: str, seed: int, options: Options):
        self.p, self.options = PARAMS[domain], options
        asset_rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(DOMAINS.index(domain), 0)))
        )
        self.structure = _structure(self.p, asset_rng)

    def levels(self, folder: int, warm: np.ndarray, d: _Draws) -> dict[str, np.ndarray]:
        """Per-file level μ_i, CV_i, the condition CV, structure condition and τ (train) for folder 0 train,
        1 good, 2 fault.

        Train: τ interpolates μ and CV between cold and warm; the level-CV correlation and the structure
        assets are those of the nearer condition (τ >= 0.5: warm), an assumption (5.2 leaves it open)."""
        p, n, tau = self.p, len(warm), np.full(len(warm), np.nan)
        if folder == 0:
            tau = np.clip(p.train_tau[0] + p.train_tau[1] * d.z[:, 1], *TAU_RANGE)
            warm = (tau >= 0.5).astype(int)
            mu = p.mu[0] + tau * (p.mu[1] - p.mu[0])
            cv = p.cv[0] + tau * (p.cv[1] - p.cv[0])
            level_sd, cv_sd = np.full(n, TRAIN_LEVEL_SD), np.full(n, TRAIN_CV_SD)
        else:
            mu, cv = np.take(p.mu, warm), np.take(p.cv, warm)
            level_sd, cv_sd = np.take(LEVEL_SD, warm), np.take(CV_SD, warm)
            if folder == 2:
                mu, cv = mu * np.take(p.gain, warm), cv + np.take(p.dcv, warm)
        b, rho = _unit_beta(d.level_u, warm), np.take(LEVEL_CV_CORR, warm)
        cv_i = np.clip(cv + cv_sd * (rho * b + np.sqrt(1 - rho**2) * d.z[:, 0]), *CV_RANGE)
        return {"warm": warm, "tau": tau, "mu_i": mu * (1.0 + level_sd * b), "cv_i": cv_i, "cv_c": cv}

    def normal_images(self, levels: dict[str, np.ndarray], weights: np.ndarray, d: _Draws) -> np.ndarray:
        """(N, H, W) shifted-lognormal images with per-image mean ≈ μ_i and std/mean ≈ CV_i, from the log
        field Σ √w·component over COL, ROW, LAT, SM, N (weights (5,): variance shares), re-standardised."""
        w_col_row_lat, (w_sm, w_n) = np.sqrt(weights[:3]), np.sqrt(weights[3:])
        smooth = standardize(circular_smooth(d.noise[:, 0], self.p.sm_len, axes=(1, 2)), axes=(1, 2))
        fixed = np.tensordot(w_col_row_lat, self.structure, axes=1)  # (2, H, W): cold, warm
        field = fixed[levels["warm"]] + w_sm * smooth + w_n * standardize(d.noise[:, 1], (1, 2))
        log_field = standardize(field, axes=(1, 2))
        sigma, mu = self.p.sigma, levels["mu_i"][:, None, None]
        a = np.minimum(levels["cv_i"] / np.sqrt(np.expm1(sigma**2)), 1.0)[:, None, None]
        return mu * ((1 - a) + a * np.exp(sigma * log_field - sigma**2 / 2))

    def band_faults(self, warm: np.ndarray, mu: np.ndarray, d: _Draws) -> tuple[BandFaults, np.ndarray]:
        """The section-5.2 band + peaks of fault images; also the fault rows (N,)."""
        p, n = self.p, len(warm)
        rows = (
            np.full(n, p.fault_row) if self.options.fault_row == "fixed" else (d.u_row * HEIGHT).astype(int)
        )
        amplitude = np.maximum(np.take(p.band_amp, warm) * (1 + BAND_AMPLITUDE_SD * d.z[:, 2]), 0.0)
        segments = segment_weights(d.segment_noise, np.full(n, p.coverage))
        peak_rows, peak_cols = peak_positions(d.peak_u[:, 0], d.peak_u[:, 1], segments, rows, HEIGHT)
        n_peaks = np.minimum(
            np.take(p.peak_min, warm) + _poisson(d.count_u[:, 0], np.take(p.peak_rate, warm)), MAX_PEAKS
        )
        active = np.arange(MAX_PEAKS)[None, :] < n_peaks[:, None]
        heights = (mu * np.take(p.peak_amp, warm))[:, None] * np.exp(
            np.take(p.peak_sd, warm)[:, None] * d.peak_z
        )
        profile = row_profile(rows, np.full(n, p.sigma_y), HEIGHT)
        faults = BandFaults(
            profile, segments, amplitude, peak_rows, peak_cols, np.where(active, heights, 0.0)
        )
        return faults, rows

    def isolated_pixels(self, images: np.ndarray, levels: dict[str, np.ndarray], d: _Draws) -> np.ndarray:
        """(N, 2) numbers of bright and dark pixels written into images (N, H, W) in place.

        Bright: Poisson(bright_rate) pixels raised by bright_amp·σ_i·exp(bright_sd·z), σ_i = μ_i·CV_i the
        image's model std. Dark: DARK_MIN + Poisson(DARK_RATE) pixels set to at most
        μ_i·(1 - DARK_DEPTH·CV)·exp(DARK_SD·z), CV = DARK_CV_BLEND·CV_i + (1 - DARK_CV_BLEND)·CV_c (CV_c: the
        condition's CV before the per-image spread). Positions are uniform over the image."""
        p, mu = self.p, levels["mu_i"]
        if not self.options.isolated_pixels:
            return np.zeros((len(mu), 2), dtype=int)
        bright = _poisson(d.count_u[:, 1], np.take(p.bright_rate, levels["warm"]))
        dark = DARK_MIN + _poisson(d.count_u[:, 2], DARK_RATE)
        counts = np.minimum(np.column_stack([bright, dark]), MAX_SPOTS)
        for kind in range(2):
            image, slot = np.nonzero(np.arange(MAX_SPOTS)[None, :] < counts[:, kind : kind + 1])
            pixel = (d.spot_u[image, kind, slot] * HEIGHT * WIDTH).astype(int)
            at = (image, pixel // WIDTH, pixel % WIDTH)
            if kind == 0:
                sd, warm = mu[image] * levels["cv_i"][image], levels["warm"][image]
                spread = np.take(p.bright_sd, warm) * d.spot_z[image, 0, slot]
                np.add.at(images, at, sd * np.take(p.bright_amp, warm) * np.exp(spread))
            else:
                cv = DARK_CV_BLEND * levels["cv_i"][image] + (1 - DARK_CV_BLEND) * levels["cv_c"][image]
                floor = mu[image] * (1 - DARK_DEPTH * cv) * np.exp(DARK_SD * d.spot_z[image, 1, slot])
                images[at] = np.minimum(images[at], floor)
        return counts

    def render(self, folder: int, warm: np.ndarray, d: _Draws) -> _Batch:
        levels = self.levels(folder, warm, d)
        n = len(warm)
        weights = np.multiply(self.p.weights, self.p.fault_mult if folder == 2 else 1.0)
        images = self.normal_images(levels, weights, d)
        masks = np.zeros(images.shape, dtype=np.uint8)
        columns = {
            "fault_row": np.full(n, -1),
            "band_amplitude": np.zeros(n),
            "n_peaks": np.zeros(n, dtype=int),
        }
        if folder == 2:
            faults, columns["fault_row"] = self.band_faults(levels["warm"], levels["mu_i"], d)
            images, masks = apply_band_faults(images, faults)
            columns["band_amplitude"], columns["n_peaks"] = faults.amplitude, (faults.peak_values > 0).sum(1)
        counts = self.isolated_pixels(images, levels, d)
        if folder == 2 and self.options.mask == "change":
            masks |= self._changed(images, levels["warm"], d)
        levels.pop("warm")
        levels.pop("cv_c")
        return _Batch(images, masks, {**levels, **columns, "n_bright": counts[:, 0], "n_dark": counts[:, 1]})

    def _changed(self, faulty: np.ndarray, warm: np.ndarray, d: _Draws) -> np.ndarray:
        """(N, H, W) uint8: pixels of the fault images that differ from their fault-free twin (the same draws
        rendered as good images) by at least MASK_CHANGE times the twin's model std μ_i·CV_i."""
        levels = self.levels(1, warm, d)
        twin = self.normal_images(levels, np.asarray(self.p.weights), d)
        self.isolated_pixels(twin, levels, d)
        sd = (levels["mu_i"] * levels["cv_i"])[:, None, None]
        return (np.abs(faulty - twin) >= MASK_CHANGE * sd).astype(np.uint8)

    def cap(self, folder: int) -> float:
        if folder == 0:
            return TRAIN_MAX
        if not self.options.tail_caps:
            return np.inf
        return self.p.cap_good if folder == 1 else self.p.cap_fault


def _render_folder(renderer: _Renderer, domain: str, seed: int, folder: int, n: int, n_test: int) -> _Batch:
    """All files of one folder, redrawing (from each file's own stream) those above the folder's cap."""
    rngs = [_file_rng(seed, domain, folder, i) for i in range(n)]
    warm = (np.arange(n) >= n_test // 2).astype(int)
    batch = renderer.render(folder, warm, _draw(rngs))
    cap = renderer.cap(folder)
    for _ in range(MAX_ROUNDS):
        bad = np.nonzero(batch.images.max(axis=(1, 2)) > cap)[0]
        if len(bad) == 0:
            return batch
        redraw = _draw([rngs[i] for i in bad])
        batch.replace(bad, renderer.render(folder, warm[bad], redraw))
    split, name, _ = FOLDERS[folder]
    raise SyntheticError(f"domain {domain}: {len(bad)} images of {split}/{name} stay above max {cap}")


@dataclass(frozen=True)
class SyntheticDomain:
    """One generated domain in memory, in `load_domain` order (train/good, test/good, test/fault by index)."""

    images: np.ndarray  # (N, H, W) float32, raw values, unclipped
    masks: np.ndarray  # (N, H, W) uint8 {0, 1}; zeros for good images
    meta: pd.DataFrame  # one row per image: columns of the sidecar (see `generate`)


def _check_counts(n_train, n_test) -> None:
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise SyntheticError(f"{name}: expected a non-negative int, got {value!r}")


def generate_domain(
    domain: str, n_train: int = 1000, n_test: int = 1000, seed: int = 0, **options
) -> SyntheticDomain:
    """Generate one domain in memory: n_train train/good, n_test test/good and n_test test/fault images."""
    if domain not in PARAMS:
        raise SyntheticError(f"domain: expected one of {list(PARAMS)}, got {domain!r}")
    _check_counts(n_train, n_test)
    renderer = _Renderer(domain, seed, make_options(options))
    parts, metas = [], []
    for folder, (split, name, label) in enumerate(FOLDERS):
        n = n_train if folder == 0 else n_test
        batch = _render_folder(renderer, domain, seed, folder, n, n_test)
        index = np.arange(n)
        condition = np.full(n, "none") if folder == 0 else np.where(index < n_test // 2, "cold", "warm")
        meta = {"domain": domain, "split": split, "label": label, "condition": condition, "file_index": index}
        paths = [f"domain_{domain}/{split}/{name}/{i:06d}.tiff" for i in index]
        metas.append(pd.DataFrame({**meta, **batch.columns, "path": paths})[list(SIDECAR_COLUMNS)])
        parts.append(batch)
    return SyntheticDomain(
        np.concatenate([b.images for b in parts]).astype(np.float32),
        np.concatenate([b.masks for b in parts]),
        pd.concat(metas, ignore_index=True),
    )


# ---------------------------------------------------------------- files


def cold_warm_split(root) -> int:
    """The cold/warm split of the folder: half the synthetic test set when `root` holds one, else HDMAP's."""
    marker = Path(root) / MARKER
    return json.loads(marker.read_text())["n_test"] // 2 if marker.exists() else COLD_WARM_SPLIT


def _marker(domains, n_train: int, n_test: int, seed: int, options: dict) -> dict:
    """The generation parameters written to (and compared with) the marker file."""
    if not domains or not set(domains) <= set(DOMAINS):
        raise SyntheticError(f"domains: expected a non-empty subset of {list(DOMAINS)}, got {domains!r}")
    _check_counts(n_train, n_test)
    return {
        "version": VERSION,
        "domains": sorted(set(domains)),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "seed": int(seed),
        "options": asdict(make_options(options)),
    }


def _clear(out: Path) -> None:
    """Remove a previous synthetic set (complete or interrupted) from `out`; refuse when `out` holds HDMAP
    folders without a marker of either kind."""
    domain_dirs = [out / f"domain_{d}" for d in DOMAINS if (out / f"domain_{d}").exists()]
    if domain_dirs and not (out / MARKER).exists() and not (out / PARTIAL).exists():
        raise SyntheticError(f"{out}: holds HDMAP domain folders but no {MARKER}; refusing to overwrite them")
    for path in domain_dirs:
        shutil.rmtree(path)
    for name in (MARKER, SIDECAR, PARTIAL):
        (out / name).unlink(missing_ok=True)


def generate(
    out, domains=DOMAINS, n_train: int = 1000, n_test: int = 1000, seed: int = 0, **options
) -> pd.DataFrame:
    """Write the synthetic set to `out` (replacing a previous one); returns the sidecar table. `PARTIAL`
    marks the folder while it is written and `MARKER` replaces it at the end, so an interrupted generation
    is recognised (and redone) by the next `ensure` or `generate`."""
    out = Path(out)
    marker = _marker(domains, n_train, n_test, seed, options)
    _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / PARTIAL, json.dumps(marker, indent=2))
    metas = []
    for domain in tqdm(marker["domains"], desc=f"synthetic HDMAP -> {out}", unit="domain"):
        data = generate_domain(domain, n_train, n_test, seed, **options)
        for folder in (*N_TEST_FOLDERS, "train/good"):
            (out / f"domain_{domain}" / folder).mkdir(parents=True, exist_ok=True)
        for image, path in zip(data.images, data.meta["path"], strict=True):
            tifffile.imwrite(out / path, image)
        faults = data.meta.index[data.meta["label"] == 1]
        for row in faults:
            name = f"{data.meta.at[row, 'file_index']:06d}.tiff"
            tifffile.imwrite(out / f"domain_{domain}/ground_truth/fault" / name, data.masks[row])
        metas.append(data.meta)
    meta = pd.concat(metas, ignore_index=True)
    write_text(out / SIDECAR, meta.to_csv(index=False))
    write_text(out / MARKER, json.dumps(marker, indent=2))
    (out / PARTIAL).unlink()
    return meta


def _read_marker(out: Path) -> dict | None:
    """The marker of the set in `out`: None when there is none, {} when it is unreadable."""
    path = out / MARKER
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _flatten(marker: dict, prefix: str = "") -> dict:
    """{"options": {"mask": "band"}} -> {"options.mask": "band"}."""
    flat = {}
    for key, value in marker.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def marker_differences(existing: dict, requested: dict) -> list[str]:
    """'key: existing -> requested' for every generation parameter that differs (missing: None)."""
    old, new = _flatten(existing), _flatten(requested)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _complete(out: Path, marker: dict) -> bool:
    """Whether every file of the set described by `marker` is in `out`."""
    expected = {"train/good": marker["n_train"], **{folder: marker["n_test"] for folder in N_TEST_FOLDERS}}
    return all(
        len(list((out / f"domain_{d}" / folder).glob("*.tiff"))) == n
        for d in marker["domains"]
        for folder, n in expected.items()
    )


@contextlib.contextmanager
def _locked(out: Path):
    """Exclusive lock on `<out>/.lock`, so parallel jobs (a Hydra multirun) generate the set only once."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(out, domains=DOMAINS, n_train: int = 1000, n_test: int = 1000, seed: int = 0, **options) -> Path:
    """`out` holding the synthetic set with these parameters.

    Identical marker and every file present: nothing to do. No marker (absent or empty folder), an
    interrupted generation (`PARTIAL`) or identical marker with files missing: generated. A marker with other
    parameters (or of another VERSION): refused, since regenerating in place would silently change the data of
    earlier runs on this folder."""
    out = Path(out)
    marker = _marker(domains, n_train, n_test, seed, options)
    with _locked(out):
        if (out / PARTIAL).exists():
            note(f"{out}: holds an interrupted generation ({PARTIAL}); generating it again")
            generate(out, domains, n_train, n_test, seed, **options)
            return out
        existing = _read_marker(out)
        if existing is not None and existing != marker:
            differences = "; ".join(marker_differences(existing, marker))
            raise SyntheticError(
                f"{out}: holds a synthetic set generated with other parameters ({differences}); choose "
                f"another data.root for these parameters, or delete {out} to regenerate it"
            )
        if existing is None or not _complete(out, marker):
            generate(out, domains, n_train, n_test, seed, **options)
    return out


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """The `Options` as command-line flags (--tail-caps/--no-tail-caps, ..., --mask); same names as fields."""
    for name, allowed in OPTION_CHOICES.items():
        flag, default = "--" + name.replace("_", "-"), getattr(Options, name)
        if allowed is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, choices=allowed, default=default)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=1000, help="images per test class; first half cold")
    add_option_arguments(parser)
    args = parser.parse_args(argv)
    stopped = f"{args.out} is marked incomplete ({PARTIAL}): the next run generates it again"
    return guard(lambda: _generate(args), "feclip.data.synthetic", stopped=stopped)


def _generate(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    options = {name: getattr(args, name) for name in Options.__dataclass_fields__}
    meta = generate(args.out, args.domains, args.n_train, args.n_test, args.seed, **options)
    print(f"wrote {len(meta)} images of domains {''.join(args.domains)} to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
