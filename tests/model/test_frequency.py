"""Window transforms: orthonormal DCT-II basis, exact DCT / FFT round trips, bad input."""

import math

import numpy as np
import pytest
import scipy.fft
import torch

from feclip.model.frequency import DCT2d, FFT2d, FrequencyError, dct_matrix, make_transform

WINDOWS = [(3, 3), (1, 5), (5, 1), (2, 4), (4, 4)]


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


@pytest.mark.parametrize("window", WINDOWS)
def test_dct2d_equals_scipy_orthonormal_dct(window):
    x = torch.randn(2, *window, 3)
    coeffs = DCT2d(window)(x)[0]
    reference = scipy.fft.dctn(x.numpy().astype(np.float64), type=2, norm="ortho", axes=(1, 2))
    assert np.allclose(coeffs.numpy(), reference, atol=1e-5)


@pytest.mark.parametrize("kind", ["dct", "fft"])
@pytest.mark.parametrize("window", WINDOWS)
def test_round_trip_is_exact(kind, window):
    transform = make_transform(kind, window)
    x = torch.randn(2, 3, *window, 7)
    coeffs = transform(x)
    assert coeffs.shape == (transform.parts, 2, 3, *window, 7)
    assert (transform.inverse(coeffs) - x).abs().max() <= 1e-5


def test_fft_parts_are_real_and_imaginary_orthonormal_dft():
    x = torch.randn(4, 1, 5, 2)
    parts = FFT2d((1, 5))(x)
    spectrum = torch.fft.fft2(x, dim=(-3, -2), norm="ortho")
    assert torch.allclose(parts[0], spectrum.real) and torch.allclose(parts[1], spectrum.imag)
    # Parseval: the orthonormal transform keeps the energy
    assert torch.allclose(parts.square().sum(), x.square().sum(), rtol=1e-5)


def test_bad_kind_window_and_shape_raise():
    with pytest.raises(FrequencyError, match="freq='wavelet'"):
        make_transform("wavelet", (3, 3))
    with pytest.raises(FrequencyError, match=r"window=\(0, 3\)"):
        make_transform("dct", (0, 3))
    with pytest.raises(FrequencyError, match=r"expected \(3, 3\)"):
        DCT2d((3, 3))(torch.randn(2, 3, 4, 5))
