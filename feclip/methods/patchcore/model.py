"""PatchCore (Roth et al., CVPR 2022): memory bank of locally aggregated patch features, kNN scoring.

- Local patch features: each backbone block map is averaged over 3 x 3 neighbourhoods (stride 1, zero
  padding of 1 counted in the mean, i.e. AvgPool2d(3, 1, 1) as anomalib does; the paper's p = 3), then the
  blocks are concatenated at the finest grid (`concat_blocks`).
- Memory bank: the train normals' patch features, subsampled by the greedy coreset (`coreset.py`); kept as
  the buffer `memory_bank` (K, D), so it is saved by `state_dict` and loads into a fresh module.
- Patch score: Euclidean distance to the nearest bank feature (`nearest`, queries in chunks against the
  whole bank, on the features' device). Image score: the largest patch score s* times the paper's
  re-weighting 1 - softmax(||m_test,* - m|| for m in the num_neighbors bank neighbours of m*)[m*]
  (`reweighted_image_score`; num_neighbors = 1 gives s* unweighted, as anomalib).
- Map: patch scores (B, gh, gw) bilinearly upsampled to the input size (as the paper's repository; anomalib
  uses nearest), then Gaussian-smoothed with sigma = 4 px, kernel radius int(4 sigma + 0.5) = 16 px and
  symmetric ("reflect", edge repeated) borders: scipy.ndimage.gaussian_filter's defaults, which the paper's
  repository calls (anomalib: the same 33-tap kernel with torch "reflect" borders, edge not repeated).

The pure functions take an external bank, so per-condition banks reuse them: `score_patches` and
`anomaly_map` are the module's forward without the module's own bank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from feclip.condition.banks import chunks, knn, nearest
from feclip.errors import FeclipError
from feclip.methods.patchcore.backbone import TimmFeatures, concat_blocks
from feclip.methods.patchcore.coreset import greedy_coreset
from feclip.precision import float32


class PatchCoreError(FeclipError):
    """PatchCore used out of order (empty bank) or with mismatched features."""


def local_aggregate(maps: torch.Tensor, size: int = 3) -> torch.Tensor:
    """maps: (B, C, h, w) -> (B, C, h, w): mean over size x size neighbourhoods, zeros outside counted."""
    return F.avg_pool2d(maps, size, stride=1, padding=size // 2, count_include_pad=True)


@float32
def reweighted_image_score(
    patch_distance: torch.Tensor,
    nn_index: torch.Tensor,
    query: torch.Tensor,
    bank: torch.Tensor,
    num_neighbors: int,
    *,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """PatchCore image score (B,) from patch_distance (B, P), nn_index (B, P), query (B, P, D), bank (K, D).

    s* = max_p patch_distance, at patch p*; m* = bank[nn_index[p*]]; N = the min(num_neighbors, K) bank rows
    nearest to m* (m* first); score = (1 - exp||q* - m*|| / sum_{m in N} exp||q* - m||) * s*."""
    rows = torch.arange(patch_distance.shape[0], device=patch_distance.device)
    star = patch_distance.argmax(1)
    s_star = patch_distance[rows, star]
    if num_neighbors == 1:
        return s_star
    q_star = query[rows, star]  # (B, D)
    _, support = knn(
        bank[nn_index[rows, star]], bank, min(num_neighbors, bank.shape[0]), chunk_size=chunk_size
    )
    distances = torch.linalg.vector_norm(q_star[:, None] - bank[support], dim=-1)  # (B, n)
    return (1 - distances.softmax(1)[:, 0]) * s_star


def score_patches(
    patches: torch.Tensor, bank: torch.Tensor, *, num_neighbors: int = 9, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """patches (B, gh, gw, D), bank (K, D) -> image score (B,), patch scores (B, gh, gw) (NN distances)."""
    b, gh, gw, d = patches.shape
    query = patches.reshape(b, gh * gw, d)
    distance, index = nearest(query.reshape(-1, d), bank, chunk_size=chunk_size)
    distance, index = distance.view(b, -1), index.view(b, -1)
    score = reweighted_image_score(distance, index, query, bank, num_neighbors, chunk_size=chunk_size)
    return score, distance.view(b, gh, gw)


def gaussian_matrix(n: int, sigma: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n, n) matrix A with A @ x = scipy.ndimage.gaussian_filter1d(x, sigma) along an axis of length n
    (truncate 4, mode "reflect": the signal mirrored about its edges, edge sample repeated)."""
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=device)
    weights = torch.exp(-0.5 * (offsets.to(torch.float64) / sigma) ** 2)
    weights = (weights / weights.sum()).to(dtype)
    source = (torch.arange(n, device=device)[:, None] + offsets) % (2 * n)  # (n, 2r + 1)
    source = torch.where(source >= n, 2 * n - 1 - source, source)
    return torch.zeros(n, n, device=device, dtype=dtype).scatter_add_(
        1, source, weights.expand(n, -1).contiguous()
    )


