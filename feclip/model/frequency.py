"""Window-wise 2-D frequency transforms shared by the FFE and LFS adapters, all as basis matrices.

A `WindowTransform` is a real linear map of (h, w) windows given by its basis (parts, h*w, h*w):
`forward(x: (..., h, w, C)) -> (parts, ..., h, w, C)` real coefficients, `inverse` back, with the window axes
(h, w) just before the channel axis C. The registered transforms are separable and orthonormal:

- `dct`: orthonormal DCT-II, parts = 1;
- `fft`: orthonormal DFT (torch.fft's norm='ortho'), parts = 2: the real (cos) and imaginary (-sin) parts of
  the spectrum, so `inverse` is the real part of the inverse DFT of real + i imaginary (paper Table 4).

A transform knows whether it is orthonormal (checked from its basis: the stacked basis B of (parts*h*w, h*w)
has BᵀB = I, Parseval); `inverse` is the pseudo-inverse of the stacked basis (Bᵀ when orthonormal), exact for
any full-rank basis. Registering another separable transform takes its 1-D basis only:

    TRANSFORMS.register("haar", WindowTransform.from_basis(haar_matrix))   # haar_matrix(n) -> (n, n)

A 1-D basis is real (parts = 1) or complex (parts = 2, real and imaginary parts of the 2-D basis). The
transforms always run in float32 with autocast off (adapter statistics in fp32 under bf16 autocast).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from feclip.errors import FeclipError
from feclip.registry import Registry


class FrequencyError(FeclipError):
    """A transform basis or window size is invalid."""


def _check_size(n: int, name: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise FrequencyError(f"{name} size {n!r}: expected a positive integer")


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II basis (n, n) float64: C[k, i] = s_k cos(pi (2i + 1) k / 2n), s_0 = 1/sqrt(n), else
    s_k = sqrt(2/n)."""
    _check_size(n, "DCT")
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] = 1.0 / math.sqrt(n)
    return basis


def dft_matrix(n: int) -> torch.Tensor:
    """Orthonormal DFT basis (n, n) complex128: F[k, i] = (cos(2 pi k i / n) - i sin(2 pi k i / n)) / sqrt n,
    torch.fft's norm='ortho'."""
    _check_size(n, "DFT")
    k = torch.arange(n, dtype=torch.float64)
    angle = 2 * math.pi * (torch.outer(k, k) % n) / n  # k i mod n keeps the angles small and exact
    return torch.complex(torch.cos(angle), -torch.sin(angle)) / math.sqrt(n)


def check_window(window, name: str = "window") -> tuple[int, int]:
    """(h, w) from a pair of positive integers, else a one-line FrequencyError naming `name`."""
    pair = tuple(window) if isinstance(window, (tuple, list)) else (window,)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise FrequencyError(f"{name}={window!r}: expected (height, width) of positive integers")
    return pair


class WindowTransform(nn.Module):
    """Linear transform of channels-last windows (..., h, w, C) by a real basis (parts, h*w, h*w):
    coefficient (p, k) = sum_n basis[p, k, n] x[n], n and k the row-major flattened window positions."""

    def __init__(self, basis: torch.Tensor, window) -> None:
        super().__init__()
        self.window = check_window(window)
        size = self.window[0] * self.window[1]
        if basis.ndim != 3 or basis.is_complex() or tuple(basis.shape[1:]) != (size, size):
            raise FrequencyError(
                f"basis of shape {tuple(basis.shape)} {basis.dtype}: expected real (parts, {size}, {size})"
            )
        stacked = basis.double().reshape(-1, size)  # (parts * h * w, h * w)
        if torch.linalg.matrix_rank(stacked) < size:
            raise FrequencyError(f"basis for window {self.window} is not invertible")
        self.parts = basis.shape[0]
        identity = torch.eye(size, dtype=torch.float64)
        self.orthonormal = torch.allclose(stacked.T @ stacked, identity, atol=1e-9)
        self.register_buffer("basis", basis.float(), persistent=False)
        # (h*w, parts*h*w): x = inverse_basis @ stacked coefficients (= stacked basis^T when orthonormal)
        self.register_buffer("inverse_basis", torch.linalg.pinv(stacked).float(), persistent=False)

    @classmethod
    def separable(cls, basis_1d: Callable[[int], torch.Tensor], window) -> WindowTransform:
        """The 2-D transform of windows (h, w) with basis_1d(h) on the rows and basis_1d(w) on the columns; a
        complex 1-D basis gives parts = 2, the real and imaginary parts of the 2-D basis."""
        h, w = check_window(window)
        basis = torch.kron(basis_1d(h), basis_1d(w))  # [k * w + l, i * w + j] = B_h[k, i] B_w[l, j]
        return cls(torch.stack([basis.real, basis.imag] if basis.is_complex() else [basis]), (h, w))

    @classmethod
    def from_basis(cls, basis_1d: Callable[[int], torch.Tensor]) -> Callable[..., WindowTransform]:
        """The registry entry of a separable transform: window -> WindowTransform (see `separable`)."""
        return partial(cls.separable, basis_1d)

    def mean_filter(self) -> torch.Tensor:
        """The (h, w) weights of the window's mean coefficient summed over parts: sum_pk basis[p, k] / (h w),
        so that mean_k sum_p coefficient(p, k) = sum_ij weights[i, j] x[i, j]."""
        return self.basis.sum(dim=(0, 1)).reshape(self.window) / self.basis.shape[-1]

    def _check(self, x: torch.Tensor, parts: int | None = None) -> None:
        found = tuple(x.shape[-3:-1])
        if found != self.window or (parts is not None and x.shape[0] != parts):
            raise FrequencyError(
                f"{type(self).__name__}: window axes {found} of {tuple(x.shape)}, expected {self.window}"
                + ("" if parts is None else f" and {parts} parts first")
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., h, w, C) -> coefficients (parts, ..., h, w, C) float32 (a view of one matrix product with
        the window axes first)."""
        self._check(x)
        with torch.autocast(x.device.type, enabled=False):
            front = x.float().movedim((-3, -2), (0, 1))  # (h, w, ..., C)
            coeffs = self.basis.flatten(0, 1) @ front.flatten(0, 1).flatten(1)  # (parts*h*w, ...*C)
            return coeffs.view(self.parts, *front.shape).movedim((1, 2), (-3, -2))

    def inverse(self, coeffs: torch.Tensor) -> torch.Tensor:
        """coeffs: (parts, ..., h, w, C) -> (..., h, w, C) float32."""
        self._check(coeffs, self.parts)
        with torch.autocast(coeffs.device.type, enabled=False):
            front = coeffs.float().movedim((-3, -2), (1, 2))  # (parts, h, w, ..., C)
            x = self.inverse_basis @ front.flatten(0, 2).flatten(1)  # (h*w, ...*C)
            return x.view(front.shape[1:]).movedim((0, 1), (-3, -2))


TRANSFORMS: Registry[Callable[..., WindowTransform]] = Registry("frequency transform", key="freq.transform")
TRANSFORMS.register("dct", WindowTransform.from_basis(dct_matrix))
TRANSFORMS.register("fft", WindowTransform.from_basis(dft_matrix))
