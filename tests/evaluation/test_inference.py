"""Inference: batched scores, map statistics and native-size maps; rescoring hooks; the HDMAP evaluation of
a scored set."""

import numpy as np
import pandas as pd
import pytest
import torch

from feclip.data.hdmap import HDMAPData
from feclip.data.sets import labelled_set
from feclip.data.transforms import HDMAPInput
from feclip.evaluation.inference import InferenceError, evaluate_hdmap, predict, scores_table
from feclip.methods.base import Method, MethodOutput
from feclip.runtime import Runtime


class Brightness(Method):
    """score = mean input, map = the input's first channel (a stand-in with known outputs)."""

    name = "brightness"

    def __init__(self, scores=True):
        self.model, self.scores = torch.nn.Identity(), scores

    def input_stats(self):
        return (0.0,) * 3, (1.0,) * 3

    @property
    def input_size(self):
        return (31, 95)

    def forward(self, inputs=None, *, frozen=None):
        grid = inputs[:, 0]
        score = grid.flatten(1).mean(1) if self.scores else None
        return MethodOutput(score, grid if self.scores else None, [grid[..., None]])

    def with_references(self, out, terms):
        return out.score, out.map


def _images(n=7):
    return labelled_set(
        torch.rand(n, 31, 95),
        [0, 1] * (n // 2) + [0] * (n % 2),
        HDMAPInput((31, 95), mean=(0,) * 3, std=(1,) * 3),
    )


def test_predict_batches_scores_and_map_statistics():
    data = _images()
    pred = predict(Brightness(), data, Runtime(torch.device("cpu"), batch_size=3), map_size=(31, 95), topk=5)
    np.testing.assert_allclose(pred.scores, data.images.flatten(1).mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(pred.map_max, data.images.flatten(1).amax(1).numpy(), rtol=1e-6)
    top5 = data.images.flatten(1).topk(5, dim=1).values.mean(1).numpy()
    np.testing.assert_allclose(pred.map_topk, top5, rtol=1e-6)
    assert pred.maps.shape == (7, 31, 95) and pred.maps.dtype == torch.float32  # pixel metrics need fp32


def test_rescore_columns_and_a_bank_only_method():
    data = _images(4)

    def rescore(out, index):
        return out.score * 0 + index.float(), out.map, {"gate": np.array(["cold"] * len(index))}

    pred = predict(
        Brightness(), data, Runtime(torch.device("cpu"), batch_size=3), map_size=(31, 95), rescore=rescore
    )
    assert pred.scores.tolist() == [0, 1, 2, 3] and pred.extra["gate"].tolist() == ["cold"] * 4
    with pytest.raises(InferenceError, match="set fewshot.k > 0"):
        predict(Brightness(scores=False), data, Runtime(torch.device("cpu")), map_size=(31, 95))


def test_evaluate_and_table_of_a_scored_set():
    meta = pd.DataFrame(
        {
            "path": list("abcd"),
            "label": [0, 1, 0, 1],
            "condition": ["cold", "cold", "warm", "warm"],
            "file_index": [0, 1, 2, 3],
        }
    )
    masks = torch.zeros(4, 2, 2, dtype=torch.uint8)
    masks[1, 0, 0] = masks[3, 1, 1] = 1
    maps = masks.float() + 0.1
    scored = HDMAPData(torch.zeros(4, 2, 2), meta, masks).with_predictions(
        {"score": np.array([0.1, 0.9, 0.2, 0.8])}, maps
    )
    metrics = evaluate_hdmap(scored, np.array([0.1, 0.25]), 99.0)  # thr_val = 0.2485
    assert metrics["auroc"] == 1.0 and metrics["pixel_auroc"] == 1.0 and metrics["acc_val"] == 1.0
    assert scores_table(scored, ["score"]).columns.tolist() == [
        "path",
        "file_index",
        "condition",
        "label",
        "score",
    ]
