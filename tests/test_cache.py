"""The frozen-feature cache: training is bit-identical with and without it, and its key changes with every
input that changes the frozen features."""

import json
import shutil

import torch
from helpers import feclip_model, hdmap_set

from feclip.cache import cache_key, compute_frozen, entries, frozen_features, main, resolve_cap
from feclip.data.sets import labelled_set
from feclip.data.transforms import HDMAPInput
from feclip.methods.feclip.method import FEClipMethod
from feclip.methods.feclip.train import TrainConfig, train
from feclip.model.backbone import ClipBackbone
from feclip.model.feclip import FEClip, FEClipConfig
from feclip.runtime import Runtime


def _method(seed: int = 0) -> FEClipMethod:
    return FEClipMethod(feclip_model(seed), train_cfg=TrainConfig(), seed=0)


def test_training_with_cached_tokens_is_bit_identical(tmp_path):
    data, cfg = hdmap_set(), TrainConfig(epochs=2, batch_size=4)
    results = []
    for mode in ("off", "memory", "disk"):
        method = _method()
        rt = Runtime(torch.device("cpu"), batch_size=5, cache=mode, cache_dir=tmp_path)
        tokens = frozen_features(method, data, rt)
        history = train(method.model, data, cfg, rt, seed=3, tokens=tokens)
        results.append((history, method.model.trainable_state_dict()))
    for history, state in results[1:]:
        assert history == results[0][0]
        for name, value in state.items():
            assert torch.equal(value, results[0][1][name]), name
    assert len(entries(tmp_path)) == 1


def test_cache_key_changes_with_images_transform_taps_and_weights():
    method, data = _method(), hdmap_set()

    def key(method=method, images=data, **changed):
        settings = {"precision": "fp32", "device": "cpu", "dtype": "fp32", **changed}
        return cache_key(method.frozen_key(), images, **settings)

    other_images = labelled_set(data.images + 1e-3, data.labels, data.to_input)
    other_input = labelled_set(data.images, data.labels, HDMAPInput((64, 192), resize="nearest"))
    moved = _method()
    moved.model.taps = [2, 3]
    keys = [
        key(),
        key(images=other_images),
        key(images=other_input),
        key(precision="bf16"),
        key(device="cuda"),
        key(dtype="bf16"),
        key(method=_method(seed=1)),
        key(method=moved),
    ]
    assert len(set(keys)) == len(keys)


def test_the_model_name_and_activation_key_the_cache(tmp_path):
    """ViT-B-16 and ViT-B-16-quickgelu with the same weights compute different tokens: different keys."""
    methods = []
    for name in ("ViT-B-16", "ViT-B-16-quickgelu"):
        torch.manual_seed(0)
        backbone = ClipBackbone(name)
        model = FEClip(
            backbone, FEClipConfig(taps=[0]), torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
        )
        methods.append(FEClipMethod(model, train_cfg=TrainConfig(), seed=0))
    methods[1].model.backbone.load_state_dict(methods[0].model.backbone.state_dict())
    identities = [json.loads(m.frozen_key()) for m in methods]
    assert identities[0]["weights"] == identities[1]["weights"]
    assert identities[0]["activation"] == "GELU" and identities[1]["activation"] == "QuickGELU"
    data = hdmap_set(2)
    keys = {cache_key(m.frozen_key(), data, precision="fp32", device="cpu", dtype="fp32") for m in methods}
    assert len(keys) == 2


