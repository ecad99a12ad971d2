"""Speed of FE-CLIP against its physical limit (experiments/004_performance).

Not a test: it prints measurements.

    python scripts/bench.py                                         # tiny random-init ViT, CPU, offline
    python scripts/bench.py --backbone vit_b16 --batch 8 --repeats 5
    python scripts/bench.py --backbone vit_l14_336 --image-size 336 --batch 32 --precision bf16 --device cuda
    python scripts/bench.py --patchcore                             # + PatchCore (method/patchcore.yaml)
    python scripts/bench.py --backbone vit_b16 --cache 1000 --skip inference,lfs,taps,train   # token cache
    python scripts/bench.py --sweep                                 # + one job's phase split, full sweep wall

Sections (one table each; medians over --repeats, the variants of a table measured interleaved A/B/C per
repeat so that load drifts hit them alike):
  inference    plain open_clip `encode_image` vs FE-CLIP forward with freq DCT and FFT (ratio to plain, the
               MAC-theoretical ratio (12 L + 10 T) / 12 L beside it, and on the CPU with the LFS conv's
               Winograd products), images/s, CUDA peak memory;
  lfs paths    per LFS statistic x transform: the path `LFS.frequency_statistic` takes, decided by
               `LFS.statistic.has_fast_path(LFS.transform)` (`Statistic.fast` set, and for `energy`
               `WindowTransform.orthonormal`): fast filter, or unfold + transform; timed both ways;
  taps         per tap: FFE, LFS and the whole TapAdapter (dct and fft), on the tap's grid;
  train        one Adam step from images (uncached) vs from pre-tap tokens (cached), dct and fft, images/s,
               peak memory;
  patchcore    bank size, feature extraction, greedy coreset selection, kNN scoring per image;
  conv         `--conv`: the adapters' 3x3 convolution, nn.Conv2d vs Winograd F(m x m, 3x3) (what the CPU uses
               from `feclip.model.winograd.MIN_CHANNELS`), widths 64 ... 1024 at the backbone's grid;
  cache        `--cache N`: the disk token cache of N synthetic HDMAP-sized images filled through
               `feclip.cache.frozen_features` (the job's path) in --cache-dtype: bytes per image, GB per 1000
               images, and the peak RSS increase while filling (RSS sampled every 10 ms by a thread;
               memory-mapped pages written count as resident) less one batch's forward measured alone (the
               model's transient activations, GPU memory on CUDA): the cache's own RAM against its size;
  sweep        one default_sweep job in-process with its phases timed by wrapping the job's functions
               (data, model build, token caching, training, evaluation, figures, tracking: self time,
               nested calls subtracted), then the full `run.py -m experiment=default_sweep` wall time.
Backbone weights are random init unless --weights says otherwise (speed does not depend on the weights);
every table says which.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from feclip import CONF_DIR  # noqa: E402
from feclip.errors import FeclipError  # noqa: E402
from feclip.model.adapters import LFS, LFS_STATISTICS  # noqa: E402
from feclip.model.backbone import ClipBackbone, backbone_config  # noqa: E402
from feclip.model.feclip import FEClip, FEClipConfig, FreqConfig  # noqa: E402
from feclip.model.losses import feclip_loss  # noqa: E402
from feclip.model.winograd import (  # noqa: E402
    MAX_TILE,
    MIN_CHANNELS,
    tile_size,
    winograd_conv3x3,
    winograd_filters,
)
from feclip.precision import PRECISIONS  # noqa: E402
from feclip.precision import policy as precision_policy  # noqa: E402

CONF = CONF_DIR
TRANSFORM_NAMES = ("dct", "fft")


class BenchError(Exception):
    """A bad option: printed as one line."""


# ----------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, device: torch.device, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, measured round-robin (A, B, C, A, B, C, ...) after warmup."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        names = list(fns) if r % 2 == 0 else list(fns)[::-1]  # alternate the order too
        for name in names:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: torch.device) -> float:
    """CUDA: torch.cuda.max_memory_allocated since the last reset; CPU: the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_label(device: torch.device) -> str:
    return "CUDA max_memory_allocated" if device.type == "cuda" else "process peak RSS (whole run so far)"


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f} ms"


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise BenchError(f"--image-size {text!r}: expected N or HxW of positive integers (336, 64x192)")
    return tuple(parts)


def parse_taps(text: str):
    if text and text[0].isdigit():
        try:
            return [int(t) for t in text.split(",")]
        except ValueError:
            raise BenchError(
                f"taps {text!r}: expected a preset name or a comma list of block indices"
            ) from None
    return text


