"""From stored images to model input: resize the full frame (no crop), 3 channels, CLIP normalisation.

HDMAP health maps are single-channel float maps of 31x95 with values above 1 that matter: they are never
clipped. Conversions run batched on the images' device (no per-item PIL work).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from feclip.errors import FeclipError
from feclip.registry import choices

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZES = choices("resize mode", "data.resize", ("bilinear", "nearest", "bicubic"))
INTENSITIES = choices("intensity handling", "data.intensity", ("raw", "fixed_scale", "per_image_minmax"))


class TransformError(FeclipError):
    """An input-transform option or input shape is invalid."""


def _normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """images: (B, 3, h, w) float -> (x - mean) / std per channel."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - mean) / std


def _size(size) -> tuple[int, int]:
    """size (h, w): two positive integers, else a TransformError."""
    values = tuple(size) if isinstance(size, Sequence) and not isinstance(size, str) else ()
    if len(values) != 2 or not all(_positive_int(v) for v in values):
        raise TransformError(f"size={size!r}: expected (h, w), two positive integers")
    return int(values[0]), int(values[1])


def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


class HDMAPInput(nn.Module):
    """raw HDMAP maps (B, H, W) -> model input (B, 3, h, w), computed on the images' device.

    intensity: `raw` (values as they are; the default), `fixed_scale` (divide by `scale`), or
    `per_image_minmax` (each image to [0, 1]). per_image_minmax is harmful for cold faults: it discards the
    absolute level (a fault also adds a global gain) and stretches the noise of dim cold images; the user
    measured WinCLIP domain C cold AUROC 72.5 -> 56.7 with it. It is offered only to reproduce that.
    resize: the full frame (no crop) to `size` (h, w) with `bilinear` (the default; align_corners=False),
    `nearest` or `bicubic`, antialias off. The one channel is then replicated to 3 and normalised with
    (mean, std) per channel.
    """

    def __init__(
        self,
        size,
        resize: str = "bilinear",
        intensity: str = "raw",
        scale: float = 1.0,
        mean=CLIP_MEAN,
        std=CLIP_STD,
    ) -> None:
        super().__init__()
        RESIZES.get_entry(resize)
        INTENSITIES.get_entry(intensity)
        if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not 0 < scale < math.inf:
            raise TransformError(f"data.scale={scale!r}: expected a positive finite number")
        self.size, self.resize, self.intensity, self.scale = _size(size), resize, intensity, scale
        self.mean, self.std = tuple(mean), tuple(std)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, resize={self.resize}, intensity={self.intensity}, scale={self.scale}, "
            f"mean={self.mean}, std={self.std}"
        )

    def spec(self) -> dict:
        """JSON-able description; HDMAPInput(**spec()) rebuilds it (saved with a checkpoint)."""
        return {
            "size": list(self.size),
            "resize": self.resize,
            "intensity": self.intensity,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 3:
            raise TransformError(f"HDMAP images must be (B, H, W), got shape {tuple(images.shape)}")
        x = images.float()
        if self.intensity == "fixed_scale":
            x = x / self.scale
        elif self.intensity == "per_image_minmax":
            low = x.amin(dim=(1, 2), keepdim=True)
            x = (x - low) / (x.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
        extra = {} if self.resize == "nearest" else {"align_corners": False}
        x = F.interpolate(x[:, None], size=self.size, mode=self.resize, antialias=False, **extra)
        return _normalize(x.expand(-1, 3, -1, -1), self.mean, self.std)


class RGBInput(nn.Module):
    """uint8 RGB images (B, 3, h, w), already at model size (benchmarks) -> normalised float input."""

    def __init__(self, mean=CLIP_MEAN, std=CLIP_STD) -> None:
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_rgb(images, self.mean, self.std)


def normalize_rgb(images: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """uint8 (B, 3, h, w) -> float (B, 3, h, w): / 255, then per-channel (x - mean) / std."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TransformError(
            f"RGB images must be uint8 (B, 3, h, w), got {images.dtype} of shape {tuple(images.shape)}"
        )
    return _normalize(images.float() / 255.0, mean, std)


def resize_masks(masks: torch.Tensor, size) -> torch.Tensor:
    """masks (B, H, W) {0, 1} -> (B, h, w) float {0, 1}, nearest (stays binary)."""
    size = _size(size)
    if masks.ndim != 3:
        raise TransformError(f"masks must be (B, H, W), got shape {tuple(masks.shape)}")
    if tuple(masks.shape[-2:]) == size:
        return masks.float()
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
