"""MVTec AD / VisA / BTAD loading on tiny fixtures: what is listed, labels, masks aligned with the drawn
defect, the two geometries, and a one-line error for each malformed dataset."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data.benchmark_fixtures import (
    RED,
    WIDTH,
    make_btad_fixture,
    make_mvtec_fixture,
    make_visa_fixture,
)
from feclip.errors import FeclipError
from feclip.data.benchmarks import (
    BTAD_CATEGORIES,
    MVTEC_CATEGORIES,
    VISA_CATEGORIES,
    BenchmarkError,
    list_benchmark,
    load_benchmark,
)

MAKERS = {"mvtec": make_mvtec_fixture, "visa": make_visa_fixture, "btad": make_btad_fixture}
HALF = (24, 32)  # exactly half the 48 x 64 originals: every fixture box maps to whole pixels


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, tuple[Path, pd.DataFrame]]:
    root = tmp_path_factory.mktemp("benchmarks")
    return {name: (root / name, make(root / name)) for name, make in MAKERS.items()}


def _load(fixtures, name, size=HALF, geometry="squash", categories=None):
    root, manifest = fixtures[name]
    data = load_benchmark(name, root, size, geometry, categories)
    return data, manifest.set_index("path").loc[data.meta["path"]].reset_index()


def test_category_lists():
    assert (
        len(MVTEC_CATEGORIES) == 15 and len(VISA_CATEGORIES) == 12 and BTAD_CATEGORIES == ("01", "02", "03")
    )


@pytest.mark.parametrize(
    "name, categories, counts",
    [
        ("mvtec", ["bottle", "screw"], {"good": 6, "crack": 4, "hole": 2}),
        ("visa", ["candle", "pcb1"], {"good": 6, "anomaly": 6}),
        ("btad", ["01", "02"], {"good": 6, "ko": 6}),
    ],
)
def test_lists_every_test_image_with_its_label(fixtures, name, categories, counts):
    data, expected = _load(fixtures, name)
    assert list(data.meta.columns) == ["dataset", "category", "label", "defect", "path"]
    assert sorted(data.meta["path"]) == sorted(fixtures[name][1]["path"])  # no train image, none missing
    assert (data.meta["dataset"] == name).all()
    assert sorted(data.meta["category"].unique()) == categories
    assert data.meta["defect"].value_counts().to_dict() == counts
    assert (data.meta["label"] == (data.meta["defect"] != "good")).all()
    assert data.meta["label"].tolist() == expected["label"].tolist()
    assert data.images.dtype == torch.uint8 and data.images.shape == (len(data.meta), 3, *HALF)
    assert data.masks.dtype == torch.uint8 and data.masks.shape == (len(data.meta), *HALF)


@pytest.mark.parametrize("name", MAKERS)
def test_listing_without_decoding_matches_the_loaded_meta(fixtures, name):
    data, _ = _load(fixtures, name)
    pd.testing.assert_frame_equal(list_benchmark(name, fixtures[name][0]), data.meta)


def test_categories_argument_selects(fixtures):
    data, _ = _load(fixtures, "btad", categories=["02"])
    assert set(data.meta["category"]) == {"02"} and len(data.meta) == 6


@pytest.mark.parametrize("name", MAKERS)
def test_masks_are_binary_zero_for_good_and_match_the_drawn_defect(fixtures, name):
    data, expected = _load(fixtures, name)
    good = torch.from_numpy(expected["label"].to_numpy() == 0)
    assert data.masks[good].sum() == 0
    assert set(data.masks.unique().tolist()) == {0, 1}
    for i in np.flatnonzero(expected["label"].to_numpy()):
        top, left, bottom, right = (v // 2 for v in expected["box"][i])
        box = torch.zeros(HALF, dtype=torch.uint8)
        box[top:bottom, left:right] = 1
        assert torch.equal(data.masks[i], box), data.meta["path"][i]
        brightness = data.images[i].float().mean(0)
        assert brightness[data.masks[i] == 1].mean() > 200 and brightness[data.masks[i] == 0].mean() < 100


def test_grayscale_images_become_rgb(fixtures):
    data, _ = _load(fixtures, "mvtec", categories=["screw"])
    assert torch.equal(data.images[:, 0], data.images[:, 1]) and torch.equal(
        data.images[:, 1], data.images[:, 2]
    )


def _is_red(images: torch.Tensor) -> torch.Tensor:
    """images (N, 3, ...) -> (N, ...) bool: the fixtures' red stripe colour."""
    return (images[:, 0] > RED[0] - 40) & (images[:, 2] < 50)


def test_squash_keeps_the_whole_frame(fixtures):
    data, _ = _load(fixtures, "mvtec", size=(24, 24), categories=["bottle"])
    assert data.images.shape[-2:] == (24, 24)
    assert _is_red(data.images[:, :, :, 0]).all()  # the left border stripe survives
    assert (data.images[:, 2, :, -1] > 150).all()  # and the right (blue) one


