"""ClipBackbone: token forward == open_clip's own, interpolation, layouts, weights, fast offline errors."""

import copy
import re
import subprocess
import sys
import types

import pytest
import torch
from open_clip.model import resize_pos_embed

import feclip.model.backbone as backbone_module
from feclip.model.backbone import BackboneError, ClipBackbone, interpolate_positional_embedding
from feclip.model.feclip import FEClip, FEClipConfig


def block_outputs(backbone, run):
    """Outputs of every resblock while `run()` executes, in call order."""
    outputs = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: outputs.append(o))
        for b in backbone.visual.transformer.resblocks
    ]
    try:
        result = run()
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, result


def token_forward(backbone, images):
    tokens = backbone.run_blocks(backbone.embed(images), 0, backbone.num_blocks)
    return backbone.project(tokens[:, 0])


def test_tiny_config(backbone):
    assert (backbone.width, backbone.embed_dim, backbone.num_blocks) == (64, 32, 4)
    assert backbone.patch_size == (16, 16) and backbone.native_size == (224, 224)
    assert backbone.grid_size((112, 336)) == (7, 21)
    assert len(backbone.mean) == 3 and len(backbone.std) == 3


def test_frozen_and_always_eval(backbone):
    backbone.train()
    assert not backbone.training and not backbone.clip.training
    assert not any(p.requires_grad for p in backbone.parameters())


def test_token_forward_equals_encode_image(backbone):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, embedding = block_outputs(backbone, lambda: token_forward(backbone, images))
        theirs, reference = block_outputs(backbone, lambda: backbone.clip.encode_image(images))
    assert len(ours) == len(theirs) == backbone.num_blocks
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert (embedding - reference).abs().max() <= 1e-5


def test_interpolation_keeps_the_native_grid_and_the_class_row(backbone):
    pos = backbone.visual.positional_embedding.detach()
    assert torch.equal(interpolate_positional_embedding(pos, (14, 14), (14, 14)), pos)
    resized = backbone.positional_embedding((7, 21))
    assert resized.shape == (1 + 7 * 21, 64)
    assert torch.equal(resized[0], pos[0])
    # a 2x upsampling keeps the mean of each channel approximately
    doubled = interpolate_positional_embedding(pos, (14, 14), (28, 28))
    assert torch.allclose(doubled[1:].mean(0), pos[1:].mean(0), atol=0.02)


@pytest.mark.parametrize("grid", [(4, 12), (7, 21), (24, 24), (6, 8)])
def test_interpolation_equals_open_clips_own_resize(backbone, grid):
    """open_clip.model.resize_pos_embed (bicubic, antialias=True) itself is the reference."""
    pos = backbone.visual.positional_embedding.detach()
    state = {"visual.positional_embedding": pos.clone()}
    target = types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=grid))
    resize_pos_embed(state, target)
    ours = interpolate_positional_embedding(pos, (14, 14), grid)
    torch.testing.assert_close(ours, state["visual.positional_embedding"])


def test_non_square_input_runs(backbone):
    with torch.no_grad():
        tokens = backbone.run_blocks(backbone.embed(torch.randn(1, 3, 112, 336)), 0, 4)
    assert tokens.shape == (1, 1 + 7 * 21, 64)


def sequence_first_copy(backbone):
    """The same weights with the transformer built sequence-first (open_clip < 2.26 layout)."""
    flipped = copy.deepcopy(backbone)
    flipped.visual.transformer.batch_first = False
    for block in flipped.visual.transformer.resblocks:
        block.attn.batch_first = False
    return flipped


def test_run_blocks_follows_the_transformer_layout(backbone):
    flipped = sequence_first_copy(backbone)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        tokens = backbone.embed(images)
        expected = backbone.run_blocks(tokens, 0, 4)
        assert torch.allclose(flipped.run_blocks(tokens, 0, 4), expected, atol=1e-6)
        assert torch.allclose(token_forward(flipped, images), flipped.clip.encode_image(images), atol=1e-5)
        # calling the flipped blocks on batch-first tokens without the transpose attends across the batch
        wrong = tokens
        for block in flipped.visual.transformer.resblocks:
            wrong = block(wrong)
    assert not torch.allclose(wrong, expected, atol=1e-3)


