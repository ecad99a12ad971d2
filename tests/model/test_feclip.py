"""FEClip: tap rules, identity with open_clip when adapters do nothing, gradients, shapes, split forward."""

import pytest
import torch
import torch.nn.functional as F

from feclip.model.checkpoint import config_from_v1
from feclip.model.feclip import (
    FEClip,
    FEClipConfig,
    HeadError,
    bilinear_matrix,
    gaussian_smooth,
    resolve_taps,
    upsample,
)
from feclip.model.prompts import text_features

from .test_backbone import block_outputs


@pytest.fixture(scope="module")
def text(backbone):
    return text_features(backbone)


def model(backbone, text, **options):
    torch.manual_seed(1)
    return FEClip(backbone, FEClipConfig(**config_from_v1(options)), text)


@pytest.mark.parametrize(
    ("taps", "n_taps", "blocks", "expected"),
    [
        ("groups", 4, 24, [5, 11, 17, 23]),
        ("groups", 4, 12, [2, 5, 8, 11]),
        ("groups", 4, 4, [0, 1, 2, 3]),
        ("groups", 2, 24, [11, 23]),
        ("last4", 4, 24, [20, 21, 22, 23]),
        ("last4", 2, 12, [8, 9, 10, 11]),
        ("spread3", 4, 24, [15, 18, 21, 23]),
        ("spread3", 4, 12, [7, 9, 10, 11]),
        ("spread3", 4, 4, [2, 3]),
        ("linspace", 4, 24, [0, 8, 15, 23]),
        ("linspace", 3, 12, [0, 6, 11]),
        ("linspace", 1, 12, [11]),
        ([1, 3], 4, 4, [1, 3]),
    ],
)
def test_tap_rules(taps, n_taps, blocks, expected):
    assert resolve_taps(taps, n_taps, blocks) == expected


@pytest.mark.parametrize("taps", [[3, 1], [1, 1], [0, 4], [-1, 2], []])
def test_bad_tap_lists_raise(taps):
    with pytest.raises(HeadError, match=r"strictly increasing list of block indices in \[0, 3\]"):
        resolve_taps(taps, 4, 4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"taps": "middle"}, "taps='middle'"),
        ({"freq": "wavelet"}, "freq.transform='wavelet'"),
        ({"lam": 1.5}, "lam=1.5"),
        ({"lfs_statistic": "max"}, "freq.lfs.statistic='max'"),
        ({"map": "raw"}, "map='raw'"),
        ({"score": "max"}, "score='max'"),
        ({"temperature": 0}, "temperature=0"),
        ({"ffe_window": [3, 0]}, "freq.ffe.window"),
        ({"n_taps": 0}, "n_taps=0"),
    ],
)
def test_bad_config_raises(options, message):
    with pytest.raises(ValueError, match=message):
        FEClipConfig(**config_from_v1(options))


def test_config_accepts_json_lists():
    cfg = FEClipConfig(taps=[0, 2], freq={"ffe": {"window": [1, 3]}, "lfs": {"window": [1, 5]}})
    assert cfg.freq.ffe.window == (1, 3) and cfg.freq.lfs.window == (1, 5) and cfg.taps == [0, 2]
    assert FEClipConfig(**cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "options", [{"lam": 0.0}, {"adapters": False}, {"ffe": False, "lfs": False}, {"lam": 0.0, "freq": "fft"}]
)
def test_inactive_adapters_reproduce_open_clip(backbone, text, options):
    """At the native grid (open_clip's encode_image takes no other; sizes that are not whole patches are
    refused since issue 26, interpolated grids are tested against open_clip's resize in test_backbone)."""
    net = model(backbone, text, **options)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, out = block_outputs(backbone, lambda: net(images))
        theirs, reference = block_outputs(backbone, lambda: backbone.clip.encode_image(images))
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert (out.embedding - reference).abs().max() <= 1e-5


def test_active_adapters_change_the_stream_after_the_first_tap(backbone, text):
    net = model(backbone, text, taps=[1, 3], lam=0.5)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, _ = block_outputs(backbone, lambda: net(images))
        theirs, _ = block_outputs(backbone, lambda: backbone.clip.encode_image(images))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert not torch.allclose(ours[2], theirs[2], atol=1e-3)


def test_untrained_fc_is_clips_patch_projection(backbone, text):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        head = model(backbone, text, lam=0.0)(images)
        plain = model(backbone, text, adapters=False)(images)
    assert torch.allclose(head.tap_maps, plain.tap_maps, atol=1e-5)
    assert torch.allclose(head.tap_scores, plain.tap_scores, atol=1e-6)


