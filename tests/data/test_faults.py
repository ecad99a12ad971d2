"""Band-fault primitives and the two training-fault families (feclip/data/faults.py): hand-computed cases."""

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from feclip import CONF_DIR
from feclip.data.faults import (
    BandFaultConfig,
    BandFaultError,
    circular_smooth,
    inject_band_faults,
    row_profile,
    segment_weights,
)

H, W = 31, 95


def fixed(**overrides) -> BandFaultConfig:
    """A deterministic-geometry test-like config: row 5, A = 0.5, σ_y = 0.8, coverage 0.6, no peaks."""
    spec = {
        "family": "test_like",
        "row": 5,
        "amplitude": (0.5, 0.5),
        "sigma_y": (0.8, 0.8),
        "coverage": (0.6, 0.6),
        "n_peaks": (0, 0),
    }
    return BandFaultConfig(**{**spec, **overrides})


def inject(images, cfg, seed=0):
    return inject_band_faults(images, cfg, torch.Generator().manual_seed(seed))


def test_band_on_constant_images_is_one_plus_a_v_m():
    faulty, masks = inject(torch.ones(6, H, W), fixed())
    gain = faulty.double().numpy() - 1.0  # = A·v(y)·m(x), A = 0.5
    assert faulty.dtype == torch.float32 and masks.dtype == torch.uint8 and masks.shape == (6, H, W)
    assert (gain >= 0).all() and gain.max() <= 0.5 + 1e-6
    np.testing.assert_allclose(gain[:, 5].max(axis=1), 0.5, rtol=1e-6)  # m reaches 1 on the fault row
    v = row_profile(np.array([5]), np.array([0.8]), H)[0]
    np.testing.assert_allclose(gain.max(axis=2), 0.5 * np.broadcast_to(v, (6, H)), rtol=1e-5, atol=1e-7)
    # coverage 0.6 of 95 columns: threshold between the 38th and 39th smallest values -> 57 columns above
    assert ((gain[:, 5] > 0).sum(axis=1) == 57).all()
    # mask = v·m >= 0.5: with σ_y = 0.8, v(y_f ± 1) = 0.458, so only row 5
    np.testing.assert_array_equal(masks.numpy(), (gain / 0.5 >= 0.5 - 1e-6).astype(np.uint8))
    assert masks[:, 5].sum() > 0 and masks[:, :5].sum() == 0 and masks[:, 6:].sum() == 0


def test_values_are_never_clipped():
    images = torch.full((3, H, W), 2.5)
    faulty, _ = inject(images, fixed(amplitude=(1.0, 1.0)))
    assert faulty.max() == pytest.approx(5.0, rel=1e-6) and faulty.min() == pytest.approx(2.5)


def test_peaks_add_their_height_on_rows_next_to_the_fault_row():
    images = torch.full((8, H, W), 0.5)
    cfg = fixed(amplitude=(0.0, 0.0), n_peaks=(2, 2), peak_amplitude=(3.0, 3.0))
    faulty, masks = inject(images, cfg)
    added = (faulty - images).double().numpy()
    np.testing.assert_allclose(added.sum(axis=(1, 2)), 2 * 3.0 * 0.5, rtol=1e-6)  # 2 peaks of 3 × mean 0.5
    rows = np.nonzero(added.sum(axis=2))[1]
    assert set(rows) <= {4, 5, 6}
    peaks = added > 0
    assert masks.numpy()[peaks].all()  # peak pixels are masked, off-row ones included
    band_rows_only = masks.numpy().copy()
    band_rows_only[peaks] = 0
    assert band_rows_only[:, np.r_[0:5, 6:H]].sum() == 0  # the band mask (v·m >= 0.5) is row 5 only


def test_random_rows_vary_and_stay_inside_the_image():
    _, masks = inject(torch.ones(64, H, W), fixed(row="random"))
    rows = masks.sum(dim=2).argmax(dim=1)
    assert len(set(rows.tolist())) > 10 and rows.min() >= 0 and rows.max() < H


def test_same_generator_seed_same_faults_other_seed_differs():
    images = torch.rand(5, H, W) + 0.1
    first, second, other = (inject(images, BandFaultConfig(), seed) for seed in (3, 3, 4))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_test_like_default_ranges_span_faint_to_strong_faults():
    images = torch.full((400, H, W), 0.2)
    faulty, masks = inject(images, BandFaultConfig(family="test_like"))
    row_gain = (faulty / images).amax(dim=2).amax(dim=1)  # strongest pixel ratio per image
    assert masks.sum(dim=(1, 2)).min() > 0
    assert row_gain.min() < 1.35 and row_gain.max() > 2.0


def test_config_accepts_lists_from_yaml():
    cfg = BandFaultConfig(amplitude=[0.1, 0.5], n_peaks=[1, 2])
    assert cfg.amplitude == (0.1, 0.5) and cfg.n_peaks == (1, 2)


@pytest.mark.parametrize(
    "overrides",
    [
        {"amplitude": (0.5, 0.1)},
        {"coverage": (0.5, 1.5)},
        {"sigma_y": 0.8},
        {"row": "middle"},
        {"row": 2.5},
        {"family": "test"},
        {"strip_height": (0, 2)},
        {"strip_width": (3.5, "x")},
    ],
)
def test_bad_config_names_the_key(overrides):
    key = next(iter(overrides))
    with pytest.raises(BandFaultError, match=key):
        BandFaultConfig(**overrides)