def test_entries_are_stored_in_bf16_read_back_and_a_corrupt_one_is_recomputed(tmp_path, capsys):
    method, data = _method(), hdmap_set(6)
    rt = Runtime(torch.device("cpu"), batch_size=4, cache="disk", cache_dir=tmp_path, cache_dtype="bf16")
    first = frozen_features(method, data, rt)
    stored = first.features.clone()  # the entry's map dies with the truncation below
    exact = compute_frozen(method, data, rt).features
    assert stored.dtype == torch.bfloat16 and first.input_size == (64, 192)
    del first
    torch.testing.assert_close(stored.float(), exact, rtol=1e-2, atol=1e-2)
    (entry,) = entries(tmp_path)
    assert entry["bytes"] < exact.numel() * 2 + 1024  # 2 bytes per value + the .npy header
    with entry["path"].open("r+b") as handle:
        handle.truncate(entry["bytes"] // 2)
    again = frozen_features(method, data, rt)
    assert "unreadable" in capsys.readouterr().err and torch.equal(again.features, stored)


def test_size_cap_evicts_the_least_recently_used(tmp_path):
    method = _method()
    rt = Runtime(torch.device("cpu"), batch_size=4, cache="disk", cache_dir=tmp_path)
    for n in (4, 5):
        frozen_features(method, hdmap_set(n), rt)
    (oldest, newest) = entries(tmp_path)
    capped = Runtime(
        torch.device("cpu"),
        batch_size=4,
        cache="disk",
        cache_dir=tmp_path,
        cache_max_gb=newest["bytes"] * 2.5 / 2**30,
    )
    frozen_features(method, hdmap_set(6), capped)
    remaining = [e["key"] for e in entries(tmp_path)]
    assert oldest["key"] not in remaining and newest["key"] in remaining and len(remaining) == 2


def test_cli_lists_and_clears(tmp_path, capsys):
    frozen_features(_method(), hdmap_set(4), Runtime(torch.device("cpu"), cache="disk", cache_dir=tmp_path))
    assert main(["--list", "--dir", str(tmp_path)]) == 0 and "1 entries" in capsys.readouterr().out
    assert main(["--clear", "--older-than", "1", "--dir", str(tmp_path)]) == 0 and len(entries(tmp_path)) == 1
    assert main(["--clear", "--dir", str(tmp_path)]) == 0 and entries(tmp_path) == []


def test_the_auto_cap_is_what_the_folder_holds_plus_half_the_free_disk(tmp_path):
    folder = tmp_path / "not" / "yet"  # the cap is known before the folder exists
    free = shutil.disk_usage(tmp_path).free
    assert abs(resolve_cap("auto", folder) - 0.5 * free / 2**30) < 0.01
    folder.mkdir(parents=True)
    (folder / "entry.npy").write_bytes(b"0" * 2**20)
    assert abs(resolve_cap("auto", folder) - (2**20 + 0.5 * shutil.disk_usage(tmp_path).free) / 2**30) < 0.01
    assert resolve_cap(3.0, folder) == 3.0 and resolve_cap(None, folder) is None


def test_an_entry_overwritten_with_other_bytes_of_the_same_size_is_recomputed(tmp_path, capsys):
    """Used to be read without a word: every entry now carries the sha256 of its .npy."""
    method, data = _method(), hdmap_set(6)
    rt = Runtime(torch.device("cpu"), batch_size=4, cache="disk", cache_dir=tmp_path)
    stored = frozen_features(method, data, rt).features.clone()
    (entry,) = entries(tmp_path)
    meta = json.loads(entry["path"].with_suffix(".json").read_text())
    assert len(meta["sha256"]) == 64
    size = entry["path"].stat().st_size
    with entry["path"].open("r+b") as handle:  # the header stays valid: only feature bytes change
        handle.seek(size - 64)
        handle.write(bytes(64))
    assert entry["path"].stat().st_size == size
    again = frozen_features(method, data, rt)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("feclip: ")]
    assert notes == [
        f"feclip: note: cache entry {entry['path']} is unreadable (its content does not match the sha256 "
        "written with it (changed on disk)); recomputing it"
    ]
    assert torch.equal(again.features, stored)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["--list", "--dir", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == (
        f"feclip.cache: error: --dir {tmp_path / 'file'} is a file; "
        "expected the cache folder (config cache_dir)\n"
    )
