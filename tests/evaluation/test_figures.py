"""The job's figure set: worst misses first, every PNG written."""

import numpy as np
import pandas as pd
import torch

from feclip.data.hdmap import HDMAPData
from feclip.evaluation.figures import worst_misses, write_figures


def test_worst_misses_come_first():
    scores, labels = np.array([0.9, 0.1, 0.6, 0.4]), np.array([0, 1, 1, 0])
    assert worst_misses(scores, labels, threshold=0.5, n=2).tolist() == [0, 1]


def test_every_figure_is_written(tmp_path):
    n = 8
    meta = pd.DataFrame(
        {
            "label": [0, 1] * 4,
            "condition": ["cold"] * 4 + ["warm"] * 4,
            "file_index": range(n),
            "score": np.linspace(0, 1, n),
        }
    )
    scored = HDMAPData(torch.rand(n, 31, 95), meta, maps=torch.rand(n, 31, 95))
    metrics = {"thr_oracle": 0.5, "thr_val": float("nan")}
    write_figures(tmp_path, scored, metrics, {"total": [1.0, 0.5]}, caption="random init", n_examples=4)
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["anomaly_maps.png", "loss.png", "roc.png", "score_histograms.png"]
