"""FFE / LFS / Conv adapters and the Eq. 2 fusion on (B, gh, gw, D) grids."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from feclip.model.adapters import FFE, LFS, AdapterError, ConvAdapter, TapAdapter, replicate_pad


def identity_ffe(width, window, freq):
    ffe = FFE(width, window, freq)
    ffe.act = nn.Identity()
    with torch.no_grad():
        ffe.linear.weight.copy_(torch.eye(width))
        ffe.linear.bias.zero_()
    return ffe


@pytest.mark.parametrize("freq", ["dct", "fft"])
@pytest.mark.parametrize("window", [(3, 3), (2, 4), (1, 3), (5, 5)])
def test_ffe_with_identity_linear_and_no_gelu_is_identity(freq, window):
    grid = torch.randn(2, 7, 5, 6)  # 7 x 5 is divisible by none of the windows but (1, 3) rows
    assert (identity_ffe(6, window, freq)(grid) - grid).abs().max() <= 1e-5


def test_ffe_mixes_only_inside_windows():
    ffe = FFE(4, (3, 3), "dct")
    grid = torch.randn(1, 6, 6, 4)
    changed = grid.clone()
    changed[0, 4, 4] += 1.0  # inside the bottom-right window only
    delta = (ffe(changed) - ffe(grid)).abs().sum(-1)[0]
    assert delta[3:, 3:].sum() > 0
    assert delta[:3].sum() == 0 and delta[:, :3].sum() == 0


def dct3_column_sums():
    """Hand-derived column sums of the 3-point orthonormal DCT-II basis."""
    r3, r2, r6 = math.sqrt(3), math.sqrt(2), math.sqrt(6)
    return torch.tensor([1 / r3 + 1 / r2 + 1 / r6, 1 / r3 - 2 / r6, 1 / r3 - 1 / r2 + 1 / r6])


def test_lfs_mean_is_the_fixed_linear_filter():
    """mean_kl DCT(x)[k, l] = sum_ij w[i, j] x[i, j], w = outer(s, s) / 9, s = column sums of the basis."""
    s = dct3_column_sums()
    assert torch.allclose(s, torch.tensor([1.69271, -0.23915, 0.27849]), atol=1e-5)
    weights = torch.outer(s, s) / 9  # corner weight 0.318, the rest small
    lfs = LFS(4, (3, 3), "mean")
    grid = torch.randn(2, 6, 5, 4)
    maps = replicate_pad(grid.permute(0, 3, 1, 2), 1, 1, 1, 1)
    expected = F.conv2d(maps, weights.expand(4, 1, 3, 3), groups=4)
    assert torch.allclose(lfs.frequency_statistic(grid), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("statistic", "freq", "factor"),
    [
        ("mean", "dct", 1 / 3),
        ("abs", "dct", 1 / 3),
        ("energy", "dct", 1.0),
        ("mean", "fft", 1 / 3),
        ("energy", "fft", 1.0),
    ],
)
def test_lfs_statistic_of_a_constant_grid(statistic, freq, factor):
    """A constant window c has only the DC coefficient 3c (of 9): mean c/3, abs |c|/3, energy 9c^2/9 = c^2."""
    c = -2.0
    grid = torch.full((1, 4, 6, 3), c)
    stats = LFS(3, (3, 3), statistic, freq=freq).frequency_statistic(grid)
    expected = factor * (c * c if statistic == "energy" else abs(c) if statistic == "abs" else c)
    assert torch.allclose(stats, torch.full_like(stats, expected), atol=1e-5)


@pytest.mark.parametrize("window", [(3, 3), (1, 5), (2, 2), (4, 1)])
@pytest.mark.parametrize("freq", ["dct", "fft"])
def test_lfs_keeps_the_grid_shape(window, freq):
    grid = torch.randn(3, 5, 7, 8)
    for statistic in ("mean", "abs", "energy"):
        out = LFS(8, window, statistic, kernel=3, freq=freq)(grid)
        assert out.shape == grid.shape and out.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel", [1, 2, 5])
def test_lfs_and_conv_kernels_keep_the_grid_shape(kernel):
    grid = torch.randn(2, 5, 7, 8)
    assert LFS(8, (3, 3), kernel=kernel)(grid).shape == grid.shape
    assert ConvAdapter(8, kernel)(grid).shape == grid.shape


def test_adapters_are_per_image():
    grid = torch.randn(3, 5, 7, 8)
    for adapter in (FFE(8, (3, 3), "fft"), LFS(8, (1, 5), "energy"), ConvAdapter(8, 3)):
        assert torch.allclose(adapter(grid)[1:2], adapter(grid[1:2]), atol=1e-6)


def test_fusion_lambda_zero_and_no_branches_are_identity():
    grid = torch.randn(2, 4, 4, 8)
    assert torch.equal(TapAdapter({"ffe": FFE(8), "lfs": LFS(8)}, lam=0.0)(grid), grid)
    assert torch.equal(TapAdapter({}, lam=0.5)(grid), grid)
    ffe = FFE(8)
    fused = TapAdapter({"ffe": ffe}, lam=0.25)(grid)
    assert torch.allclose(fused, 0.25 * ffe(grid) + 0.75 * grid)


def test_bad_options_and_shapes_raise():
    with pytest.raises(AdapterError, match="lfs_statistic='median'"):
        LFS(8, statistic="median")
    with pytest.raises(AdapterError, match="lfs_kernel=0"):
        LFS(8, kernel=0)
    with pytest.raises(ValueError, match="ffe_window"):
        FFE(8, (3,))
    with pytest.raises(AdapterError, match=r"expected \(B, gh, gw, 8\)"):
        FFE(8)(torch.randn(2, 4, 4, 6))
