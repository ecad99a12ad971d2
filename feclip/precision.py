"""The precision policy: which operations may compute in reduced precision, stated once, applied here.

A run's `precision` (`fp32` | `bf16` | `tf32`; `auto` = bf16 on CUDA, fp32 on the CPU) is a *permission*,
not a blanket autocast. The harness opens `policy(precision, device_type)` around a method's work
(`Runtime.policy`); inside it only the operations registered in `OPERATIONS` as reducible compute in reduced
precision, each at the one place that says so with `reduced(<operation>)`. Everything else runs in float32
(`full()` / `@float32` turn off any autocast a caller opened), so a bf16 run and an fp32 run differ only by
the rounding of the frozen features:

- reducible: `backbone`, the frozen image towers (open_clip ViT stem and blocks:
  `ClipBackbone.embed/run_blocks`; timm blocks: `TimmFeatures.block_maps`);
- never reduced: `adapters` (FFE / LFS / conv, trainable), `head` (projections, the trainable fc, cosine
  similarity to text features, softmax scores), `distances` (kNN and distances to memory and reference
  banks, gates), `maps` (upsampling, blur, map statistics), `losses`, `metrics` (numpy, float64).

bf16 runs `reduced` code under `torch.autocast(device, bfloat16)`; tf32 runs it in float32 with
TensorFloat-32 matrix products and convolutions allowed (CUDA only; the flags are restored on exit).
Outside `reduced`, TF32 is off: `configure_tf32(False)` is applied when a runtime is built, since cuDNN
allows TF32 by default.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from feclip.registry import Registry


@dataclass(frozen=True)
class Operation:
    reducible: bool
    what: str


OPERATIONS: Registry[Operation] = Registry(
    "operation of the precision policy",
    "precision policy",
    {
        "backbone": Operation(True, "frozen image tower blocks (open_clip ViT, timm)"),
        "adapters": Operation(False, "FFE / LFS / conv adapters"),
        "head": Operation(False, "projections, trainable fc, text similarity, softmax scores"),
        "distances": Operation(False, "kNN and distances to memory / reference banks"),
        "maps": Operation(False, "upsampling, blur, map statistics"),
        "losses": Operation(False, "training losses"),
        "metrics": Operation(False, "metrics, thresholds, calibration"),
    },
)
PRECISIONS = Registry("precision", "precision", ("auto", "fp32", "bf16", "tf32"))
REDUCED_DTYPES = {"bf16": torch.bfloat16}

# (precision, device type) of the innermost open policy; fp32 outside any
_ACTIVE: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "feclip_precision", default=("fp32", "cpu")
)


def resolve(precision: str, device_type: str) -> str:
    """`auto` -> bf16 on CUDA, fp32 elsewhere; tf32 on a CPU is fp32 (TF32 is a CUDA mode)."""
    PRECISIONS.get_entry(precision)
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return "fp32" if precision == "tf32" and device_type != "cuda" else precision


def active() -> str:
    """The precision the innermost open policy grants to reducible operations ('fp32' outside any)."""
    return _ACTIVE.get()[0]


@contextlib.contextmanager
def policy(precision: str, device_type: str) -> Iterator[None]:
    """Grant `precision` to the reducible operations computed inside (no autocast by itself)."""
    token = _ACTIVE.set((precision, device_type))
    try:
        with full():
            yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def full() -> Iterator[None]:
    """Float32 inside, whatever autocast a caller opened (the non-reducible operations)."""
    with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        yield


def reduced(operation: str) -> contextlib.AbstractContextManager:
    """The open policy's reduced precision for `operation` (must be reducible), else float32."""
    if not OPERATIONS.get_entry(operation).reducible:
        raise ValueError(f"the precision policy keeps {operation!r} in float32; it cannot be reduced")
    precision, device_type = _ACTIVE.get()
    if precision in REDUCED_DTYPES:
        return torch.autocast(device_type, dtype=REDUCED_DTYPES[precision])
    if precision == "tf32":
        return tf32_allowed()
    return full()


@contextlib.contextmanager
def tf32_allowed() -> Iterator[None]:
    """TensorFloat-32 matmuls and convolutions inside; the previous flags restored on exit."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    configure_tf32(True)
    try:
        with full():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def configure_tf32(allowed: bool) -> None:
    """Set the global TF32 switches of CUDA matmuls and cuDNN convolutions (cuDNN's default is on)."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def float32(function):
    """Decorator: `function` is a non-reducible operation: it runs under `full()`, whatever the caller's
    autocast."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with full():
            return function(*args, **kwargs)

    return wrapper
