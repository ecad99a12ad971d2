"""FE-CLIP training loss: per-tap BCE on the class-token scores + per-tap Focal + Dice on the upsampled maps.

  cls  = mean over taps of BCE(tap_scores[t], label), mean over the batch;
  mask = mean over taps of Focal(tap_maps[t], mask) + Dice(tap_maps[t], mask), mean over samples with a mask;
  total = weight_cls * cls + weight_mask * mask.
Focal (Lin et al.): -alpha (1-p)^gamma y log p - (1-alpha) p^gamma (1-y) log(1-p), pixel mean per image;
Dice per image: 1 - (2 sum(p y) + eps) / (sum p + sum y + eps), normal (all-zero) masks included. Samples
without a mask (`has_mask` False) only enter the class term; with none in the batch the mask term is 0.
Logit-margin maps are turned into probabilities with a sigmoid (the 2-class softmax of the margin).
Everything is computed in float32 with autocast off.
"""

from __future__ import annotations

import torch

from feclip.errors import FeclipError
from feclip.model.feclip import FEClipOutput

PROB_FLOOR = 1e-12  # log(p) uses max(p, 1e-12): finite loss and gradients when a probability rounds to 0 or 1


class LossError(FeclipError):
    """Loss inputs of inconsistent shapes."""


def _log(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(PROB_FLOOR).log_()


def bce(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Elementwise binary cross-entropy of probabilities (any shape)."""
    return -(targets * _log(probs) + (1 - targets) * _log(1 - probs))


class _FocalLoss(torch.autograd.Function):
    """The pixel-mean focal loss with its derivative written out: a few elementwise passes forward and back
    instead of autograd's ~30 over every pixel of every tap map (the bulk of a training step on a small ViT).
    With q = 1 - p, lp = log(max(p, floor)), lq = log(max(q, floor)):
      loss  = -alpha q^g y lp - (1 - alpha) p^g (1 - y) lq
      dloss = -alpha y (q^g lp' - g q^(g-1) lp) - (1 - alpha) (1 - y) (g p^(g-1) lq - p^g lq')
    where lp' = 1/p for p >= floor, else 0 (the gradient of the clamp), likewise lq'. Tested against the
    autograd of the plain formula (tests/model/test_losses.py)."""

    @staticmethod
    def forward(ctx, probs, targets, gamma: float, alpha: float):
        q = 1 - probs
        log_p, log_q = _log(probs), _log(q)
        ctx.save_for_backward(probs, targets, log_p, log_q)
        ctx.gamma, ctx.alpha = gamma, alpha
        # in place from here on: every full-size temporary costs page faults on CPU
        positive = q.pow(gamma).mul_(log_p).mul_(targets).mul_(alpha)
        negative = probs.pow(gamma).mul_(log_q).mul_(1 - targets).mul_(1 - alpha)
        return positive.add_(negative).flatten(1).mean(1).neg_()

    @staticmethod
    def backward(ctx, grad_out):
        probs, targets, log_p, log_q = ctx.saved_tensors
        gamma, alpha = ctx.gamma, ctx.alpha
        q = 1 - probs
        # alpha y (g q^(g-1) lp - q^g lp') + (1 - alpha) (1 - y) (p^g lq' - g p^(g-1) lq), in place
        positive = q.pow(gamma - 1).mul_((log_p * gamma).sub_(_clamped_reciprocal(probs).mul_(q)))
        positive.mul_(targets).mul_(alpha)
        negative = probs.pow(gamma - 1).mul_(_clamped_reciprocal(q).mul_(probs).sub_(log_q * gamma))
        negative.mul_(1 - targets).mul_(1 - alpha)
        scale = grad_out / probs[0].numel()
        return positive.add_(negative).mul_(scale.view(-1, *[1] * (probs.ndim - 1))), None, None, None


def _clamped_reciprocal(x: torch.Tensor) -> torch.Tensor:
    """1/x where x >= PROB_FLOOR, else 0: the derivative of log(max(x, floor)) (a new tensor)."""
    return x.reciprocal().masked_fill_(x < PROB_FLOOR, 0.0)


def focal_loss(
    probs: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25
) -> torch.Tensor:
    """probs, targets: (B, h, w) -> (B,) pixel-mean binary focal loss (gradients w.r.t. probs only)."""
    if gamma < 1:
        raise LossError(f"focal gamma={gamma}: expected >= 1 (the derivative of (1 - p)^gamma is unbounded)")
    return _FocalLoss.apply(probs, targets.to(probs.dtype), float(gamma), float(alpha))


def dice_loss(probs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """probs, targets: (B, h, w) -> (B,) per-image soft Dice loss."""
    p, y = probs.flatten(1), targets.flatten(1)
    return 1 - (2 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)


def feclip_loss(
    out: FEClipOutput,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
    has_mask: torch.Tensor | None = None,
    weight_cls: float = 1.0,
    weight_mask: float = 1.0,
    gamma: float = 2.0,
    alpha: float = 0.25,
    eps: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """labels: (B,) 0/1; masks: (B, h, w) 0/1 at the map size or None; has_mask: (B,) bool (None = all True
    when masks are given) -> {"total", "cls", "mask"} scalar tensors."""
    n_taps, batch = out.tap_scores.shape
    if labels.shape != (batch,):
        raise LossError(f"labels of shape {tuple(labels.shape)}, expected ({batch},)")
    with torch.autocast(out.tap_scores.device.type, enabled=False):
        targets = labels.to(out.tap_scores.device, torch.float32)
        cls = bce(out.tap_scores.float(), targets.expand(n_taps, batch)).mean()
        mask = _mask_term(out, masks, has_mask, gamma, alpha, eps)
    return {"total": weight_cls * cls + weight_mask * mask, "cls": cls, "mask": mask}


def _mask_term(out: FEClipOutput, masks, has_mask, gamma: float, alpha: float, eps: float) -> torch.Tensor:
    maps = out.tap_maps.float()
    if masks is None:
        return maps.new_zeros(())
    if masks.shape != maps.shape[1:]:
        raise LossError(
            f"masks of shape {tuple(masks.shape)}, expected {tuple(maps.shape[1:])} (B, h, w) of the maps"
        )
    rows = torch.ones(maps.shape[1], dtype=torch.bool) if has_mask is None else has_mask.bool().cpu()
    if rows.shape != (maps.shape[1],):
        raise LossError(f"has_mask of shape {tuple(rows.shape)}, expected ({maps.shape[1]},)")
    if not rows.any():
        return maps.new_zeros(())
    index = rows.nonzero()[:, 0].to(maps.device)
    probs = maps[:, index]
    if out.map_kind == "logit_margin":
        probs = torch.sigmoid(probs)
    targets = masks.to(maps.device, torch.float32)[index].expand_as(probs)
    flat_p, flat_y = probs.flatten(0, 1), targets.flatten(0, 1)
    return (focal_loss(flat_p, flat_y, gamma, alpha) + dice_loss(flat_p, flat_y, eps)).mean()
