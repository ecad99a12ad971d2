"""PatchCore: coreset == brute-force k-center, kNN and re-weighting by hand, aggregation, smoothing, bank."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose, small_data
from safetensors.torch import save_file
from scipy import ndimage

from feclip.condition.banks import ReferenceBank, nearest
from feclip.errors import FeclipError
from feclip.evaluation.predictor import load_predictor, predict_files
from feclip.jobs.run import main
from feclip.methods.patchcore.backbone import PRESETS, TimmFeatures, TimmFeaturesError, create_timm
from feclip.methods.patchcore.coreset import CoresetError, coreset_size, greedy_coreset, random_projection
from feclip.methods.patchcore.method import PatchCoreMethod
from feclip.methods.patchcore.model import (
    PatchCore,
    PatchCoreError,
    anomaly_map,
    gaussian_blur,
    local_aggregate,
    reweighted_image_score,
    score_patches,
)
from feclip.runtime import Runtime
from feclip.tracking import JobInfo

SIZE = (64, 192)  # tiny ViT (patch 16): a 4 x 12 grid


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TimmFeatures("tiny")


def brute_force_k_center(points: torch.Tensor, start: int, n: int) -> list[int]:
    """Greedy k-center recomputing every pairwise distance at each step."""
    selected = [start]
    while len(selected) < n:
        pairwise = (points[:, None] - points[None]).norm(dim=-1)  # (N, N), recomputed on purpose
        to_set = pairwise[:, selected].min(1).values
        selected.append(int(to_set.argmax()))
    return selected


@pytest.mark.parametrize("projection_dim", [None, 8])
@pytest.mark.parametrize("seed", [0, 3])
def test_coreset_equals_brute_force(projection_dim, seed):
    features = torch.randn(60, 16, generator=torch.Generator().manual_seed(seed))
    indices = greedy_coreset(features, 12, projection_dim=projection_dim, seed=seed)
    points = features if projection_dim is None else random_projection(features, projection_dim, seed=seed)
    assert indices.tolist() == brute_force_k_center(points, int(indices[0]), 12)
    assert len(set(indices.tolist())) == 12


def test_coreset_start_and_projection_follow_the_seed():
    features = torch.randn(50, 32)
    assert torch.equal(greedy_coreset(features, 5, seed=1), greedy_coreset(features, 5, seed=1))
    starts = {int(greedy_coreset(features, 1, projection_dim=None, seed=s)[0]) for s in range(6)}
    assert len(starts) > 1
    assert torch.equal(random_projection(features, 4, seed=2), random_projection(features, 4, seed=2))
    assert random_projection(features, 4, seed=2).shape == (50, 4)


def test_coreset_sizes():
    assert coreset_size(1000, 0.01) == 10 and coreset_size(50, 0.01) == 1 and coreset_size(30, 7) == 7
    assert torch.equal(greedy_coreset(torch.randn(9, 3), 1.0), torch.arange(9))
    for bad in (0.0, 1.5, 0, 31, True, "0.1"):
        with pytest.raises(CoresetError):
            coreset_size(30, bad)


# a bank of 2-D points whose distances are easy by hand
BANK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])


@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_nearest_by_hand(chunk_size):
    query = torch.tensor([[0.0, 0.5], [1.0, -1.0], [4.0, 4.0], [0.0, 3.0]])
    distance, index = nearest(query, BANK, chunk_size=chunk_size)
    assert index.tolist() == [0, 1, 3, 2]
    assert torch.allclose(distance, torch.tensor([0.5, 1.0, math.sqrt(2), 1.0]))


def test_reweighted_score_by_hand():
    # one image, two patches: q0 = (0, 0.5) -> m0 at 0.5; q1 = (1, -1) -> m1 at 1 (the max, s* = 1)
    query = torch.tensor([[[0.0, 0.5], [1.0, -1.0]]])
    distance, index = nearest(query[0], BANK)
    # the 3 bank neighbours of m* = m1 = (1, 0): m1 (0), m0 (1), m2 (sqrt 5); m3 is sqrt 41 away
    # distances from q1 to them: 1, sqrt 2, sqrt 10
    exps = [math.exp(1.0), math.exp(math.sqrt(2)), math.exp(math.sqrt(10))]
    expected = (1 - exps[0] / sum(exps)) * 1.0
    score = reweighted_image_score(distance[None], index[None], query, BANK, 3)
    assert score.shape == (1,) and score.item() == pytest.approx(expected, rel=1e-5)
    # num_neighbors = 1: the plain max; more neighbours than the bank has: all 4 rows
    assert reweighted_image_score(distance[None], index[None], query, BANK, 1).item() == pytest.approx(1.0)
    all_rows = exps + [math.exp(math.sqrt(16 + 36))]
    capped = reweighted_image_score(distance[None], index[None], query, BANK, 9).item()
    assert capped == pytest.approx(1 - all_rows[0] / sum(all_rows), rel=1e-5)


def test_score_patches_matches_brute_force():
    patches = torch.randn(3, 2, 5, 6)
    bank = torch.randn(40, 6)
    score, patch_scores = score_patches(patches, bank, num_neighbors=4, chunk_size=7)
    pairwise = (patches.reshape(3, 10, 1, 6) - bank).norm(dim=-1)  # (B, P, K)
    assert torch.allclose(patch_scores, pairwise.min(-1).values.view(3, 2, 5), atol=1e-5)
    for b in range(3):
        p = int(pairwise[b].min(-1).values.argmax())
        m_star = bank[pairwise[b, p].argmin()]
        support = (bank - m_star).norm(dim=-1).argsort()[:4]
        d = pairwise[b, p, support]
        expected = (1 - torch.exp(d[0]) / torch.exp(d).sum()) * d[0]
        assert score[b].item() == pytest.approx(expected.item(), rel=1e-4)


def test_local_aggregation_equals_naive_loop():
    maps = torch.randn(2, 3, 5, 7)
    ours = local_aggregate(maps)
    padded = torch.nn.functional.pad(maps, (1, 1, 1, 1))
    naive = torch.zeros_like(maps)
    for i in range(5):
        for j in range(7):
            naive[:, :, i, j] = padded[:, :, i : i + 3, j : j + 3].sum((-2, -1)) / 9
    assert torch.allclose(ours, naive, atol=1e-6)


@pytest.mark.parametrize(("shape", "sigma"), [((40, 60), 4.0), ((7, 9), 4.0), ((30, 20), 1.5)])
def test_gaussian_blur_equals_scipy(shape, sigma):
    """scipy.ndimage.gaussian_filter defaults (truncate 4, mode 'reflect'), borders included."""
    maps = torch.rand(2, *shape, dtype=torch.float64)
    ours = gaussian_blur(maps, sigma)
    for b in range(2):
        theirs = ndimage.gaussian_filter(maps[b].numpy(), sigma)
        np.testing.assert_allclose(ours[b].numpy(), theirs, atol=1e-10)
    assert torch.equal(gaussian_blur(maps, 0), maps)


def test_anomaly_map_is_bilinear_then_blur():
    patch_scores = torch.rand(2, 4, 12)
    ours = anomaly_map(patch_scores, SIZE, sigma=4.0)
    up = torch.nn.functional.interpolate(
        patch_scores[:, None], size=SIZE, mode="bilinear", align_corners=False
    )
    for b in range(2):
        theirs = ndimage.gaussian_filter(up[b, 0].double().numpy(), 4.0)
        np.testing.assert_allclose(ours[b].numpy(), theirs, atol=1e-5)


def vit_block_outputs(features: TimmFeatures, images: torch.Tensor) -> list[torch.Tensor]:
    """Reference: forward hooks on the chosen blocks, prefix tokens dropped, tokens reshaped to a grid."""
    model, outputs = features.model, []
    hooks = [
        model.get_submodule(b).register_forward_hook(lambda m, i, o: outputs.append(o))
        for b in features.blocks
    ]
    with torch.no_grad():
        model.forward_features((images - features._mean) / features._std)
    for hook in hooks:
        hook.remove()
    gh, gw = images.shape[-2] // 16, images.shape[-1] // 16
    return [o[:, model.num_prefix_tokens :].reshape(len(images), gh, gw, -1) for o in outputs]


@pytest.mark.parametrize("blocks", [["blocks.2"], ["blocks.1", "blocks.3"]])
@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_vit_grid_equals_hooked_blocks(blocks, reg_tokens):
    torch.manual_seed(0)
    features = TimmFeatures("tiny", blocks=blocks, model_kwargs={"reg_tokens": reg_tokens})
    images = torch.rand(2, 3, *SIZE)
    grid = features(images)
    assert grid.shape == (2, 4, 12, 64 * len(blocks)) and features.dim == 64 * len(blocks)
    assert torch.allclose(grid, torch.cat(vit_block_outputs(features, images), dim=-1), atol=1e-5)


def test_cnn_blocks_resized_to_the_finest_grid():
    torch.manual_seed(0)
    features = TimmFeatures("tiny_resnet")
    images = torch.rand(2, 3, *SIZE)
    layer2, layer3 = features.block_maps(images)
    assert layer2.shape == (2, 128, 8, 24) and layer3.shape == (2, 256, 4, 12)
    grid = features(images)
    assert grid.shape == (2, 8, 24, 384) and features.dims == (128, 256)
    up = torch.nn.functional.interpolate(layer3, size=(8, 24), mode="bilinear", align_corners=False)
    assert torch.equal(grid, torch.cat([layer2, up], 1).permute(0, 2, 3, 1))


def test_frozen_eval_and_normalisation(tiny):
    tiny.train()
    assert not tiny.training and not tiny.model.training
    assert not any(p.requires_grad for p in tiny.parameters())
    assert tiny.mean == (0.485, 0.456, 0.406) and tiny.std == (0.229, 0.224, 0.225)
    torch.manual_seed(0)
    raw = TimmFeatures("tiny", normalize=False)
    images = torch.rand(1, 3, *SIZE)
    mean, std = torch.tensor(tiny.mean).view(3, 1, 1), torch.tensor(tiny.std).view(3, 1, 1)
    assert torch.allclose(raw((images - mean) / std), tiny(images), atol=1e-5)


def test_bad_blocks_and_inputs(tiny):
    with pytest.raises(TimmFeaturesError, match="blocks.*network order"):
        TimmFeatures("tiny", blocks=["blocks.3", "blocks.1"])
    with pytest.raises(TimmFeaturesError, match=r"\['layer9'\].*layer2"):
        TimmFeatures("tiny_resnet", blocks=["layer9"])
    with pytest.raises(FeclipError, match="method.backbone=.* is not allowed; expected one of"):
        TimmFeatures("resnet9000")
    with pytest.raises(TimmFeaturesError, match=r"expected \(B, 3, H, W\)"):
        tiny(torch.rand(1, 1, *SIZE))


def test_local_weights_file_and_bad_files(tmp_path):
    torch.manual_seed(1)
    reference = TimmFeatures("tiny")
    torch.manual_seed(1)
    full = create_timm("tiny", False, {**PRESETS["tiny"].options, "dynamic_img_size": True})
    save_file(full.state_dict(), tmp_path / "tiny.safetensors")
    torch.manual_seed(2)  # a different init, overwritten by the file
    loaded = TimmFeatures("tiny", pretrained=tmp_path / "tiny.safetensors")
    images = torch.rand(2, 3, *SIZE)
    assert torch.allclose(loaded(images), reference(images), atol=1e-6)
    (tmp_path / "broken.safetensors").write_text("not weights")
    with pytest.raises(TimmFeaturesError, match="cannot load weights from .*broken.safetensors"):
        TimmFeatures("tiny", pretrained=tmp_path / "broken.safetensors")
    with pytest.raises(TimmFeaturesError, match="neither True/False nor an existing weights file"):
        TimmFeatures("tiny", pretrained=tmp_path / "missing.pth")
    with pytest.raises(TimmFeaturesError, match="no published weights"):
        TimmFeatures("tiny", pretrained=True)


def test_uncached_weights_fail_fast_offline_or_without_network(tmp_path):
    """Fresh interpreters with empty caches: HF_HUB_OFFLINE=1, then an unreachable hub (localhost refuses)."""
    code = (
        "import os\n"
        "from feclip.methods.patchcore.backbone import TimmFeatures\n"
        "for offline in ('1', '0'):\n"
        "    os.environ['HF_HUB_OFFLINE'] = offline\n"
        "    try:\n"
        "        TimmFeatures('dinov2_vits14', pretrained=True)\n"
        "    except ValueError as e:\n"
        "        print(e)\n"
    )
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HOME": str(tmp_path),
        "HF_ENDPOINT": "https://127.0.0.1:9",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": ":".join(sys.path),
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    offline, unreachable = done.stdout.strip().splitlines()
    for message in (offline, unreachable):
        assert "'dinov2_vits14'" in message and "vit_small_patch14_dinov2" in message
        assert "method.pretrained=/path/to/model.safetensors" in message
        assert "pretrained_cfg_overlay" in message
    assert "HF_HUB_OFFLINE=1" in offline
    assert "127.0.0.1 cannot be reached" in unreachable


def test_fit_applies_the_coreset(tiny):
    model = PatchCore(tiny, coreset_ratio=0.25, seed=0)
    train = torch.rand(3, 3, *SIZE)
    model.fit(train, batch_size=2)
    patches = model.patch_features(train).flatten(0, 2)  # 3 * 48 patches
    assert model.memory_bank.shape == (36, 64)
    # every bank row is one of the train patches, and they are the coreset's choice
    keep = greedy_coreset(patches, 0.25, projection_dim=128, seed=0)
    assert torch.allclose(model.memory_bank, patches[keep], atol=1e-6)
    full = PatchCore(tiny, coreset_ratio=1.0)
    full.fit(train)
    assert full.memory_bank.shape == (144, 64)


def test_forward_shapes_batch_independence_and_self_match(tiny):
    model = PatchCore(tiny, coreset_ratio=1.0, num_neighbors=3, chunk_size=10)
    train = torch.rand(2, 3, *SIZE)
    model.fit(train)
    images = torch.rand(3, 3, *SIZE)
    score, amap, patches = model(images)
    assert score.shape == (3,) and amap.shape == (3, *SIZE) and patches.shape == (3, 4, 12, 64)
    for b in range(3):
        s, m, p = model(images[b : b + 1])
        assert torch.allclose(s, score[b : b + 1], atol=1e-5) and torch.allclose(
            m, amap[b : b + 1], atol=1e-5
        )
        assert torch.allclose(p, patches[b : b + 1], atol=1e-5)
    # a train image is in the (full) bank: every patch distance is 0
    _, patch_scores = score_patches(model.patch_features(train[:1]), model.memory_bank)
    assert patch_scores.abs().max() < 1e-4


def test_bank_save_and_load_round_trip(tiny):
    model = PatchCore(tiny, coreset_ratio=0.5)
    model.fit(torch.rand(2, 3, *SIZE))
    state = model.state_dict()
    fresh = PatchCore(tiny, coreset_ratio=0.5)
    with pytest.raises(PatchCoreError, match="memory bank is empty"):
        fresh(torch.rand(1, 3, *SIZE))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.memory_bank, model.memory_bank)
    images = torch.rand(2, 3, *SIZE)
    assert all(torch.equal(a, b) for a, b in zip(fresh(images), model(images), strict=True))


def test_bad_bank_features(tiny):
    model = PatchCore(tiny)
    with pytest.raises(PatchCoreError, match=r"expected \(M, 64\)"):
        model.fit_features(torch.randn(10, 5))
    with pytest.raises(PatchCoreError, match="expected integers >= 1"):
        PatchCore(tiny, num_neighbors=0)


# ---------------------------------------------------------------- PatchCore as a method of the harness


def _method(**settings) -> PatchCoreMethod:
    torch.manual_seed(0)
    return PatchCoreMethod.from_config(
        compose("method=patchcore", *(f"method.{k}={v}" for k, v in settings.items()))
    )


def test_a_condition_aware_bank_scores_exactly_like_plain_patchcore_on_that_bank():
    """The reference bank (feclip.condition, metric l2) is the code FE-CLIP's few-shot path uses; fed the same
    features, its patch distances and re-weighted scores equal PatchCore's own scoring against those rows."""
    method = _method()
    images = torch.rand(5, 3, 64, 192)
    out = method.forward(images)
    refs = method.forward(torch.rand(2, 3, 64, 192)).features[0]
    bank = ReferenceBank({"cold": [refs[:1]], "warm": [refs[1:]]}, metric="l2")
    for name, rows in (("cold", refs[:1]), ("warm", refs[1:]), ("mixed", refs)):
        terms = method.reference_terms(out, bank, name, torch.arange(5))
        score, patch_scores = score_patches(out.features[0], rows.flatten(0, 2), num_neighbors=9)
        torch.testing.assert_close(terms["distance"], patch_scores)
        torch.testing.assert_close(terms["score"], score)
        fewshot = bank.distance_map(out.features, name)  # FE-CLIP's few-shot distance on the same bank
        torch.testing.assert_close(fewshot, patch_scores)