def test_bad_input_is_a_one_line_error():
    with pytest.raises(BandFaultError, match=r"\(N, H, W\)"):
        inject(torch.ones(H, W), BandFaultConfig())
    with pytest.raises(BandFaultError, match="row"):
        inject(torch.ones(2, H, W), fixed(row=H))
    with pytest.raises(BandFaultError, match="strip_height"):
        inject(torch.ones(2, H, W), BandFaultConfig(strip_height=(1, 16)))


def test_circular_smooth_keeps_constants_and_commutes_with_shifts():
    x = np.random.default_rng(0).standard_normal((2, 17, 40))
    np.testing.assert_allclose(circular_smooth(np.full((3, 7), 2.0), 1.5, axes=(0, 1)), 2.0)
    shifted = circular_smooth(np.roll(x, 5, axis=2), 2.0, axes=(1, 2))
    np.testing.assert_allclose(shifted, np.roll(circular_smooth(x, 2.0, axes=(1, 2)), 5, axis=2), atol=1e-12)


def test_segment_weights_are_a_soft_threshold_in_unit_range():
    noise = np.random.default_rng(1).standard_normal((50, W))
    m = segment_weights(noise, np.full(50, 0.3))
    assert m.min() == 0.0 and m.max() == 1.0
    np.testing.assert_array_equal((m > 0).sum(axis=1), 95 - 66)  # (1 - 0.3)·94 = 65.8: 29 columns above


def test_gain_scales_the_whole_image_before_the_band():
    images = torch.full((4, H, W), 0.2)
    faulty, _ = inject(images, fixed(gain=(1.12, 1.12)))
    np.testing.assert_allclose(faulty[:, 20].numpy(), 0.2 * 1.12, rtol=1e-6)  # far from the band
    np.testing.assert_allclose(faulty[:, 5].amax(dim=1).numpy(), 0.2 * 1.12 * 1.5, rtol=1e-6)


# ------------------------------------------------------------- the default training family (cut-paste strips)


def strips(**overrides) -> BandFaultConfig:
    """A training-family config without peaks."""
    return BandFaultConfig(**{"n_peaks": (0, 0), **overrides})


def test_default_family_is_the_distinct_training_family_and_the_yaml_names_every_field():
    assert BandFaultConfig().family == "training"
    yaml = OmegaConf.load(CONF_DIR / "aux/synthetic_faults.yaml")
    assert list(yaml.fault) == [field.name for field in fields(BandFaultConfig)]
    assert BandFaultConfig(**OmegaConf.to_container(yaml.fault)) == BandFaultConfig()


def test_strip_on_constant_images_is_one_rectangle_raised_by_a_times_the_mean():
    faulty, masks = inject(torch.full((64, H, W), 0.25), strips(strip_amplitude=(0.8, 0.8)))
    added, masks = faulty.double().numpy() - 0.25, masks.numpy().astype(bool)
    np.testing.assert_allclose(added[masks], 0.8 * 0.25, rtol=1e-6)  # constant patch / its max = 1
    np.testing.assert_allclose(added[~masks], 0.0, atol=1e-7)
    for mask in masks:
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        assert 1 <= len(rows) <= 3 and 10 <= len(cols) <= 80  # box of strip_height × strip_width
        assert np.ptp(rows) == len(rows) - 1 and np.ptp(cols) == len(cols) - 1  # contiguous
        assert mask.sum() == len(rows) * len(cols)


def test_strip_adds_the_texture_of_other_rows_divided_by_its_max():
    images = torch.rand(16, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    faulty, masks = inject(images, strips(strip_amplitude=(1.0, 1.0)))
    for image, result, mask in zip(images.numpy(), faulty.numpy(), masks.numpy().astype(bool), strict=True):
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        added = (result - image)[np.ix_(rows, cols)]
        matches = []
        for top in range(H):
            source = image[np.ix_((top + np.arange(len(rows))) % H, cols)]
            if np.allclose(added, image.mean() * source / source.max(), rtol=1e-9):
                matches.append(set((top + np.arange(len(rows))) % H))
        assert matches and all(not source & set(rows) for source in matches)  # displaced, not in place


def test_strip_peaks_lie_inside_the_strip_and_rows_can_be_fixed():
    cfg = strips(row=20, strip_amplitude=(0.0, 0.0), n_peaks=(2, 2), peak_amplitude=(3.0, 3.0))
    faulty, masks = inject(torch.full((32, H, W), 0.5), cfg)
    added = (faulty - 0.5).double().numpy()
    np.testing.assert_allclose(added.sum(axis=(1, 2)), 2 * 3.0 * 0.5, rtol=1e-6)
    assert masks.numpy()[added > 0].all()
    assert (masks.numpy().any(axis=2).argmax(axis=1) == 20).all()  # the strip's top row is `row`


def test_strip_amplitudes_span_faint_to_strong_and_gain_scales_the_whole_image():
    faulty, _ = inject(torch.full((400, H, W), 0.2), strips())
    ratio = (faulty / 0.2).amax(dim=(1, 2))
    assert ratio.min() < 1.5 and ratio.max() > 2.5
    faulty, masks = inject(torch.full((4, H, W), 0.2), strips(gain=(1.12, 1.12), strip_amplitude=(0.5, 0.5)))
    np.testing.assert_allclose(faulty[masks == 0].numpy(), 0.2 * 1.12, rtol=1e-6)  # gain: not in the mask
    np.testing.assert_allclose(faulty[masks == 1].numpy(), 0.2 * 1.12 * 1.5, rtol=1e-6)
