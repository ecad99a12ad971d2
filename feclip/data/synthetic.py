"""Calibrated synthetic HDMAP generator (../shared/docs/hdmap.md section 5), all four domains.

Writes the real layout `<out>/domain_X/{train/good,test/good,test/fault}/NNNNNN.tiff` (float32 (31, 95), never
clipped; test files 0 .. n_test//2 - 1 cold, the rest warm), uint8 {0, 1} pixel masks of every fault in
`<out>/domain_X/ground_truth/fault/NNNNNN.tiff` (mask definition: `faults.py`), the sidecar
`<out>/synthetic_meta.csv` and the marker `<out>/synthetic_params.json` holding the generation parameters.

Image model (5.2): a per-image log-texture field L (fixed per domain and condition: column fingerprint COL,
row profile ROW, mesh lattice LAT; per image: smooth field SM, white noise N), rendered as the shifted
lognormal `x = μ_i·((1 - a_i) + a_i·exp(σL - σ²/2))`. Faults: gain and CV shift, weaker regular structure
(struct_mult scales the COL and LAT variance shares), a horizontal band and peaks on the domain's fault row.
Train images with max > 1 are redrawn.

Options (keyword arguments of `generate_domain`, `generate`, `ensure`; numbers from
`scripts/synthetic_stats.py`, seed 0):
- `tail_caps` (default True): redraw test images whose max exceeds the measured pooled max of their domain
  and split (5.2). Brings B files with max > 1 from 108 to 0 (target <= 5) and the pooled maxima of 6.3 to
  within 2 % of the measured ones; C (508, target 514) and A+D (555, target 602) stay in tolerance.
- `bright_pixels` (default True): Poisson(1) isolated bright pixels per image, each raised by
  `BRIGHT_AMP·σ_i·exp(0.3 z)` with σ_i = μ_i·CV_i the image's model std (section 7's suggested fix, scaled
  by the image std and fitted to domain C's per-image max). Without them C good/warm max is 0.674 against
  0.748 ± 0.085 (fails 6.2); with them every C max statistic of 6.2 passes, cold max AUROC is 0.759 (target
  0.760) and 15 % of C cold faults exceed the 0.6787 gate threshold (target 22.6 %, 8 % without).
- `fault_row` (default "fixed"): "fixed" = the domain's fault row (5.4) in every fault, "random" = uniform
  per image.

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

from feclip.errors import FeclipError
from feclip.data.faults import (
    BandFaults,
    apply_band_faults,
    circular_smooth,
    peak_positions,
    row_profile,
    segment_weights,
    standardize,
)
from feclip.data.hdmap import DOMAINS, FOLDERS

HEIGHT, WIDTH = 31, 95
VERSION = 1  # bump when the image model changes: `ensure` then regenerates
MARKER = "synthetic_params.json"
N_TEST_FOLDERS = ("test/good", "test/fault", "ground_truth/fault")  # folders holding n_test files each
SIDECAR = "synthetic_meta.csv"
SIDECAR_COLUMNS = (
    "domain", "split", "label", "condition", "file_index", "fault_row", "band_amplitude", "n_peaks",
    "n_bright", "mu_i", "cv_i", "tau", "path",
)  # fmt: skip

LEVEL_SD = (0.076, 0.065)  # r_c: relative sd of the per-image level, (cold, warm)
CV_SD = (0.024, 0.017)  # s_c: sd of the per-image CV
LEVEL_CV_CORR = (0.62, -0.20)  # ρ_c = corr(level, CV)
WARM_STRUCTURE_CORR = 0.7  # warm COL/ROW/LAT = std(0.7·cold + √(1 - 0.7²)·independent)
TRAIN_LEVEL_SD, TRAIN_CV_SD = 0.065, 0.02
TAU_RANGE = (-0.2, 1.3)
TRAIN_MAX = 1.0  # train images are redrawn above this (user_max is the training maximum)
CV_RANGE = (0.05, 0.9)
BAND_AMPLITUDE_SD = 0.3  # A = A_c·(1 + 0.3 z), floored at 0
MAX_PEAKS = 16  # peaks per fault image are capped here (Poisson draws beyond are negligible)
BRIGHT_RATE, BRIGHT_AMP, BRIGHT_SD, MAX_BRIGHT = 1.0, 5.0, 0.3, 8  # isolated bright pixels (× image sd σ_i)
MAX_ROUNDS = 200  # reject-and-redraw rounds before giving up


class SyntheticError(FeclipError):
    """Bad generator input (domain, counts, option, output folder); the message names it."""


@dataclass(frozen=True)
class DomainParams:
    """One domain's generator parameters (hdmap.md 5.3 and 5.4); pairs are (cold, warm)."""

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
    struct_mult: float  # COL and LAT weight factor in faults
    gain: tuple[float, float]  # fault level factor
    dcv: tuple[float, float]  # fault CV shift
    band_amp: tuple[float, float]  # A_c
    peak_min: tuple[int, int]
    peak_rate: tuple[float, float]
    peak_amp: tuple[float, float]  # × μ_i
    peak_sd: tuple[float, float]
    cap_good: float  # tail caps: measured pooled max of test/good, test/fault
    cap_fault: float


