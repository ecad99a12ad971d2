"""Window transforms as basis matrices: DCT-II vs scipy, DFT vs torch.fft, exact round trips, bad input."""

import math

import numpy as np
import pytest
import scipy.fft
import torch

from feclip.model.frequency import (
    TRANSFORMS,
    FrequencyError,
    WindowTransform,
    dct_matrix,
    dft_matrix,
)
from feclip.registry import RegistryError

WINDOWS = [(1, 1), (3, 3), (1, 5), (5, 1), (2, 4), (4, 4)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_dct_basis_is_orthonormal(n):
    basis = dct_matrix(n)
    assert torch.allclose(basis @ basis.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_dct_basis_hand_values_for_three():
    basis = dct_matrix(3)
    expected = [
        [1 / math.sqrt(3)] * 3,
        [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
        [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)],
    ]
    assert torch.allclose(basis, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_dft_basis_is_torch_fft_of_the_identity(n):
    eye = torch.eye(n, dtype=torch.complex128)
    assert torch.allclose(dft_matrix(n), torch.fft.fft(eye, dim=0, norm="ortho"), atol=1e-12)


@pytest.mark.parametrize("window", WINDOWS)
def test_dct_equals_scipy_orthonormal_dct(window):
    x = torch.randn(2, *window, 3)
    coeffs = TRANSFORMS["dct"](window)(x)
    reference = scipy.fft.dctn(x.numpy().astype(np.float64), type=2, norm="ortho", axes=(1, 2))
    assert coeffs.shape == (1, 2, *window, 3)
    assert np.allclose(coeffs[0].numpy(), reference, atol=1e-5)


@pytest.mark.parametrize("window", WINDOWS)
def test_fft_parts_are_real_and_imaginary_of_torch_fft2(window):
    x = torch.randn(4, 2, *window, 6)
    parts = TRANSFORMS["fft"](window)(x)
    spectrum = torch.fft.fft2(x, dim=(-3, -2), norm="ortho")
    assert parts.shape == (2, 4, 2, *window, 6)
    assert (parts[0] - spectrum.real).abs().max() <= 1e-5
    assert (parts[1] - spectrum.imag).abs().max() <= 1e-5


@pytest.mark.parametrize("window", WINDOWS)
def test_fft_inverse_is_real_part_of_torch_ifft2_of_any_parts(window):
    """Also for parts that are no real signal's spectrum (as after FFE's Linear + GELU)."""
    parts = torch.randn(2, 3, *window, 5)
    expected = torch.fft.ifft2(torch.complex(parts[0], parts[1]), dim=(-3, -2), norm="ortho").real
    assert (TRANSFORMS["fft"](window).inverse(parts) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", list(TRANSFORMS))
@pytest.mark.parametrize("window", WINDOWS)
def test_registered_transforms_are_orthonormal_with_exact_round_trip(kind, window):
    transform = TRANSFORMS[kind](window)
    x = torch.randn(2, 3, *window, 7)
    coeffs = transform(x)
    assert transform.orthonormal and coeffs.shape == (transform.parts, 2, 3, *window, 7)
    assert (transform.inverse(coeffs) - x).abs().max() <= 1e-5
    assert (transform.inverse(transform(x[0, 0])) - x[0, 0]).abs().max() <= 1e-5  # no leading axes
    # Parseval: the energy summed over parts is kept
    assert torch.allclose(coeffs.square().sum(), x.square().sum(), rtol=1e-5)


def test_non_orthonormal_basis_is_flagged_and_still_inverted_exactly():
    generator = torch.Generator().manual_seed(0)
    basis = torch.eye(6, dtype=torch.float64) + 0.3 * torch.randn(
        6, 6, dtype=torch.float64, generator=generator
    )
    transform = WindowTransform(basis[None], (2, 3))
    x = torch.randn(4, 2, 3, 5)
    assert not transform.orthonormal
    assert (transform.inverse(transform(x)) - x).abs().max() <= 1e-5


def test_transforms_run_in_float32_under_bf16_autocast():
    transform = TRANSFORMS["fft"]((3, 3))
    x = torch.randn(2, 3, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coeffs = transform(x.bfloat16())
        back = transform.inverse(coeffs)
    assert coeffs.dtype == back.dtype == torch.float32


def test_bases_are_not_saved():
    assert TRANSFORMS["fft"]((3, 3)).state_dict() == {}


def test_bad_kind_window_basis_and_shape_raise():
    with pytest.raises(RegistryError, match="freq.transform='wavelet' is not allowed; expected one of: dct"):
        TRANSFORMS["wavelet"]
    with pytest.raises(FrequencyError, match=r"window=\(0, 3\)"):
        TRANSFORMS["dct"]((0, 3))
    with pytest.raises(FrequencyError, match=r"expected \(3, 3\)"):
        TRANSFORMS["dct"]((3, 3))(torch.randn(2, 3, 4, 5))
    with pytest.raises(FrequencyError, match="and 2 parts first"):
        TRANSFORMS["fft"]((3, 3)).inverse(torch.randn(1, 2, 3, 3, 5))
    with pytest.raises(FrequencyError, match=r"expected real \(parts, 4, 4\)"):
        WindowTransform(torch.eye(3)[None], (2, 2))
    with pytest.raises(FrequencyError, match="not invertible"):
        WindowTransform(torch.ones(1, 4, 4), (2, 2))
