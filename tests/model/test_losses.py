"""FE-CLIP loss against a hand-computed case; the mask term's skipping rules."""

import math

import pytest
import torch

from feclip.model.feclip import FEClipOutput
from feclip.model.losses import PROB_FLOOR, LossError, bce, dice_loss, feclip_loss, focal_loss


def output(tap_scores, tap_maps, map_kind="prob"):
    tap_scores = torch.tensor(tap_scores, requires_grad=True)
    tap_maps = torch.tensor(tap_maps, requires_grad=True)
    return FEClipOutput(
        score=tap_scores.mean(0),
        map=tap_maps.mean(0),
        tap_scores=tap_scores,
        tap_maps=tap_maps,
        embedding=torch.zeros(2, 4),
        map_kind=map_kind,
    )


# 2 taps, 2 images of 1 x 2 pixels
SCORES = [[0.8, 0.3], [0.6, 0.1]]
MAPS = [[[[0.9, 0.2]], [[0.5, 0.5]]], [[[0.7, 0.4]], [[0.1, 0.3]]]]
LABELS = torch.tensor([1, 0])
MASKS = torch.tensor([[[1, 0]], [[0, 0]]], dtype=torch.uint8)


def hand_focal(p, y, gamma=2.0, alpha=0.25):
    if y:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def hand_pixel_terms(tap, image):
    pixels, targets = MAPS[tap][image][0], MASKS[image][0].tolist()
    focal = sum(hand_focal(p, y) for p, y in zip(pixels, targets, strict=True)) / 2
    inter, total = sum(p * y for p, y in zip(pixels, targets, strict=True)), sum(pixels) + sum(targets)
    dice = 1 - (2 * inter + 1e-6) / (total + 1e-6)
    return focal + dice


def test_hand_computed_case():
    cls = -(math.log(0.8) + math.log(1 - 0.3) + math.log(0.6) + math.log(1 - 0.1)) / 4
    mask = sum(hand_pixel_terms(t, i) for t in range(2) for i in range(2)) / 4
    losses = feclip_loss(
        output(SCORES, MAPS), LABELS, MASKS, torch.tensor([True, True]), weight_cls=1.0, weight_mask=2.0
    )
    assert losses["cls"].item() == pytest.approx(cls, rel=1e-5)
    assert losses["mask"].item() == pytest.approx(mask, rel=1e-5)
    assert losses["total"].item() == pytest.approx(cls + 2 * mask, rel=1e-5)


def test_dice_and_focal_by_hand():
    probs, targets = torch.tensor([[[0.9, 0.2]]]), torch.tensor([[[1.0, 0.0]]])
    assert dice_loss(probs, targets).item() == pytest.approx(1 - (1.8 + 1e-6) / (2.1 + 1e-6), rel=1e-6)
    expected = (0.25 * 0.01 * -math.log(0.9) + 0.75 * 0.04 * -math.log(0.8)) / 2
    assert focal_loss(probs, targets).item() == pytest.approx(expected, rel=1e-5)


def plain_focal(probs, targets, gamma, alpha):
    """The textbook formula, left to autograd: the reference of the hand-derived backward."""
    log_p, log_q = torch.log(probs.clamp_min(PROB_FLOOR)), torch.log((1 - probs).clamp_min(PROB_FLOOR))
    positive = -alpha * (1 - probs) ** gamma * targets * log_p
    negative = -(1 - alpha) * probs**gamma * (1 - targets) * log_q
    return (positive + negative).flatten(1).mean(1)


@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, 0.25), (1.0, 0.6), (3.5, 0.1)])
def test_focal_loss_and_its_gradient_equal_autograd_of_the_plain_formula(gamma, alpha):
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 5, 7, generator=generator, dtype=torch.float64)
    probs[0, 0, :4] = torch.tensor([0.0, 1.0, 1e-13, 1 - 1e-13], dtype=torch.float64)  # the clamp's region
    targets = (torch.rand(3, 5, 7, generator=generator) > 0.6).double()
    targets[2] = torch.rand(5, 7, generator=generator, dtype=torch.float64)  # soft targets too
    weights = torch.rand(3, generator=generator, dtype=torch.float64)
    results = []
    for fn in (focal_loss, plain_focal):
        leaf = probs.clone().requires_grad_()
        loss = fn(leaf, targets, gamma, alpha)
        (grad,) = torch.autograd.grad((loss * weights).sum(), leaf)
        results.append((loss, grad))
    (ours, our_grad), (reference, reference_grad) = results
    assert torch.allclose(ours, reference, rtol=1e-12, atol=0)
    assert torch.allclose(our_grad, reference_grad, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(our_grad).all()


def test_bce_gradient_is_the_analytic_one():
    probs = torch.tensor([0.1, 0.4, 0.8, 0.95], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(bce(probs, targets).sum(), probs)
    p = probs.detach()
    assert torch.allclose(grad, -targets / p + (1 - targets) / (1 - p), rtol=1e-12)


def test_focal_loss_refuses_gamma_below_one():
    with pytest.raises(LossError, match="gamma=0.5: expected >= 1"):
        focal_loss(torch.rand(1, 2, 2), torch.ones(1, 2, 2), gamma=0.5)


def test_samples_without_a_mask_are_skipped():
    only_first = feclip_loss(output(SCORES, MAPS), LABELS, MASKS, torch.tensor([True, False]))
    expected = sum(hand_pixel_terms(t, 0) for t in range(2)) / 2
    assert only_first["mask"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("masks", [None, MASKS])
def test_no_mask_in_the_batch_gives_zero_not_nan(masks):
    out = output(SCORES, MAPS)
    losses = feclip_loss(out, LABELS, masks, torch.tensor([False, False]))
    assert losses["mask"].item() == 0.0 and torch.equal(losses["total"], losses["cls"])
    losses["total"].backward()
    assert torch.isfinite(out.tap_scores.grad).all()


def test_logit_margin_maps_use_the_sigmoid():
    margins = torch.logit(torch.tensor(MAPS)).tolist()
    a = feclip_loss(output(SCORES, MAPS), LABELS, MASKS, torch.tensor([True, True]))
    b = feclip_loss(output(SCORES, margins, "logit_margin"), LABELS, MASKS, torch.tensor([True, True]))
    assert b["mask"].item() == pytest.approx(a["mask"].item(), rel=1e-5)


def test_saturated_probabilities_stay_finite():
    out = output([[1.0, 0.0]], [[[[1.0, 0.0]], [[0.0, 1.0]]]])
    losses = feclip_loss(out, torch.tensor([0, 1]), MASKS, torch.tensor([True, True]))
    losses["total"].backward()
    assert torch.isfinite(losses["total"]) and torch.isfinite(out.tap_maps.grad).all()


def test_bad_shapes_raise():
    with pytest.raises(LossError, match=r"labels of shape \(3,\)"):
        feclip_loss(output(SCORES, MAPS), torch.tensor([1, 0, 1]), MASKS, torch.tensor([True, True]))
    with pytest.raises(LossError, match=r"masks of shape \(2, 2, 2\)"):
        feclip_loss(output(SCORES, MAPS), LABELS, torch.zeros(2, 2, 2), torch.tensor([True, True]))
