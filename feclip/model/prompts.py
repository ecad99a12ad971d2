"""Text features [normal, abnormal] from prompt sentences (prompt ensembling over templates).

Each state phrase is put into every template ("{}" is replaced), every sentence is encoded and L2-normalised,
the sentences of a class are averaged and the mean renormalised. The paper uses one sentence per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from feclip.errors import FeclipError
from feclip.model.backbone import ClipBackbone

PAPER_NORMAL = ("A photo of a normal object",)
PAPER_ABNORMAL = ("A photo of a damaged object",)


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
) -> torch.Tensor:
    """(2, E) unit-norm class embeddings [normal, abnormal], float32."""
    classes = []
    for name, states in (("normal", normal), ("abnormal", abnormal)):
        sentences = backbone.encode_text(expand(states, templates, name)).float()
        classes.append(F.normalize(sentences.mean(0), dim=-1))
    return torch.stack(classes)
