"""WinCLIP / WinCLIP+ (Jeong et al., CVPR 2023) on the project's frozen ClipBackbone."""

from feclip.methods.winclip.model import WinClip, WinClipEmbeddings, harmonic_aggregation, visual_association

__all__ = ["WinClip", "WinClipEmbeddings", "harmonic_aggregation", "visual_association"]
