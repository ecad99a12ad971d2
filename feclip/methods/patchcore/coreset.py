"""Greedy k-center coreset subsampling of a patch-feature memory bank (PatchCore, Roth et al. 2022, Alg. 1).

The selection runs on a Johnson-Lindenstrauss random projection of the features (dense Gaussian matrix,
entries N(0, 1 / projection_dim), fixed by the seed), as the paper's repository does with a random
bias-free linear map to 128 dimensions; anomalib instead uses a sparse projection whose size follows the
JL bound for eps = 0.9. The greedy step starts from one point drawn with the seed and repeatedly adds the
point farthest (Euclidean) from the selected set; the distance of every point to the set is kept in one
vector and updated with the newest centre only, so each step costs one (N, d) pass and no host sync.
"""

from __future__ import annotations

import torch

from feclip.errors import FeclipError


class CoresetError(FeclipError):
    """A coreset size or projection that cannot be used."""


def coreset_size(n_points: int, size: float | int) -> int:
    """Number of points kept: a float in (0, 1] is a ratio (floor, at least 1), an int >= 1 a count (<= N)."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise CoresetError(f"coreset size {size!r}: expected a ratio in (0, 1] or a count >= 1")
    if isinstance(size, float):
        if not 0 < size <= 1:
            raise CoresetError(f"coreset ratio {size!r}: expected a float in (0, 1]")
        return max(1, int(n_points * size))
    if not 1 <= size <= n_points:
        raise CoresetError(f"coreset count {size!r}: expected an int in [1, {n_points}] (the bank size)")
    return size


def random_projection(features: torch.Tensor, dim: int, *, seed: int = 0) -> torch.Tensor:
    """features: (N, D) -> (N, dim) by a Gaussian matrix N(0, 1 / dim) drawn on the CPU from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dim, generator=generator) / dim**0.5
    return features @ matrix.to(features.device, features.dtype)


def greedy_coreset(
    features: torch.Tensor, size: float | int, *, projection_dim: int | None = 128, seed: int = 0
) -> torch.Tensor:
    """features: (N, D) -> indices (n,) long, in selection order (the first is the seeded start point).

    `size`: ratio (float) or count (int), see `coreset_size`. `projection_dim`: None, or >= D, selects on
    the features themselves. Selecting all N points returns arange(N) without the greedy pass.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise CoresetError(f"coreset features of shape {tuple(features.shape)}: expected (N, D) with N >= 1")
    n_points = features.shape[0]
    n = coreset_size(n_points, size)
    if n == n_points:
        return torch.arange(n_points, device=features.device)
    points = features.float()
    if projection_dim is not None and projection_dim < points.shape[1]:
        points = random_projection(points, projection_dim, seed=seed)
    start = torch.randint(n_points, (1,), generator=torch.Generator().manual_seed(seed))
    return _k_center_greedy(points, n, start.to(features.device))


def _k_center_greedy(points: torch.Tensor, n: int, start: torch.Tensor) -> torch.Tensor:
    """points: (N, d), start: (1,) -> (n,) indices; each added point maximises the distance to the set."""
    selected = torch.empty(n, dtype=torch.long, device=points.device)
    selected[0] = start[0]
    distance = torch.linalg.vector_norm(points - points[start], dim=1)  # (N,) to the selected set
    for step in range(1, n):
        newest = distance.argmax()
        selected[step] = newest
        distance = torch.minimum(distance, torch.linalg.vector_norm(points - points[newest], dim=1))
    return selected
