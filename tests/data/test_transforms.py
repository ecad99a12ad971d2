"""Model-input transforms (feclip.data.transforms): raw HDMAP (B, 31, 95) -> CLIP input (B, 3, h, w).

Expected values are hand-computed from CLIP_MEAN / CLIP_STD: (v - mean_c) / std_c per channel.
"""

import pytest
import torch

from feclip.errors import FeclipError
from feclip.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    HDMAPInput,
    RGBInput,
    TransformError,
    normalize_rgb,
    resize_masks,
)

RESIZES = ("bilinear", "nearest", "bicubic")
SIZES = ((64, 192), (112, 336), (336, 336))
RAW_2_5 = (7.514234, 7.815355, 7.585072)  # (2.5 - mean_c) / std_c
SCALED_2_5_BY_4 = (0.534362, 0.639766, 0.786103)  # (2.5 / 4 - mean_c) / std_c
RGB_0_128_255 = (-1.792263, 0.168897, 2.145897)  # (v / 255 - mean_c) / std_c for pixel (0, 128, 255)


def hdmap(batch: int = 2) -> torch.Tensor:
    """(B, 31, 95) float32 maps in the HDMAP range, a few pixels above 1."""
    images = torch.rand(batch, 31, 95) * 0.8 + 0.05
    images[:, 7, 10:20] = 2.9
    return images


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) model input -> (B, 3, h, w) values before the CLIP normalisation."""
    return x * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]


@pytest.mark.parametrize("resize", RESIZES)
@pytest.mark.parametrize("size", SIZES)
def test_output_shape_and_dtype(resize, size):
    out = HDMAPInput(size, resize=resize)(hdmap(3))
    assert tuple(out.shape) == (3, 3, *size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.allclose(
        unnormalize(out)[:, 1], unnormalize(out)[:, 2], atol=1e-5
    )  # one channel, replicated


@pytest.mark.parametrize("resize", RESIZES)
def test_raw_keeps_values_above_one(resize):
    out = HDMAPInput((64, 192), resize=resize)(torch.full((2, 31, 95), 2.5))
    expected = torch.tensor(RAW_2_5)[None, :, None, None].expand_as(out)
    assert torch.allclose(out, expected, atol=1e-5)


def test_raw_peak_survives_nearest():
    images = torch.full((1, 31, 95), 0.3)
    images[0, 15, 40] = 2.9
    restored = unnormalize(HDMAPInput((62, 190), resize="nearest")(images))
    assert restored.max().item() == pytest.approx(2.9, abs=1e-5)


def test_fixed_scale_divides():
    out = HDMAPInput((64, 192), intensity="fixed_scale", scale=4.0)(torch.full((1, 31, 95), 2.5))
    assert torch.allclose(out, torch.tensor(SCALED_2_5_BY_4)[None, :, None, None].expand_as(out), atol=1e-5)
    images = hdmap()
    scaled = HDMAPInput((64, 192), intensity="fixed_scale", scale=3.0)(images)
    assert torch.allclose(scaled, HDMAPInput((64, 192))(images / 3.0), atol=1e-6)


def test_per_image_minmax_maps_each_image_to_unit_range():
    images = hdmap(2)
    images[1] = images[1] * 5 + 2  # another range entirely
    out = HDMAPInput((62, 190), resize="nearest", intensity="per_image_minmax")(images)
    restored = unnormalize(out)[:, 0]
    assert restored.amin(dim=(1, 2)).tolist() == pytest.approx([0.0, 0.0], abs=1e-5)
    assert restored.amax(dim=(1, 2)).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    low, high = images.amin(dim=(1, 2), keepdim=True), images.amax(dim=(1, 2), keepdim=True)
    by_hand = HDMAPInput((62, 190), resize="nearest")((images - low) / (high - low))
    assert torch.allclose(out, by_hand, atol=1e-5)


def test_per_image_minmax_of_a_constant_image_is_zero_not_nan():
    out = HDMAPInput((64, 192), intensity="per_image_minmax")(torch.full((1, 31, 95), 0.7))
    assert torch.allclose(unnormalize(out), torch.zeros_like(out), atol=1e-5)


def test_nearest_keeps_the_values_of_a_two_valued_image():
    images = torch.where(torch.rand(2, 31, 95) > 0.5, 2.7, 0.2)
    values = {
        HDMAPInput((1, 1), resize="nearest")(torch.full((1, 1, 1), v))[0, 0, 0, 0].item() for v in (0.2, 2.7)
    }
    out = HDMAPInput((336, 336), resize="nearest")(images)
    assert set(out[:, 0].unique().tolist()) == values
    assert len(HDMAPInput((336, 336), resize="bilinear")(images)[:, 0].unique()) > 2


def test_resize_masks_stays_binary_and_aligns_with_nearest_images():
    masks = (torch.rand(3, 31, 95) > 0.7).to(torch.uint8)
    for size in SIZES:
        resized = resize_masks(masks, size)
        assert tuple(resized.shape) == (3, *size) and resized.dtype == torch.float32
        assert set(resized.unique().tolist()) == {0.0, 1.0}
        as_image = unnormalize(HDMAPInput(size, resize="nearest")(masks.float()))[:, 0]
        assert torch.allclose(as_image, resized, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "size", "pattern"),
    [((2, 1, 31, 95), (62, 190), r"masks must be \(B, H, W\)"), ((2, 31, 95), (62,), r"size=\(62,\)")],
)
def test_resize_masks_rejects_bad_shapes_and_sizes(shape, size, pattern):
    with pytest.raises(TransformError, match=pattern):
        resize_masks(torch.zeros(shape, dtype=torch.uint8), size)


def test_resize_masks_at_the_same_size_is_a_float_copy():
    masks = (torch.rand(2, 31, 95) > 0.5).to(torch.uint8)
    resized = resize_masks(masks, (31, 95))
    assert resized.dtype == torch.float32 and torch.equal(resized, masks.float())


def test_normalize_rgb_hand_made_pixel():
    pixel = torch.tensor([0, 128, 255], dtype=torch.uint8)[None, :, None, None].expand(2, 3, 4, 5)
    out = normalize_rgb(pixel)
    assert tuple(out.shape) == (2, 3, 4, 5) and out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor(RGB_0_128_255)[None, :, None, None].expand_as(out), atol=1e-5)
    assert torch.equal(RGBInput()(pixel), out)
    custom = normalize_rgb(pixel, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert torch.allclose(custom[0, :, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]))


@pytest.mark.parametrize(
    "images", [torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.uint8)], ids=["float", "no-channels"]
)
def test_normalize_rgb_rejects_non_uint8_rgb(images):
    with pytest.raises(TransformError, match=r"uint8 \(B, 3, h, w\)"):
        normalize_rgb(images)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"resize": "area"}, r"data\.resize='area' is not allowed; expected one of: bilinear, nearest, bicubic"),
        (
            {"intensity": "zscore"},
            r"data\.intensity='zscore' is not allowed; expected one of: raw, fixed_scale, per_image_minmax",
        ),
        ({"scale": 0.0}, r"data\.scale=0\.0: expected a positive"),
        ({"scale": -2}, r"data\.scale=-2: expected a positive"),
        ({"scale": float("nan")}, r"data\.scale=nan: expected a positive"),
        ({"scale": "1"}, r"data\.scale='1': expected a positive"),
        ({"size": (64,)}, r"size=\(64,\): expected \(h, w\)"),
        ({"size": 336}, r"size=336: expected \(h, w\)"),
        ({"size": (0, 192)}, r"size=\(0, 192\): expected \(h, w\)"),
        ({"size": (64.5, 192)}, r"size=\(64\.5, 192\): expected \(h, w\)"),
    ],
)
def test_bad_options_name_the_option_and_the_allowed_values(kwargs, pattern):
    kwargs = {"size": (64, 192), **kwargs}
    with pytest.raises(FeclipError, match=pattern):
        HDMAPInput(**kwargs)


@pytest.mark.parametrize("shape", [(2, 3, 31, 95), (31, 95)])
def test_input_that_is_not_b_h_w_is_an_error(shape):
    with pytest.raises(TransformError, match=r"\(B, H, W\)"):
        HDMAPInput((64, 192))(torch.rand(shape))


def test_repr_keys_every_option():
    base = {"size": (64, 192), "resize": "bilinear", "intensity": "raw"}
    variants = [
        base,
        {**base, "size": (336, 336)},
        {**base, "resize": "nearest"},
        {**base, "intensity": "fixed_scale"},
        {**base, "intensity": "fixed_scale", "scale": 2.0},
    ]
    reprs = {repr(HDMAPInput(**kwargs)) for kwargs in variants}
    assert len(reprs) == len(variants)
    assert repr(HDMAPInput(**base)) == repr(HDMAPInput([64, 192]))
