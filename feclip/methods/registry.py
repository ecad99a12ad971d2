"""The `method` config group's registry: every method of the harness, built from the composed config."""

from __future__ import annotations

from omegaconf import DictConfig

from feclip.identity import EVERYTHING, Reads
from feclip.methods.base import Method
from feclip.methods.feclip.method import FEClipMethod
from feclip.methods.patchcore.method import PatchCoreMethod
from feclip.methods.winclip.method import WinClipMethod
from feclip.registry import Registry

METHODS: Registry[type[Method]] = Registry(
    "method", key="method.name", entries={m.name: m for m in (FEClipMethod, PatchCoreMethod, WinClipMethod)}
)


def build_method(cfg: DictConfig) -> Method:
    """The method `method.name` built from the config (on the CPU; `.to(device)` moves it)."""
    return METHODS.get_entry(cfg.method.name).from_config(cfg)


def job_reads(cfg: DictConfig) -> Reads:
    """What the job's results depend on (`feclip.identity`): its method's `reads` for a train/eval job; every
    key for mode=predict, which applies a saved model and reads its own groups (predict, model.checkpoint)."""
    return EVERYTHING if cfg.mode == "predict" else METHODS.get_entry(cfg.method.name).reads