# ---------------------------------------------------------------------------------------------- backbone
def resolve_backbone(name: str) -> dict:
    """A feclip/conf/backbone name (tiny, vit_b16, ...) or an open_clip model name -> name, pretrained, input
    size."""
    path = CONF / "backbone" / f"{name}.yaml"
    if path.is_file():
        spec = OmegaConf.load(path)
        return {
            "conf": name,
            "name": str(spec.name),
            "pretrained": spec.pretrained,
            "input_size": tuple(spec.input_size),
        }
    try:
        backbone_config(name)
    except FeclipError as error:
        known = ", ".join(sorted(p.stem for p in (CONF / "backbone").glob("*.yaml")))
        raise BenchError(
            f"--backbone {name!r}: neither feclip/conf/backbone/<name>.yaml ({known}) nor {error}"
        ) from None
    return {"conf": None, "name": name, "pretrained": None, "input_size": (224, 224)}


def build_backbone(spec: dict, weights: str) -> tuple[ClipBackbone, str]:
    """The backbone and a label of its weights. weights: random | pretrained (fail if absent) | auto
    (the conf's weights when they load, else random init)."""
    torch.manual_seed(0)
    tag = spec["pretrained"]
    if weights == "random" or tag is None:
        if weights == "pretrained":
            raise BenchError(
                f"--weights pretrained: backbone {spec['name']!r} has no pretrained weights in conf"
            )
        return ClipBackbone(spec["name"], None), "random init"
    try:
        return ClipBackbone(spec["name"], tag), f"pretrained {tag}"
    except FeclipError as error:
        if weights == "pretrained":
            raise
        print(
            f"bench: weights {tag!r} unavailable ({error}); using random init "
            "(timing does not depend on them)"
        )
        torch.manual_seed(0)
        return ClipBackbone(spec["name"], None), f"random init ({tag} unavailable)"


def theoretical_ratio(blocks: int, taps: int, conv_macs: float = 9.0) -> float:
    """(blocks * 12 D^2 + taps * (FFE D^2 + LFS conv `conv_macs` D^2)) / (blocks * 12 D^2) MACs per token;
    conv_macs: 9 direct, (m + 2)^2 tiles / tokens by Winograd F(m x m, 3x3)."""
    return (12 * blocks + (1 + conv_macs) * taps) / (12 * blocks)


