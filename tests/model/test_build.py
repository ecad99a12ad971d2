"""FE-CLIP from the config: keys map onto the nested dataclasses, and the plain-CLIP rule."""

from helpers import compose

from feclip.model.build import LOAD_KEYS, feclip_config, plain_clip


def test_no_training_source_without_checkpoint_is_the_plain_clip_baseline():
    assert plain_clip(compose("aux=none")) and feclip_config(compose("aux=none")).adapters is False
    assert not plain_clip(compose()) and feclip_config(compose()).adapters is True
    loaded = compose("aux=none", "model.checkpoint=/some/checkpoint")
    assert not plain_clip(loaded) and feclip_config(loaded).adapters is True


def test_config_keys_are_the_dataclass_fields():
    cfg = feclip_config(compose("freq=horizontal", "model.taps=[1,3]", "model.lam=0.3"))
    assert cfg.freq.ffe.window == (1, 3) and cfg.freq.lfs.window == (1, 5)
    assert cfg.taps == [1, 3] and cfg.lam == 0.3
    model_keys = set(compose().model) - set(LOAD_KEYS)
    assert model_keys == set(type(cfg).field_names()) - {"freq"}
