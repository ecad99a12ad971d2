"""Winograd F(m x m, 3x3) against F.conv2d: the derived matrices, values and gradients for every tile size,
sizes that are not a multiple of the tile, the tile choice, the dispatch, the filter cache."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from feclip.model import winograd
from feclip.model.winograd import (
    MAX_TILE,
    is_winograd_conv,
    same_conv,
    tile_size,
    toom_cook,
    winograd_conv3x3,
)


@pytest.fixture(autouse=True)
def narrow_winograd(monkeypatch):
    """Small convolutions take the Winograd path here (in use only from MIN_CHANNELS channels)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)


def reference(grid, weight, bias):
    """The direct convolution, channels last in and out."""
    return F.conv2d(grid.permute(0, 3, 1, 2), weight, bias, padding=1).permute(0, 2, 3, 1)


def assert_near(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 rounding, which grows with the tile: measured below 7e-6 of the largest value up to m = 6."""
    error = (ours.double() - expected.double()).abs().max()
    assert error <= 2e-5 * expected.abs().max()


@pytest.mark.parametrize("m", range(1, MAX_TILE + 1))
def test_toom_cook_matrices_compute_the_correlation_exactly(m):
    """A^T [(G g) * (B^T d)] = (sum_k g_k d_(i+k))_i for random d, g, in float64."""
    at, g_transform, bt = toom_cook(m)
    assert at.shape == (m, m + 2) and g_transform.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)
    generator = torch.Generator().manual_seed(m)
    for _ in range(5):
        d = torch.randn(m + 2, generator=generator, dtype=torch.float64)
        g = torch.randn(3, generator=generator, dtype=torch.float64)
        expected = torch.stack([(g * d[i : i + 3]).sum() for i in range(m)])
        assert torch.allclose(at @ ((g_transform @ g) * (bt @ d)), expected, atol=1e-12, rtol=0)


def test_toom_cook_refuses_tiles_without_points():
    with pytest.raises(ValueError, match="Winograd tile 7"):
        toom_cook(MAX_TILE + 1)


@pytest.mark.parametrize(
    ("h", "w", "batch", "training", "expected"),
    [
        (14, 14, 8, False, 5),
        (14, 14, 1, False, 2),
        (14, 14, 8, True, 2),
        (24, 24, 32, False, 6),
        (24, 24, 8, True, 3),
        (1, 1, 1, False, 2),
    ],
)
def test_the_tile_has_the_least_cost(h, w, batch, training, expected):
    """By hand, cost (m + 2)^2 (tiles + filters), filters 60 at inference and 290 in training:
    14x14 batch 8 inference: m = 2: 16 (392 + 60) = 7232, 3: 25 (200 + 60) = 6500, 4: 36 (128 + 60) = 6768,
    5: 49 (72 + 60) = 6468, 6: 64 (72 + 60) = 8448; one image: m = 2: 16 (49 + 60) = 1744 against m = 3:
    25 (25 + 60) = 2125; training: m = 2: 16 (392 + 290) = 10912 against m = 3: 25 (200 + 290) = 12250;
    24x24 batch 32: m = 5: 49 (800 + 60) = 42140, 6: 64 (512 + 60) = 36608; training batch 8: m = 3:
    25 (512 + 290) = 20050, 4: 36 (288 + 290) = 20808, 2: 16 (1152 + 290) = 23072; 1x1: all one tile."""
    assert winograd.FILTER_COST == {"inference": 60, "training": 290}
    assert tile_size(h, w, batch=batch, training=training) == expected


@pytest.mark.parametrize("shape", [(2, 4, 12, 6), (1, 5, 7, 3), (3, 1, 1, 4), (2, 14, 14, 8), (1, 3, 2, 5)])
@pytest.mark.parametrize("tile", [None, *range(2, MAX_TILE + 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_winograd_equals_conv2d_in_value_and_gradients(shape, tile, with_bias):
    generator = torch.Generator().manual_seed(0)
    cin, cout = shape[-1], shape[-1] + 1
    grid = torch.randn(shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(cout, cin, 3, 3, generator=generator, dtype=torch.float64) / (3 * cin**0.5)
    bias = torch.randn(cout, generator=generator, dtype=torch.float64) if with_bias else None
    upstream = torch.randn(*shape[:-1], cout, generator=generator, dtype=torch.float64)
    tensors = (grid, weight) + ((bias,) if with_bias else ())
    outputs, grads = [], []
    for fn in (functools.partial(winograd_conv3x3, tile=tile), reference):
        inputs = [t.clone().requires_grad_() for t in tensors]
        out = fn(inputs[0].float(), inputs[1].float(), inputs[2].float() if with_bias else None)
        outputs.append(out)
        grads.append(torch.autograd.grad((out.double() * upstream).sum(), inputs))
    ours, expected = outputs
    assert ours.shape == expected.shape == (*shape[:-1], cout) and ours.dtype == torch.float32
    for ours_part, expected_part in zip((ours, *grads[0]), (expected, *grads[1]), strict=True):
        assert_near(ours_part, expected_part)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, True),
        ({"padding": 1}, True),
        ({"kernel_size": 5, "padding": 2}, False),
        ({"dilation": 2, "padding": "same"}, False),
        ({"groups": 2}, False),
        ({"padding_mode": "replicate"}, False),
        ({"in_channels": 2}, False),
    ],
)
def test_only_3x3_same_zero_padded_convolutions_take_the_winograd_path(options, expected, monkeypatch):
    settings = {"in_channels": 4, "out_channels": 4, "kernel_size": 3, "padding": "same"} | options
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    conv = nn.Conv2d(**settings)
    assert is_winograd_conv(conv) is expected
    grid = torch.randn(2, 6, 5, settings["in_channels"])
    direct = conv(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert torch.allclose(same_conv(conv, grid), direct, atol=1e-5)


def test_cached_inference_filters_follow_the_weights():
    conv = nn.Conv2d(3, 3, 3, padding="same")
    grid = torch.randn(1, 4, 4, 3)
    with torch.inference_mode():
        before = same_conv(conv, grid)
        assert torch.equal(same_conv(conv, grid), before)  # the cached filters
    with torch.no_grad():
        conv.weight.mul_(2.0)  # an optimizer step or a checkpoint load changes the weight in place
    with torch.inference_mode():
        after = same_conv(conv, grid)
    expected = reference(grid, conv.weight.detach(), conv.bias.detach())
    assert torch.allclose(after, expected, atol=1e-5) and not torch.allclose(after, before)
    out = same_conv(conv, grid)  # with gradients: the filters are part of the graph, not the cache
    out.sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_cached_inference_filters_follow_the_tile():
    conv = nn.Conv2d(3, 3, 3, padding="same")
    with torch.inference_mode():
        for batch, size in ((12, 14), (1, 4), (12, 14)):
            grid = torch.randn(batch, size, size, 3)
            assert_near(same_conv(conv, grid), reference(grid, conv.weight, conv.bias))
            assert conv._winograd_filters[0][-1] == tile_size(size, size, batch=batch)  # 5, 2, 5


def test_same_conv_takes_the_tile_of_its_mode():
    conv = nn.Conv2d(3, 4, 3, padding="same")
    grid = torch.randn(12, 14, 14, 3)
    tiles = {"inference": tile_size(14, 14, batch=12), "training": tile_size(14, 14, batch=12, training=True)}
    assert tiles == {"inference": 5, "training": 2}
    with torch.no_grad():
        by_tile = {m: winograd_conv3x3(grid, conv.weight, conv.bias, tile=m) for m in tiles.values()}
    assert not torch.equal(by_tile[2], by_tile[5])  # their rounding differs
    assert torch.equal(same_conv(conv, grid).detach(), by_tile[2])  # a graph through the weight: training
    with torch.inference_mode():
        assert torch.equal(same_conv(conv, grid), by_tile[5])


def test_filters_cached_at_inference_serve_a_frozen_conv_with_input_gradients():
    """A frozen conv (weight without grad) on an input that needs one, after an inference call: the cached
    filters are ordinary tensors, so autograd can keep them for the input's gradient."""
    conv = nn.Conv2d(3, 3, 3, padding="same")
    conv.weight.requires_grad_(False)
    with torch.inference_mode():
        same_conv(conv, torch.randn(1, 4, 4, 3))
    grid = torch.randn(1, 4, 4, 3, requires_grad=True)
    (same_conv(conv, grid) ** 2).sum().backward()
    reference_grid = grid.detach().clone().requires_grad_()
    (reference(reference_grid, conv.weight, conv.bias) ** 2).sum().backward()
    assert_near(grid.grad, reference_grid.grad)