def winograd_macs(grid: tuple[int, int], batch: int) -> float:
    """The LFS conv's products per token (in D^2) at inference on the CPU: Winograd's at the batch's tile."""
    gh, gw = grid
    m = tile_size(gh, gw, batch=batch)
    return -(-gh // m) * -(-gw // m) * (m + 2) ** 2 / (gh * gw)


def feclip_model(backbone, transform: str, taps, text, statistic: str = "mean") -> FEClip:
    cfg = FEClipConfig(taps=taps, freq=FreqConfig(transform=transform, lfs={"statistic": statistic}))
    return FEClip(backbone, cfg, text)


# -------------------------------------------------------------------------------------------- sections
def bench_inference(backbone, images, text, args, ctx) -> dict:
    device, policy = ctx["device"], ctx["policy"]
    models = {t: feclip_model(backbone, t, args.taps, text).to(device).eval() for t in TRANSFORM_NAMES}
    native = tuple(images.shape[-2:]) == backbone.native_size
    if native:
        fns = {"plain": lambda: backbone.clip.encode_image(images)}
    else:  # encode_image has no positional-embedding interpolation: the same chain (embed, blocks, project)
        fns = {
            "plain": lambda: backbone.project(
                backbone.run_blocks(backbone.embed(images), 0, backbone.num_blocks)[:, 0]
            )
        }
    fns |= {t: functools.partial(m, images, per_tap_maps=False) for t, m in models.items()}  # as inference
    peaks = {}
    with torch.inference_mode(), policy():
        times = interleaved(fns, device, args.repeats)
        for name, fn in fns.items():  # peak memory of each variant alone (one more call)
            reset_peak(device)
            fn()
            sync(device)
            peaks[name] = peak_mib(device) if device.type == "cuda" else None
    taps = models["dct"].taps
    theory = theoretical_ratio(backbone.num_blocks, len(taps))
    winograd_theory = (
        theoretical_ratio(backbone.num_blocks, len(taps), winograd_macs(ctx["grid"], len(images)))
        if device.type == "cpu" and backbone.width >= MIN_CHANNELS  # where `same_conv` takes Winograd
        else None
    )
    n = len(images)
    result = {"taps": taps, "theoretical_ratio": theory, "theoretical_ratio_winograd": winograd_theory}
    rows = []
    for name, seconds in times.items():
        ratio = seconds / times["plain"]
        plain = "plain encode_image" if native else "plain CLIP (embed + all blocks + project = encode_image)"
        label = plain if name == "plain" else f"FE-CLIP freq={name}"
        result[name] = {
            "s_per_batch": seconds,
            "images_s": n / seconds,
            "ratio": ratio,
            "peak_mib": peaks[name],
        }
        peak = "-" if peaks[name] is None else f"{peaks[name]:.0f} MiB"
        rows.append([label, ms(seconds), ms(seconds / n), f"{n / seconds:.1f}", f"{ratio:.3f}", peak])
    table(
        f"Inference ({ctx['label']}; taps {taps}; MAC-theoretical FE-CLIP/plain {theory:.3f} with the direct "
        f"conv"
        + ("" if winograd_theory is None else f", {winograd_theory:.3f} with the CPU's Winograd")
        + ")",
        ["forward", "per batch", "per image", "images/s", "time / plain", "peak (CUDA allocated)"],
        rows,
    )
    return result


def bench_lfs_paths(backbone, images, args, ctx) -> dict:
    """Each statistic x transform: which path frequency_statistic takes and its time, vs the forced unfold."""
    device = ctx["device"]
    gh, gw = backbone.grid_size(images.shape[-2:])
    grid = torch.randn(len(images), gh, gw, backbone.width, device=device)
    rows, result = [], {}
    for statistic in LFS_STATISTICS.names:
        for transform in TRANSFORM_NAMES:
            lfs = LFS(backbone.width, (3, 3), statistic, 3, transform).to(device)
            fast = lfs.statistic.has_fast_path(lfs.transform)
            fns = {"default": functools.partial(lfs.frequency_statistic, grid)}
            if fast:
                fns["unfold"] = functools.partial(lfs.frequency_statistic, grid, fast=False)
            with torch.inference_mode():
                times = interleaved(fns, device, args.repeats)
            fast_fn = getattr(lfs.statistic.fast, "__name__", None)
            path = f"fast filter ({fast_fn})" if fast else "unfold + transform"
            why = (
                f"Statistic.fast={fast_fn}"
                + (", needs orthonormal" if lfs.statistic.fast_needs_orthonormal else "")
                + f"; {transform}.orthonormal={lfs.transform.orthonormal}"
                if lfs.statistic.fast is not None
                else "Statistic.fast=None"
            )
            unfold = times.get("unfold", times["default"])
            result[f"{statistic}/{transform}"] = {
                "path": path,
                "s": times["default"],
                "unfold_s": unfold,
                "decided_by": why,
            }
            rows.append(
                [
                    statistic,
                    transform,
                    path,
                    why,
                    ms(times["default"]),
                    ms(unfold),
                    f"{unfold / times['default']:.2f}x",
                ]
            )
    table(
        "LFS statistic paths (`LFS.frequency_statistic`, "
        f"path = `LFS.statistic.has_fast_path(LFS.transform)`; "
        f"grid {len(images)}x{gh}x{gw}x{backbone.width}, fp32)",
        ["statistic", "transform", "path taken", "decided by", "time", "unfold path", "unfold / taken"],
        rows,
    )
    return result


def bench_taps(backbone, images, text, args, ctx) -> dict:
    """Per tap: FFE, LFS and the whole TapAdapter (Eq. 2) on the tap's grid, for dct and fft."""
    device = ctx["device"]
    gh, gw = backbone.grid_size(images.shape[-2:])
    grid = torch.randn(len(images), gh, gw, backbone.width, device=device)
    rows, result = [], {}
    for transform in TRANSFORM_NAMES:
        model = feclip_model(backbone, transform, args.taps, text).to(device).eval()
        for tap, adapter in zip(model.taps, model.adapters, strict=True):
            fns = {name: functools.partial(branch, grid) for name, branch in adapter.branches.items()}
            fns["tap"] = functools.partial(adapter, grid)
            with torch.inference_mode():
                times = interleaved(fns, device, args.repeats)
            result[f"{transform}/{tap}"] = times
            rows.append([transform, tap, ms(times["ffe"]), ms(times["lfs"]), ms(times["tap"])])
    table(
        f"Per-tap adapter time (batch {len(images)}, grid {gh}x{gw}, width {backbone.width}, fp32 by design)",
        ["freq", "tap block", "FFE", "LFS (mean + conv)", "TapAdapter (FFE + LFS + fusion)"],
        rows,
    )
    return result


def bench_train(backbone, images, text, args, ctx) -> dict:
    """One Adam step from images (uncached) vs from the pre-tap tokens (cached, as
    feclip.methods.feclip.train does), for freq dct and fft: four variants measured interleaved."""
    device, policy = ctx["device"], ctx["policy"]
    models = {t: feclip_model(backbone, t, args.train_taps, text).to(device).train() for t in TRANSFORM_NAMES}
    optimizers = {t: torch.optim.Adam(m.param_groups(5e-4, 0.01)) for t, m in models.items()}
    n = len(images)
    labels = (torch.arange(n) % 2).float().to(device)
    masks = torch.zeros(n, *images.shape[-2:], device=device)
    has_mask = torch.ones(n, dtype=torch.bool, device=device)
    size = tuple(images.shape[-2:])
    grid = backbone.grid_size(size)
    with torch.inference_mode(), policy():
        tokens = models["dct"].pre_tap_tokens(images)
    tokens = tokens.clone()  # out of inference mode, in its policy dtype (the cache stores that)

    def step(transform: str, cached: bool) -> None:
        model = models[transform]
        with policy():
            out = (
                model.forward_from_tokens(tokens.float(), size, token_grid=grid) if cached else model(images)
            )
        loss = feclip_loss(out, labels, masks, has_mask)["total"]
        optimizers[transform].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[transform].step()

    named = {
        f"{t}/{'cached' if c else 'uncached'}": functools.partial(step, t, c)
        for t in TRANSFORM_NAMES
        for c in (False, True)
    }
    times = interleaved(named, device, args.repeats)
    peaks = {}
    for name, fn in named.items():
        reset_peak(device)
        fn()
        sync(device)
        peaks[name] = peak_mib(device) if device.type == "cuda" else None
    first = models["dct"].taps[0]
    rows = []
    for name, seconds in times.items():
        transform, kind = name.split("/")
        what = (
            "from images (full forward)"
            if kind == "uncached"
            else f"from pre-tap tokens (after block {first})"
        )
        peak = "-" if peaks[name] is None else f"{peaks[name]:.0f} MiB"
        rows.append([transform, what, f"{seconds:.3f} s", f"{n / seconds:.1f}", peak])
    speedup = times["dct/uncached"] / times["dct/cached"]
    fft_over_dct = times["fft/cached"] / times["dct/cached"]
    table(
        f"Training step ({ctx['label']}; taps {models['dct'].taps}; Adam, feclip_loss; "
        f"cache speed-up (dct) {speedup:.2f}x; cached fft / dct {fft_over_dct:.3f})",
        ["freq", "step", "time", "images/s", "peak (CUDA allocated)"],
        rows,
    )
    return {
        "taps": models["dct"].taps,
        "s": times,
        "s_uncached": times["dct/uncached"],
        "s_cached": times["dct/cached"],
        "speedup": speedup,
        "cached_fft_over_dct": fft_over_dct,
        "peak_mib": peaks,
    }


def bench_patchcore(args, ctx) -> dict:
    """PatchCore of feclip/conf/method/patchcore.yaml: feature extraction, coreset selection, kNN scoring."""
    from feclip.methods.patchcore.coreset import greedy_coreset
    from feclip.methods.patchcore.method import PatchCoreMethod
    from feclip.methods.patchcore.model import anomaly_map, score_patches

    device, policy = ctx["device"], ctx["policy"]
    settings = {
        k: v
        for k, v in OmegaConf.to_container(OmegaConf.load(CONF / "method" / "patchcore.yaml")).items()
        if k != "name"
    }
    settings["seed"] = 0
    torch.manual_seed(0)
    model = PatchCoreMethod._build(settings).to(device)
    h, w = settings["input_size"]
    train = torch.rand(args.patchcore_train, 3, h, w, device=device)
    test = torch.rand(args.batch, 3, h, w, device=device)
    with torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        with policy():
            patches = torch.cat([model.patch_features(train[i : i + 16]) for i in range(0, len(train), 16)])
        sync(device)
        extract = time.perf_counter() - start
        bank_all = patches.flatten(0, 2).float()
        start = time.perf_counter()
        keep = greedy_coreset(
            bank_all, settings["coreset_ratio"], projection_dim=settings["projection_dim"], seed=0
        )
        sync(device)
        coreset = time.perf_counter() - start
        model.memory_bank = bank_all[keep].contiguous()
        with policy():
            query = model.patch_features(test).float()

        def knn():
            return score_patches(
                query, model.memory_bank, num_neighbors=model.num_neighbors, chunk_size=model.chunk_size
            )

        def full():
            with policy():
                return model(test)

        times = interleaved({"knn": knn, "full": full}, device, args.repeats)
        _, patch_scores = knn()
        times |= interleaved(
            {"map": lambda: anomaly_map(patch_scores, (h, w), sigma=model.smoothing_sigma)},
            device,
            args.repeats,
        )
    n = len(test)
    weights = (
        "random init" if settings["pretrained"] in (None, False) else f"pretrained {settings['pretrained']}"
    )
    rows = [
        [
            "bank before coreset",
            f"{bank_all.shape[0]} patches x {bank_all.shape[1]} ({args.patchcore_train} images)",
        ],
        [
            "bank after coreset",
            f"{model.memory_bank.shape[0]} (ratio {settings['coreset_ratio']}, "
            f"projection {settings['projection_dim']})",
        ],
        ["feature extraction (train)", f"{extract:.3f} s ({ms(extract / len(train))} / image)"],
        ["greedy coreset selection", f"{coreset:.3f} s"],
        ["kNN scoring (score_patches)", f"{ms(times['knn'] / n)} / image (batch {n})"],
        ["anomaly map (upsample + blur)", f"{ms(times['map'] / n)} / image"],
        ["full forward (features + kNN + map)", f"{ms(times['full'] / n)} / image"],
    ]
    table(
        f"PatchCore (method/patchcore.yaml: backbone {settings['backbone']}, {weights}, input {h}x{w}, "
        f"{ctx['device'].type}, {args.precision})",
        ["quantity", "value"],
        rows,
    )
    return {
        "bank_before": bank_all.shape[0],
        "bank_after": model.memory_bank.shape[0],
        "extract_s": extract,
        "coreset_s": coreset,
        "knn_s_per_image": times["knn"] / n,
        "map_s_per_image": times["map"] / n,
        "full_s_per_image": times["full"] / n,
    }


# ------------------------------------------------------------------------------------------------- conv
def _conv_fns(conv, grid, tiles: dict[str, int]) -> dict:
    """name/kind -> a call of `conv` on the channels-last `grid`: direct, or Winograd with the tile of the
    kind; kind fwd = inference (filters transformed once, as `same_conv` caches them), fwd+bwd = training."""

    def direct(backward: bool):
        if backward:
            conv(grid.permute(0, 3, 1, 2)).sum().backward()
            return
        with torch.inference_mode():
            conv(grid.permute(0, 3, 1, 2))

    def winograd(backward: bool, tile: int, filters: torch.Tensor):
        if backward:
            winograd_conv3x3(grid, conv.weight, conv.bias, tile=tile).sum().backward()
            return
        with torch.inference_mode():
            winograd_conv3x3(grid, conv.weight, conv.bias, tile=tile, filters=filters)

    fns = {f"direct/{kind}": functools.partial(direct, kind == "fwd+bwd") for kind in tiles}
    for kind, tile in tiles.items():
        with torch.no_grad():
            filters = winograd_filters(conv.weight, tile)
        fns[f"winograd/{kind}"] = functools.partial(winograd, kind == "fwd+bwd", tile, filters)
    return fns


def bench_conv(args, ctx) -> dict:
    """The adapters' 3x3 'same' convolution at the backbone's grid and batch: nn.Conv2d vs Winograd
    F(m x m, 3 x 3) with the tiles `same_conv` takes (`tile_size` of the batch and grid, at inference and in
    training) for widths 64 ... 1024 (where MIN_CHANNELS comes from), then every tile at the widths that
    use it (where `FILTER_COST` comes from)."""
    device, (gh, gw) = ctx["device"], ctx["grid"]
    tiles = {
        "fwd": tile_size(gh, gw, batch=args.batch),
        "fwd+bwd": tile_size(gh, gw, batch=args.batch, training=True),
    }
    rows, result = [], {"tiles": tiles, "by_width": {}, "by_tile": {}}
    for width in (64, 128, 256, 384, 512, 768, 1024):
        conv = torch.nn.Conv2d(width, width, 3, padding="same").to(device)
        grid = torch.randn(args.batch, gh, gw, width, device=device, requires_grad=True)
        times = interleaved(_conv_fns(conv, grid, tiles), device, args.repeats)
        result["by_width"][width] = times
        speedups = [f"{times[f'direct/{k}'] / times[f'winograd/{k}']:.2f}x" for k in tiles]
        cells = [ms(times[f"{name}/{k}"]) for k in tiles for name in ("direct", "winograd")]
        rows.append([width, *cells, *speedups, "yes" if width >= MIN_CHANNELS else "no"])
    table(
        f"3x3 'same' convolution, batch {args.batch}, grid {gh}x{gw}, {device.type}: direct vs Winograd "
        f"F(m x m, 3x3), m = {tiles['fwd']} at inference and {tiles['fwd+bwd']} in training (the adapters"
        f" use it on the CPU from MIN_CHANNELS = {MIN_CHANNELS})",
        ["width", "direct fwd", "Winograd fwd", "direct fwd+bwd", "Winograd fwd+bwd"]
        + ["fwd speed-up", "fwd+bwd speed-up", "used"],
        rows,
    )
    rows = []
    for width in (w for w in (512, 768, 1024) if w >= MIN_CHANNELS):
        conv = torch.nn.Conv2d(width, width, 3, padding="same").to(device)
        grid = torch.randn(args.batch, gh, gw, width, device=device, requires_grad=True)
        for tile in range(2, MAX_TILE + 1):
            fns = _conv_fns(conv, grid, {"fwd": tile, "fwd+bwd": tile})
            times = interleaved(
                {k: v for k, v in fns.items() if k.startswith("winograd")}, device, args.repeats
            )
            result["by_tile"][f"{width}/{tile}"] = times
            chosen = [k for k, t in tiles.items() if t == tile]
            rows.append(
                [width, tile, ms(times["winograd/fwd"]), ms(times["winograd/fwd+bwd"]), ", ".join(chosen)]
            )
    table(
        f"Winograd F(m x m, 3x3) by tile, batch {args.batch}, grid {gh}x{gw}, {device.type}",
        ["width", "tile m", "fwd (inference)", "fwd+bwd (training)", "taken for"],
        rows,
    )
    return result


# ------------------------------------------------------------------------------------------------ cache
class PeakRss:
    """Peak resident set size of this process while the block runs, sampled every `interval_s` by a thread."""

    def __init__(self, interval_s: float = 0.01) -> None:
        import psutil

        self.process, self.interval_s = psutil.Process(), interval_s
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def bench_cache(backbone, args, ctx) -> dict:
    """Fill a fresh disk cache with the pre-tap tokens of --cache N raw HDMAP-sized maps (31 x 95, resized to
    the model input as a job does) through `frozen_features`; its size and the RAM it took."""
    from types import SimpleNamespace

    from feclip.cache import frozen_features
    from feclip.data.sets import labelled_set
    from feclip.data.transforms import HDMAPInput
    from feclip.runtime import Runtime

    device, size, n = ctx["device"], ctx["size"], args.cache
    model = feclip_model(backbone, "dct", args.taps, ctx["text"]).to(device).eval()
    raw = torch.rand(n, 31, 95, generator=torch.Generator().manual_seed(0))
    images = labelled_set(raw, torch.zeros(n), HDMAPInput(size))
    method = SimpleNamespace(
        name="feclip",
        caches_frozen=True,
        frozen_feeds="backbone",
        frozen_key=lambda: "bench",
        frozen=model.pre_tap_tokens,
    )
    folder = Path(tempfile.mkdtemp(prefix="feclip_bench_cache_"))
    rt = Runtime(
        device,
        args.precision,
        batch_size=args.batch,
        cache="disk",
        cache_dir=folder,
        cache_dtype=args.cache_dtype,
    )
    with torch.inference_mode(), PeakRss() as one_batch:  # the forward's own transient memory, alone
        method.frozen(images.inputs(torch.arange(min(n, args.batch)), device))
    start = time.perf_counter()
    with PeakRss() as rss:
        frozen = frozen_features(method, images, rt)
    seconds = time.perf_counter() - start
    stored = sum(f.stat().st_size for f in folder.glob("*.npy"))
    per_image = stored / n
    activations = one_batch.peak - one_batch.start
    grown = rss.peak - rss.start
    cache_ram = grown - activations  # what the cache itself holds: on CUDA the activations are GPU memory
    result = {
        "images": n,
        "first_tap": model.taps[0],
        "tokens_shape": list(frozen.features.shape[1:]),
        "dtype": str(frozen.features.dtype).removeprefix("torch."),
        "bytes": stored,
        "bytes_per_image": per_image,
        "gb_per_1000_images": per_image * 1000 / 1e9,
        "peak_rss_increase_bytes": grown,
        "one_batch_forward_rss_bytes": activations,
        "cache_ram_bytes": cache_ram,
        "cache_ram_over_size": cache_ram / stored,
        "fill_s": seconds,
        "folder": str(folder),
    }
    table(
        f"Token cache ({ctx['label']}; {n} images; tokens after block {model.taps[0]}, "
        f"{tuple(frozen.features.shape[1:])} per image, stored {result['dtype']})",
        [
            "entry size",
            "per image",
            "per 1000 images",
            "peak RSS increase while filling (A)",
            "one batch's forward alone (B)",
            "A - B (the cache's RAM)",
            "(A - B) / size",
            "fill",
        ],
        [
            [
                f"{stored / 1e9:.3f} GB",
                f"{per_image / 1e6:.3f} MB",
                f"{result['gb_per_1000_images']:.3f} GB",
                f"{grown / 1e9:.3f} GB",
                f"{activations / 1e9:.3f} GB",
                f"{cache_ram / 1e9:.3f} GB",
                f"{cache_ram / stored:.2f}",
                f"{seconds:.1f} s",
            ]
        ],
    )
    del frozen
    shutil.rmtree(folder, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------ sweep
class PhaseTimer:
    """Wraps functions so that each call's time goes to a phase; self time (nested phases subtracted)."""

    def __init__(self) -> None:
        self.self_time: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [phase, start, nested seconds]
        self._undo: list = []

    def wrap(self, owner, attr: str, phase: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*a, **k):
            self._stack.append([phase, time.perf_counter(), 0.0])
            try:
                return original(*a, **k)
            finally:
                name, start, nested = self._stack.pop()
                elapsed = time.perf_counter() - start
                self.self_time[name] += elapsed - nested
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][2] += elapsed

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def sweep_overrides(args, stamp: str) -> list[str]:
    return [
        f"tracking.experiment=bench_{stamp}",
        f"device={args.device}",
        f"precision={args.precision}",
        *args.sweep_override,
    ]


def bench_sweep_phases(args, stamp: str) -> dict:
    """One job of the default sweep in-process (domain C, freq dct, a fresh token cache), phases timed."""
    from hydra import compose, initialize_config_dir

    import feclip.jobs.train_eval as te
    from feclip.jobs.run import main
    from feclip.methods.feclip import train as feclip_train
    from feclip.tracking import JobInfo
    from feclip.tracking.tracker import Tracker

    work = Path(tempfile.mkdtemp(prefix="feclip_bench_"))
    overrides = [
        "experiment=default_sweep",
        "domain=C",
        "freq=dct",
        f"cache_dir={work / 'cache'}",
        *sweep_overrides(args, stamp),
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    timer = PhaseTimer()
    timer.wrap(te, "hdmap_root", "data")
    timer.wrap(te, "load_domain", "data")
    timer.wrap(te, "split_validation", "data")
    timer.wrap(te, "build_method", "model build")
    timer.wrap(te, "frozen_features", "token caching")
    timer.wrap(te, "fit_method", "training")  # self time: the source's images and the epochs
    timer.wrap(feclip_train, "train", "training")
    timer.wrap(te.aware, "build", "evaluation")
    timer.wrap(te, "predict", "evaluation")
    timer.wrap(te, "evaluate_hdmap", "evaluation")
    timer.wrap(te, "save_model", "evaluation")  # calibration + checkpoint
    timer.wrap(te, "write_figures", "figures")
    for name in (
        "__enter__",
        "__exit__",
        "log_params",
        "log_metrics",
        "set_tags",
        "log_artifacts",
        "log_artifact",
    ):
        timer.wrap(Tracker, name, "tracking")
    start = time.perf_counter()
    try:
        main(cfg, work / "job", JobInfo(f"bench_{stamp}", "bench"))
    finally:
        total = time.perf_counter() - start
        timer.restore()
    phases = ["data", "model build", "token caching", "training", "evaluation", "figures", "tracking"]
    other = total - sum(timer.self_time.values())
    rows = [
        [p, f"{timer.self_time[p]:.2f} s", f"{100 * timer.self_time[p] / total:.1f} %", timer.calls[p]]
        for p in phases
    ]
    rows.append(
        ["other (config, files, scores.csv, ...)", f"{other:.2f} s", f"{100 * other / total:.1f} %", "-"]
    )
    rows.append(["**one job total**", f"**{total:.2f} s**", "100 %", "-"])
    table(
        f"One default_sweep job in-process (domain C, dct, {cfg.backbone.name}, fresh token cache in {work}; "
        f"overrides {' '.join(overrides[1:])})",
        ["phase (self time)", "wall", "share", "calls"],
        rows,
    )
    print(
        "training = fit_method + train self time (source images, epochs incl. per-epoch MLflow logging is "
        "under tracking); evaluation = reference banks, predict, metrics, calibration + checkpoint"
    )
    return {
        "total_s": total,
        "phases_s": {p: timer.self_time[p] for p in phases},
        "other_s": other,
        "output": str(work),
    }


def bench_full_sweep(args, stamp: str) -> dict:
    command = [sys.executable, "run.py", "-m", "experiment=default_sweep", *sweep_overrides(args, stamp)]
    print(f"\nbench: running {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT)
    wall = time.perf_counter() - start
    table(
        "Full sweep (subprocess)",
        ["command", "exit", "wall"],
        [[" ".join(command[1:]), proc.returncode, f"{wall:.1f} s"]],
    )
    if proc.returncode != 0:
        raise BenchError(f"the sweep exited {proc.returncode}; see its output above")
    return {"command": command[1:], "wall_s": wall, "returncode": proc.returncode}


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbone", default="tiny", help="feclip/conf/backbone name or open_clip model (default tiny)"
    )
    parser.add_argument(
        "--weights",
        default="random",
        choices=["random", "auto", "pretrained"],
        help="random init (default), the conf's weights if they load (auto), or required",
    )
    parser.add_argument(
        "--image-size", default=None, help="N or HxW (default: the backbone conf's input size)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=[p for p in PRECISIONS if p != "auto"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5, help="median of N interleaved measurements")
    parser.add_argument(
        "--taps", default="groups", help="inference taps: preset or comma list (default groups)"
    )
    parser.add_argument("--train-taps", default="spread3", help="taps of the training step (default spread3)")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: inference,lfs,taps,train")
    parser.add_argument(
        "--patchcore", action="store_true", help="also time PatchCore (feclip/conf/method/patchcore.yaml)"
    )
    parser.add_argument("--patchcore-train", type=int, default=32, help="train images for the PatchCore bank")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also: one sweep job in-process with its phase split, then the full sweep's wall time",
    )
    parser.add_argument(
        "--sweep-override",
        action="append",
        default=[],
        help="extra Hydra override for --sweep (repeatable), e.g. aux.max_normals=20",
    )
    parser.add_argument(
        "--no-full-sweep", action="store_true", help="with --sweep: only the one-job phase split"
    )
    parser.add_argument(
        "--cache", type=int, default=0, help="also fill a disk token cache with N images and measure it"
    )
    parser.add_argument(
        "--conv", action="store_true", help="also time the 3x3 convolution: direct vs Winograd, by width"
    )
    parser.add_argument(
        "--cache-dtype", default="bf16", choices=["auto", "fp32", "bf16"], help="storage dtype for --cache"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.patchcore_train < 1 or args.cache < 0:
        raise BenchError("--batch, --repeats and --patchcore-train must be >= 1, --cache >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but torch sees no CUDA device")
    if args.precision == "bf16" and args.device == "cpu":
        print("bench: note: bf16 on CPU is slow on most CPUs; the paper setting is bf16 on CUDA")
    args.taps, args.train_taps = parse_taps(args.taps), parse_taps(args.train_taps)
    args.skip = {s for s in args.skip.split(",") if s}
    unknown = args.skip - {"inference", "lfs", "taps", "train"}
    if unknown:
        raise BenchError(f"--skip {sorted(unknown)}: expected inference, lfs, taps, train")
    return args


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    spec = resolve_backbone(args.backbone)
    size = parse_size(args.image_size) if args.image_size else spec["input_size"]
    backbone, weights = build_backbone(spec, args.weights)
    backbone = backbone.to(device)

    def policy():  # the run's precision policy: only the frozen backbone is reduced (feclip/precision.py)
        return precision_policy(args.precision, device.type)

    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    label = (
        f"{spec['name']} {weights}, {size[0]}x{size[1]}, batch {args.batch}, {args.precision}, {device.type}"
    )
    ctx = {"device": device, "policy": policy, "label": label, "size": size}
    ctx["grid"] = backbone.grid_size(size)
    print(f"# FE-CLIP bench: {label}")
    print(f"machine: {machine}; torch {torch.__version__}; repeats {args.repeats} (median, interleaved)")
    if weights.startswith("random"):
        print("weights: RANDOM INIT (speed only; detection numbers would be meaningless)")
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    results: dict = {
        "backbone": spec["name"],
        "conf": spec["conf"],
        "weights": weights,
        "image_size": size,
        "batch": args.batch,
        "precision": args.precision,
        "device": args.device,
        "machine": machine,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "time": stamp,
    }
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, *size, device=device)
    text = torch.nn.functional.normalize(torch.randn(2, backbone.embed_dim, device=device), dim=-1)
    ctx["text"] = text
    if "inference" not in args.skip:
        results["inference"] = bench_inference(backbone, images, text, args, ctx)
    if "lfs" not in args.skip:
        results["lfs_paths"] = bench_lfs_paths(backbone, images, args, ctx)
    if "taps" not in args.skip:
        results["taps"] = bench_taps(backbone, images, text, args, ctx)
    if "train" not in args.skip:
        results["train"] = bench_train(backbone, images, text, args, ctx)
    if device.type == "cpu":
        print(f"\npeak memory: {peak_mib(device):.0f} MiB ({peak_label(device)})")
    else:
        results["cuda_peak_mib_total"] = torch.cuda.max_memory_allocated() / 2**20
    if args.conv:
        results["conv"] = bench_conv(args, ctx)
    if args.cache:
        results["cache"] = bench_cache(backbone, args, ctx)
    if args.patchcore:
        results["patchcore"] = bench_patchcore(args, ctx)
    if args.sweep:
        del backbone
        results["sweep_job"] = bench_sweep_phases(args, stamp)
        if not args.no_full_sweep:
            results["sweep"] = bench_full_sweep(args, stamp)
    return results


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        results = run(args)
    except (BenchError, FeclipError) as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as error:
        print(
            f"bench: error: CUDA out of memory ({str(error).splitlines()[0]}); lower --batch", file=sys.stderr
        )
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nbench: results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
