"""The study split: a partition of each domain's test set fixed by the study seed alone."""

import numpy as np
import pandas as pd
import pytest
from helpers import compose

from feclip.evaluation.split import SplitError, eval_set, split_test, study_parts

PRESETS = ("ca_patchcore", "cpd_patchcore", "ca_winclip", "patchcore_exp23", "winclip")


def _meta(n: int = 1000, domain: str = "C") -> pd.DataFrame:
    """HDMAP test metadata: n good + n fault, file index < n/2 cold."""
    index = np.tile(np.arange(n), 2)
    return pd.DataFrame(
        {
            "domain": domain,
            "split": "test",
            "label": np.repeat([0, 1], n),
            "file_index": index,
            "condition": np.where(index < n // 2, "cold", "warm"),
            "path": [f"/data/{domain}/{c}/{i:06d}.tiff" for c in ("good", "fault") for i in range(n)],
        }
    )


def _parts(meta, seed=0, refs=100, dev=0.2):
    return study_parts(meta, seed=seed, refs_per_condition=refs, dev_fraction=dev)


def test_the_parts_partition_the_test_set_stratified():
    meta = _meta()
    part = _parts(meta)
    assert set(part) == {"refs", "dev", "test"} and len(part) == len(meta)
    counts = pd.crosstab([meta["label"], meta["condition"]], part)
    assert counts.loc[(0, "cold"), "refs"] == counts.loc[(0, "warm"), "refs"] == 100
    assert counts.loc[1, "refs"].sum() == 0  # refs are normals only
    assert (counts["dev"] == [80, 80, 100, 100]).all()  # 20 % of each stratum's rest
    assert (counts["test"] == [320, 320, 400, 400]).all()


def test_the_split_is_a_function_of_the_metadata_and_the_study_seed():
    meta = _meta()
    part = _parts(meta)
    shuffled = meta.sample(frac=1.0, random_state=3)
    np.testing.assert_array_equal(_parts(shuffled), part[shuffled.index.to_numpy()])
    assert (_parts(meta, seed=1) != part).any()
    other = _parts(_meta(domain="A"))
    assert (other != part).any()  # each domain has its own draw
    fewer_faults = meta[(meta["label"] == 0) | (meta["file_index"] < 900)].reset_index(drop=True)
    good = (fewer_faults["label"] == 0).to_numpy()
    np.testing.assert_array_equal(_parts(fewer_faults)[good], part[: good.sum()])  # strata draw alone


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_and_run_seeds_share_the_split(preset):
    """The presets pin run seeds 42 or 0; the split follows eval.split.seed alone."""
    meta = _meta()
    default = compose().eval.split
    for seed in (0, 1, 42):
        cfg = compose(f"experiment={preset}", f"seed={seed}")
        assert cfg.eval.split == default
        np.testing.assert_array_equal(split_test(meta, cfg.eval.split).part, split_test(meta, default).part)


def test_whole_test_scores_every_row_and_the_pool_is_everything():
    meta = _meta(40)
    split = split_test(meta, compose("eval.split.protocol=whole_test").eval.split)
    assert (split.part == "test").all() and split.pool.all()
    study = split_test(meta, compose("eval.split.refs_per_condition=5").eval.split)
    np.testing.assert_array_equal(study.pool, study.part == "refs")


def test_too_many_refs_is_a_one_line_error_naming_the_key():
    with pytest.raises(SplitError, match=r"eval\.split\.refs_per_condition=20 .* expected at most 19"):
        _parts(_meta(40), refs=20)


def test_eval_set_names_the_file_list_not_its_folder_or_order():
    meta = _meta(40)
    moved = meta.assign(path=meta["path"].str.replace("/data/", "/elsewhere/"))
    assert eval_set(meta) == eval_set(moved.iloc[::-1]) and len(eval_set(meta)) == 16
    assert eval_set(meta.iloc[1:]) != eval_set(meta)
