"""FFE / LFS / Conv adapters and the Eq. 2 fusion on (B, gh, gw, D) grids; LFS identities and fast paths."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from feclip.model.adapters import (
    FFE,
    LFS,
    LFS_STATISTICS,
    AdapterError,
    ConvAdapter,
    TapAdapter,
    replicate_pad,
)
from feclip.model.frequency import TRANSFORMS, WindowTransform, dct_matrix, dft_matrix
from feclip.registry import RegistryError

LFS_WINDOWS = [(1, 1), (1, 3), (1, 5), (3, 3), (2, 4), (5, 5)]


def identity_ffe(width, window, transform):
    ffe = FFE(width, window, transform)
    ffe.act = nn.Identity()
    with torch.no_grad():
        ffe.linear.weight.copy_(torch.eye(width))
        ffe.linear.bias.zero_()
    return ffe


def padded(grid, window):
    """grid (B, gh, gw, D) -> (B, D, gh + qh - 1, gw + qw - 1) padded as LFS pads, by hand."""
    qh, qw = window
    return replicate_pad(grid.permute(0, 3, 1, 2), (qh - 1) // 2, qh // 2, (qw - 1) // 2, qw // 2)


def unfold_statistic(grid, window, statistic, transform):
    return LFS(grid.shape[-1], window, statistic, transform=transform).frequency_statistic(grid, fast=False)


def haar_matrix(n):
    """Orthonormal Haar basis (n, n), n a power of two: averages then differences at every scale."""
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    coarse = haar_matrix(n // 2)
    rows = [torch.kron(coarse, torch.ones(1, 2)), torch.kron(torch.eye(n // 2), torch.tensor([[1.0, -1.0]]))]
    return torch.cat([r.double() for r in rows]) / math.sqrt(2)


@pytest.fixture
def haar():
    TRANSFORMS.register("haar", WindowTransform.from_basis(haar_matrix))
    yield "haar"
    TRANSFORMS.unregister("haar")


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("window", [(3, 3), (2, 4), (1, 3), (5, 5)])
def test_ffe_with_identity_linear_and_no_gelu_is_identity(transform, window):
    grid = torch.randn(2, 7, 5, 6)  # 7 x 5 is divisible by none of the windows but (1, 3) rows
    assert (identity_ffe(6, window, transform)(grid) - grid).abs().max() <= 1e-5


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_ffe_trains_after_running_in_inference_mode(transform):
    """Its cached window indices come from an inference call first; the training step must still work."""
    ffe = FFE(6, (3, 3), transform)
    grid = torch.randn(2, 11, 13, 6)  # a grid size no other test uses: the cache entry is made here
    with torch.inference_mode():
        expected = ffe(grid)
    leaf = grid.clone().requires_grad_()
    out = ffe(leaf)
    out.square().sum().backward()
    assert torch.equal(out.detach(), expected) and torch.isfinite(leaf.grad).all()
    assert ffe.linear.weight.grad is not None


def test_ffe_mixes_only_inside_windows():
    ffe = FFE(4, (3, 3), "dct")
    grid = torch.randn(1, 6, 6, 4)
    changed = grid.clone()
    changed[0, 4, 4] += 1.0  # inside the bottom-right window only
    delta = (ffe(changed) - ffe(grid)).abs().sum(-1)[0]
    assert delta[3:, 3:].sum() > 0
    assert delta[:3].sum() == 0 and delta[:, :3].sum() == 0


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("grid_size", [(6, 3), (5, 2)])  # (5, 2): replicate-padded to (6, 3), cropped back
def test_ffe_fft_is_linear_gelu_on_real_and_imaginary_parts_of_torch_fft(transform, grid_size):
    """FFE by hand with torch.fft / scipy-free DCT einsum: windows, transform, Linear + GELU, inverse (the
    Linear applied to the coefficients, as the paper writes it; FFE applies it to the tokens first)."""
    ffe = FFE(5, (3, 3), transform)
    with torch.no_grad():
        ffe.linear.bias.normal_()  # the bias must land on every coefficient
    grid = torch.randn(2, *grid_size, 5)
    full = F.pad(grid.permute(0, 3, 1, 2), (0, 3 - grid_size[1], 0, 6 - grid_size[0]), mode="replicate")
    # (B, rows 2, cols 1, 3, 3, D)
    windows = full.permute(0, 2, 3, 1).reshape(2, 2, 3, 1, 3, 5).permute(0, 1, 3, 2, 4, 5)
    act = lambda c: F.gelu(ffe.linear(c))  # noqa: E731
    if transform == "fft":
        spectrum = torch.fft.fft2(windows, dim=(-3, -2), norm="ortho")
        mixed = torch.complex(act(spectrum.real), act(spectrum.imag))
        back = torch.fft.ifft2(mixed, dim=(-3, -2), norm="ortho").real
    else:
        basis = dct_matrix(3).float()
        coeffs = torch.einsum("ki,lj,...ijc->...klc", basis, basis, windows)
        back = torch.einsum("ki,lj,...klc->...ijc", basis, basis, act(coeffs))
    expected = back.permute(0, 1, 3, 2, 4, 5).reshape(2, 6, 3, 5)[:, : grid_size[0], : grid_size[1]]
    assert (ffe(grid) - expected).abs().max() <= 1e-5


def dct3_column_sums():
    """Hand-derived column sums of the 3-point orthonormal DCT-II basis."""
    r3, r2, r6 = math.sqrt(3), math.sqrt(2), math.sqrt(6)
    return torch.tensor([1 / r3 + 1 / r2 + 1 / r6, 1 / r3 - 2 / r6, 1 / r3 - 1 / r2 + 1 / r6])


def test_dct3_mean_is_the_fixed_filter_a_at_over_9_mostly_up_left():
    """mean_kl DCT(x)[k, l] = sum_ij w[i, j] x[i, j], w = a a^T / 9, a = C^T 1 = column sums of the basis."""
    a = dct3_column_sums()
    assert torch.allclose(a, torch.tensor([1.69271, -0.23915, 0.27849]), atol=1e-5)
    weights = torch.outer(a, a) / 9
    up_left = (1 + 2 / math.sqrt(6) + math.sqrt(2) / 3 + 1 / math.sqrt(3)) / 9  # a_0^2 / 9
    assert weights[0, 0].item() == pytest.approx(up_left, abs=1e-6) and up_left == pytest.approx(
        0.318361, abs=1e-6
    )
    assert weights.sum().item() == pytest.approx(1 / 3, abs=1e-6)  # 95.5 % of the signed total on x(i-1, j-1)
    assert torch.allclose(LFS(4, (3, 3)).transform.mean_filter(), weights, atol=1e-6)
    grid = torch.randn(2, 6, 5, 4)
    expected = F.conv2d(padded(grid, (3, 3)), weights.expand(4, 1, 3, 3), groups=4)
    assert torch.allclose(unfold_statistic(grid, (3, 3), "mean", "dct"), expected, atol=1e-5)
    assert torch.allclose(LFS(4, (3, 3)).frequency_statistic(grid), expected, atol=1e-5)


def test_dct_1x5_mean_weighs_two_tokens_to_the_left_most():
    """An impulse at (2, 3) shows the filter: the statistic at (2, 3 + 2) carries the largest weight a_0 / 5,
    i.e. the statistic at j weighs x(i, j - 2) most."""
    a = dct_matrix(5).sum(0).float()
    grid = torch.zeros(1, 5, 9, 1)
    grid[0, 2, 3] = 1.0
    response = unfold_statistic(grid, (1, 5), "mean", "dct")[0, 0]
    assert response[2, 5].item() == pytest.approx(a[0].item() / 5, abs=1e-6)
    assert response[2, 5].item() == pytest.approx(0.425514, abs=1e-6)
    assert response.abs().argmax().item() == 2 * 9 + 5
    assert torch.allclose(response[2, 1:6], a.flip(0) / 5, atol=1e-6)  # the window at j covers j-2 .. j+2
    assert response.sum().item() == pytest.approx(1 / math.sqrt(5), abs=1e-6)


@pytest.mark.parametrize(
    ("transform", "basis_1d"), [("dct", dct_matrix), ("fft", dft_matrix), ("haar", haar_matrix)]
)
@pytest.mark.parametrize("window", [(1, 1), (1, 4), (2, 4), (4, 2), (4, 4)])
def test_mean_filter_is_the_outer_product_of_the_basis_column_sums(haar, transform, basis_1d, window):
    """w = sum_parts a_h a_w^T / (Qh Qw), a = B^T 1 per axis (complex a: parts = real and imaginary)."""
    outer = torch.outer(basis_1d(window[0]).sum(0), basis_1d(window[1]).sum(0))
    expected = (outer.real + outer.imag if outer.is_complex() else outer) / (window[0] * window[1])
    assert torch.allclose(TRANSFORMS[transform](window).mean_filter().double(), expected, atol=1e-6)


@pytest.mark.parametrize("window", LFS_WINDOWS)
def test_fft_mean_is_the_up_left_sample_of_the_window_over_sqrt_size(window):
    """A window's mean DFT coefficient (real + imaginary) is its first sample / sqrt(Qh Qw): 3x3 gives
    x(i-1, j-1) / 3, a shifted grid (replicate-padded at the borders)."""
    grid = torch.randn(2, 6, 7, 3)
    gh, gw = grid.shape[1:3]
    shifted = padded(grid, window)[:, :, :gh, :gw] / math.sqrt(window[0] * window[1])
    assert (unfold_statistic(grid, window, "mean", "fft") - shifted).abs().max() <= 1e-5


@pytest.mark.parametrize("window", LFS_WINDOWS)
def test_energy_is_a_box_filter_of_x2_same_for_dct_and_fft(window):
    grid = torch.randn(2, 6, 7, 3)
    box = F.avg_pool2d(padded(grid, window).square(), window, stride=1)
    for transform in ("dct", "fft"):
        assert (unfold_statistic(grid, window, "energy", transform) - box).abs().max() <= 1e-5


def test_abs_differs_between_dct_and_fft():
    grid = torch.randn(2, 6, 7, 3)
    dct, fft = (unfold_statistic(grid, (3, 3), "abs", t) for t in ("dct", "fft"))
    assert (dct - fft).abs().max() > 0.1


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("window", LFS_WINDOWS)
@pytest.mark.parametrize("grid_shape", [(2, 6, 9), (1, 3, 2)])  # non-square; smaller than the 5 x 5 window
def test_fast_paths_equal_the_unfold_path(transform, window, grid_shape):
    grid = torch.randn(*grid_shape, 4) * 3
    for statistic in LFS_STATISTICS:
        lfs = LFS(4, window, statistic, transform=transform)
        assert lfs.statistic.has_fast_path(lfs.transform) == (statistic != "abs")
        fast, unfold = lfs.frequency_statistic(grid), lfs.frequency_statistic(grid, fast=False)
        assert fast.shape == (grid_shape[0], 4, *grid_shape[1:])
        assert (fast - unfold).abs().max() <= 1e-5 * max(1.0, unfold.abs().max().item())


@pytest.mark.parametrize("statistic", ["mean", "energy"])
def test_fast_paths_have_the_unfold_paths_input_gradient(statistic):
    grid = torch.randn(2, 5, 7, 3, requires_grad=True)
    weights = torch.randn(2, 3, 5, 7)
    lfs = LFS(3, (2, 4), statistic, transform="fft")
    grads = [
        torch.autograd.grad((lfs.frequency_statistic(grid, fast=fast) * weights).sum(), grid)[0]
        for fast in (True, False)
    ]
    assert (grads[0] - grads[1]).abs().max() <= 1e-5


def test_a_registered_haar_transform_works_in_ffe_and_lfs(haar):
    assert "haar" in TRANSFORMS and TRANSFORMS[haar]((2, 4)).orthonormal
    grid = torch.randn(2, 6, 7, 4)
    assert (identity_ffe(4, (2, 4), haar)(grid) - grid).abs().max() <= 1e-5
    for window in [(1, 1), (2, 2), (2, 4), (4, 4)]:
        box = F.avg_pool2d(padded(grid, window).square(), window, stride=1)
        assert (unfold_statistic(grid, window, "energy", haar) - box).abs().max() <= 1e-5
        for statistic in ("mean", "energy"):
            lfs = LFS(4, window, statistic, transform=haar)
            assert torch.allclose(
                lfs.frequency_statistic(grid), lfs.frequency_statistic(grid, fast=False), atol=1e-5
            )


def test_energy_of_a_non_orthonormal_transform_keeps_the_unfold_path():
    basis = torch.eye(4, dtype=torch.float64)
    basis[0, 1] = 1.0  # invertible, not orthonormal: no Parseval
    TRANSFORMS.register("skewed", lambda window: WindowTransform(basis[None], window))
    try:
        grid = torch.randn(2, 5, 6, 3)
        energy, mean = (LFS(3, (2, 2), statistic, transform="skewed") for statistic in ("energy", "mean"))
        assert not energy.statistic.has_fast_path(energy.transform) and mean.statistic.has_fast_path(
            mean.transform
        )
        box = F.avg_pool2d(padded(grid, (2, 2)).square(), (2, 2), stride=1)
        assert (energy.frequency_statistic(grid) - box).abs().max() > 0.1
        assert torch.allclose(
            mean.frequency_statistic(grid), mean.frequency_statistic(grid, fast=False), atol=1e-5
        )
    finally:
        TRANSFORMS.unregister("skewed")


@pytest.mark.parametrize(
    ("statistic", "transform", "factor"),
    [
        ("mean", "dct", 1 / 3),
        ("abs", "dct", 1 / 3),
        ("energy", "dct", 1.0),
        ("mean", "fft", 1 / 3),
        ("abs", "fft", 1 / 3),
        ("energy", "fft", 1.0),
    ],
)
def test_lfs_statistic_of_a_constant_grid(statistic, transform, factor):
    """A constant window c has only the DC coefficient 3c (of 9): mean c/3, abs |c|/3, energy 9c^2/9 = c^2."""
    c = -2.0
    grid = torch.full((1, 4, 6, 3), c)
    stats = LFS(3, (3, 3), statistic, transform=transform).frequency_statistic(grid)
    expected = factor * (c * c if statistic == "energy" else abs(c) if statistic == "abs" else c)
    assert torch.allclose(stats, torch.full_like(stats, expected), atol=1e-5)


@pytest.mark.parametrize("window", [(3, 3), (1, 5), (2, 2), (4, 1)])
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_lfs_keeps_the_grid_shape(window, transform):
    grid = torch.randn(3, 5, 7, 8)
    for statistic in LFS_STATISTICS:
        out = LFS(8, window, statistic, kernel=3, transform=transform)(grid)
        assert out.shape == grid.shape and out.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel", [1, 2, 5])
def test_lfs_and_conv_kernels_keep_the_grid_shape(kernel):
    grid = torch.randn(2, 5, 7, 8)
    assert LFS(8, (3, 3), kernel=kernel)(grid).shape == grid.shape
    assert ConvAdapter(8, kernel)(grid).shape == grid.shape


def test_adapters_are_per_image():
    grid = torch.randn(3, 5, 7, 8)
    for adapter in (
        FFE(8, (3, 3), "fft"),
        LFS(8, (1, 5), "energy"),
        LFS(8, (3, 3), "abs"),
        ConvAdapter(8, 3),
    ):
        assert torch.allclose(adapter(grid)[1:2], adapter(grid[1:2]), atol=1e-6)


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_gradients_reach_every_adapter_parameter_in_float32_under_bf16(transform):
    adapters = [FFE(6, (3, 3), transform)] + [LFS(6, (3, 3), s, transform=transform) for s in LFS_STATISTICS]
    grid = torch.randn(2, 5, 4, 6)
    for adapter in adapters:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = adapter(grid.bfloat16())
        assert out.dtype == torch.float32 and out.shape == grid.shape
        out.square().sum().backward()
        for name, param in adapter.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, name


def test_state_dict_keys_are_unchanged():
    """Saved checkpoints keep loading: the bases are non-persistent buffers."""
    assert set(FFE(8, (3, 3), "fft").state_dict()) == {"linear.weight", "linear.bias"}
    assert set(LFS(8, (1, 5), "abs", 3, "fft").state_dict()) == {"conv.weight", "conv.bias"}


def test_fusion_lambda_zero_and_no_branches_are_identity():
    grid = torch.randn(2, 4, 4, 8)
    assert torch.equal(TapAdapter({"ffe": FFE(8), "lfs": LFS(8)}, lam=0.0)(grid), grid)
    assert torch.equal(TapAdapter({}, lam=0.5)(grid), grid)
    ffe = FFE(8)
    fused = TapAdapter({"ffe": ffe}, lam=0.25)(grid)
    assert torch.allclose(fused, 0.25 * ffe(grid) + 0.75 * grid)


def test_bad_options_and_shapes_raise():
    with pytest.raises(
        RegistryError, match="freq.lfs.statistic='median' is not allowed; expected one of: mean"
    ):
        LFS(8, statistic="median")
    with pytest.raises(RegistryError, match="freq.transform='wavelet'"):
        FFE(8, transform="wavelet")
    with pytest.raises(AdapterError, match="lfs_kernel=0"):
        LFS(8, kernel=0)
    with pytest.raises(ValueError, match="ffe_window"):
        FFE(8, (3,))
    with pytest.raises(AdapterError, match=r"expected \(B, gh, gw, 8\)"):
        FFE(8)(torch.randn(2, 4, 4, 6))