def test_scores_and_maps_by_hand(backbone, text):
    """Class-token score and patch map of one tap, recomputed from the backbone by hand."""
    net = model(backbone, text, adapters=False, taps=[1])
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = net(images)
        tokens = backbone.run_blocks(backbone.embed(images), 0, 2)
        g = F.normalize(text, dim=-1)
        cls = F.normalize(backbone.project(tokens[:, 0]), dim=-1) @ g.T / 0.07
        patches = F.normalize(backbone.project(tokens[:, 1:]), dim=-1) @ g.T / 0.07
    assert torch.allclose(out.tap_scores[0], cls.softmax(-1)[:, 1], atol=1e-6)
    small = patches.softmax(-1)[..., 1].reshape(2, 1, 14, 14)
    assert torch.allclose(out.map, F.interpolate(small, size=(224, 224), mode="bilinear")[:, 0], atol=1e-6)
    assert torch.equal(out.score, out.tap_scores[0])


def test_score_and_map_options(backbone, text):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        prob = model(backbone, text)(images)
        both = model(backbone, text, score="cls+max_map", smoothing_sigma=2.0)(images)
        margin = model(backbone, text, map="logit_margin")(images)
    assert torch.allclose(prob.map, prob.tap_maps.mean(0)) and torch.allclose(
        prob.score, prob.tap_scores.mean(0)
    )
    smoothed = gaussian_smooth(both.tap_maps.mean(0), 2.0)
    assert torch.allclose(both.map, smoothed, atol=1e-6)
    assert torch.allclose(both.score, both.tap_scores.mean(0) + smoothed.flatten(1).amax(1), atol=1e-6)
    assert margin.map_kind == "logit_margin" and margin.map.min() < 0 < prob.map.min()
    # the two-class softmax is the sigmoid of the margin (equal up to the bilinear upsampling)
    assert torch.allclose(torch.sigmoid(margin.tap_maps), prob.tap_maps, atol=0.05)


def test_gaussian_smooth_keeps_constants_and_mass():
    assert torch.allclose(gaussian_smooth(torch.full((1, 9, 11), 0.3), 1.5), torch.full((1, 9, 11), 0.3))
    delta = torch.zeros(1, 21, 21)
    delta[0, 10, 10] = 1.0
    blurred = gaussian_smooth(delta, 2.0)
    assert torch.allclose(blurred.sum(), torch.tensor(1.0), atol=1e-5) and torch.allclose(
        blurred, blurred.flip(-1)
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"ffe_window": (5, 5), "lfs_window": (2, 4), "lfs_kernel": 5},
        {"freq": "fft", "lfs_statistic": "energy", "ffe_window": (1, 3), "lfs_window": (1, 5)},
        {"conv_adapter": True},
        {"taps": "spread3", "lfs_statistic": "abs"},
    ],
)
@pytest.mark.parametrize(("batch", "size"), [(1, (224, 224)), (3, (112, 336))])
def test_shapes(backbone, text, options, batch, size):
    net = model(backbone, text, **options)
    with torch.no_grad():
        out = net(torch.randn(batch, 3, *size))
    taps, grid = len(net.taps), backbone.grid_size(size)
    assert out.score.shape == (batch,) and out.map.shape == (batch, *size)
    assert out.tap_scores.shape == (taps, batch) and out.tap_maps.shape == (taps, batch, *size)
    assert [f.shape for f in out.features] == [(batch, *grid, 64)] * taps
    assert out.embedding.shape == (batch, 32)
    assert torch.isfinite(out.map).all() and torch.isfinite(out.score).all()


@pytest.mark.parametrize("options", [{}, {"map": "logit_margin", "smoothing_sigma": 2.0}])
def test_upsampling_the_mean_once_gives_the_mean_of_the_upsampled_tap_maps(backbone, text, options):
    net = model(backbone, text, taps=[0, 1, 3], lam=0.4, **options)
    images = torch.randn(2, 3, 112, 336)
    with torch.no_grad():
        per_tap, once = net(images), net(images, per_tap_maps=False)
    assert once.tap_maps is None and per_tap.tap_maps.shape == (3, 2, 112, 336)
    assert torch.allclose(once.map, per_tap.map, atol=1e-6) and not torch.equal(
        per_tap.map, per_tap.tap_maps[0]
    )
    assert torch.equal(once.score, per_tap.score) and once.map.dtype == torch.float32