@float32
def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """maps: (B, H, W) -> (B, H, W) separable Gaussian blur, std `sigma` px (see `gaussian_matrix`)."""
    if sigma == 0:
        return maps
    rows = gaussian_matrix(maps.shape[-2], sigma, device=maps.device, dtype=maps.dtype)
    cols = gaussian_matrix(maps.shape[-1], sigma, device=maps.device, dtype=maps.dtype)
    return rows @ maps @ cols.T


@float32
def anomaly_map(
    patch_scores: torch.Tensor, image_size: tuple[int, int], *, sigma: float = 4.0
) -> torch.Tensor:
    """patch_scores (B, gh, gw) -> (B, H, W): bilinear to `image_size` (align_corners False), then blurred."""
    upsampled = F.interpolate(patch_scores[:, None], size=tuple(image_size), mode="bilinear")[:, 0]
    return gaussian_blur(upsampled, sigma)


class PatchCore(nn.Module):
    """PatchCore on a frozen `TimmFeatures`; `fit` fills `memory_bank`, forward scores images against it."""

    def __init__(
        self,
        features: TimmFeatures,
        *,
        coreset_ratio: float | int = 0.1,
        num_neighbors: int = 9,
        smoothing_sigma: float = 4.0,
        chunk_size: int = 1024,
        projection_dim: int | None = 128,
        seed: int = 0,
    ) -> None:
        """`coreset_ratio`: fraction (float in (0, 1]; 1.0 keeps every patch) or count (int) of the train
        patches kept in the bank. `projection_dim`/`seed`: the coreset's random projection and start point."""
        super().__init__()
        if num_neighbors < 1 or chunk_size < 1 or smoothing_sigma < 0:
            raise PatchCoreError(
                f"PatchCore num_neighbors={num_neighbors}, chunk_size={chunk_size}, "
                f"smoothing_sigma={smoothing_sigma}: expected integers >= 1 and a sigma >= 0"
            )
        self.features = features
        self.coreset_ratio, self.num_neighbors = coreset_ratio, num_neighbors
        self.smoothing_sigma, self.chunk_size = smoothing_sigma, chunk_size
        self.projection_dim, self.seed = projection_dim, seed
        self.memory_bank: torch.Tensor
        self.register_buffer("memory_bank", torch.empty(0, features.dim))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A saved bank of any size loads into this module (the buffer takes the saved shape)."""
        saved = state_dict.get(prefix + "memory_bank")
        if saved is not None:
            self.memory_bank = torch.empty_like(saved, device=self.memory_bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> locally aggregated patch features (B, gh, gw, D), float32."""
        return concat_blocks([local_aggregate(m.float()) for m in self.features.block_maps(images)])

    @torch.no_grad()
    def fit(self, images: torch.Tensor, *, batch_size: int = 16) -> None:
        """Bank from train normals images (N, 3, H, W), run through the backbone `batch_size` at a time
        (each batch moved to the bank's device, so `images` may stay on the CPU)."""
        device = self.memory_bank.device
        parts = [self.patch_features(images[part].to(device)) for part in chunks(images.shape[0], batch_size)]
        self.fit_features(torch.cat(parts).flatten(0, 2))

    @torch.no_grad()
    def fit_features(self, patches: torch.Tensor) -> None:
        """Bank from precomputed patch features (M, D): the greedy coreset of `coreset_ratio` of them."""
        if patches.ndim != 2 or patches.shape[1] != self.features.dim:
            raise PatchCoreError(
                f"PatchCore bank features of shape {tuple(patches.shape)}: expected (M, {self.features.dim})"
            )
        keep = greedy_coreset(patches, self.coreset_ratio, projection_dim=self.projection_dim, seed=self.seed)
        self.memory_bank = patches[keep].to(self.memory_bank.device, self.memory_bank.dtype).contiguous()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) -> score (B,), map (B, H, W), patch features (B, gh, gw, D)."""
        if self.memory_bank.shape[0] == 0:
            raise PatchCoreError("PatchCore memory bank is empty: call fit(train_images) first")
        patches = self.patch_features(images)
        score, patch_scores = score_patches(
            patches, self.memory_bank, num_neighbors=self.num_neighbors, chunk_size=self.chunk_size
        )
        return score, anomaly_map(patch_scores, images.shape[-2:], sigma=self.smoothing_sigma), patches
