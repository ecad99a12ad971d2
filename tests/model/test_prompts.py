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


# anomalib's WinCLIP prompt ensemble (models/image/winclip/prompting.py, the user's fork), pinned
ANOMALIB_NORMAL = ["{}", "flawless {}", "perfect {}", "unblemished {}"]
ANOMALIB_NORMAL += ["{} without flaw", "{} without defect", "{} without damage"]
ANOMALIB_ABNORMAL = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"]
ANOMALIB_TEMPLATES = [
    f"a {kind} photo of {article} {{}}."
    for kind, articles in [
        ("cropped", ["the"]),
        ("close-up", ["a", "the"]),
        ("bright", ["a", "the"]),
        ("dark", ["the", "a"]),
        ("jpeg corrupted", ["the", "the"]),
        ("blurry", ["the", "a"]),
    ]
    for article in articles
]
ANOMALIB_TEMPLATES += ["a photo of a {}.", "a photo of the {}."]
ANOMALIB_TEMPLATES += [f"a photo of {a} {size} {{}}." for size in ("small", "large") for a in ("a", "the")]
ANOMALIB_TEMPLATES += [
    f"a photo of {a} {{}} for {purpose}."
    for purpose in ("visual inspection", "anomaly detection")
    for a in ("the", "a")
]


@pytest.mark.parametrize("name", ["winclip", "hdmap_sensor", "hdmap_fault_heatmap"])
def test_the_winclip_prompts_are_anomalibs_ensemble(name):
    prompt = compose(f"prompt={name}").prompt
    assert list(prompt.normal) == ANOMALIB_NORMAL and list(prompt.abnormal) == ANOMALIB_ABNORMAL
    assert list(prompt.templates) == ANOMALIB_TEMPLATES and len(ANOMALIB_TEMPLATES) == 21
    assert prompt.average == "raw"
    assert compose("method=winclip", "backbone=vit_b16_plus_240").backbone.pretrained == "laion400m_e31"


def test_raw_average_is_the_mean_of_unnormalised_sentence_embeddings(backbone):
    """anomalib's averaging: the raw embeddings' mean, renormalised (differs from the normalised mean)."""
    sentences = ["a photo of a normal gear", "normal gear"]
    raw = backbone.encode_text(sentences, normalize=False)
    features = text_features(
        backbone, ["normal gear"], ["broken gear"], ["a photo of a {}", "{}"], average="raw"
    )
    assert torch.allclose(features[0], F.normalize(raw.mean(0), dim=0), atol=1e-6)
    normalised = text_features(backbone, ["normal gear"], ["broken gear"], ["a photo of a {}", "{}"])
    assert not torch.allclose(features[0], normalised[0], atol=1e-4)
