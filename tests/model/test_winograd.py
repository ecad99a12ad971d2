"""Winograd F(2x2, 3x3) against F.conv2d: values and gradients, odd sizes, the dispatch, the filter cache."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from feclip.model import winograd
from feclip.model.winograd import is_winograd_conv, same_conv, winograd_conv3x3


@pytest.fixture(autouse=True)
def narrow_winograd(monkeypatch):
    """Small convolutions take the Winograd path here (in use only from MIN_CHANNELS channels)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)


def reference(grid, weight, bias):
    """The direct convolution, channels last in and out."""
    return F.conv2d(grid.permute(0, 3, 1, 2), weight, bias, padding=1).permute(0, 2, 3, 1)


@pytest.mark.parametrize("shape", [(2, 4, 12, 6), (1, 5, 7, 3), (3, 1, 1, 4), (2, 14, 14, 8), (1, 3, 2, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_winograd_equals_conv2d_in_value_and_gradients(shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    cin, cout = shape[-1], shape[-1] + 1
    grid = torch.randn(shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(cout, cin, 3, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(cout, generator=generator, dtype=torch.float64) if with_bias else None
    upstream = torch.randn(*shape[:-1], cout, generator=generator, dtype=torch.float64)
    tensors = (grid, weight) + ((bias,) if with_bias else ())
    outputs, grads = [], []
    for fn in (winograd_conv3x3, reference):
        inputs = [t.clone().requires_grad_() for t in tensors]
        out = fn(inputs[0].float(), inputs[1].float(), inputs[2].float() if with_bias else None)
        outputs.append(out)
        grads.append(torch.autograd.grad((out.double() * upstream).sum(), inputs))
    ours, expected = outputs
    assert ours.shape == expected.shape == (*shape[:-1], cout) and ours.dtype == torch.float32
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)
    for our_grad, expected_grad in zip(*grads, strict=True):
        assert torch.allclose(our_grad, expected_grad, atol=1e-4, rtol=1e-5)


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
