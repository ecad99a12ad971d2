"""Text features [normal, abnormal] from prompt sentences (prompt ensembling over templates).

Each state phrase is put into every template ("{}" is replaced) and every sentence is encoded; the sentences
of a class are averaged (`average`: `normalized` = each sentence L2-normalised first, as CLIP's prompt
ensembling; `raw` = the raw embeddings, as anomalib's WinCLIP) and the mean renormalised. The paper uses one
sentence per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from feclip.errors import FeclipError
from feclip.model.backbone import ClipBackbone
from feclip.registry import Registry

PAPER_NORMAL = ("A photo of a normal object",)
PAPER_ABNORMAL = ("A photo of a damaged object",)


SENTENCE_AVERAGES = Registry("sentence averaging", "prompt.average", ("normalized", "raw"))


class PromptError(FeclipError):
    """A prompt list or template is invalid."""


def expand(states: Sequence[str], templates: Sequence[str], name: str) -> list[str]:
    """Every state put into every template: len(states) * len(templates) sentences."""
    if isinstance(states, str) or not states:
        raise PromptError(f"{name} prompts {states!r}: expected a non-empty list of strings")
    if isinstance(templates, str) or not templates or not all(t.count("{}") == 1 for t in templates):
        raise PromptError(
            f"prompt templates {templates!r}: expected a non-empty list of strings with one '{{}}'"
        )
    return [template.format(state) for state in states for template in templates]


@torch.no_grad()
def text_features(
    backbone: ClipBackbone,
    normal: Sequence[str] = PAPER_NORMAL,
    abnormal: Sequence[str] = PAPER_ABNORMAL,
    templates: Sequence[str] = ("{}",),
    *,
    average: str = "normalized",
) -> torch.Tensor:
    """(2, E) unit-norm class embeddings [normal, abnormal], float32 (`average`: see the module docstring)."""
    SENTENCE_AVERAGES.get_entry(average)
    classes = []
    for name, states in (("normal", normal), ("abnormal", abnormal)):
        sentences = backbone.encode_text(expand(states, templates, name), normalize=average == "normalized")
        classes.append(F.normalize(sentences.float().mean(0), dim=-1))
    return torch.stack(classes)
