"""WinCLIP / WinCLIP+ (Jeong et al., CVPR 2023) on the project's frozen `ClipBackbone`.

Embeddings of an image with patch grid (gh, gw) (`WinClip.encode`):
- image: the full forward's class token, ln_post + CLIP projection (== open_clip's `encode_image`), (B, E);
- windows, per scale s: window (i, j) covers patches (i .. i+s-1, j .. j+s-1), stride 1, so one scale's
  windows form a (gh - s + 1, gw - s + 1) grid. A window's embedding is the projected output class token of
  a forward of the class token plus only that window's patch tokens, taken after `embed` (positional
  embedding and ln_pre already applied, so each keeps its place), (B, nh, nw, E);
- patches: the final block's patch tokens after ln_post, NOT projected (what anomalib's WinCLIP takes from
  open_clip's `output_tokens`), (B, gh, gw, D); `project_patches=True` adds CLIP's projection (E).

Zero-shot (`zero_shot`): class score = softmax(cos(embedding, [normal, abnormal]) / temperature)[abnormal],
temperature 0.07 as anomalib. Window scores become patch scores by harmonic aggregation (a patch's score is
the harmonic mean of the windows containing it); the map is the harmonic mean over {image score broadcast,
scale-s patch scores ...}; the image score is the image's class score.
Few-shot WinCLIP+ (`associations`, `few_shot_map`): per query patch / window, (1 - max cosine to the
reference bank of the same kind) / 2; window associations -> patches by harmonic aggregation; the few-shot
map is the mean over {patches, scales}. With references, forward follows anomalib: map = (zero-shot map +
few-shot map) / 2, score = (zero-shot score + max of the few-shot map) / 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from feclip.errors import FeclipError
from feclip.model.backbone import ClipBackbone
from feclip.precision import float32

TEMPERATURE = 0.07  # anomalib's WinCLIP (CLIP's initial temperature); the paper leaves it unstated


class WinClipError(FeclipError):
    """WinCLIP asked for windows, text features or reference banks that do not fit the input."""


class WinClipEmbeddings(NamedTuple):
    image: torch.Tensor  # (B, E) projected class token of the full forward
    patches: torch.Tensor  # (B, gh, gw, D) final patch tokens after ln_post (E when projected)
    windows: tuple[torch.Tensor, ...]  # per scale s: (B, gh - s + 1, gw - s + 1, E)


def window_grid(grid: tuple[int, int], scale: int) -> tuple[int, int]:
    """(nh, nw) = (gh - s + 1, gw - s + 1) windows of side `scale` at stride 1 on a (gh, gw) patch grid."""
    gh, gw = grid
    if not 1 <= scale <= min(gh, gw):
        raise WinClipError(
            f"WinCLIP window scale {scale}: expected an int in [1, {min(gh, gw)}] for grid {grid}"
        )
    return gh - scale + 1, gw - scale + 1


def window_masks(grid: tuple[int, int], scale: int, *, device=None) -> torch.Tensor:
    """(nh * nw, s * s) long: row-major patch indices covered by each window, windows in row-major order."""
    nh, nw = window_grid(grid, scale)
    gw = grid[1]
    corners = torch.arange(nh, device=device)[:, None] * gw + torch.arange(nw, device=device)  # (nh, nw)
    offsets = torch.arange(scale, device=device)[:, None] * gw + torch.arange(scale, device=device)
    return corners.reshape(-1, 1) + offsets.reshape(1, -1)


def harmonic_aggregation(window_scores: torch.Tensor, grid: tuple[int, int], scale: int) -> torch.Tensor:
    """window_scores (B, nh, nw) -> (B, gh, gw): per patch the harmonic mean of the windows containing it.

    A zero window score makes its patches 0. Vectorised as a gather of 1 / score over a (gh, gw, s * s)
    table of the containing windows (absent ones point at an appended 0)."""
    nh, nw = window_grid(grid, scale)
    if tuple(window_scores.shape[1:]) != (nh, nw):
        raise WinClipError(
            f"window scores of shape {tuple(window_scores.shape)}: expected (B, {nh}, {nw}) for grid {grid}, "
            f"scale {scale}"
        )
    device = window_scores.device
    offsets = torch.arange(scale, device=device)
    top = torch.arange(grid[0], device=device)[:, None, None, None] - offsets[:, None]  # (gh, 1, s, 1)
    left = torch.arange(grid[1], device=device)[None, :, None, None] - offsets  # (1, gw, 1, s)
    inside = (top >= 0) & (top < nh) & (left >= 0) & (left < nw)  # (gh, gw, s, s)
    table = torch.where(inside, top * nw + left, nh * nw).flatten(2)  # (gh, gw, s * s)
    reciprocal = torch.cat([1 / window_scores.flatten(1), window_scores.new_zeros(len(window_scores), 1)], 1)
    return inside.sum((-2, -1)) / reciprocal[:, table].sum(-1)


@float32
def class_scores(embeddings: torch.Tensor, text_features: torch.Tensor, temperature: float) -> torch.Tensor:
    """embeddings (..., E), text_features (2, E) [normal, abnormal] -> abnormal probability (...)."""
    cosine = F.normalize(embeddings, dim=-1) @ F.normalize(text_features, dim=-1).T
    return (cosine / temperature).softmax(-1)[..., 1]


@float32
def visual_association(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """query (B, h, w, E), reference (R, h', w', E) or (K, E) -> (B, h, w): (1 - max cosine to any
    reference row) / 2, clamped at 0 (a query equal to a reference row scores 0)."""
    bank = F.normalize(reference.reshape(-1, reference.shape[-1]), dim=-1)
    cosine = F.normalize(query, dim=-1) @ bank.T  # (B, h, w, K)
    return (1 - cosine.amax(-1)).clamp_min(0) / 2


def harmonic_mean(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Elementwise harmonic mean of equally shaped maps."""
    return len(maps) / sum(1 / m for m in maps)


