"""Speed of FE-CLIP against its physical limit (issue: performance). Not a test: it prints measurements.

    python scripts/bench.py --model ViT-B-16 --size 224 --batch 8            # CPU here
    python scripts/bench.py --model ViT-L-14-336 --size 336 --batch 32 --precision bf16 --device cuda
    python scripts/bench.py ... --sweep                                     # + the default sweep's wall time

Measures, side by side with medians over repeats: images/s of open_clip's `encode_image` and of FE-CLIP
inference at the same backbone / input / batch, and their ratio next to the FLOP-theoretical one; a training
step with and without the frozen pre-tap token cache; peak memory; optionally the wall time of
`run.py -m experiment=default_sweep` on the embedded default. Backbones are random-init (speed only).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feclip.model.backbone import ClipBackbone  # noqa: E402
from feclip.model.feclip import FEClip, FEClipConfig  # noqa: E402
from feclip.model.losses import feclip_loss  # noqa: E402


def theoretical_ratio(blocks: int, taps: int) -> float:
    """(blocks * 12 D^2 + taps * (FFE D^2 + LFS conv 9 D^2)) / (blocks * 12 D^2) MACs per token (the issue's
    count: attention's N^2 D term, the transforms and the heads are left out)."""
    return (12 * blocks + 10 * taps) / (12 * blocks)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inference(backbone, model, images, autocast, device, repeats) -> dict[str, float]:
    with torch.inference_mode(), autocast:
        plain = median_time(lambda: backbone.clip.encode_image(images), device, repeats)
        fe = median_time(lambda: model(images), device, repeats)
    n = len(images)
    return {
        "plain_img_s": n / plain,
        "feclip_img_s": n / fe,
        "ratio": fe / plain,
        "feclip_ms_per_image": 1e3 * fe / n,
    }


def train_step(model, images, autocast, device, repeats) -> dict[str, float]:
    """Step time without and with cached pre-tap tokens (same batch, same loss)."""
    optimizer = torch.optim.Adam(model.param_groups(5e-4, 0.01))
    labels = (torch.arange(len(images)) % 2).float().to(device)
    masks = torch.zeros(len(images), *images.shape[-2:], device=device)
    has_mask = torch.ones(len(images), dtype=torch.bool, device=device)
    with torch.inference_mode(), autocast:
        tokens = model.pre_tap_tokens(images)
    tokens = tokens.clone()

    def step(cached: bool) -> None:
        with autocast:
            out = model.forward_from_tokens(tokens, images.shape[-2:]) if cached else model(images)
        loss = feclip_loss(out, labels, masks, has_mask)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    full = median_time(lambda: step(False), device, repeats)
    cached = median_time(lambda: step(True), device, repeats)
    return {"step_s_uncached": full, "step_s_cached": cached, "cache_speedup": full / cached}


def sweep_wall_time() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "run.py", "-m", "experiment=default_sweep"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--taps", default="groups", help="tap preset or comma list for inference")
    parser.add_argument("--train-taps", default="spread3", help="taps of the cache comparison")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--sweep", action="store_true", help="also time run.py -m experiment=default_sweep")
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision == "bf16"
        else contextlib.nullcontext()
    )
    torch.manual_seed(0)
    backbone = ClipBackbone(args.model, None)
    text = torch.nn.functional.normalize(torch.randn(2, backbone.embed_dim), dim=-1)
    parse = lambda taps: taps if not taps[0].isdigit() else [int(t) for t in taps.split(",")]  # noqa: E731
    model = FEClip(backbone, FEClipConfig(taps=parse(args.taps)), text).to(device).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    result = inference(backbone, model, images, autocast, device, args.repeats)
    trainer = FEClip(backbone, FEClipConfig(taps=parse(args.train_taps)), text).to(device)
    result.update(train_step(trainer, images, autocast, device, args.repeats))
    result["peak_memory_mb"] = peak_memory_mb(device)
    theory = theoretical_ratio(backbone.num_blocks, len(model.taps))
    machine = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    )
    print(f"| machine | {machine} (torch {torch.__version__}) |")
    print(
        f"| backbone | {args.model} random init, input {args.size}x{args.size}, batch {args.batch}, "
        f"{args.precision} |"
    )
    print(f"| inference taps / cache-test taps | {model.taps} / {trainer.taps} |")
    print(f"| plain encode_image | {result['plain_img_s']:.1f} images/s |")
    print(
        f"| FE-CLIP inference | {result['feclip_img_s']:.1f} images/s "
        f"({result['feclip_ms_per_image']:.1f} ms/image) |"
    )
    print(f"| FE-CLIP / plain time ratio | {result['ratio']:.3f} (theoretical {theory:.3f}) |")
    print(
        f"| train step uncached / cached | {result['step_s_uncached']:.3f} s / "
        f"{result['step_s_cached']:.3f} s "
        f"(speed-up {result['cache_speedup']:.2f}x) |"
    )
    print(
        f"| peak memory | {result['peak_memory_mb']:.0f} MiB "
        f"({'CUDA allocated' if device.type == 'cuda' else 'RSS'}) |"
    )
    if args.sweep:
        print(f"| default sweep (4 domains x dct,fft, embedded default) | {sweep_wall_time():.0f} s wall |")


if __name__ == "__main__":
    main()
