"""ImageSet: batches converted on the device, masks resized nearest, a content fingerprint."""

import torch

from feclip.data.sets import labelled_set
from feclip.data.transforms import HDMAPInput


def _set(masks=True):
    images = torch.rand(5, 31, 95)
    mask = (torch.rand(5, 31, 95) > 0.9).to(torch.uint8) if masks else None
    return labelled_set(images, [0, 1, 0, 1, 1], HDMAPInput((64, 192)), mask)


def test_batch_rows_inputs_and_masks():
    data = _set()
    batch = data.batch(torch.tensor([1, 3]), torch.device("cpu"), (64, 192))
    assert batch.inputs.shape == (2, 3, 64, 192) and batch.labels.tolist() == [1.0, 1.0]
    assert batch.masks.shape == (2, 64, 192) and set(batch.masks.unique().tolist()) <= {0.0, 1.0}
    assert batch.has_mask.all() and not _set(masks=False).has_mask.any()
    assert data.batch(torch.tensor([0]), torch.device("cpu"), (64, 192), inputs=False).inputs is None


def test_fingerprint_changes_with_a_pixel_and_with_the_transform():
    data = _set()
    changed = labelled_set(data.images.clone(), data.labels, data.to_input)
    changed.images[0, 0, 0] += 1e-3
    other = labelled_set(data.images, data.labels, HDMAPInput((64, 192), resize="nearest"))
    assert len({data.fingerprint(), changed.fingerprint(), other.fingerprint()}) == 3
    assert labelled_set(data.images, data.labels, data.to_input).fingerprint() == data.fingerprint()
