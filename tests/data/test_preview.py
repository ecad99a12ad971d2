"""Preview grid of an HDMAP folder (feclip/data/preview.py) on a small generated synthetic set."""

import matplotlib.image
import pytest

from feclip.data import preview, synthetic
from feclip.data.hdmap import load_domain


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("hdmap")
    synthetic.generate(out, domains=("C",), n_train=4, n_test=6, seed=0)
    return out


def test_renders_a_non_empty_png(root, tmp_path):
    path = preview.render_preview(root, "C", tmp_path / "figs" / "preview_C.png", per_row=3)
    pixels = matplotlib.image.imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels[..., :3].std() > 0.05


def test_fault_rows_come_from_the_sidecar(root, tmp_path):
    assert preview.fault_rows(root, "C") == {i: 5 for i in range(6)}
    assert preview.fault_rows(tmp_path, "C") == {}  # no sidecar: no ticks


def test_grid_has_one_row_per_group_and_ticks_on_fault_panels(root):
    data = load_domain(root, "C", cold_warm_split=synthetic.cold_warm_split(root))
    fig = preview.preview_figure(data, "C", preview.fault_rows(root, "C"), per_row=3)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 5 * 3
    ticks = [len(ax.lines) for ax in panels]
    assert ticks == [0] * 9 + [2] * 6  # train, good cold, good warm: none; fault rows: left + right tick
    limits = {image.get_clim() for ax in panels for image in ax.images}
    assert len(limits) == 1  # one shared colour scale


def test_rows_pick_evenly_spaced_files_of_each_group(root):
    meta = load_domain(root, "C", cold_warm_split=synthetic.cold_warm_split(root)).meta
    picks = preview.pick_rows(meta, per_row=2)
    assert [meta["file_index"].iloc[p].tolist() for p in picks] == [[0, 3], [0, 2], [3, 5], [0, 2], [3, 5]]
