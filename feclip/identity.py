"""What a run's results depend on: the config keys its method reads and the keys every job reads.

Each method's registry entry declares `reads` (`Reads`): the config groups and keys its computation reads
beyond `SHARED` (the keys the shared pipeline reads for every method: data, split, evaluation, reference
banks, gates, seed), and its `headline`, the keys its variant always names. From them follow:
- `relevant(config, reads)`: the resolved config without what the method never reads, and without where a
  job runs and is tracked (`NEVER`); its hash is the run's identity (`feclip.config_hash`: a sweep's jobs of
  one identity run once, `tracking.skip_finished` finds earlier runs by it);
- the params a run logs: the relevant config plus `COMPUTE` (device and precision);
- the run name and variant (`feclip.tracking.names`): only keys the method reads.

A method that declares nothing reads everything (`EVERYTHING`): nothing is left out of its identity, so no
two of its jobs are ever taken for one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

SHARED = (
    "mode",
    "seed",
    "domain",
    "data",
    "eval",
    "gating",
    "method.name",
    "fewshot.k",
    "fewshot.source",
    "fewshot.context",
    "fewshot.context_k",
    "fewshot.context_ks",
    "fewshot.chunk_size",
)
COMPUTE = ("device", "precision")  # what a job computes in: identity and params, never names (tags)
NEVER = ("hydra", "tracking", "compare", "search", "cache_dir")  # where a job runs and is tracked
SEPARATOR = "·"  # a variant's method and the rest: `feclip·fft` (typed on a command line: `feclip.fft`)


def under(key: str, prefix: str) -> bool:
    """Whether `key` is `prefix` or inside it (`freq.lfs.window` is under `freq`, not under `fr`)."""
    return key == prefix or key.startswith(f"{prefix}.")


@dataclass(frozen=True)
class Reads:
    """The config a method's results depend on: `keys` (groups or dotted keys, beyond SHARED; None: every
    key) and `headline`, the keys its variant names even at their defaults (a group: its chosen option; a
    key: its value), so a default is named by what it is (`feclip·dct`, `patchcore·tiny`)."""

    keys: tuple[str, ...] | None = None
    headline: tuple[str, ...] = ()

    def covers(self, key: str) -> bool:
        """Whether the method's results may depend on config `key` (COMPUTE included; NEVER excluded)."""
        if any(under(key, prefix) for prefix in NEVER):
            return False
        if self.keys is None:
            return True
        return any(under(key, prefix) for prefix in (*SHARED, *COMPUTE, *self.keys))

    def touches(self, group: str) -> bool:
        """Whether the method reads any key of config `group` (then its chosen option may name a variant)."""
        if any(under(group, prefix) for prefix in NEVER):
            return False
        return self.keys is None or any(
            under(prefix, group) or under(group, prefix) for prefix in (*SHARED, *self.keys)
        )


EVERYTHING = Reads()


def relevant(config: dict, reads: Reads, prefix: str = "") -> dict:
    """The nested resolved `config` restricted to the keys `reads` covers."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not reads.covers(name):
            inner = relevant(value, reads, f"{name}.")  # a group the method reads only some keys of
            if inner:
                out[key] = inner
        elif reads.covers(name):
            out[key] = value
    return out


def identity_hash(config: dict, reads: Reads) -> str:
    """16 hex digits of the config `reads` covers: equal for jobs that compute the same."""
    content = json.dumps(relevant(config, reads), sort_keys=True, default=str)
    return hashlib.sha1(content.encode()).hexdigest()[:16]


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested config (a list is one value)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def variant_label(method: str | None, variant: str | None) -> str:
    """A run's variant label from its `method` and `variant` tags: the tag itself (`feclip·fft`), or for a run
    tagged before variants named their method, the two joined (`feclip` + `default` -> `feclip·default`)."""
    method, variant = method or "feclip", variant or "default"
    return variant if variant.startswith(f"{method}{SEPARATOR}") else f"{method}{SEPARATOR}{variant}"
