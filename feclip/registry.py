"""Registries: the single source of the allowed values of one axis of variation.

Every axis a study varies (frequency transforms, LFS statistics, tap presets, gates, reference sources,
training sources, benchmarks, domains, methods, ...) has one `Registry` in the module that implements it.
Config validation (`feclip.config`) derives its choices from the registries, the tests parametrise over
their keys, and facts about an entry live on the entry itself (e.g. `Gate.needs_labels`), never in name
checks elsewhere.

    TRANSFORMS = Registry("frequency transform", key="freq.transform")

    @TRANSFORMS.register("dct")
    def dct_basis(n): ...

    TRANSFORMS["dct"]            # the entry; an unknown name is a one-line RegistryError naming the key
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from feclip.errors import FeclipError

T = TypeVar("T")


class RegistryError(FeclipError):
    """A name that is not registered; the message names the config key and the allowed values."""


class Registry(Mapping[str, T], Generic[T]):
    """Ordered name -> entry map of one axis; `key` is the config key its names are chosen by."""

    def __init__(self, kind: str, key: str, entries: Mapping[str, T] | Iterable[str] | None = None) -> None:
        self.kind, self.key = kind, key
        self._entries: dict[str, T] = {}
        if isinstance(entries, Mapping):
            for name, entry in entries.items():
                self.register(name, entry)
        elif entries is not None:
            for name in entries:
                self.register(name, name)

    def register(self, name: str, entry: T | None = None) -> Any:
        """Add `entry` under `name` (or decorate: `@registry.register(name)`); a duplicate name is a bug."""
        if entry is None:
            return lambda obj: self.register(name, obj)
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove `name` (tests that register a throwaway entry clean up with this)."""
        del self._entries[name]

    def get_entry(self, name: Any, key: str | None = None) -> T:
        """The entry of `name`, else a `RegistryError` naming `key` (default: the registry's key)."""
        if name not in self._entries:
            raise RegistryError(
                f"{key or self.key}={name!r} is not allowed; expected one of: {', '.join(self._entries)}"
            )
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self.get_entry(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def index(self, name: str) -> int:
        """Position of `name` in registration order (a stable small integer, e.g. for seeding streams)."""
        self.get_entry(name)
        return self.names.index(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, key={self.key!r}, names={list(self._entries)})"


def choices(kind: str, key: str, names: Iterable[str]) -> Registry[str]:
    """A registry of plain names (an enumerated option such as `device`): each entry is its own name."""
    return Registry(kind, key, list(names))
