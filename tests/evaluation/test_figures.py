"""The job's figure set: worst misses first, every PNG written and returned, no loss curves."""

import numpy as np
import pandas as pd
import torch
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from PIL import Image

from feclip.data.hdmap import HDMAPData
from feclip.evaluation.figures import worst_misses, write_figures


def test_worst_misses_come_first():
    scores, labels = np.array([0.9, 0.1, 0.6, 0.4]), np.array([0, 1, 1, 0])
    assert worst_misses(scores, labels, threshold=0.5, n=2).tolist() == [0, 1]


def _scored(n: int = 8, masks: bool = False) -> HDMAPData:
    meta = pd.DataFrame(
        {
            "label": [0, 1] * (n // 2),
            "condition": ["cold"] * (n // 2) + ["warm"] * (n // 2),
            "file_index": range(n),
            "score": np.linspace(0, 1, n),
        }
    )
    gt = torch.zeros(n, 31, 95, dtype=torch.uint8)
    gt[1::2, 12, 20:70] = 1
    return HDMAPData(torch.rand(n, 31, 95), meta, masks=gt if masks else None, maps=torch.rand(n, 31, 95))


def test_every_figure_is_written_and_returned_without_loss_curves(tmp_path):
    metrics = {"thr_oracle": 0.5, "thr_val": float("nan")}
    written = write_figures(tmp_path, _scored(), metrics, caption="random init", n_examples=4, title="C")
    assert sorted(p.name for p in written) == ["anomaly_maps.png", "roc.png", "score_histograms.png"]
    assert sorted(tmp_path.glob("*.png")) == sorted(written)
    assert not (tmp_path / "loss.png").exists()
    width, height = Image.open(tmp_path / "anomaly_maps.png").size
    assert width > height  # 2 examples x 2 panels of 31 x 95 per row, 2 rows: wider than tall


def test_figures_carry_the_title_and_outline_the_masks(tmp_path, monkeypatch):
    saved = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kwargs: saved.setdefault(path.name, fig))
    metrics = {"thr_oracle": 0.55}
    write_figures(tmp_path, _scored(masks=True), metrics, caption="", n_examples=3, title="C · fft")
    assert {name: fig.get_suptitle() for name, fig in saved.items()} == dict.fromkeys(
        ["roc.png", "score_histograms.png", "anomaly_maps.png"], "C · fft"
    )
    panels = saved["anomaly_maps.png"].axes[:6]  # worst misses at 0.55: #1 fault, #6 good, #3 fault
    outlined = [any(isinstance(c, ContourSet) for c in ax.collections) for ax in panels]
    assert outlined == [True, True, False, False, True, True]
