"""The frozen-feature cache: training is bit-identical with and without it, and its key changes with every
input that changes the frozen features."""

import torch
from helpers import feclip_model, hdmap_set

from feclip.cache import cache_key, frozen_features
from feclip.data.sets import labelled_set
from feclip.data.transforms import HDMAPInput
from feclip.methods.feclip.method import FEClipMethod
from feclip.methods.feclip.train import TrainConfig, train
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
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 1


def test_cache_key_changes_with_images_transform_taps_and_weights():
    method, data = _method(), hdmap_set()
    key = cache_key(method.frozen_key(), data, "fp32")
    other_images = labelled_set(data.images + 1e-3, data.labels, data.to_input)
    other_input = labelled_set(data.images, data.labels, HDMAPInput((64, 192), resize="nearest"))
    assert cache_key(method.frozen_key(), other_images, "fp32") != key
    assert cache_key(method.frozen_key(), other_input, "fp32") != key
    assert cache_key(method.frozen_key(), data, "bf16") != key
    assert cache_key(_method(seed=1).frozen_key(), data, "fp32") != key
    moved = _method()
    moved.model.taps = [2, 3]
    assert cache_key(moved.frozen_key(), data, "fp32") != key
