"""Text features: template expansion, per-class averaging and renormalisation, bad prompts."""

import pytest
import torch
import torch.nn.functional as F

from feclip.model.prompts import PAPER_ABNORMAL, PAPER_NORMAL, PromptError, expand, text_features


def test_expand_puts_every_state_in_every_template():
    assert expand(["normal x", "good x"], ["a {}", "the {}."], "normal") == [
        "a normal x",
        "the normal x.",
        "a good x",
        "the good x.",
    ]


def test_paper_default_is_one_sentence_per_class(backbone):
    features = text_features(backbone)
    expected = backbone.encode_text([PAPER_NORMAL[0], PAPER_ABNORMAL[0]])
    assert features.shape == (2, 32) and torch.allclose(features, expected, atol=1e-6)


def test_ensemble_mean_is_renormalised(backbone):
    features = text_features(
        backbone, ["normal gear", "good gear"], ["broken gear"], ["a photo of a {}", "{}"]
    )
    normal = backbone.encode_text(
        ["a photo of a normal gear", "normal gear", "a photo of a good gear", "good gear"]
    )
    abnormal = backbone.encode_text(["a photo of a broken gear", "broken gear"])
    assert torch.allclose(features[0], F.normalize(normal.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(features[1], F.normalize(abnormal.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(features.norm(dim=-1), torch.ones(2), atol=1e-6)


@pytest.mark.parametrize(
    ("normal", "abnormal", "templates", "message"),
    [
        ([], ["x"], ["{}"], "normal prompts"),
        (["x"], "damaged", ["{}"], "abnormal prompts"),
        (["x"], ["y"], ["no placeholder"], "templates"),
        (["x"], ["y"], [], "templates"),
    ],
)
def test_bad_prompts_raise(backbone, normal, abnormal, templates, message):
    with pytest.raises(PromptError, match=message):
        text_features(backbone, normal, abnormal, templates)
