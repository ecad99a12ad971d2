"""The real-HDMAP reader (feclip.data.hdmap) on tiny TIFF trees written in tmp_path.

Each tree is <root>/domain_A/{train/good, test/good, test/fault}/NNNNNN.tiff of float32 (31, 95) maps, with
ground_truth/fault/ masks when asked. Every bad input must give a one-line HDMAPError naming the path.
"""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import SMALL_SPLIT

from feclip.data.hdmap import META_COLUMNS, HDMAPData, HDMAPError, data_hash, load_domain, read_tiff, split_validation

SPLIT = 2  # the small trees here: test file index 0-1 cold, 2-3 warm
SHAPE = (31, 95)
FOLDERS = (("train", "good"), ("test", "good"), ("test", "fault"))
PEAK = np.float32(2.9388)  # the largest real HDMAP value (domain C fault): must survive unclipped


def write_tree(root: Path, indices: dict | None = None, masks: bool = False, domain: str = "A") -> dict:
    """Writes one domain; returns {(split, class): (images (n, H, W) float32, file indices)} as written.

    indices: {(split, class): file indices}, default 0..3 for each of the three folders.
    """
    rng = np.random.default_rng(0)
    indices = indices or {folder: range(4) for folder in FOLDERS}
    written = {}
    for (split, cls), folder_indices in indices.items():
        folder = root / f"domain_{domain}" / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        images = rng.uniform(0.05, 0.9, (len(folder_indices), *SHAPE)).astype(np.float32)
        if cls == "fault":
            images[:, 7, :] += 1.0  # a bright band row, peaking at exactly PEAK
            images[:, 7, 10] = PEAK
        for image, index in zip(images, folder_indices, strict=True):
            tifffile.imwrite(folder / f"{index:06d}.tiff", image)
            if masks and cls == "fault":
                write_mask(root, index, domain)
        written[split, cls] = images, list(folder_indices)
    return written


def write_mask(root: Path, index: int, domain: str = "A", shape=SHAPE) -> Path:
    """A uint8 mask with row 7 set (the fault band of write_tree)."""
    folder = root / f"domain_{domain}" / "ground_truth" / "fault"
    folder.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[7] = 1
    tifffile.imwrite(folder / f"{index:06d}.tiff", mask)
    return folder / f"{index:06d}.tiff"


