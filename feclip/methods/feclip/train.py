"""Adapter training: a plain PyTorch loop (Adam, per-epoch loss logging, seeded shuffling).

Only the adapters and the shared patch projection `fc` are trainable; the backbone stays frozen. With cached
pre-tap tokens (`tokens`), each step runs only the blocks from the first tap on, which gives the same result
as the full forward (tested bit-identical in fp32).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from feclip.cache import Frozen
from feclip.data.sets import ImageSet
from feclip.errors import FeclipError
from feclip.model.feclip import FEClip, FEClipOutput
from feclip.model.losses import feclip_loss
from feclip.progress import progress
from feclip.runtime import Runtime


class TrainingDiverged(FeclipError):
    """A training loss became NaN or infinite (a learning rate too high for the data, usually)."""


def forward_frozen(model: FEClip, frozen: Frozen, *, per_tap_maps: bool = True) -> FEClipOutput:
    """FE-CLIP from cached pre-tap tokens; the grid comes with them (`Frozen.input_size`)."""
    size = frozen.input_size
    grid = model.backbone.grid_size(size)
    return model.forward_from_tokens(
        frozen.features.float(), size, token_grid=grid, per_tap_maps=per_tap_maps
    )


@dataclass
class TrainConfig:
    epochs: int = 9
    batch_size: int = 16
    lr: float = 5e-4
    fc_lr_mult: float = 0.01
    weight_cls: float = 1.0
    weight_mask: float = 1.0


def train(
    model: FEClip,
    data: ImageSet,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    seed: int,
    tokens: torch.Tensor | None = None,
    log_epoch=lambda epoch, losses: None,
) -> dict[str, list[float]]:
    """Train `model`'s adapters and fc on `data`; returns the per-epoch mean losses by name.

    tokens: pre-tap tokens of `data` (`feclip.cache.Frozen`), or None to run the full forward.
    log_epoch(epoch, {name: mean loss}) is called after every epoch (MLflow logging).
    """
    optimizer = torch.optim.Adam(model.param_groups(cfg.lr, cfg.fc_lr_mult))
    order = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = defaultdict(list)
    device = rt.device
    image_size = tuple(data.inputs(torch.arange(1), device).shape[-2:])
    model.train()
    for epoch in range(cfg.epochs):
        sums: dict[str, float] = defaultdict(float)
        batches = torch.randperm(len(data), generator=order).split(cfg.batch_size)
        bar = progress(batches, f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", dynamic_ncols=True)
        seen = 0
        for step, index in enumerate(bar, start=1):
            batch = data.batch(index, device, image_size, inputs=tokens is None)
            with rt.policy():
                out = (
                    model(batch.inputs) if tokens is None else forward_frozen(model, tokens[index].to(device))
                )
            losses = feclip_loss(
                out,
                batch.labels,
                batch.masks,
                batch.has_mask,
                weight_cls=cfg.weight_cls,
                weight_mask=cfg.weight_mask,
            )
            values = {name: float(value.detach()) for name, value in losses.items()}
            if not math.isfinite(values["total"]):
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch + 1}/{cfg.epochs}, batch {step}/{len(batches)}: "
                    f"losses {values}; expected finite losses: lower train.lr (now {cfg.lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            for name, value in values.items():
                sums[name] += value * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{sums['total'] / seen:.4f}")
        means = {name: total / len(data) for name, total in sums.items()}
        for name, value in means.items():
            history[name].append(value)
        log_epoch(epoch, means)
    model.eval()
    return dict(history)
