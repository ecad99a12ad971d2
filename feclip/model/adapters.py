"""FE-CLIP adapters on a patch-token grid (B, gh, gw, D): FFE, LFS, the Conv ablation and their fusion.

- `FFE` (frequency-aware feature extraction): non-overlapping Ph x Pw windows (replicate-padded to a multiple,
  cropped back), window transform, one Linear(D, D) + GELU on the channel axis shared by every coefficient and
  window (FFT: the same Linear on the real and on the imaginary parts), inverse transform. Computed with the
  Linear's matrix applied to the tokens before the transform (they commute; the bias goes on the
  coefficients): one matmul per token for DCT and FFT alike, not one per coefficient.
- `LFS` (local frequency statistics): stride-1 Qh x Qw windows (replicate padding (Q-1)//2 before, Q//2
  after; output grid = input grid), window transform, one statistic of `LFS_STATISTICS` over the window's
  coefficients (FFT: the statistic of the real part plus that of the imaginary part), then
  Conv2d(D, D, k, 'same') + GELU.
- `ConvAdapter`: Conv2d(D, D, k) + GELU, the paper's plain adapter ablation.
- `TapAdapter`: the fusion of Eq. 2, lam * sum(branches) + (1 - lam) * grid; no branches = identity.

What the LFS statistics compute (exact identities, pinned by the tests):
- `mean` (the paper's, signed) is linear, hence a fixed depthwise filter w = sum_p (1^T B_p) / (Qh Qw) over
  the window (`WindowTransform.mean_filter`); separable: w = sum_p a_h a_w^T / (Qh Qw), a = B^T 1 per axis.
  DCT 3x3: a = (1.6927, -0.2391, 0.2785), w = a a^T / 9, the up-left neighbour x(i-1, j-1) weighs
  a_0^2 / 9 = (1/sqrt3 + 1/sqrt2 + 1/sqrt6)^2 / 9 = 0.318361 of a total 1/3 (95.5 %); DCT 1x5: 0.4255 on
  x(i, j-2), two tokens to the left, of a total 1/sqrt5. DFT: exactly x(i-1, j-1) / 3 (3x3), x(i, j-2) / sqrt5
  (1x5), i.e. a shifted grid: a window's mean DFT coefficient is its first sample over sqrt(Qh Qw).
- `energy` (mean of squared coefficients) is, by Parseval, a box filter of x^2 / (Qh Qw) for every orthonormal
  transform: the DCT and the DFT compute the same numbers.
- `abs` (mean of absolute coefficients) is the only one that needs the transform itself and differs between
  DCT and FFT.
`mean` and `energy` run as their filters on the padded grid (`energy` only for an orthonormal transform);
`frequency_statistic(grid, fast=False)` forces the unfold + transform path they are tested against.

Everything is batched (reshape / unfold / einsum / conv) and runs in float32 with autocast off; outputs are
float32 (B, gh, gw, D). The 3x3 convolutions run by Winograd's F(m x m, 3x3) on the CPU
(`feclip.model.winograd`: up to 4x fewer multiply-adds at ViT-B/16's 14 x 14 grid, the same numbers within
float rounding) and as nn.Conv2d (cuDNN) on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feclip.errors import FeclipError
from feclip.model.frequency import TRANSFORMS, WindowTransform, check_window
from feclip.model.winograd import same_conv
from feclip.registry import Registry
from feclip.runtime import cached_constants


class AdapterError(FeclipError):
    """An adapter option or input shape is invalid."""


@dataclass(frozen=True)
class Statistic:
    """One LFS statistic: the mean over the window's coefficients (summed over parts) of `pointwise(coeffs)`.

    `fast(transform, maps (B, D, gh + Qh - 1, gw + Qw - 1)) -> (B, D, gh, gw)`, where set, computes the same
    numbers from the padded grid without the transform; `fast_needs_orthonormal`: only for orthonormal ones.
    """

    pointwise: Callable[[torch.Tensor], torch.Tensor]
    fast: Callable[[WindowTransform, torch.Tensor], torch.Tensor] | None = None
    fast_needs_orthonormal: bool = False

    def has_fast_path(self, transform: WindowTransform) -> bool:
        return self.fast is not None and (transform.orthonormal or not self.fast_needs_orthonormal)


def _mean_by_filter(transform: WindowTransform, maps: torch.Tensor) -> torch.Tensor:
    """The signed mean as the depthwise filter `transform.mean_filter()`: (B, D, H, W) ->
    (B, D, H - Qh + 1, W - Qw + 1)."""
    weights = transform.mean_filter()
    return F.conv2d(maps, weights.expand(maps.shape[1], 1, *weights.shape), groups=maps.shape[1])


def _energy_by_box_filter(transform: WindowTransform, maps: torch.Tensor) -> torch.Tensor:
    """Parseval: the mean squared coefficient is the window mean of x^2 (orthonormal transforms only):
    (B, D, H, W) -> (B, D, H - Qh + 1, W - Qw + 1)."""
    return F.avg_pool2d(maps.square(), transform.window, stride=1)


LFS_STATISTICS: Registry[Statistic] = Registry("LFS statistic", key="freq.lfs.statistic")
LFS_STATISTICS.register("mean", Statistic(torch.positive, _mean_by_filter))  # positive: the identity
LFS_STATISTICS.register("abs", Statistic(torch.abs))
LFS_STATISTICS.register("energy", Statistic(torch.square, _energy_by_box_filter, fast_needs_orthonormal=True))


def _check_grid(grid: torch.Tensor, width: int, name: str) -> None:
    if grid.ndim != 4 or grid.shape[-1] != width:
        raise AdapterError(f"{name}: grid of shape {tuple(grid.shape)}, expected (B, gh, gw, {width})")


def _check_kernel(kernel) -> None:
    if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 1:
        raise AdapterError(f"lfs_kernel={kernel!r}: expected a positive integer")


def replicate_pad(maps: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """maps: (B, D, gh, gw) -> (B, D, gh + top + bottom, gw + left + right), edge values repeated."""
    if top == bottom == left == right == 0:
        return maps
    return F.pad(maps, (left, right, top, bottom), mode="replicate")


class FFE(nn.Module):
    """Frequency-aware feature extraction on non-overlapping windows: (B, gh, gw, D) -> (B, gh, gw, D)."""

    def __init__(self, width: int, window=(3, 3), transform: str = "dct") -> None:
        super().__init__()
        self.width = width
        self.window = check_window(window, "ffe_window")
        self.transform = TRANSFORMS.get_entry(transform)(self.window)
        self.linear = nn.Linear(width, width)
        self.act = nn.GELU()

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        _check_grid(grid, self.width, "FFE")
        batch, gh, gw, width = grid.shape
        ph, pw = self.window
        rows, cols = -(-gh // ph), -(-gw // pw)
        with torch.autocast(grid.device.type, enabled=False):
            # W (T x) + b = T (x W^T) + b: the channel Linear commutes with the window transform T (and with
            # the replicate padding), so it runs once per token instead of once per coefficient (twice as many
            # for the FFT's real and imaginary parts); the bias is added to every coefficient, then GELU
            mixed = F.linear(grid.float(), self.linear.weight)
            at_row, at_col = _window_positions(gh, gw, self.window, grid.device)
            # one gather does the padding and the windowing: (B, ph pw, windows D)
            windows = mixed[:, at_row, at_col].flatten(2)
            bias = self.linear.bias.repeat(rows * cols)  # on every coefficient, added by the product below
            coeffs = torch.baddbmm(bias, self.transform.basis.flatten(0, 1).expand(batch, -1, -1), windows)
            out = self.transform.inverse_basis @ self.act(coeffs)  # (B, ph pw, windows D)
            out = out.view(batch, ph, pw, rows, cols, width).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(batch, rows * ph, cols * pw, width)[:, :gh, :gw]


@cached_constants()
def _window_positions(gh: int, gw: int, window: tuple[int, int], device: torch.device):
    """(row, col) indices (ph pw, windows) of FFE's non-overlapping windows on a (gh, gw) grid,
    replicate-padded at the bottom and right to whole windows: position k = i pw + j of window
    n = r cols + c is grid cell (min(r ph + i, gh - 1), min(c pw + j, gw - 1))."""
    ph, pw = window
    rows, cols = -(-gh // ph), -(-gw // pw)
    i, j = torch.arange(ph).repeat_interleave(pw), torch.arange(pw).repeat(ph)  # (ph pw,)
    r, c = torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)  # (windows,)
    at_row = (r[None] * ph + i[:, None]).clamp_max(gh - 1)
    at_col = (c[None] * pw + j[:, None]).clamp_max(gw - 1)
    return at_row.to(device), at_col.to(device)


class LFS(nn.Module):
    """Local frequency statistics on stride-1 windows, then Conv + GELU: (B, gh, gw, D) -> (B, gh, gw, D)."""

    def __init__(
        self, width: int, window=(3, 3), statistic: str = "mean", kernel: int = 3, transform: str = "dct"
    ) -> None:
        super().__init__()
        _check_kernel(kernel)
        self.width = width
        self.window = check_window(window, "lfs_window")
        self.statistic = LFS_STATISTICS.get_entry(statistic)
        self.transform = TRANSFORMS.get_entry(transform)(self.window)
        self.conv = nn.Conv2d(width, width, kernel, padding="same")
        self.act = nn.GELU()

    def frequency_statistic(self, grid: torch.Tensor, *, fast: bool = True) -> torch.Tensor:
        """grid: (B, gh, gw, D) -> the per-position statistic (B, D, gh, gw) float32 (before the conv); the
        statistic's filter where it has one (`fast`), else unfold + transform + statistic."""
        _check_grid(grid, self.width, "LFS")
        qh, qw = self.window
        with torch.autocast(grid.device.type, enabled=False):
            maps = replicate_pad(
                grid.float().permute(0, 3, 1, 2), (qh - 1) // 2, qh // 2, (qw - 1) // 2, qw // 2
            )
            if fast and self.statistic.has_fast_path(self.transform):
                return self.statistic.fast(self.transform, maps)
            # (B, D, gh, gw, qh, qw) sliding windows -> channels last (B, gh, gw, qh, qw, D)
            windows = maps.unfold(2, qh, 1).unfold(3, qw, 1).permute(0, 2, 3, 4, 5, 1)
            coeffs = self.statistic.pointwise(self.transform(windows))  # (parts, B, gh, gw, qh, qw, D)
            return coeffs.mean(dim=(-3, -2)).sum(0).permute(0, 3, 1, 2)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        stats = self.frequency_statistic(grid)
        with torch.autocast(grid.device.type, enabled=False):
            return self.act(same_conv(self.conv, stats.permute(0, 2, 3, 1)))


class ConvAdapter(nn.Module):
    """Plain Conv2d(D, D, k, padding 'same') + GELU on the grid (paper ablation): (B, gh, gw, D) -> same."""

    def __init__(self, width: int, kernel: int = 3) -> None:
        super().__init__()
        _check_kernel(kernel)
        self.width = width
        self.conv = nn.Conv2d(width, width, kernel, padding="same")
        self.act = nn.GELU()

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        _check_grid(grid, self.width, "ConvAdapter")
        with torch.autocast(grid.device.type, enabled=False):
            return self.act(same_conv(self.conv, grid.float()))


class TapAdapter(nn.Module):
    """Eq. 2 at one tap: lam * sum(branch(grid)) + (1 - lam) * grid; (B, gh, gw, D) -> float32, same shape."""

    def __init__(self, branches: dict[str, nn.Module], lam: float) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(branches)
        self.lam = float(lam)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        if not self.branches:
            return grid
        with torch.autocast(grid.device.type, enabled=False):
            update = sum(branch(grid) for branch in self.branches.values())
            return torch.lerp(grid.float(), update, self.lam)  # (1 - lam) grid + lam update, one pass