def test_patchcore_separates_warm_faults_on_synthetic_domain_c(tmp_path):
    """Random-init tiny ViT, 100 train normals, coreset 10 %, domain C: warm AUROC measured 1.0 here on the
    study split's test part (seed 0; cold 0.518; 0.997 / 0.585 on every test image). The assertion sits well
    below, so it fails only when PatchCore is broken."""
    cfg = compose(
        "method=patchcore",
        "domain=C",
        f"data.root={tmp_path / 'hdmap'}",
        "data.synthetic.n_train=100",
        "data.synthetic.n_test=100",
        "eval.split.refs_per_condition=10",  # of 50 test/good per condition
        "tracking.enabled=false",
        "eval.figures=false",
        f"cache_dir={tmp_path / 'cache'}",
    )
    main(cfg, tmp_path / "out", JobInfo("pc", "pc"))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert metrics["auroc_warm"] > 0.85


def test_a_saved_patchcore_predicts_what_its_run_scored(tmp_path):
    cfg = compose("method=patchcore", *small_data(tmp_path), "tracking.enabled=false", "eval.figures=false")
    main(cfg, tmp_path / "out", JobInfo("pc", "pc"))
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    predictor = load_predictor(tmp_path / "out" / "checkpoint", torch.device("cpu"))
    assert predictor.method.model.memory_bank.shape[0] > 0
    table = predict_files(
        predictor, [Path(p) for p in scores["path"]], Runtime(torch.device("cpu")), operating_point="p99"
    )
    np.testing.assert_allclose(table["score"], scores["score"], rtol=1e-5, atol=1e-6)