def test_center_crop_keeps_the_centre_and_crops_the_sides(fixtures):
    squash, _ = _load(fixtures, "mvtec", size=(24, 32), categories=["bottle"])
    crop, expected = _load(fixtures, "mvtec", size=(24, 24), geometry="shorter_side_center_crop")
    assert crop.images.shape[-2:] == (24, 24) and crop.masks.shape[-2:] == (24, 24)
    assert not _is_red(crop.images).any()  # 48 x 64 -> 24 x 32, 4 columns cut on each side: stripes gone
    bottle = torch.tensor((crop.meta["category"] == "bottle").to_numpy())
    assert torch.equal(crop.images[bottle], squash.images[:, :, :, 4:28])
    for i in np.flatnonzero(expected["label"].to_numpy()):
        top, left, bottom, right = (v // 2 for v in expected["box"][i])
        box = torch.zeros((24, 24), dtype=torch.uint8)
        box[top:bottom, left - 4 : right - 4] = 1
        assert torch.equal(crop.masks[i], box)


def test_center_crop_to_a_wide_size_covers_it(fixtures):
    data, _ = _load(fixtures, "visa", size=(16, 48), geometry="shorter_side_center_crop")
    assert data.images.shape[-2:] == (16, 48)  # 48 x 64 scaled x0.75 to 36 x 48: full width, rows cropped
    assert _is_red(data.images[:, :, :, 0]).all() and WIDTH * 3 // 4 == 48


def _remove(path: Path) -> Path:
    path.unlink()
    return path


def _rewrite_csv(root: Path, edit) -> Path:
    csv = root / "split_csv" / "1cls.csv"
    edit(pd.read_csv(csv, dtype=str, keep_default_na=False)).to_csv(csv, index=False)
    return csv


BROKEN = {
    "missing root": ("mvtec", lambda root: root / "absent", r"is not a directory"),
    "no category": (
        "mvtec",
        lambda root: _mkdir(root / "empty"),
        r"no mvtec category folder .*empty/bottle/test",
    ),
    "no images": ("btad", lambda root: _empty_category(root), r"no \.bmp/\.png images in .*ok"),
    "missing mask": (
        "mvtec",
        lambda root: _remove(root / "screw" / "ground_truth" / "hole" / "000_mask.png") and root,
        r"missing mask .*screw/ground_truth/hole/000_mask\.png for anomalous image",
    ),
    "missing btad mask": (
        "btad",
        lambda root: _remove(root / "02" / "ground_truth" / "ko" / "0001.bmp") and root,
        r"missing mask .*02/ground_truth/ko/0001\.png",
    ),
    "missing csv": (
        "visa",
        lambda root: _remove(root / "split_csv" / "1cls.csv").parents[1],
        r"missing VisA",
    ),
    "missing column": (
        "visa",
        lambda root: _rewrite_csv(root, lambda t: t.drop(columns="mask")).parents[1],
        r"lacks columns \['mask'\]",
    ),
    "bad label": (
        "visa",
        lambda root: _rewrite_csv(root, lambda t: t.replace({"label": {"anomaly": "bad"}})).parents[1],
        r"labels \['bad'\]; expected 'normal' or 'anomaly'",
    ),
    "missing image": (
        "visa",
        lambda root: _remove(root / "pcb1" / "Data" / "Images" / "Normal" / "test_001.png").parents[4],
        r"missing VisA image .*test_001\.png",
    ),
    "undecodable image": (
        "mvtec",
        lambda root: _garble(root / "bottle" / "test" / "good" / "001.png"),
        r"cannot decode image .*bottle/test/good/001\.png",
    ),
}


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _empty_category(root: Path) -> Path:
    for image in (root / "01" / "test" / "ok").iterdir():
        image.unlink()
    return root


def _garble(path: Path) -> Path:
    path.write_bytes(b"not a png")
    return path.parents[3]


@pytest.mark.parametrize("case", BROKEN)
def test_malformed_dataset_fails_with_one_line(tmp_path, case):
    name, breaks, message = BROKEN[case]
    MAKERS[name](tmp_path / name)
    root = breaks(tmp_path / name)
    with pytest.raises(BenchmarkError, match=message) as error:
        load_benchmark(name, root, HALF)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (("mpdd", "r", HALF), r"benchmark='mpdd' is not allowed; expected one of: mvtec, visa, btad"),
        (("mvtec", "r", HALF, "letterbox"), r"geometry='letterbox' is not allowed"),
        (("mvtec", "r", (24,)), r"size=\(24,\): expected \(height, width\)"),
        (("mvtec", "r", HALF, "squash", ["bottel"]), r"unknown mvtec categories \['bottel'\]"),
    ],
)
def test_bad_arguments_fail_with_one_line(fixtures, args, message):
    name, _, *rest = args
    with pytest.raises(FeclipError, match=message) as error:
        load_benchmark(name, fixtures["mvtec"][0], *rest)
    assert "\n" not in str(error.value)


def test_missing_requested_category_names_its_folder(fixtures):
    with pytest.raises(
        BenchmarkError, match=r"no mvtec category folder .*cable/test; expected <root>/<category>"
    ):
        load_benchmark("mvtec", fixtures["mvtec"][0], HALF, categories=["bottle", "cable"])
    with pytest.raises(BenchmarkError, match=r"no test rows of VisA objects \['pcb2'\]"):
        load_benchmark("visa", fixtures["visa"][0], HALF, categories=["pcb2"])


def test_a_listing_names_what_it_skips_and_refuses_a_dangling_image(tmp_path, capsys):
    root = tmp_path / "mvtec"
    make_mvtec_fixture(root)
    good = root / "bottle" / "test" / "good"
    (good / "Thumbs.db").write_bytes(b"x")
    assert len(list_benchmark("mvtec", root)) == 12
    assert capsys.readouterr().err == f"feclip: note: {good}: skipped 1 entries that are not .png files: Thumbs.db\n"
    (good / "009.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(BenchmarkError, match=f"{good / '009.png'}: not a readable file"):
        list_benchmark("mvtec", root)