PARAMS = {
    "A": DomainParams(
        mu=(0.150, 0.288), cv=(0.24, 0.31), sigma=0.32, train_tau=(0.689, 0.266),
        weights=(0.261, 0.017, 0.406, 0.167, 0.149), col_alpha=0.09, col_len=2.5, sm_len=2.2,
        lat_freqs=(0.1375, 0.4188, 0.3725, 0.2206), lat_amps=(0.58, 0.68, 0.75, 0.54),
        fault_row=12, sigma_y=0.8, coverage=0.6, struct_mult=0.65, gain=(1.12, 0.97), dcv=(0.0, -0.02),
        band_amp=(0.66, 0.66), peak_min=(0, 2), peak_rate=(0.6, 1.0), peak_amp=(3.0, 1.8),
        peak_sd=(0.15, 0.15),
        cap_good=1.09, cap_fault=1.27,
    ),
    "B": DomainParams(
        mu=(0.158, 0.292), cv=(0.27, 0.31), sigma=0.32, train_tau=(0.691, 0.231),
        weights=(0.422, 0.027, 0.128, 0.149, 0.275), col_alpha=0.07, col_len=2.5, sm_len=7.1,
        lat_freqs=(0.3827, 0.1581, 0.0791, 0.1782, 0.3305), lat_amps=(0.79, 0.79, 0.51, 0.76, 0.80),
        fault_row=12, sigma_y=0.8, coverage=0.6, struct_mult=0.30, gain=(0.85, 0.86), dcv=(0.0, -0.02),
        band_amp=(0.60, 0.60), peak_min=(0, 1), peak_rate=(0.0, 0.5), peak_amp=(0.0, 1.2),
        peak_sd=(0.3, 0.3),
        cap_good=0.93, cap_fault=0.945,
    ),
    "C": DomainParams(
        mu=(0.1904, 0.2654), cv=(0.242, 0.283), sigma=0.35, train_tau=(0.728, 0.230),
        weights=(0.0, 0.002, 0.572, 0.261, 0.166), col_alpha=0.5, col_len=2.5, sm_len=8.9,  # COL unused
        lat_freqs=(0.3561, 0.3480, 0.2709, 0.2358, 0.3436, 0.0233, 0.1077),
        lat_amps=(0.52, 0.70, 0.93, 0.94, 0.52, 0.66, 0.52),
        fault_row=5, sigma_y=0.8, coverage=0.6, struct_mult=0.50, gain=(1.12, 1.138), dcv=(0.015, 0.0),
        band_amp=(0.25, 0.46), peak_min=(1, 1), peak_rate=(0.6, 2.17), peak_amp=(0.3, 4.05),
        peak_sd=(0.3, 0.23),
        cap_good=1.09, cap_fault=2.94,
    ),
    "D": DomainParams(
        mu=(0.155, 0.239), cv=(0.34, 0.38), sigma=0.40, train_tau=(0.758, 0.05),
        weights=(0.311, 0.007, 0.322, 0.169, 0.191), col_alpha=0.60, col_len=1.4, sm_len=12.1,
        lat_freqs=(0.3857, 0.2272, 0.1470, 0.3372, 0.1847, 0.3360, 0.0822, 0.1808, 0.4078, 0.1404, 0.1138),
        lat_amps=(0.62, 0.62, 0.86, 0.78, 0.71, 0.56, 0.55, 0.68, 0.55, 0.50, 0.90),
        fault_row=5, sigma_y=1.0, coverage=0.8, struct_mult=0.10, gain=(0.93, 0.85), dcv=(0.0, -0.03),
        band_amp=(0.90, 0.90), peak_min=(0, 1), peak_rate=(0.35, 1.5), peak_amp=(2.6, 2.6),
        peak_sd=(0.3, 0.3),
        cap_good=0.90, cap_fault=1.48,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Options:
    """Generator options (see the module docstring)."""

    tail_caps: bool = True
    bright_pixels: bool = True
    fault_row: str = "fixed"

    def __post_init__(self) -> None:
        if self.fault_row not in ("fixed", "random"):
            raise SyntheticError(f"option fault_row: expected 'fixed' or 'random', got {self.fault_row!r}")


def make_options(options: dict) -> Options:
    unknown = sorted(set(options) - set(Options.__dataclass_fields__))
    if unknown:
        raise SyntheticError(
            f"unknown generator option(s) {unknown}; expected {list(Options.__dataclass_fields__)}"
        )
    return Options(**options)


# ---------------------------------------------------------------- fixed structure per domain and condition


def _column_fingerprint(p: DomainParams, rng: np.random.Generator) -> np.ndarray:
    """COL: (W,) unit variance, constant down each column."""
    smooth = standardize(circular_smooth(rng.standard_normal(WIDTH), p.col_len, axes=(0,)), axes=(0,))
    alternating = standardize(np.diff(rng.standard_normal(WIDTH + 1)), axes=(0,))
    return standardize(p.col_alpha * smooth + (1.0 - p.col_alpha) * alternating, axes=(0,))


def _mesh_lattice(p: DomainParams, rng: np.random.Generator) -> np.ndarray:
    """LAT: (H, W) unit variance; s(k) = Σ a_j cos(2π f_j k + φ_j) written into pixel (k mod H, k mod W)."""
    k = np.arange(HEIGHT * WIDTH)
    phases = rng.uniform(0.0, 2.0 * np.pi, len(p.lat_freqs))
    signal = (np.array(p.lat_amps) * np.cos(2 * np.pi * np.outer(k, p.lat_freqs) + phases)).sum(axis=1)
    lattice = np.empty((HEIGHT, WIDTH))
    lattice[k % HEIGHT, k % WIDTH] = signal
    return standardize(lattice, axes=(0, 1))


def _structure(p: DomainParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(regular, rows): (2, H, W) each, index 0 cold / 1 warm.

    regular = √w_COL·COL + √w_LAT·LAT and rows = √w_ROW·ROW: the weights of 5.3 are variance shares (they sum
    to 1); this reading reproduces the prototype's fault APE/SFM and band deltas of section 6.6."""
    draws = {
        name: [make(p, rng) for _ in range(2)]  # cold, independent
        for name, make in (
            ("col", _column_fingerprint),
            ("row", lambda _, r: standardize(r.standard_normal(HEIGHT), axes=(0,))),
            ("lat", _mesh_lattice),
        )
    }
    rho = WARM_STRUCTURE_CORR
    both = {
        name: (cold, standardize(rho * cold + np.sqrt(1 - rho**2) * other, axes=tuple(range(cold.ndim))))
        for name, (cold, other) in draws.items()
    }
    w_col, w_row, w_lat = np.sqrt(p.weights[:3])
    regular = np.stack([w_col * both["col"][c][None, :] + w_lat * both["lat"][c] for c in range(2)])
    rows = np.stack([np.broadcast_to(w_row * both["row"][c][:, None], (HEIGHT, WIDTH)) for c in range(2)])
    return regular, rows


# ---------------------------------------------------------------- per-file random draws


@dataclass
class _Draws:
    """Everything one batch of files draws from its per-file streams (N files)."""

    beta: np.ndarray  # (N,) Beta(2, 2): level spread
    z: np.ndarray  # (N, 3) standard normals: CV, train τ, band amplitude
    noise: np.ndarray  # (N, 2, H, W) white noise of SM and N
    segment_noise: np.ndarray  # (N, W)
    u_row: np.ndarray  # (N,) uniform: random fault row
    n_peaks: np.ndarray  # (N,) Poisson(peak rate)
    peak_u: np.ndarray  # (N, 2, P) uniforms: peak column, peak row
    peak_z: np.ndarray  # (N, P)
    n_bright: np.ndarray  # (N,) Poisson(BRIGHT_RATE)
    bright_u: np.ndarray  # (N, K) uniform pixel positions
    bright_z: np.ndarray  # (N, K)


def _file_rng(seed: int, domain: str, folder: int, index: int) -> np.random.Generator:
    key = (DOMAINS.index(domain), 1 + folder, int(index))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _draw(rngs: list[np.random.Generator], peak_rate: np.ndarray) -> _Draws:
    n, pixels = len(rngs), HEIGHT * WIDTH
    normals = np.empty((n, 3 + 2 * pixels + WIDTH + MAX_PEAKS + MAX_BRIGHT))
    uniforms = np.empty((n, 1 + 2 * MAX_PEAKS + MAX_BRIGHT))
    beta, counts = np.empty(n), np.empty((n, 2), dtype=int)
    for i, rng in enumerate(rngs):
        normals[i] = rng.standard_normal(normals.shape[1])
        uniforms[i] = rng.random(uniforms.shape[1])
        beta[i] = rng.beta(2.0, 2.0)
        counts[i] = rng.poisson((peak_rate[i], BRIGHT_RATE))
    cuts = np.cumsum([3, 2 * pixels, WIDTH, MAX_PEAKS])
    z, noise, segment_noise, peak_z, bright_z = np.split(normals, cuts, axis=1)
    return _Draws(
        beta=beta,
        z=z,
        noise=noise.reshape(n, 2, HEIGHT, WIDTH),
        segment_noise=segment_noise,
        u_row=uniforms[:, 0],
        n_peaks=counts[:, 0],
        peak_u=uniforms[:, 1 : 1 + 2 * MAX_PEAKS].reshape(n, 2, MAX_PEAKS),
        peak_z=peak_z,
        n_bright=counts[:, 1],
        bright_u=uniforms[:, 1 + 2 * MAX_PEAKS :],
        bright_z=bright_z,
    )


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
        self.regular, self.rows = _structure(self.p, asset_rng)

    def levels(self, folder: int, warm: np.ndarray, d: _Draws) -> dict[str, np.ndarray]:
        """Per-file level μ_i, CV_i, structure condition and τ (train) for folder 0 train, 1 good, 2 fault.

        Train: τ interpolates μ and CV between cold and warm; the level-CV correlation and the structure
        assets are those of the nearer condition (τ >= 0.5: warm), an assumption (5.2 leaves it open)."""
        p, b = self.p, (2.0 * d.beta - 1.0) / 0.447
        tau = np.full(len(b), np.nan)
        if folder == 0:
            tau = np.clip(p.train_tau[0] + p.train_tau[1] * d.z[:, 1], *TAU_RANGE)
            warm = (tau >= 0.5).astype(int)
            mu = p.mu[0] + tau * (p.mu[1] - p.mu[0])
            cv = p.cv[0] + tau * (p.cv[1] - p.cv[0])
            level_sd, cv_sd = np.full(len(b), TRAIN_LEVEL_SD), np.full(len(b), TRAIN_CV_SD)
        else:
            mu, cv = np.take(p.mu, warm), np.take(p.cv, warm)
            level_sd, cv_sd = np.take(LEVEL_SD, warm), np.take(CV_SD, warm)
            if folder == 2:
                mu, cv = mu * np.take(p.gain, warm), cv + np.take(p.dcv, warm)
        rho = np.take(LEVEL_CV_CORR, warm)
        cv_i = np.clip(cv + cv_sd * (rho * b + np.sqrt(1 - rho**2) * d.z[:, 0]), *CV_RANGE)
        return {"warm": warm, "tau": tau, "mu_i": mu * (1.0 + level_sd * b), "cv_i": cv_i}

    def normal_images(
        self, warm: np.ndarray, mu: np.ndarray, cv: np.ndarray, struct: float, d: _Draws
    ) -> np.ndarray:
        """(N, H, W) shifted-lognormal images with per-image mean ≈ mu and std/mean ≈ cv."""
        w_sm, w_n = np.sqrt(self.p.weights[3:])
        smooth = standardize(circular_smooth(d.noise[:, 0], self.p.sm_len, axes=(1, 2)), axes=(1, 2))
        field = (
            struct * self.regular[warm]
            + self.rows[warm]
            + w_sm * smooth
            + w_n * standardize(d.noise[:, 1], (1, 2))
        )
        log_field = standardize(field, axes=(1, 2))
        sigma = self.p.sigma
        a = np.minimum(cv / np.sqrt(np.expm1(sigma**2)), 1.0)[:, None, None]
        return mu[:, None, None] * ((1 - a) + a * np.exp(sigma * log_field - sigma**2 / 2))

    def band_faults(self, warm: np.ndarray, mu: np.ndarray, d: _Draws) -> tuple[BandFaults, np.ndarray]:
        """The section-5.2 band + peaks of fault images; also the fault rows (N,)."""
        p, n = self.p, len(warm)
        rows = (
            np.full(n, p.fault_row) if self.options.fault_row == "fixed" else (d.u_row * HEIGHT).astype(int)
        )
        amplitude = np.maximum(np.take(p.band_amp, warm) * (1 + BAND_AMPLITUDE_SD * d.z[:, 2]), 0.0)
        segments = segment_weights(d.segment_noise, np.full(n, p.coverage))
        peak_rows, peak_cols = peak_positions(d.peak_u[:, 0], d.peak_u[:, 1], segments, rows, HEIGHT)
        n_peaks = np.minimum(np.take(p.peak_min, warm) + d.n_peaks, MAX_PEAKS)
        active = np.arange(MAX_PEAKS)[None, :] < n_peaks[:, None]
        heights = (mu * np.take(p.peak_amp, warm))[:, None] * np.exp(
            np.take(p.peak_sd, warm)[:, None] * d.peak_z
        )
        profile = row_profile(rows, np.full(n, p.sigma_y), HEIGHT)
        faults = BandFaults(
            profile, segments, amplitude, peak_rows, peak_cols, np.where(active, heights, 0.0)
        )
        return faults, rows

    def render(self, folder: int, warm: np.ndarray, d: _Draws) -> _Batch:
        levels = self.levels(folder, warm, d)
        warm, mu = levels.pop("warm"), levels["mu_i"]
        struct = np.sqrt(self.p.struct_mult) if folder == 2 else 1.0
        images = self.normal_images(warm, mu, levels["cv_i"], struct, d)
        masks = np.zeros(images.shape, dtype=np.uint8)
        n = len(images)
        columns = {
            "fault_row": np.full(n, -1),
            "band_amplitude": np.zeros(n),
            "n_peaks": np.zeros(n, dtype=int),
        }
        if folder == 2:
            faults, columns["fault_row"] = self.band_faults(warm, mu, d)
            images, masks = apply_band_faults(images, faults)
            columns["band_amplitude"], columns["n_peaks"] = faults.amplitude, (faults.peak_values > 0).sum(1)
        n_bright = (
            np.minimum(d.n_bright, MAX_BRIGHT) if self.options.bright_pixels else np.zeros(n, dtype=int)
        )
        image, slot = np.nonzero(np.arange(MAX_BRIGHT)[None, :] < n_bright[:, None])
        pixel = (d.bright_u[image, slot] * HEIGHT * WIDTH).astype(int)
        sd = mu[image] * levels["cv_i"][image]  # the image's model std σ_i = μ_i·CV_i
        bright = sd * BRIGHT_AMP * np.exp(BRIGHT_SD * d.bright_z[image, slot])
        np.add.at(images, (image, pixel // WIDTH, pixel % WIDTH), bright)
        return _Batch(images, masks, {**levels, **columns, "n_bright": n_bright})

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
    peak_rate = np.take(renderer.p.peak_rate, warm) if folder == 2 else np.zeros(n)
    batch = renderer.render(folder, warm, _draw(rngs, peak_rate))
    cap = renderer.cap(folder)
    for _ in range(MAX_ROUNDS):
        bad = np.nonzero(batch.images.max(axis=(1, 2)) > cap)[0]
        if len(bad) == 0:
            return batch
        redraw = _draw([rngs[i] for i in bad], peak_rate[bad])
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
    """Remove a previous synthetic set from `out`; refuse when `out` holds HDMAP folders without a marker."""
    domain_dirs = [out / f"domain_{d}" for d in DOMAINS if (out / f"domain_{d}").exists()]
    if domain_dirs and not (out / MARKER).exists():
        raise SyntheticError(f"{out}: holds HDMAP domain folders but no {MARKER}; refusing to overwrite them")
    for path in domain_dirs:
        shutil.rmtree(path)
    for name in (MARKER, SIDECAR):
        (out / name).unlink(missing_ok=True)


def generate(
    out, domains=DOMAINS, n_train: int = 1000, n_test: int = 1000, seed: int = 0, **options
) -> pd.DataFrame:
    """Write the synthetic set to `out` (replacing a previous one); returns the sidecar table."""
    out = Path(out)
    marker = _marker(domains, n_train, n_test, seed, options)
    _clear(out)
    metas = []
    for domain in marker["domains"]:
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
    meta.to_csv(out / SIDECAR, index=False)
    (out / MARKER).write_text(json.dumps(marker, indent=2))
    return meta


def _complete(out: Path, marker: dict) -> bool:
    if not (out / MARKER).exists() or json.loads((out / MARKER).read_text()) != marker:
        return False
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
    """`out` holding the synthetic set with these parameters: generated unless already complete (marker)."""
    out = Path(out)
    marker = _marker(domains, n_train, n_test, seed, options)
    with _locked(out):
        if not _complete(out, marker):
            generate(out, domains, n_train, n_test, seed, **options)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=1000, help="images per test class; first half cold")
    parser.add_argument("--tail-caps", action=argparse.BooleanOptionalAction, default=Options.tail_caps)
    parser.add_argument(
        "--bright-pixels", action=argparse.BooleanOptionalAction, default=Options.bright_pixels
    )
    parser.add_argument("--fault-row", choices=("fixed", "random"), default=Options.fault_row)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    options = {"tail_caps": args.tail_caps, "bright_pixels": args.bright_pixels, "fault_row": args.fault_row}
    meta = generate(args.out, args.domains, args.n_train, args.n_test, args.seed, **options)
    print(f"wrote {len(meta)} images of domains {''.join(args.domains)} to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
