"""Text features: template expansion, per-class averaging and renormalisation, bad prompts."""

import pytest
import torch
import torch.nn.functional as F
from helpers import CONF, compose

from feclip.model.build import prompt_lists
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


DEFECT_WORDS = ("defect", "damage", "flaw")  # words of an abnormal state
NEGATED = ("without flaw", "without defect", "without damage", "flawless")


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "prompt").glob("*.yaml")))
def test_every_prompt_set_differs_only_in_state(name):
    """Both classes name the same object, and no normal sentence describes a defect (only a negated one,
    'without defect'): the abnormal description is a state of the abnormal class, never in the class name."""
    prompt = compose(f"prompt={name}").prompt
    normal, abnormal, templates = prompt_lists(prompt)
    assert not any(word in prompt.class_name for word in DEFECT_WORDS), prompt.class_name
    for sentence in expand(normal, templates, "normal"):
        stripped = sentence
        for phrase in NEGATED:
            stripped = stripped.replace(phrase, "")
        assert prompt.class_name in sentence and not any(w in stripped for w in DEFECT_WORDS), sentence
    assert all(prompt.class_name in sentence for sentence in expand(abnormal, templates, "abnormal"))