def test_feclip_outputs_do_not_depend_on_the_layout(backbone):
    text = torch.randn(2, 32)
    torch.manual_seed(5)
    net = FEClip(backbone, FEClipConfig(lam=0.5), text)
    flipped = FEClip(sequence_first_copy(backbone), FEClipConfig(lam=0.5), text)
    flipped.load_state_dict(net.state_dict())
    images = torch.randn(3, 3, 112, 336)
    with torch.no_grad():
        a, b = net(images), flipped(images)
    assert torch.allclose(a.map, b.map, atol=1e-5) and torch.allclose(a.score, b.score, atol=1e-6)
    assert torch.allclose(a.embedding, b.embedding, atol=1e-5)


def test_encode_text_is_normalised(backbone):
    features = backbone.encode_text(["a photo of a cat", "a damaged object", "x"])
    assert features.shape == (3, 32)
    assert torch.allclose(features.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_local_weights_file(backbone, tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(backbone.clip.state_dict(), path)
    torch.manual_seed(123)
    loaded = ClipBackbone("feclip-tiny", str(path))
    assert loaded.pretrained == str(path)
    for (name, a), b in zip(backbone.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_cached_openai_tag_builds_with_quick_gelu(backbone, monkeypatch):
    """A cached tag goes to open_clip with the tag's activation (OpenAI weights: QuickGELU)."""
    calls = []

    def fake_create_model(name, pretrained=None, **options):
        calls.append((name, pretrained, options))
        return copy.deepcopy(backbone.clip)

    monkeypatch.setattr("feclip.model.backbone._tag_cached", lambda tag_cfg: True)
    monkeypatch.setattr("open_clip.create_model", fake_create_model)
    wrapped = ClipBackbone("ViT-L-14-336", "openai")
    assert calls == [("ViT-L-14-336", "openai", {"force_quick_gelu": True})]
    assert wrapped.pretrained == "openai" and wrapped.num_blocks == 4


def _write_weights(path, content) -> str:
    if path.suffix == ".safetensors" and isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return str(path)


class _Opaque:
    """Not a tensor: a weights-only load refuses it."""


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("text.bin", None, "not a readable weights file"),
        ("list.pt", [torch.zeros(2)], "holds no tensors by name"),
        ("empty.pt", {}, "holds no tensors by name"),
        ("tensor.pt", torch.zeros(3), "holds no tensors by name"),
        ("object.pt", {"visual.proj": _Opaque()}, "Python objects other than tensors"),
        ("garbage.safetensors", b"\x00garbage" * 10, "not a readable weights file"),
        (
            "other.pt",
            {"visual.proj": torch.zeros(64, 32), "head.weight": torch.zeros(3)},
            r"missing ln_final\.bias, ln_final\.weight, logit_scale \.\.\. \(85\); unexpected head\.weight",
        ),
    ],
)
def test_bad_weights_files_are_one_line_errors_naming_the_file(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is None:
        path.write_text("not weights")
    else:
        _write_weights(path, content)
    with pytest.raises(BackboneError, match=fragment) as error:
        ClipBackbone("feclip-tiny", str(path))
    message = str(error.value)
    assert str(path) in message and "\n" not in message and "weights_only=False" not in message


def test_weights_of_another_architecture_name_the_keys(backbone, tmp_path):
    other = ClipBackbone("ViT-B-16").clip.state_dict()
    path = _write_weights(tmp_path / "vitb.pt", other)
    with pytest.raises(
        BackboneError,
        match=r"unexpected transformer\.resblocks\.10.* shape ln_final\.bias \(512,\) vs \(32,\)",
    ):
        ClipBackbone("feclip-tiny", path)
    state = dict(backbone.clip.state_dict())
    state["visual.extra"] = state.pop("visual.proj")
    with pytest.raises(BackboneError, match=r"missing visual\.proj \(1\); unexpected visual\.extra \(1\)"):
        ClipBackbone("feclip-tiny", _write_weights(tmp_path / "renamed.pt", state))


def test_bad_names_and_ranges_raise(backbone):
    with pytest.raises(BackboneError, match="'ViT-Nope' is not an open_clip model"):
        ClipBackbone("ViT-Nope")
    with pytest.raises(BackboneError, match="backbone.pretrained=/path/to/open_clip_pytorch_model.bin"):
        ClipBackbone("feclip-tiny", "no-such-tag")
    with pytest.raises(BackboneError, match=r"block range \[2, 5\)"):
        backbone.run_blocks(torch.zeros(1, 197, 64), 2, 5)
    with pytest.raises(BackboneError, match="the last 8 rows would never be seen"):
        backbone.embed(torch.zeros(1, 3, 8, 224))


@pytest.mark.parametrize(
    "size, unseen, fits",
    [((31, 192), "the last 15 rows", "[32, 192]"), ((33, 33), "the last 1 rows and 1 columns", "[32, 32]")],
)
def test_sizes_that_are_not_whole_patches_are_refused_not_floored(backbone, size, unseen, fits):
    """open_clip's stem floors the grid: (31, 192) would run on 1 x 12 patches and never see rows 16-30."""
    with pytest.raises(BackboneError, match=re.escape(f"{unseen} would never be seen")) as error:
        backbone.embed(torch.zeros(1, 3, *size))
    assert f"e.g. {fits}" in str(error.value) and "\n" not in str(error.value)
    assert backbone.grid_size((32, 192)) == (2, 12)


def test_uncached_tag_fails_fast_offline_or_without_network(tmp_path):
    """Fresh interpreters with an empty hub cache: HF_HUB_OFFLINE=1, then an unreachable hub (port 9 on
    localhost refuses at once). Each gives a one-line error naming model, tag and the local-file option."""
    code = (
        "import os\n"
        "from feclip.model.backbone import ClipBackbone\n"
        "for offline in ('1', '0'):\n"
        "    os.environ['HF_HUB_OFFLINE'] = offline\n"
        "    try:\n"
        "        ClipBackbone('ViT-B-16', 'openai')\n"
        "    except ValueError as e:\n"
        "        print(e)\n"
    )
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "HOME": str(tmp_path),
        "HF_ENDPOINT": "https://127.0.0.1:9",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    offline, unreachable = done.stdout.strip().splitlines()
    for message in (offline, unreachable):
        assert "'ViT-B-16'" in message and "'openai'" in message
        hint = "backbone.pretrained=/path/to/open_clip_pytorch_model.bin backbone.activation=quickgelu"
        assert hint in message
    assert "HF_HUB_OFFLINE=1" in offline
    assert "127.0.0.1 cannot be reached" in unreachable


def _encoded(backbone: ClipBackbone) -> torch.Tensor:
    return backbone.clip.encode_image(torch.linspace(-1, 1, 3 * 224 * 224).view(1, 3, 224, 224))


def test_weights_load_with_the_activation_they_were_trained_with(tmp_path, monkeypatch):
    """A QuickGELU-trained tiny model saved as OpenAI distributes it (its format's extra keys) loads with
    QuickGELU and computes what it computed; a plain file of a model published both ways must be told."""
    torch.manual_seed(5)
    trained = ClipBackbone("feclip-tiny", activation="quickgelu")
    assert trained.activation == "quickgelu"
    markers = {key: torch.tensor(77) for key in backbone_module.OPENAI_KEYS}
    openai_format = {**trained.clip.state_dict(), **markers}
    loaded = ClipBackbone("feclip-tiny", _write_weights(tmp_path / "openai.pt", openai_format))
    assert loaded.activation == "quickgelu"
    torch.testing.assert_close(_encoded(loaded), _encoded(trained), rtol=0, atol=0)
    plain = _write_weights(tmp_path / "plain.pt", dict(trained.clip.state_dict()))
    as_gelu = ClipBackbone("feclip-tiny", plain)  # no tags published: GELU, as its config says
    assert as_gelu.activation == "gelu" and not torch.allclose(_encoded(as_gelu), _encoded(trained))
    assert ClipBackbone("feclip-tiny", plain, "quickgelu").activation == "quickgelu"
    monkeypatch.setattr(backbone_module, "_tag_activations", lambda name: {"quickgelu"})  # as ViT-L-14-336
    assert ClipBackbone("feclip-tiny", plain).activation == "quickgelu"
    monkeypatch.setattr(backbone_module, "_tag_activations", lambda name: {"quickgelu", "gelu"})  # ViT-B-16
    with pytest.raises(BackboneError, match=r"plain.pt may be OpenAI's .*backbone.activation=quickgelu or"):
        ClipBackbone("feclip-tiny", plain)
    assert ClipBackbone("feclip-tiny", plain, "gelu").activation == "gelu"
    with pytest.raises(BackboneError, match=r"activation=gelu but .*OpenAI's own format\) was trained with"):
        ClipBackbone("feclip-tiny", str(tmp_path / "openai.pt"), "gelu")
