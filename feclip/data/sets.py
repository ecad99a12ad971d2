"""Labelled image sets in the form the training loop and the evaluator consume.

An `ImageSet` keeps images in their compact stored form (raw HDMAP floats (N, H, W), or uint8 RGB benchmark
images (N, 3, h, w)) and converts a batch to model input on the device, so no per-item work happens in a loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from feclip.data.transforms import resize_masks


@dataclass
class Batch:
    inputs: torch.Tensor | None  # (B, 3, h, w) normalised model input; None when not asked for
    labels: torch.Tensor  # (B,) float 0 good / 1 fault
    masks: torch.Tensor | None  # (B, h, w) float {0, 1} at model input size, None when the set has no masks
    has_mask: torch.Tensor  # (B,) bool


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, H, W) raw HDMAP float32 or (N, 3, h, w) uint8 RGB
    labels: torch.Tensor  # (N,) int64, 0 good / 1 fault
    masks: torch.Tensor | None  # (N, H', W') uint8 pixel masks, None when no sample has one
    has_mask: torch.Tensor  # (N,) bool
    to_input: nn.Module  # images batch -> (B, 3, h, w) normalised model input

    def __len__(self) -> int:
        return len(self.images)

    def inputs(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Model input (B, 3, h, w) for rows `index`, converted on `device`."""
        return self.to_input(self.images[index].to(device))

    def batch(
        self, index: torch.Tensor, device: torch.device, size: tuple[int, int], inputs: bool = True
    ) -> Batch:
        """Rows `index` on `device`; masks resized (nearest) to the model input `size` (h, w)."""
        masks = None
        if self.masks is not None:
            masks = resize_masks(self.masks[index].to(device), size)
        return Batch(
            self.inputs(index, device) if inputs else None,
            self.labels[index].to(device).float(),
            masks,
            self.has_mask[index].to(device),
        )

    def fingerprint(self) -> str:
        """Content hash of the images and the input transform (keys the frozen-token cache)."""
        digest = hashlib.sha1(self.images.contiguous().numpy().tobytes())
        digest.update(repr(self.to_input).encode())
        return digest.hexdigest()[:16]


def labelled_set(
    images: torch.Tensor, labels, to_input: nn.Module, masks: torch.Tensor | None = None
) -> ImageSet:
    """An ImageSet where every sample has a mask when `masks` is given, none otherwise."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    has_mask = torch.full((len(images),), masks is not None, dtype=torch.bool)
    return ImageSet(images, labels, masks, has_mask, to_input)
