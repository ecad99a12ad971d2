"""The study split: each domain's test set partitioned once, the same for every run of every method.

`eval.split.protocol=study` (the default) cuts the test rows of a domain into three parts, a pure function of
the test metadata and the study's seed (`eval.split.seed`; never the run seed, which presets pin to 42 or 0):
- `refs`: `refs_per_condition` test/good images per condition, drawn at random. Reference banks
  (`fewshot.source=test_extremes` takes the k lowest / highest file indices among them), gate fitting and
  `eval.threshold.source=refs` thresholds use these and nothing else from the test set. Never scored.
- `dev`: `dev_fraction` of each (label x condition) stratum of the rest: scored by every run, its metrics
  logged as `dev/<name>`, for choosing variants and knobs.
- `test`: the rest, scored by every run whatever its k, gate or method; the metrics keep their plain names.
Each stratum is drawn from its own generator, seeded by (seed, domain, label, condition), over the rows in
file-index order: other strata, other domains and the row order of `meta` do not move it.

`whole_test` is the protocol of the runs before the split (kept for continuity, not the default): every test
image is scored except the references a run takes from the test set, so the scored set depends on k.

`eval.split.score` names the parts a run scores, both by default; a search's trials score `[dev]` only, so
no test number exists before its confirm stage.

`eval_set` names the scored file list (a hash of domain / class / file index), so runs scored on different
images are never compared unknowingly.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from feclip.errors import FeclipError
from feclip.registry import choices

SPLIT_PROTOCOLS = choices("study split protocol", "eval.split.protocol", ("study", "whole_test"))
PARTS = ("refs", "dev", "test")
SCORED_PARTS = ("dev", "test")  # eval.split.score: the parts a run scores (a search's trials: dev only)
CONDITIONS = ("cold", "warm")


class SplitError(FeclipError):
    """The test set cannot be split as configured; the message names the key and what was expected."""


@dataclass(frozen=True)
class StudySplit:
    protocol: str
    part: np.ndarray  # (N_test,) 'refs' | 'dev' | 'test' per test row

    def rows(self, *names: str) -> np.ndarray:
        """(N_test,) bool: rows in any of the parts `names`."""
        return np.isin(self.part, names)

    @property
    def pool(self) -> np.ndarray:
        """(N_test,) bool: rows references may come from: refs (study), every test row (whole_test)."""
        return self.rows("refs") if self.protocol == "study" else np.ones(len(self.part), dtype=bool)


def split_test(meta: pd.DataFrame, split) -> StudySplit:
    """The `eval.split` config (protocol, seed, refs_per_condition, dev_fraction) applied to test `meta`."""
    SPLIT_PROTOCOLS.get_entry(split.protocol)
    if split.protocol == "whole_test":
        return StudySplit("whole_test", np.full(len(meta), "test", dtype=object))
    part = study_parts(
        meta, seed=split.seed, refs_per_condition=split.refs_per_condition, dev_fraction=split.dev_fraction
    )
    return StudySplit("study", part)


def study_parts(meta: pd.DataFrame, *, seed: int, refs_per_condition: int, dev_fraction: float) -> np.ndarray:
    """(N,) part of each test row of `meta` (domain, label, condition, file_index): refs | dev | test."""
    part = np.full(len(meta), "test", dtype=object)
    for label in (0, 1):
        for condition in CONDITIONS:
            rows = _stratum(meta, label, condition)
            drawn = np.random.default_rng(_stratum_seed(meta, seed, label, condition)).permutation(rows)
            n_refs = refs_per_condition if label == 0 else 0
            if len(rows) <= n_refs:
                raise SplitError(
                    f"eval.split.refs_per_condition={refs_per_condition} leaves no {condition} test/good "
                    f"image to score (domain {meta['domain'].iloc[0]} has {len(rows)}); expected at most "
                    f"{len(rows) - 1}"
                )
            n_dev = min(int(dev_fraction * (len(rows) - n_refs) + 0.5), len(rows) - n_refs - 1)
            part[drawn[:n_refs]] = "refs"
            part[drawn[n_refs : n_refs + n_dev]] = "dev"
    return part


def _stratum(meta: pd.DataFrame, label: int, condition: str) -> np.ndarray:
    """Row positions of one (label, condition) stratum in file-index order."""
    rows = np.flatnonzero(((meta["label"] == label) & (meta["condition"] == condition)).to_numpy())
    return rows[np.argsort(meta["file_index"].to_numpy()[rows], kind="stable")]


def _stratum_seed(meta: pd.DataFrame, seed: int, label: int, condition: str) -> list[int]:
    domains = meta["domain"].unique()
    if len(domains) != 1:
        raise SplitError(f"the study split partitions one domain's test set; got domains {sorted(domains)}")
    return [seed, zlib.crc32(str(domains[0]).encode()), label, CONDITIONS.index(condition)]


def eval_set(meta: pd.DataFrame) -> str:
    """16 hex digits naming the scored file list (domain, class, file index; not the folder it lives in)."""
    keys = sorted(
        f"{domain}/{'fault' if label else 'good'}/{index:06d}"
        for domain, label, index in zip(meta["domain"], meta["label"], meta["file_index"], strict=True)
    )
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]
