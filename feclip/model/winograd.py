"""3x3 'same' convolution by Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray, 2016), channels last.

The LFS and Conv adapters' Conv2d(D, D, 3, padding='same') is most of an adapter's cost (9 D^2 multiply-adds
per token). F(m x m, 3 x 3) computes every m x m output tile from an n x n input tile, n = m + 2, with n^2
products per channel pair instead of 9 m^2: the channel mixing becomes n^2 matrix products of (tiles, D) x
(D, D). One output tile is

    Y = A^T [(G g G^T) * (B^T d B)] A   summed over input channels (d: the n x n tile, g: the 3 x 3 filter).

The matrices are derived here, not tabulated (Toom-Cook, by the transposition principle): with the n
interpolation points `POINTS[:n - 1]` and infinity, V (n, n) evaluates a polynomial of degree n - 1 at them
(rows (1, p, ..., p^(n-1)); infinity: its leading coefficient), so that a linear convolution s = x * g of
x (m) and g (3) is V^-1 [(V[:, :3] g) * (V[:, :m] x)]; its transpose in x is the correlation
y_i = sum_k g_k d_(i+k) of d (n): A^T = V[:, :m]^T, G = V[:, :3], B^T = V^-T. The 2-D transforms are their
Kronecker squares, applied as one matrix product each.

The tile size trades products against the transformed filters' size (n^2 Cout Cin floats, read by every
product, made with their gradient at every training step) and rounding. `tile_size(h, w, batch=...)` takes the
m <= MAX_TILE of the least cost n^2 (tiles + FILTER_COST), in products per channel pair, the filters counted
as FILTER_COST tiles' worth (one value at inference, one in training, fitted to by-tile timings on 2 CPU
cores; the by-tile tables of `bench.py --conv` at batch 1 and 8 agree with the tiles taken). ViT-B/16 at 224
(14 x 14) in inference batches of 8 or more: m = 5, 441 products per image against 784 for m = 2 and 1764
direct; one image: m = 2; training: m = 2. In float32 the result differs from `F.conv2d` by less than 7e-6 of
its largest value up to m = 6 (measured; the tests allow 2e-5), NNPACK's tile size in float32. Everything is a
pad, an unfold, a copy or a matrix product, so autograd gives the gradients (Winograd-sized too).

`same_conv(conv, grid)` uses it on the CPU for >= MIN_CHANNELS channels (ViT-B/16 and ViT-L/14 widths), where
PyTorch's convolution runs at the direct (9 m^2) cost; on CUDA, cuDNN chooses its own algorithm (Winograd
and FFT among them), so `conv` itself runs there, and so it does for narrow (tiny-backbone) convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from feclip.runtime import building_constants, cached_constants

# interpolation points, best-conditioned first (small magnitudes, symmetric pairs); a tile of m outputs uses
# the first m + 1 of them and infinity
POINTS = (0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0)
MAX_TILE = len(POINTS) - 1  # 6
KERNEL = 3
# the transformed filters' cost in tiles' worth of products: read once per call at inference; made, read and
# differentiated at every training step
FILTER_COST = {"inference": 60, "training": 290}


def tile_size(h: int, w: int, *, batch: int = 1, training: bool = False) -> int:
    """The output tile m in 2 ... MAX_TILE of the least cost (m + 2)^2 (batch ceil(h/m) ceil(w/m) +
    FILTER_COST) for a (batch, h, w) grid; the smaller m on ties (fewer rounding steps)."""
    filters = FILTER_COST["training" if training else "inference"]

    def cost(m: int) -> tuple[int, int]:
        return (m + KERNEL - 1) ** 2 * (batch * -(-h // m) * -(-w // m) + filters), m

    return min(range(2, MAX_TILE + 1), key=cost)


def toom_cook(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A^T (m, n), G (n, 3), B^T (n, n) float64 of F(m, 3), n = m + 2, from the points `POINTS[:n - 1]` and
    infinity: A^T [(G g) * (B^T d)] = (sum_k g_k d_(i+k))_i for every d (n) and g (3)."""
    if not 1 <= m <= MAX_TILE:
        raise ValueError(f"Winograd tile {m}: expected 1 ... {MAX_TILE}")
    n = m + KERNEL - 1
    points = torch.tensor(POINTS[: n - 1], dtype=torch.float64)

    def evaluation(columns: int) -> torch.Tensor:  # (n, columns): a polynomial of `columns` coefficients
        v = torch.zeros(n, columns, dtype=torch.float64)
        v[:-1] = points[:, None] ** torch.arange(columns, dtype=torch.float64)
        v[-1, -1] = 1.0  # infinity: the leading coefficient
        return v

    return evaluation(m).T, evaluation(KERNEL), torch.linalg.inv(evaluation(n)).T