class WinClip(nn.Module):
    """WinCLIP zero-shot and WinCLIP+ few-shot scoring on a frozen `ClipBackbone` (no trainable weights)."""

    def __init__(
        self,
        backbone: ClipBackbone,
        text_features: torch.Tensor,
        *,
        scales: Sequence[int] = (2, 3),
        temperature: float = TEMPERATURE,
        project_patches: bool = False,
        window_batch: int = 2048,
    ) -> None:
        """text_features: (2, E) [normal, abnormal] (e.g. `feclip.model.prompts.text_features`).
        `window_batch`: window sequences per transformer call (memory bound of `encode`)."""
        super().__init__()
        if tuple(text_features.shape) != (2, backbone.embed_dim):
            raise WinClipError(
                f"WinCLIP text features of shape {tuple(text_features.shape)}: expected (2, "
                f"{backbone.embed_dim}) [normal, abnormal]"
            )
        if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
            raise WinClipError(f"WinCLIP scales {scales!r}: expected a non-empty list of ints >= 1")
        if temperature <= 0 or window_batch < 1:
            raise WinClipError(
                f"WinCLIP temperature={temperature}, window_batch={window_batch}: expected > 0 and >= 1"
            )
        self.backbone = backbone
        self.scales = tuple(scales)
        self.temperature, self.project_patches, self.window_batch = temperature, project_patches, window_batch
        self.text_features: torch.Tensor
        self.register_buffer("text_features", F.normalize(text_features.detach().float(), dim=-1))

    def _window_embeddings(self, tokens: torch.Tensor, grid: tuple[int, int], scale: int) -> torch.Tensor:
        """tokens (B, 1 + gh * gw, D) after `embed` -> (B, nh, nw, E) projected window class tokens."""
        masks = window_masks(grid, scale, device=tokens.device)
        sequence = torch.cat([masks.new_zeros(len(masks), 1), masks + 1], dim=1)  # class token first
        windows = tokens[:, sequence].flatten(0, 1)  # (B * n_windows, 1 + s * s, D)
        blocks = self.backbone.num_blocks
        cls = torch.cat(
            [
                self.backbone.run_blocks(windows[start : start + self.window_batch], 0, blocks)[:, 0]
                for start in range(0, len(windows), self.window_batch)
            ]
        )
        return self.backbone.project(cls).view(len(tokens), *window_grid(grid, scale), -1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> WinClipEmbeddings:
        """images (B, 3, H, W), CLIP-normalised -> image (B, E), patches (B, gh, gw, D), windows per scale."""
        grid = self.backbone.grid_size(images.shape[-2:])
        tokens = self.backbone.embed(images)
        out = self.backbone.run_blocks(tokens, 0, self.backbone.num_blocks)
        image = self.backbone.project(out[:, 0])
        patch_tokens = out[:, 1:].unflatten(1, grid)
        patches = (
            self.backbone.project(patch_tokens)
            if self.project_patches
            else self.backbone.ln_post(patch_tokens)
        )
        windows = tuple(self._window_embeddings(tokens, grid, s) for s in self.scales)
        return WinClipEmbeddings(image, patches, windows)

    def zero_shot(self, embeddings: WinClipEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """-> image score (B,), zero-shot map (B, gh, gw): harmonic mean over image and window scales."""
        b, gh, gw = embeddings.patches.shape[:3]
        score = class_scores(embeddings.image, self.text_features, self.temperature)
        maps = [score.view(b, 1, 1).expand(b, gh, gw)]
        for windows, scale in zip(embeddings.windows, self.scales, strict=True):
            window_scores = class_scores(windows, self.text_features, self.temperature)
            maps.append(harmonic_aggregation(window_scores, (gh, gw), scale))
        return score, harmonic_mean(maps)

    def associations(
        self, embeddings: WinClipEmbeddings, references: WinClipEmbeddings
    ) -> list[torch.Tensor]:
        """Per-kind association maps (B, gh, gw): [patches, scale s ...] against the reference bank
        `references` (= `encode(reference_images)`; its image embeddings are unused)."""
        if len(references.windows) != len(self.scales):
            raise WinClipError(
                f"WinCLIP reference bank with {len(references.windows)} window scales: expected "
                f"{len(self.scales)} (scales {self.scales})"
            )
        grid = tuple(embeddings.patches.shape[1:3])
        maps = [visual_association(embeddings.patches, references.patches)]
        for windows, bank, scale in zip(embeddings.windows, references.windows, self.scales, strict=True):
            maps.append(harmonic_aggregation(visual_association(windows, bank), grid, scale))
        return maps

    @staticmethod
    def few_shot_map(associations: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-kind association maps, each (B, gh, gw) -> few-shot map (B, gh, gw): their mean."""
        return torch.stack(list(associations)).mean(0)

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, references: WinClipEmbeddings | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, WinClipEmbeddings]:
        """images (B, 3, H, W) -> score (B,), map (B, H, W) (bilinear from the grid), embeddings.
        Zero-shot without `references`; WinCLIP+ with them (see the module docstring)."""
        embeddings = self.encode(images)
        score, grid_map = self.zero_shot(embeddings)
        if references is not None:
            few_shot = self.few_shot_map(self.associations(embeddings, references))
            grid_map = (grid_map + few_shot) / 2
            score = (score + few_shot.amax((-2, -1))) / 2
        pixel_map = F.interpolate(grid_map[:, None], size=tuple(images.shape[-2:]), mode="bilinear")[:, 0]
        return score, pixel_map, embeddings
