"""Training sources (AUX_SOURCES): balanced synthetic faults with masks, other domains with labels only."""

import pytest
import torch
from helpers import SMALL_SPLIT, compose

from feclip.data.hdmap import load_domain
from feclip.data.sources import AUX_SOURCES, SourceContext, SourceError
from feclip.data.transforms import HDMAPInput

STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _context(root, fit):
    return SourceContext(root, SMALL_SPLIT, fit, HDMAPInput((64, 192), mean=STATS[0], std=STATS[1]), (64, 192), *STATS)


def _cfg(root, *overrides):
    return compose(f"data.root={root}", "data.synthetic.n_train=20", "data.synthetic.n_test=20", *overrides)


def test_synthetic_fault_source_is_balanced_with_masks(small_root):
    fit = load_domain(small_root, "C", splits=("train",))
    cfg = _cfg(small_root, "aux.faults_per_normal=1.0")
    data = AUX_SOURCES["synthetic_faults"].build(cfg, _context(small_root, fit))
    assert len(data) == 40 and data.labels.sum() == 20 and bool(data.has_mask.all())
    assert data.masks[:20].sum() == 0 and bool((data.masks[20:].flatten(1).sum(1) > 0).all())
    assert torch.equal(data.images[:20], fit.images)  # clean normals are the fit images, untouched


def test_other_domains_source_has_labels_but_no_masks(small_root):
    fit = load_domain(small_root, "B", splits=("train",))
    cfg = _cfg(small_root, "aux=hdmap_other_domains", "domain=B")
    data = AUX_SOURCES["hdmap_other_domains"].build(cfg, _context(small_root, fit))
    assert len(data) == 3 * 40 and data.masks is None and not bool(data.has_mask.any())
    assert data.labels.float().mean() == 0.5


def test_no_source_trains_nothing(small_root):
    assert AUX_SOURCES["none"].build(_cfg(small_root, "aux=none"), _context(small_root, None)) is None


@pytest.mark.parametrize("name", list(AUX_SOURCES))
def test_every_source_composes_and_says_whether_it_reads_hdmap(name):
    cfg = compose(f"aux={name}")
    assert cfg.aux.source == name and isinstance(AUX_SOURCES[name].needs_hdmap, bool)


def test_in_distribution_training_faults_are_labelled():
    assert AUX_SOURCES["synthetic_faults"].tags(compose()) == {"feclip.training_faults": "training"}
    tags = AUX_SOURCES["synthetic_faults"].tags(compose("aux.fault.family=test_like"))
    assert tags["feclip.training_faults"] == "test_like" and tags["feclip.in_distribution"].startswith("true")
    assert AUX_SOURCES["none"].tags(compose("aux=none")) == {}


def test_a_fault_rate_that_rounds_to_no_fault_is_refused(small_root):
    """aux.faults_per_normal=0.0001 rounded to zero faulty images and ended in a traceback."""
    fit = load_domain(small_root, "C", splits=("train",))
    cfg = _cfg(small_root, "aux.faults_per_normal=0.0001")
    source = AUX_SOURCES["synthetic_faults"]
    with pytest.raises(SourceError, match=r"round\(0.0001 x 20 normals\) = 0 faulty training images"):
        source.check(cfg, len(fit))
    with pytest.raises(SourceError, match="expected at least 1"):
        source.build(cfg, _context(small_root, fit))
    assert source.check(_cfg(small_root, "aux.faults_per_normal=0.05"), len(fit)) == 1
