"""Progress bars of a job, labelled with the job's run name: the jobs of a parallel sweep
(`hydra/launcher=joblib`) share one terminal, and a bar must say whose it is.

`tracked_job` sets the label when a job starts (`job_label(run_name)`); every loop that shows progress uses
`progress(iterable, desc)`. Outside a job the label is empty.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from tqdm import tqdm

_LABEL = [""]


@contextlib.contextmanager
def job_label(name: str) -> Iterator[None]:
    """Bars started inside the block read '<name> · <desc>'."""
    previous, _LABEL[0] = _LABEL[0], name
    try:
        yield
    finally:
        _LABEL[0] = previous


def label(desc: str) -> str:
    """desc, prefixed with the current job's name when there is one."""
    return f"{_LABEL[0]} · {desc}" if _LABEL[0] else desc


def progress(iterable: Iterable, desc: str, **options) -> tqdm:
    """tqdm over `iterable` with the job-labelled `desc`; `options` go to tqdm."""
    return tqdm(iterable, desc=label(desc), **options)