def expect_error(path, call, *args, **kwargs) -> str:
    """call(*args, **kwargs) must raise a one-line HDMAPError naming `path`; returns the message."""
    with pytest.raises(HDMAPError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.fixture
def tree(tmp_path) -> dict:
    return write_tree(tmp_path)


# ---------------------------------------------------------------- reading a good tree


def test_images_meta_and_order(tmp_path, tree):
    data = load_domain(tmp_path, "A", cold_warm_split=SPLIT)
    assert len(data) == 12 and data.masks is None
    assert data.images.dtype == torch.float32 and tuple(data.images.shape) == (12, *SHAPE)
    expected = np.concatenate([tree[folder][0] for folder in FOLDERS])
    assert np.array_equal(data.images.numpy(), expected)
    meta = data.meta
    assert list(meta.columns) == list(META_COLUMNS)
    assert meta["split"].tolist() == ["train"] * 4 + ["test"] * 8
    assert meta["label"].tolist() == [0] * 8 + [1] * 4
    assert meta["file_index"].tolist() == [0, 1, 2, 3] * 3
    assert (meta["domain"] == "A").all()
    assert meta["path"][5] == str(tmp_path / "domain_A" / "test" / "good" / "000001.tiff")
    assert meta["condition"].tolist() == ["none"] * 4 + ["cold", "cold", "warm", "warm"] * 2


def test_values_above_one_are_kept_exactly(tmp_path, tree):
    data = load_domain(tmp_path, "A", cold_warm_split=SPLIT)
    fault = data.meta["label"].to_numpy() == 1
    assert data.images[fault].amax(dim=(1, 2)).tolist() == [float(PEAK)] * 4
    assert data.images[~fault].max() < 1


def test_order_is_by_file_index_and_the_split_is_the_layout_not_the_data(tmp_path):
    write_tree(
        tmp_path,
        {("train", "good"): [5, 2], ("test", "good"): [0, 1, 8, 9], ("test", "fault"): [7, 3, 4, 0]},
    )
    meta = load_domain(tmp_path, "A", cold_warm_split=5).meta
    assert meta["file_index"].tolist() == [2, 5, 0, 1, 8, 9, 0, 3, 4, 7]
    good, fault = ["cold", "cold", "warm", "warm"], ["cold", "cold", "cold", "warm"]
    assert meta["condition"].tolist() == ["none"] * 2 + good + fault


def test_indices_or_counts_that_contradict_the_layout_are_errors(tmp_path):
    """The default is HDMAP's layout (500): one stray 009999 must not turn the others cold silently."""
    write_tree(tmp_path, {("train", "good"): [0], ("test", "good"): [0, 700, 9999], ("test", "fault"): [1, 600]})
    with pytest.raises(HDMAPError, match=r"009999\.tiff: file index 9999 contradicts the cold/warm layout"):
        load_domain(tmp_path, "A")
    write_tree(tmp_path / "cold_only", {("train", "good"): [0], ("test", "good"): [0, 1], ("test", "fault"): [2, 3]})
    with pytest.raises(HDMAPError, match=r"test/good: 2 cold and 0 warm files for data\.cold_warm_split=500"):
        load_domain(tmp_path / "cold_only", "A")


def test_upper_case_and_short_suffixes_are_read(tmp_path):
    written = write_tree(tmp_path)
    folder = tmp_path / "domain_A" / "test" / "good"
    (folder / "000001.tiff").rename(folder / "000001.TIFF")
    (folder / "000002.tiff").rename(folder / "000002.tif")
    data = load_domain(tmp_path, "A", cold_warm_split=SPLIT)
    assert data.meta["file_index"].tolist() == [0, 1, 2, 3] * 3
    assert np.array_equal(data.images[4:8].numpy(), written[("test", "good")][0])


def test_integer_tiffs_are_refused_unless_allowed(tmp_path):
    write_tree(tmp_path)
    path = tmp_path / "domain_A" / "train" / "good" / "000000.tiff"
    tifffile.imwrite(path, np.full(SHAPE, 48409, dtype=np.uint16))
    with pytest.raises(HDMAPError, match=r"000000\.tiff: integer TIFF \(uint16, values up to 48409\)"):
        load_domain(tmp_path, "A", cold_warm_split=SPLIT)
    data = load_domain(tmp_path, "A", cold_warm_split=SPLIT, allow_integer=True)
    assert data.images[0].max() == 48409


def test_custom_cold_warm_split(tmp_path, tree):
    write_tree(tmp_path / "six", {("train", "good"): [0], ("test", "good"): range(6), ("test", "fault"): range(6)})
    meta = load_domain(tmp_path / "six", "A", cold_warm_split=3).meta
    test = meta[meta["split"] == "test"]
    assert test["condition"].tolist() == ["cold"] * 3 + ["warm"] * 3 + ["cold"] * 3 + ["warm"] * 3
    assert (meta.loc[meta["split"] == "train", "condition"] == "none").all()


def test_masks_present_binary_and_zero_for_good(tmp_path):
    write_tree(tmp_path, masks=True)
    data = load_domain(tmp_path, "A", cold_warm_split=SPLIT)
    assert data.masks.dtype == torch.uint8 and data.masks.shape == data.images.shape
    good = data.meta["label"].to_numpy() == 0
    assert data.masks[good].sum() == 0
    expected = torch.zeros(SHAPE, dtype=torch.uint8)
    expected[7] = 1
    assert all(torch.equal(mask, expected) for mask in data.masks[~good])


def test_ground_truth_without_a_fault_folder_means_no_masks(tmp_path, tree):
    (tmp_path / "domain_A" / "ground_truth" / "good").mkdir(parents=True)
    assert load_domain(tmp_path, "A", cold_warm_split=SPLIT).masks is None


def test_test_split_only(tmp_path, tree):
    data = load_domain(tmp_path, "A", splits=("test",), cold_warm_split=SPLIT)
    assert len(data) == 8 and set(data.meta["split"]) == {"test"}
    assert np.array_equal(
        data.images.numpy(), np.concatenate([tree["test", "good"][0], tree["test", "fault"][0]])
    )
    assert data.meta["condition"].tolist() == ["cold", "cold", "warm", "warm"] * 2


def test_test_split_only_does_not_need_train(tmp_path):
    write_tree(tmp_path, {("test", "good"): range(4), ("test", "fault"): range(4)})
    assert len(load_domain(tmp_path, "A", splits=("test",), cold_warm_split=SPLIT)) == 8


@pytest.mark.parametrize("splits", [("val",), (), ("train", "tset")])
def test_unknown_splits_are_an_error(tmp_path, tree, splits):
    with pytest.raises(HDMAPError, match="splits="):
        load_domain(tmp_path, "A", splits=splits, cold_warm_split=SPLIT)


def test_subset_with_bool_mask_and_positions(tmp_path, tree):
    data = load_domain(tmp_path, "A", splits=("test",), cold_warm_split=SPLIT)
    by_mask = data.subset((data.meta["label"] == 1).to_numpy())
    assert by_mask.meta["label"].tolist() == [1] * 4 and by_mask.meta.index.tolist() == [0, 1, 2, 3]
    assert torch.equal(by_mask.images, data.images[4:])
    by_position = data.subset([6, 1])
    assert by_position.meta["file_index"].tolist() == [2, 1]
    assert by_position.meta["label"].tolist() == [1, 0] and by_position.meta.index.tolist() == [0, 1]
    assert torch.equal(by_position.images, data.images[[6, 1]])
    assert by_position.masks is None


def test_subset_keeps_masks_aligned(tmp_path):
    write_tree(tmp_path, masks=True)
    data = load_domain(tmp_path, "A", cold_warm_split=SPLIT).subset([11, 0])
    assert data.masks[0].sum() == SHAPE[1] and data.masks[1].sum() == 0


def test_subset_bool_mask_of_wrong_length_is_an_error(tmp_path, tree):
    data = load_domain(tmp_path, "A", cold_warm_split=SPLIT)
    with pytest.raises(HDMAPError, match=r"bool mask of shape \(3,\), expected \(12,\)"):
        data.subset([True, False, True])


def test_data_hash_is_stable_and_changes_with_one_pixel(tmp_path, tree):
    data = load_domain(tmp_path, "A", cold_warm_split=SPLIT)
    assert data_hash(data) == data_hash(load_domain(tmp_path, "A", cold_warm_split=SPLIT))
    changed = data.images.clone()
    changed[5, 3, 4] += 1e-3
    assert data_hash(HDMAPData(changed, data.meta)) != data_hash(data)
    path = Path(data.meta["path"][5])
    image = tifffile.imread(path)
    image[3, 4] += 1e-3
    tifffile.imwrite(path, image)
    assert data_hash(load_domain(tmp_path, "A", cold_warm_split=SPLIT)) != data_hash(data)


def test_data_hash_covers_the_cold_warm_split_and_masks(tmp_path):
    write_tree(tmp_path, masks=True)
    data = load_domain(tmp_path, "A", cold_warm_split=SPLIT)
    meta = data.meta.assign(condition=data.meta["condition"].replace({"cold": "warm", "warm": "cold"}))
    assert data_hash(HDMAPData(data.images, meta, data.masks)) != data_hash(data)
    masks = data.masks.clone()
    masks[11, 0, 0] = 1
    assert data_hash(HDMAPData(data.images, data.meta, masks)) != data_hash(data)
    assert data_hash(HDMAPData(data.images, data.meta)) != data_hash(data)


def test_read_tiff_squeezes_a_single_page(tmp_path):
    path = tmp_path / "000000.tiff"
    tifffile.imwrite(path, np.full((1, *SHAPE), 1.5, dtype=np.float32))
    image = read_tiff(path)
    assert image.shape == SHAPE and image.dtype == np.float32 and (image == 1.5).all()


# ---------------------------------------------------------------- bad input


def test_missing_root(tmp_path):
    root = tmp_path / "no_such_folder"
    expect_error(root, load_domain, root, "A", cold_warm_split=SPLIT)


def test_missing_domain_lists_the_domains_found(tmp_path):
    write_tree(tmp_path, domain="A")
    write_tree(tmp_path, domain="C")
    message = expect_error(tmp_path / "domain_B", load_domain, tmp_path, "B", cold_warm_split=SPLIT)
    assert "domain_A" in message and "domain_C" in message


def test_missing_split_folder(tmp_path):
    write_tree(tmp_path, {("train", "good"): range(2), ("test", "good"): range(4)})
    expect_error(tmp_path / "domain_A" / "test" / "fault", load_domain, tmp_path, "A", cold_warm_split=SPLIT)


def test_empty_split_folder(tmp_path, tree):
    folder = tmp_path / "domain_A" / "test" / "good"
    for path in folder.iterdir():
        path.unlink()
    message = expect_error(folder, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert "empty" in message


def test_corrupt_tiff(tmp_path, tree):
    path = tmp_path / "domain_A" / "train" / "good" / "000002.tiff"
    path.write_bytes(b"\x00\x01" + np.random.default_rng(0).bytes(500))
    message = expect_error(path, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert "not a readable TIFF" in message


def test_non_finite_values(tmp_path, tree):
    path = tmp_path / "domain_A" / "test" / "fault" / "000001.tiff"
    image = np.full(SHAPE, 0.5, dtype=np.float32)
    image[0, 0], image[3, 3] = np.nan, np.inf
    tifffile.imwrite(path, image)
    message = expect_error(path, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert "2 non-finite" in message


@pytest.mark.parametrize(("shape", "photometric"), [((2, *SHAPE), "minisblack"), ((*SHAPE, 3), "rgb")])
def test_three_dimensional_image(tmp_path, tree, shape, photometric):
    path = tmp_path / "domain_A" / "test" / "good" / "000000.tiff"
    tifffile.imwrite(path, np.full(shape, 0.5, dtype=np.float32), photometric=photometric)
    message = expect_error(path, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert str(shape) in message


def test_different_shapes_within_a_split(tmp_path, tree):
    path = tmp_path / "domain_A" / "train" / "good" / "000003.tiff"
    tifffile.imwrite(path, np.full((31, 94), 0.5, dtype=np.float32))
    message = expect_error(path, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert str(tmp_path / "domain_A" / "train" / "good") in message and "(31, 94)" in message


@pytest.mark.parametrize("name", ["00001.tiff", "0000012.tiff", "image_1.tiff", "00000a.tif"])
def test_file_name_not_six_digits(tmp_path, tree, name):
    path = tmp_path / "domain_A" / "test" / "good" / name
    tifffile.imwrite(path, np.full(SHAPE, 0.5, dtype=np.float32))
    message = expect_error(path, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert "6-digit" in message


def test_duplicate_file_index(tmp_path, tree):
    path = tmp_path / "domain_A" / "test" / "good" / "000001.tif"
    tifffile.imwrite(path, np.full(SHAPE, 0.5, dtype=np.float32))
    expect_error("000001", load_domain, tmp_path, "A", cold_warm_split=SPLIT)


def test_fault_without_mask_when_ground_truth_exists(tmp_path):
    write_tree(tmp_path, masks=True)
    missing = tmp_path / "domain_A" / "ground_truth" / "fault" / "000002.tiff"
    missing.unlink()
    message = expect_error(missing, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert str(tmp_path / "domain_A" / "test" / "fault" / "000002.tiff") in message


def test_mask_of_another_shape(tmp_path):
    write_tree(tmp_path, masks=True)
    path = write_mask(tmp_path, 3, shape=(31, 94))
    message = expect_error(path, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert "(31, 94)" in message and "(31, 95)" in message


def test_corrupt_mask(tmp_path):
    write_tree(tmp_path, masks=True)
    path = tmp_path / "domain_A" / "ground_truth" / "fault" / "000000.tiff"
    path.write_bytes(b"\x00\x01" + np.random.default_rng(1).bytes(300))
    expect_error(path, load_domain, tmp_path, "A", cold_warm_split=SPLIT)


def test_negative_values_warn_with_count_and_are_kept(tmp_path, tree):
    path = tmp_path / "domain_A" / "test" / "good" / "000002.tiff"
    image = tree["test", "good"][0][2].copy()
    image[0, :3] = [-0.25, -0.5, -1.0]
    tifffile.imwrite(path, image)
    with pytest.warns(UserWarning, match="3 negative pixel values") as record:
        data = load_domain(tmp_path, "A", cold_warm_split=SPLIT)
    assert str(tmp_path / "domain_A") in str(record[0].message)
    assert data.images[6, 0, :3].tolist() == [-0.25, -0.5, -1.0]


def test_validation_slice_is_disjoint_and_seeded(small_root):
    train = load_domain(small_root, "C", splits=("train",), cold_warm_split=SMALL_SPLIT)
    fit, val = split_validation(train, 0.1, seed=0)
    assert len(val) == 2 and len(fit) == 18
    assert not set(fit.meta["path"]) & set(val.meta["path"])
    assert split_validation(train, 0.1, seed=0)[1].meta["path"].tolist() == val.meta["path"].tolist()


def test_predictions_travel_with_their_rows(small_root):
    test = load_domain(small_root, "C", splits=("test",), cold_warm_split=SMALL_SPLIT)
    scores = test.meta["file_index"].to_numpy() * 1.0 + test.meta["label"].to_numpy() * 1000
    scored = test.with_predictions({"score": scores}, torch.arange(len(test)).float()[:, None, None].expand(-1, 31, 95))
    part = scored.subset((scored.meta["label"] == 1).to_numpy())
    assert (part.meta["score"] == part.meta["file_index"] + 1000).all()
    assert torch.equal(part.maps[:, 0, 0], torch.as_tensor(np.flatnonzero(scored.meta["label"] == 1)).float())
    assert torch.equal(part.masks, scored.masks[torch.as_tensor(np.flatnonzero(scored.meta["label"] == 1))])


# ---------------------------------------------------------------- nothing dropped or changed silently


def test_a_dangling_symlink_in_train_is_an_error_not_a_skipped_image(tmp_path, tree):
    """It used to be skipped and the training count stayed as if nothing happened."""
    link = tmp_path / "domain_A" / "train" / "good" / "000004.tiff"
    link.symlink_to(tmp_path / "gone" / "000004.tiff")
    message = expect_error(link, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert f"a symlink to {tmp_path / 'gone' / '000004.tiff'}, which is missing" in message


def test_entries_that_are_not_tiffs_are_named_in_one_note(tmp_path, tree, capsys):
    folder = tmp_path / "domain_A" / "train" / "good"
    (folder / "notes.txt").write_text("x")
    (folder / "old").mkdir()
    data = load_domain(tmp_path, "A", splits=("train",), cold_warm_split=SPLIT)
    assert len(data) == 4
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("feclip: ")]
    assert line == f"feclip: note: {folder}: skipped 2 entries that are not .tif/.tiff files: notes.txt, old/"


def test_a_float64_value_beyond_float32_names_the_file_and_the_value(tmp_path, tree):
    """1e300 became inf in float32 and the job blamed the learning rate ("training diverged")."""
    path = tmp_path / "domain_A" / "train" / "good" / "000001.tiff"
    image = np.full(SHAPE, 0.5, dtype=np.float64)
    image[3, 4] = 1e300
    tifffile.imwrite(path, image)
    message = expect_error(path, load_domain, tmp_path, "A", cold_warm_split=SPLIT)
    assert "float64 value 1e+300 at (row 3, column 4) is beyond float32's range" in message
    assert read_tiff(path.with_name("000000.tiff")).dtype == np.float32


@pytest.mark.parametrize("fraction", [0.99, 0.98])
def test_a_validation_fraction_that_holds_out_every_train_image_is_refused(small_root, fraction):
    """data.val_fraction=0.99 left no image to fit on and ended in a traceback later."""
    train = load_domain(small_root, "C", splits=("train",), cold_warm_split=SMALL_SPLIT)
    with pytest.raises(HDMAPError, match=f"data.val_fraction={fraction} holds out 20 of the 20 train/good"):
        split_validation(train, fraction, seed=0)
    fit, val = split_validation(train, 0.95, seed=0)
    assert (len(fit), len(val)) == (1, 19)
