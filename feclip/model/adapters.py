"""FE-CLIP adapters on a patch-token grid (B, gh, gw, D): FFE, LFS, the Conv ablation and their fusion.

- `FFE` (frequency-aware feature extraction): non-overlapping Ph x Pw windows (replicate-padded to a multiple,
  cropped back), window transform, one Linear(D, D) + GELU on the channel axis shared by every coefficient and
  window (FFT: the same Linear on the real and on the imaginary parts), inverse transform.
- `LFS` (local frequency statistics): stride-1 Qh x Qw windows (replicate padding, output grid = input grid),
  window transform, one statistic over the window's coefficients (`mean` signed as in the paper, `abs`, or
  `energy` = mean of squares; FFT: the statistic of the real part plus that of the imaginary part), then
  Conv2d(D, D, k, padding 'same') + GELU.
- `ConvAdapter`: Conv2d(D, D, k) + GELU, the paper's plain adapter ablation.
- `TapAdapter`: the fusion of Eq. 2, lam * sum(branches) + (1 - lam) * grid; no branches = identity.

Everything is batched (reshape / unfold / einsum / conv) and runs in float32 with autocast off; outputs are
float32 (B, gh, gw, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from feclip.errors import FeclipError
from feclip.model.frequency import check_window, make_transform

LFS_STATISTICS = ("mean", "abs", "energy")


class AdapterError(FeclipError):
    """An adapter option or input shape is invalid."""


def _check_grid(grid: torch.Tensor, width: int, name: str) -> None:
    if grid.ndim != 4 or grid.shape[-1] != width:
        raise AdapterError(f"{name}: grid of shape {tuple(grid.shape)}, expected (B, gh, gw, {width})")


def replicate_pad(maps: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """maps: (B, D, gh, gw) -> (B, D, gh + top + bottom, gw + left + right), edge values repeated."""
    if top == bottom == left == right == 0:
        return maps
    return F.pad(maps, (left, right, top, bottom), mode="replicate")


class FFE(nn.Module):
    """Frequency-aware feature extraction on non-overlapping windows: (B, gh, gw, D) -> (B, gh, gw, D)."""

    def __init__(self, width: int, window=(3, 3), freq: str = "dct") -> None:
        super().__init__()
        self.width = width
        self.window = check_window(window, "ffe_window")
        self.transform = make_transform(freq, self.window)
        self.linear = nn.Linear(width, width)
        self.act = nn.GELU()

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        _check_grid(grid, self.width, "FFE")
        batch, gh, gw, width = grid.shape
        ph, pw = self.window
        with torch.autocast(grid.device.type, enabled=False):
            maps = replicate_pad(grid.float().permute(0, 3, 1, 2), 0, -gh % ph, 0, -gw % pw)
            rows, cols = maps.shape[-2] // ph, maps.shape[-1] // pw
            # (B, D, rows*ph, cols*pw) -> windows (B, rows, cols, ph, pw, D)
            windows = maps.reshape(batch, width, rows, ph, cols, pw).permute(0, 2, 4, 3, 5, 1)
            coeffs = self.act(self.linear(self.transform(windows)))
            out = (
                self.transform.inverse(coeffs)
                .permute(0, 1, 3, 2, 4, 5)
                .reshape(batch, rows * ph, cols * pw, width)
            )
        return out[:, :gh, :gw]


class LFS(nn.Module):
    """Local frequency statistics on stride-1 windows, then Conv + GELU: (B, gh, gw, D) -> (B, gh, gw, D)."""

    def __init__(
        self, width: int, window=(3, 3), statistic: str = "mean", kernel: int = 3, freq: str = "dct"
    ):
        super().__init__()
        if statistic not in LFS_STATISTICS:
            raise AdapterError(f"lfs_statistic={statistic!r}: expected one of {', '.join(LFS_STATISTICS)}")
        if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 1:
            raise AdapterError(f"lfs_kernel={kernel!r}: expected a positive integer")
        self.width = width
        self.window = check_window(window, "lfs_window")
        self.statistic = statistic
        self.transform = make_transform(freq, self.window)
        self.conv = nn.Conv2d(width, width, kernel, padding="same")
        self.act = nn.GELU()

    def frequency_statistic(self, grid: torch.Tensor) -> torch.Tensor:
        """grid: (B, gh, gw, D) -> the per-position statistic (B, D, gh, gw) float32 (before the conv)."""
        _check_grid(grid, self.width, "LFS")
        qh, qw = self.window
        with torch.autocast(grid.device.type, enabled=False):
            maps = replicate_pad(
                grid.float().permute(0, 3, 1, 2), (qh - 1) // 2, qh // 2, (qw - 1) // 2, qw // 2
            )
            # (B, D, gh, gw, qh, qw) sliding windows -> channels last (B, gh, gw, qh, qw, D)
            windows = maps.unfold(2, qh, 1).unfold(3, qw, 1).permute(0, 2, 3, 4, 5, 1)
            coeffs = self.transform(windows)  # (parts, B, gh, gw, qh, qw, D)
            if self.statistic == "abs":
                coeffs = coeffs.abs()
            elif self.statistic == "energy":
                coeffs = coeffs.square()
            return coeffs.mean(dim=(-3, -2)).sum(0).permute(0, 3, 1, 2)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        stats = self.frequency_statistic(grid)
        with torch.autocast(grid.device.type, enabled=False):
            return self.act(self.conv(stats)).permute(0, 2, 3, 1)


class ConvAdapter(nn.Module):
    """Plain Conv2d(D, D, k, padding 'same') + GELU on the grid (paper ablation): (B, gh, gw, D) -> same."""

    def __init__(self, width: int, kernel: int = 3) -> None:
        super().__init__()
        if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 1:
            raise AdapterError(f"lfs_kernel={kernel!r}: expected a positive integer")
        self.width = width
        self.conv = nn.Conv2d(width, width, kernel, padding="same")
        self.act = nn.GELU()

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        _check_grid(grid, self.width, "ConvAdapter")
        with torch.autocast(grid.device.type, enabled=False):
            return self.act(self.conv(grid.float().permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


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
            return self.lam * update + (1.0 - self.lam) * grid.float()