@pytest.mark.parametrize(
    ("grid", "size"),
    [((4, 12), (64, 192)), ((14, 14), (224, 224)), ((24, 24), (336, 336)), ((4, 12), (31, 95))],
)
def test_upsample_matches_bilinear_interpolate_values_and_gradients(grid, size):
    maps = torch.rand(3, *grid, dtype=torch.float64).float().requires_grad_()
    weights = torch.rand(3, *size)
    reference = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), maps)
    bilinear_matrix.cache_clear()
    with torch.inference_mode():  # matrices first built under inference mode must still serve autograd
        upsample(maps.detach(), size)
    ours = upsample(maps, size)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), maps)
    assert ours.shape == (3, *size) and ours.dtype == torch.float32
    assert torch.allclose(ours, reference, atol=1e-6)
    assert torch.allclose(grad_ours, grad_reference, rtol=1e-5, atol=1e-4)


def test_one_image_does_not_depend_on_the_others(backbone, text):
    net = model(backbone, text, lam=0.5)
    images = torch.randn(3, 3, 112, 336)
    with torch.no_grad():
        together, alone = net(images), net(images[1:2])
    assert torch.allclose(together.map[1:2], alone.map, atol=1e-5)
    assert torch.allclose(together.score[1:2], alone.score, atol=1e-6)
    assert torch.allclose(together.embedding[1:2], alone.embedding, atol=1e-5)


def test_split_forward_is_exact(backbone, text):
    net = model(backbone, text, taps=[1, 3], lam=0.3)
    images = torch.randn(2, 3, 112, 336)
    with torch.no_grad():
        full = net(images)
        split = net.forward_from_tokens(net.pre_tap_tokens(images), (112, 336), token_grid=(7, 21))
    for name in ("score", "map", "tap_scores", "tap_maps", "embedding"):
        assert torch.equal(getattr(full, name), getattr(split, name)), name
    with pytest.raises(HeadError, match=r"expected \(B, 148, 64\)"):
        net.forward_from_tokens(torch.zeros(2, 197, 64), (112, 336), token_grid=(7, 21))


def test_tokens_of_another_grid_with_the_same_count_are_refused(backbone, text):
    """64 x 192 and 96 x 128 both give 48 patch tokens (4 x 12 and 6 x 8): the grid decides."""
    net = model(backbone, text, taps=[1, 3])
    tokens = net.pre_tap_tokens(torch.randn(1, 3, 64, 192))
    with pytest.raises(HeadError, match=r"tokens on a \(4, 12\) patch grid, but image size \(96, 128\)"):
        net.forward_from_tokens(tokens, (96, 128), token_grid=(4, 12))
    assert net.forward_from_tokens(tokens, (64, 192), token_grid=(4, 12)).map.shape == (1, 64, 192)


def test_only_adapters_and_fc_train(backbone, text):
    net = model(backbone, text, lam=0.5)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    groups = net.param_groups(1e-2, 0.1)
    assert [g["name"] for g in groups] == ["adapters", "fc"] and [g["lr"] for g in groups] == [1e-2, 1e-3]
    optimizer = torch.optim.Adam(groups)
    net.train()
    out = net(torch.randn(2, 3, 224, 224))
    (out.score.sum() + out.map.mean()).backward()
    trainable = {n for n, p in net.named_parameters() if p.grad is not None}
    assert trainable and all(n.startswith(("adapters.", "fc.")) for n in trainable)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == trainable
    before = net.fc.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(net.fc.weight, before)
    assert all(torch.equal(frozen[k], v) for k, v in backbone.state_dict().items())
    assert not backbone.training


def test_plain_clip_has_nothing_to_train(backbone, text):
    net = model(backbone, text, adapters=False)
    assert net.param_groups(1e-3, 0.01) == [] and net.trainable_state_dict() == {}


def test_bf16_autocast_runs_with_fp32_head(backbone, text):
    net = model(backbone, text, freq="fft", lfs_statistic="energy")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 3, 224, 224))
    assert out.map.dtype == torch.float32 and out.tap_scores.dtype == torch.float32
    assert out.features[0].dtype == torch.float32 and torch.isfinite(out.map).all()
    out.map.mean().backward()
    assert net.fc.weight.grad is not None


def test_bad_text_features_raise(backbone):
    with pytest.raises(HeadError, match=r"expected \(2, 32\)"):
        FEClip(backbone, FEClipConfig(), torch.zeros(3, 32))
