"""WinCLIP on the tiny random-init ClipBackbone: windows, harmonic aggregation, embeddings vs naive code."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import compose, small_data

from feclip.condition.banks import ReferenceBank
from feclip.evaluation.predictor import load_predictor, predict_files
from feclip.jobs.run import main
from feclip.methods.winclip.method import WinClipMethod
from feclip.methods.winclip.model import (
    TEMPERATURE,
    WinClip,
    WinClipEmbeddings,
    WinClipError,
    class_scores,
    harmonic_aggregation,
    visual_association,
    window_masks,
)
from feclip.model.prompts import text_features
from feclip.runtime import Runtime
from feclip.tracking import JobInfo

SIZE = (64, 96)  # feclip-tiny (patch 16): a 4 x 6 grid
GRID = (4, 6)


@pytest.fixture(scope="module")
def winclip(backbone):
    return WinClip(backbone, text_features(backbone), window_batch=7)  # small batches exercise chunking


def naive_windows(grid, scale):
    """Window (i, j) -> the row-major patch indices it covers, by plain enumeration."""
    gh, gw = grid
    windows = {}
    for i in range(gh - scale + 1):
        for j in range(gw - scale + 1):
            windows[(i, j)] = [(i + a) * gw + (j + b) for a in range(scale) for b in range(scale)]
    return windows


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_window_masks_equal_naive_enumeration(scale):
    windows = naive_windows(GRID, scale)
    masks = window_masks(GRID, scale)
    assert masks.shape == (len(windows), scale * scale)
    assert masks.tolist() == [windows[key] for key in sorted(windows)]  # windows in row-major order


def test_window_scale_must_fit_the_grid():
    with pytest.raises(WinClipError, match=r"scale 5: expected an int in \[1, 4\] for grid \(4, 6\)"):
        window_masks(GRID, 5)


def naive_harmonic(window_scores, grid, scale):
    """Per patch: harmonic mean of the scores of the windows that contain it (0 if one of them is 0)."""
    b = window_scores.shape[0]
    out = torch.zeros(b, *grid, dtype=window_scores.dtype)
    windows = naive_windows(grid, scale)
    for p in range(grid[0] * grid[1]):
        containing = [key for key, patches in windows.items() if p in patches]
        for n in range(b):
            values = [window_scores[n, i, j].item() for i, j in containing]
            mean = 0.0 if 0.0 in values else len(values) / sum(1 / v for v in values)
            out[n, p // grid[1], p % grid[1]] = mean
    return out


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_harmonic_aggregation_equals_naive_loop(scale):
    nh, nw = GRID[0] - scale + 1, GRID[1] - scale + 1
    scores = torch.rand(2, nh, nw, dtype=torch.float64) + 0.05
    scores[1, 0, 0] = 0.0  # a zero window zeroes its patches
    ours = harmonic_aggregation(scores, GRID, scale)
    assert torch.allclose(ours, naive_harmonic(scores, GRID, scale), atol=1e-12)
    with pytest.raises(WinClipError, match="window scores of shape"):
        harmonic_aggregation(scores[:, :-1], GRID, scale)


def test_class_scores_by_hand():
    text = F.normalize(torch.randn(2, 8), dim=-1)
    embeddings = torch.randn(3, 5, 8)
    cos = F.normalize(embeddings, dim=-1) @ text.T
    expected = torch.sigmoid((cos[..., 1] - cos[..., 0]) / 0.07)  # a 2-class softmax
    assert torch.allclose(class_scores(embeddings, text, 0.07), expected, atol=1e-6)
    assert TEMPERATURE == 0.07


def test_window_embeddings_equal_one_window_at_a_time(backbone, winclip):
    images = torch.randn(2, 3, *SIZE)
    embeddings = winclip.encode(images)
    with torch.no_grad():
        tokens = backbone.embed(images)
        for windows, scale in zip(embeddings.windows, winclip.scales, strict=True):
            assert windows.shape == (2, GRID[0] - scale + 1, GRID[1] - scale + 1, backbone.embed_dim)
            for (i, j), patches in naive_windows(GRID, scale).items():
                sequence = torch.cat([tokens[:, :1], tokens[:, [1 + p for p in patches]]], dim=1)
                cls = backbone.run_blocks(sequence, 0, backbone.num_blocks)[:, 0]
                assert torch.allclose(windows[:, i, j], backbone.project(cls), atol=1e-5)


def test_image_embedding_equals_encode_image_and_patches(backbone, winclip):
    images = torch.randn(2, 3, 224, 224)
    embeddings = winclip.encode(images)
    with torch.no_grad():
        assert torch.allclose(embeddings.image, backbone.clip.encode_image(images), atol=1e-5)
        out = backbone.run_blocks(backbone.embed(images), 0, backbone.num_blocks)
    assert embeddings.patches.shape == (2, 14, 14, backbone.width)  # ln_post, unprojected (anomalib)
    assert torch.allclose(
        embeddings.patches, backbone.visual.ln_post(out[:, 1:]).view(2, 14, 14, -1), atol=1e-5
    )
    projected = WinClip(backbone, winclip.text_features, project_patches=True).encode(images[:1, :, :64, :96])
    assert projected.patches.shape == (1, *GRID, backbone.embed_dim)


def test_visual_association_equals_naive_loops():
    query = torch.randn(2, 3, 4, 8)
    reference = torch.randn(3, 2, 5, 8)
    ours = visual_association(query, reference)
    bank = reference.reshape(-1, 8)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                best = max(F.cosine_similarity(query[b, i, j], r, dim=0).item() for r in bank)
                assert ours[b, i, j].item() == pytest.approx((1 - best) / 2, abs=1e-6)
    assert torch.equal(visual_association(query, bank), ours)  # a flat (K, E) bank is the same bank


def test_zero_shot_equals_hand_combination(winclip):
    embeddings = winclip.encode(torch.randn(2, 3, *SIZE))
    score, grid_map = winclip.zero_shot(embeddings)
    text = winclip.text_features
    expected_score = class_scores(embeddings.image, text, TEMPERATURE)
    maps = [expected_score.view(2, 1, 1).expand(2, *GRID)]
    for windows, scale in zip(embeddings.windows, winclip.scales, strict=True):
        maps.append(naive_harmonic(class_scores(windows, text, TEMPERATURE), GRID, scale))
    expected_map = 3 / sum(1 / m for m in maps)
    assert torch.allclose(score, expected_score) and torch.allclose(grid_map, expected_map, atol=1e-6)


def test_self_reference_gives_a_zero_few_shot_map(winclip):
    images = torch.randn(2, 3, *SIZE)
    embeddings = winclip.encode(images)
    associations = winclip.associations(embeddings, embeddings)
    assert len(associations) == 3 and all(a.shape == (2, *GRID) for a in associations)
    assert winclip.few_shot_map(associations).abs().max() < 1e-6
    score, pixel_map, _ = winclip(images, references=embeddings)
    zero_score, zero_map = winclip.zero_shot(embeddings)
    assert torch.allclose(score, zero_score / 2, atol=1e-6)
    up = F.interpolate(zero_map[:, None] / 2, size=SIZE, mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(pixel_map, up, atol=1e-6)


def test_forward_combines_zero_and_few_shot_as_anomalib(winclip):
    references = winclip.encode(torch.randn(3, 3, *SIZE))
    images = torch.randn(2, 3, *SIZE)
    score, pixel_map, embeddings = winclip(images, references=references)
    zero_score, zero_map = winclip.zero_shot(embeddings)
    few = torch.stack(winclip.associations(embeddings, references)).mean(0)
    assert torch.allclose(score, (zero_score + few.amax((1, 2))) / 2, atol=1e-6)
    up = F.interpolate((zero_map + few)[:, None] / 2, size=SIZE, mode="bilinear", align_corners=False)[:, 0]
    assert pixel_map.shape == (2, *SIZE) and torch.allclose(pixel_map, up, atol=1e-6)
    with pytest.raises(WinClipError, match="reference bank with 1 window scales"):
        winclip.associations(embeddings, WinClipEmbeddings(*references[:2], references.windows[:1]))


@pytest.mark.parametrize("with_references", [False, True])
def test_batch_independence(winclip, with_references):
    references = winclip.encode(torch.randn(2, 3, *SIZE)) if with_references else None
    images = torch.randn(3, 3, *SIZE)
    score, pixel_map, _ = winclip(images, references=references)
    for b in range(3):
        s, m, _ = winclip(images[b : b + 1], references=references)
        assert torch.allclose(s, score[b : b + 1], atol=1e-5) and torch.allclose(
            m, pixel_map[b : b + 1], atol=1e-5
        )


def test_bad_text_features_and_scales(backbone):
    with pytest.raises(WinClipError, match=r"text features of shape \(3, 32\): expected \(2, 32\)"):
        WinClip(backbone, torch.randn(3, 32))
    with pytest.raises(WinClipError, match="scales"):
        WinClip(backbone, torch.randn(2, 32), scales=(0, 2))


# ---------------------------------------------------------------- WinCLIP as a method of the harness


def test_the_bank_path_equals_winclip_plus_visual_association():
    """WinCLIP+ scored through the shared reference bank (cosine) equals the model's own few-shot map."""
    torch.manual_seed(0)
    method = WinClipMethod.from_config(compose("method=winclip"))
    query, refs = torch.randn(3, 3, 64, 192), torch.randn(2, 3, 64, 192)
    out = method.forward(query)
    references = method.model.encode(refs)
    bank = ReferenceBank({"mixed": [references.patches, *references.windows]})
    terms = method.reference_terms(out, bank, "mixed", torch.arange(3))
    expected = method.model.few_shot_map(method.model.associations(method.model.encode(query), references))
    torch.testing.assert_close(terms["fewshot"], expected, atol=1e-5, rtol=1e-5)
    score, pixel_map, _ = method.model(query, references)
    ours_score, ours_map = method.with_references(out, terms)
    torch.testing.assert_close(ours_score, score, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_map, pixel_map, atol=1e-5, rtol=1e-5)


def test_a_saved_winclip_plus_predicts_what_its_run_scored(tmp_path):
    cfg = compose(
        "method=winclip", "fewshot=k1", *small_data(tmp_path), "tracking.enabled=false", "eval.figures=false"
    )
    main(cfg, tmp_path / "out", JobInfo("wc", "wc"))
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    predictor = load_predictor(tmp_path / "out" / "checkpoint", torch.device("cpu"))
    table = predict_files(
        predictor, [Path(p) for p in scores["path"]], Runtime(torch.device("cpu")), operating_point="p99"
    )
    np.testing.assert_allclose(table["score"], scores["score"], rtol=1e-5, atol=1e-6)