@cached_constants(maxsize=16)
def _matrices(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2-D transforms of F(m x m, 3 x 3), float32, on row-major flattened tiles: kron(G, G) (n^2, 9) of a
    filter, kron(B^T, B^T) (n^2, n^2) of an input tile, kron(A^T, A^T) (m^2, n^2) of a product tile."""
    at, g, bt = toom_cook(m)
    return tuple(torch.kron(a, a).float().to(device) for a in (g, bt, at))


def winograd_filters(weight: torch.Tensor, tile: int) -> torch.Tensor:
    """weight (Cout, Cin, 3, 3) -> G g G^T of every channel pair for tile m, (n^2, Cin, Cout) float32: the
    right-hand operand of the products as it is laid out in memory (faster than a transposed view)."""
    cout, cin = weight.shape[:2]
    filter_transform = _matrices(tile, weight.device)[0]
    by_input = weight.float().transpose(0, 1).reshape(cin * cout, 9)  # rows (Cin, Cout)
    return (filter_transform @ by_input.T).view(-1, cin, cout)


def winograd_conv3x3(
    grid: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    tile: int | None = None,
    filters: torch.Tensor | None = None,
) -> torch.Tensor:
    """grid (B, H, W, Cin) channels last, weight (Cout, Cin, 3, 3), bias (Cout,) or None -> (B, H, W, Cout)
    float32: `F.conv2d(grid as NCHW, weight, bias, padding=1)`, channels last, by F(m x m, 3 x 3) with
    m = `tile` (default: `tile_size` at inference). `filters`: `winograd_filters(weight, m)` when already
    computed."""
    batch, h, w, cin = grid.shape
    cout = weight.shape[0]
    m = tile_size(h, w, batch=batch) if tile is None else tile
    n = m + KERNEL - 1
    _, input_transform, output_transform = _matrices(m, grid.device)
    th, tw = -(-h // m), -(-w // m)  # output tiles; sizes not a multiple of m get zero rows, cropped below
    padded = F.pad(grid.float(), (0, 0, 1, 1 + m * tw - w, 1, 1 + m * th - h))  # (B, m th + 2, m tw + 2, Cin)
    tiles = padded.unfold(1, n, m).unfold(2, n, m)  # (B, th, tw, Cin, n, n), a view
    d = tiles.permute(4, 5, 0, 1, 2, 3).reshape(n * n, -1)  # (n^2, B th tw Cin)
    v = (input_transform @ d).view(n * n, batch * th * tw, cin)
    u = winograd_filters(weight, m) if filters is None else filters
    products = torch.bmm(v, u).flatten(1)  # (n^2, B th tw Cout): n^2 per tile and channel pair
    if bias is None:
        y = output_transform @ products
    else:  # every output gets the bias once: added by the output transform's product
        y = torch.addmm(bias.float().repeat(batch * th * tw), output_transform, products)
    y = y.view(m, m, batch, th, tw, cout).permute(2, 3, 0, 4, 1, 5)  # (B, th, row, tw, col, Cout)
    return y.reshape(batch, m * th, m * tw, cout)[:, :h, :w]


# Below MIN_CHANNELS the transforms cost more than the products saved: the crossover measured on 2 CPU cores
# (`python scripts/bench.py --skip inference,lfs,taps,train --conv`).
MIN_CHANNELS = 512


def is_winograd_conv(conv: nn.Conv2d) -> bool:
    """A 3x3, stride-1, undilated, ungrouped, zero-padded 'same' convolution of >= MIN_CHANNELS inputs."""
    return (
        conv.in_channels >= MIN_CHANNELS
        and conv.kernel_size == (KERNEL, KERNEL)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding in ("same", (1, 1))
        and conv.padding_mode == "zeros"
    )


def _training(conv: nn.Conv2d) -> bool:
    """Whether this call builds a graph through the convolution's weight."""
    return torch.is_grad_enabled() and conv.weight.requires_grad


def _filters(conv: nn.Conv2d, tile: int) -> torch.Tensor:
    """`winograd_filters(conv.weight, tile)`, kept on the module while the weight and the tile are unchanged
    and no gradient is taken (inference: once per weight version instead of once per call). They take
    (m + 2)^2 / 9 times the weight's memory: 116 MB for a 768-wide conv at m = 5, 268 MB at 1024 and m = 6."""
    weight = conv.weight
    if _training(conv):
        return winograd_filters(weight, tile)
    key = (weight.data_ptr(), weight._version, weight.device, tile)
    cached = getattr(conv, "_winograd_filters", None)
    if cached is None or cached[0] != key:
        with building_constants():  # also serve a later call with a graph through the input, weight frozen
            cached = (key, winograd_filters(weight, tile))
        conv._winograd_filters = cached
    return cached[1]


def same_conv(conv: nn.Conv2d, grid: torch.Tensor) -> torch.Tensor:
    """`conv` on a channels-last grid (B, H, W, Cin) -> (B, H, W, Cout) float32: by Winograd on the CPU for a
    3x3 'same' convolution, else `conv` itself (cuDNN on CUDA)."""
    if grid.device.type == "cpu" and is_winograd_conv(conv):
        tile = tile_size(*grid.shape[1:3], batch=grid.shape[0], training=_training(conv))
        return winograd_conv3x3(grid, conv.weight, conv.bias, tile=tile, filters=_filters(conv, tile))
    return conv(grid.float().permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
