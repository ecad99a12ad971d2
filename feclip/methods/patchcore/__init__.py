"""PatchCore (Roth et al., CVPR 2022): timm features, greedy coreset memory bank, kNN scoring."""

from feclip.methods.patchcore.backbone import PRESETS, TimmFeatures
from feclip.methods.patchcore.coreset import greedy_coreset
from feclip.methods.patchcore.model import PatchCore, nearest, reweighted_image_score, score_patches

__all__ = [
    "PRESETS",
    "PatchCore",
    "TimmFeatures",
    "greedy_coreset",
    "nearest",
    "reweighted_image_score",
    "score_patches",
]
