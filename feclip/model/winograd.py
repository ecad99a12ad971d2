"""3x3 'same' convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016), channels last.

The LFS and Conv adapters' Conv2d(D, D, 3, padding='same') is most of an adapter's cost (9 D^2 multiply-adds
per token). F(2x2, 3x3) computes every 2x2 output tile from a 4x4 input tile with 16 instead of 36 products
per channel pair: the channel mixing becomes 16 matrix products of (tiles, D) x (D, D), 2.25x fewer
multiply-adds. With the tile d (4x4), the filter g (3x3) and

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

one output tile is Y = A^T [(G g G^T) * (B^T d B)] A summed over input channels: the same cross-correlation as
`F.conv2d` in exact arithmetic (float32: differences of a few 1e-6, tested). Everything is a pad, strided
slices, sums, a stack or a matmul, so autograd gives the gradients (their products are Winograd-sized too).

`same_conv(conv, grid)` uses it on the CPU for >= MIN_CHANNELS channels (ViT-B/16 and ViT-L/14 widths), where
PyTorch's convolution runs at the direct (36-product) cost; on CUDA, cuDNN chooses its own algorithm (Winograd
and FFT among them), so `conv` itself runs there, and so it does for narrow (tiny-backbone) convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from feclip.runtime import cached_constants

_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
# the entry (a, a) of the 4x4 product M that A^T M A adds with weight 1 to every output of the tile
_BIAS_ENTRY = next(5 * a for a in range(4) if _AT[0][a] == _AT[1][a] == 1)


@cached_constants(maxsize=8)
def _matrices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """kron(G, G) (16, 9) and kron(A^T, A^T) (4, 16), float32: the 2-D transforms of a row-major flattened
    filter and of an output tile."""
    g, at = (torch.tensor(m, dtype=torch.float32, device=device) for m in (_G, _AT))
    return torch.kron(g, g), torch.kron(at, at)


def _combine(parts: list[torch.Tensor], coefficients: tuple[int, ...]) -> torch.Tensor:
    """sum_k coefficients[k] * parts[k] for coefficients in {-1, 0, 1} (B^T's): one add or subtract per term
    after the first positive one."""
    terms = sorted((c, k) for k, c in enumerate(coefficients) if c)[::-1]  # positive terms first
    total = parts[terms[0][1]] if terms[0][0] > 0 else -parts[terms[0][1]]
    for c, k in terms[1:]:
        total = total + parts[k] if c > 0 else total - parts[k]
    return total


def _input_tiles(padded: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """padded (B, 2th + 2, 2tw + 2, C) -> B^T d B of every 4x4 tile d (stride 2), (16, B th tw, C): the row
    transform on strided row views, then the column transform, no per-tile gather."""
    rows = [padded[:, k : k + 2 * th : 2] for k in range(4)]  # row 2i + k of tile i: (B, th, W', C)
    spectra = []
    for row_coefficients in _BT:
        mixed = _combine(rows, row_coefficients)
        cols = [mixed[:, :, k : k + 2 * tw : 2] for k in range(4)]  # (B, th, tw, C)
        spectra += [_combine(cols, col_coefficients) for col_coefficients in _BT]
    return torch.stack(spectra).flatten(1, 3)


def winograd_filters(weight: torch.Tensor) -> torch.Tensor:
    """weight (Cout, Cin, 3, 3) -> G g G^T of every channel pair, (16, Cout, Cin) float32."""
    cout, cin = weight.shape[:2]
    tile_filter, _ = _matrices(weight.device)
    return (tile_filter @ weight.float().reshape(cout * cin, 9).T).view(16, cout, cin)


def winograd_conv3x3(
    grid: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    filters: torch.Tensor | None = None,
) -> torch.Tensor:
    """grid (B, H, W, Cin) channels last, weight (Cout, Cin, 3, 3), bias (Cout,) or None -> (B, H, W, Cout)
    float32: `F.conv2d(grid as NCHW, weight, bias, padding=1)`, channels last, by F(2x2, 3x3). `filters`:
    `winograd_filters(weight)` when already computed."""
    batch, h, w, _ = grid.shape
    cout = weight.shape[0]
    _, tile_out = _matrices(grid.device)
    th, tw = -(-h // 2), -(-w // 2)  # output tiles; odd sizes get one zero row / column, cropped below
    padded = F.pad(grid.float(), (0, 0, 1, 1 + 2 * tw - w, 1, 1 + 2 * th - h))  # (B, 2th + 2, 2tw + 2, Cin)
    v = _input_tiles(padded, th, tw)  # (16, B th tw, Cin)
    u = winograd_filters(weight) if filters is None else filters
    m = torch.bmm(v, u.transpose(1, 2))  # (16, B th tw, Cout): 16 products per tile and channel pair
    if bias is not None:  # A^T M A adds entry (1, 1) of M to all four outputs: the bias goes there, 1/16 pass
        m[_BIAS_ENTRY] += bias.float()
    y = (tile_out @ m.flatten(1)).view(2, 2, batch, th, tw, cout)  # (row, col, B, th, tw, Cout)
    return y.permute(2, 3, 0, 4, 1, 5).reshape(batch, 2 * th, 2 * tw, cout)[:, :h, :w]


# Below MIN_CHANNELS the ~50 small tensor ops cost more than the products saved: the crossover measured on
# 2 CPU cores lies between 384 and 512 channels
# (`python scripts/bench.py --skip inference,lfs,taps,train --conv`).
MIN_CHANNELS = 512


def is_winograd_conv(conv: nn.Conv2d) -> bool:
    """A 3x3, stride-1, undilated, ungrouped, zero-padded 'same' convolution of >= MIN_CHANNELS inputs."""
    return (
        conv.in_channels >= MIN_CHANNELS
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding in ("same", (1, 1))
        and conv.padding_mode == "zeros"
    )


def _filters(conv: nn.Conv2d) -> torch.Tensor:
    """`winograd_filters(conv.weight)`, kept on the module while the weight is unchanged and no gradient is
    taken (inference: once per weight version instead of once per call)."""
    weight = conv.weight
    if torch.is_grad_enabled() and weight.requires_grad:
        return winograd_filters(weight)
    key = (weight.data_ptr(), weight._version, weight.device)
    cached = getattr(conv, "_winograd_filters", None)
    if cached is None or cached[0] != key:
        cached = (key, winograd_filters(weight))
        conv._winograd_filters = cached
    return cached[1]


def same_conv(conv: nn.Conv2d, grid: torch.Tensor) -> torch.Tensor:
    """`conv` on a channels-last grid (B, H, W, Cin) -> (B, H, W, Cout) float32: by Winograd on the CPU for a
    3x3 'same' convolution, else `conv` itself (cuDNN on CUDA)."""
    if grid.device.type == "cpu" and is_winograd_conv(conv):
        return winograd_conv3x3(grid, conv.weight, conv.bias, filters=_filters(conv))
    return conv(grid.float().permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
