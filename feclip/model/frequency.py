"""Window-wise 2-D frequency transforms shared by the FFE and LFS adapters.

Both adapters see a transform through one small interface (`make_transform(kind, window)`):
`forward(x: (..., h, w, C)) -> (parts, ..., h, w, C)` real coefficient tensors and `inverse` back, where the
window axes (h, w) sit just before the channel axis C and `parts` is 1 for the DCT (real coefficients) and 2
for the FFT (real and imaginary parts). Both are orthonormal, so the round trip is exact up to float error.
The transforms always run in float32 with autocast off (adapter statistics in fp32 under bf16 autocast).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from feclip.errors import FeclipError

TRANSFORMS = ("dct", "fft")


class FrequencyError(FeclipError):
    """A transform kind or window size is invalid."""


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II basis (n, n) float64: C[k, i] = s_k cos(pi (2i + 1) k / 2n), s_0 = 1/sqrt(n), else
    s_k = sqrt(2/n)."""
    if not isinstance(n, int) or n < 1:
        raise FrequencyError(f"DCT size {n!r}: expected a positive integer")
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] = 1.0 / math.sqrt(n)
    return basis


def check_window(window, name: str = "window") -> tuple[int, int]:
    """(h, w) from a pair of positive integers, else a one-line FrequencyError naming `name`."""
    pair = tuple(window) if isinstance(window, (tuple, list)) else (window,)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise FrequencyError(f"{name}={window!r}: expected (height, width) of positive integers")
    return pair


class _Transform2d(nn.Module):
    """Separable 2-D transform over the window axes of channels-last windows (..., h, w, C)."""

    parts: int

    def __init__(self, window) -> None:
        super().__init__()
        self.window = check_window(window)

    def _check(self, x: torch.Tensor, dims: tuple[int, int]) -> None:
        if tuple(x.shape[dims[0] : dims[1]]) != self.window:
            found = tuple(x.shape[dims[0] : dims[1]])
            raise FrequencyError(f"{type(self).__name__}: window axes {found}, expected {self.window}")


class DCT2d(_Transform2d):
    """Orthonormal separable 2-D DCT-II as basis matrices: c = C_h x C_w^T per channel; parts = 1."""

    parts = 1

    def __init__(self, window) -> None:
        super().__init__(window)
        self.register_buffer("basis_h", dct_matrix(self.window[0]).float(), persistent=False)
        self.register_buffer("basis_w", dct_matrix(self.window[1]).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., h, w, C) -> coefficients (1, ..., h, w, C) float32."""
        self._check(x, (-3, -1))
        with torch.autocast(x.device.type, enabled=False):
            return torch.einsum("ki,lj,...ijc->...klc", self.basis_h, self.basis_w, x.float())[None]

    def inverse(self, coeffs: torch.Tensor) -> torch.Tensor:
        """coeffs: (1, ..., h, w, C) -> (..., h, w, C) float32 (C_h^T c C_w)."""
        self._check(coeffs, (-3, -1))
        with torch.autocast(coeffs.device.type, enabled=False):
            return torch.einsum("ki,lj,...klc->...ijc", self.basis_h, self.basis_w, coeffs[0].float())


class FFT2d(_Transform2d):
    """Orthonormal 2-D DFT (torch.fft, norm='ortho'); parts = 2: real and imaginary parts.

    `inverse` keeps the real part of the inverse DFT: exact for the spectrum of a real input, and the natural
    real projection after the parts were processed separately (paper Table 4).
    """

    parts = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., h, w, C) -> (2, ..., h, w, C) float32 [real, imaginary]."""
        self._check(x, (-3, -1))
        with torch.autocast(x.device.type, enabled=False):
            spectrum = torch.fft.fft2(x.float(), dim=(-3, -2), norm="ortho")
        return torch.stack([spectrum.real, spectrum.imag])

    def inverse(self, coeffs: torch.Tensor) -> torch.Tensor:
        """coeffs: (2, ..., h, w, C) [real, imaginary] -> (..., h, w, C) float32."""
        self._check(coeffs, (-3, -1))
        with torch.autocast(coeffs.device.type, enabled=False):
            spectrum = torch.complex(coeffs[0].float(), coeffs[1].float())
            return torch.fft.ifft2(spectrum, dim=(-3, -2), norm="ortho").real


def make_transform(kind: str, window) -> DCT2d | FFT2d:
    """The window transform `kind` ('dct' | 'fft') for windows (h, w)."""
    if kind == "dct":
        return DCT2d(window)
    if kind == "fft":
        return FFT2d(window)
    raise FrequencyError(f"freq={kind!r}: expected one of {', '.join(TRANSFORMS)}")
