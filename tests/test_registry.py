"""Registry: ordered names, one-line errors naming the config key, no duplicates, clean unregister."""

import pytest

from feclip.errors import FeclipError
from feclip.registry import Registry, RegistryError, choices


def test_entries_order_and_errors():
    registry = Registry("colour", key="paint.colour")
    registry.register("red", 1)

    @registry.register("blue")
    def blue():
        return 2

    assert registry.names == ("red", "blue") and registry["blue"] is blue and registry.index("blue") == 1
    with pytest.raises(
        RegistryError, match=r"^paint\.colour='green' is not allowed; expected one of: red, blue$"
    ):
        registry["green"]
    with pytest.raises(FeclipError, match=r"^brush='green'"):
        registry.get_entry("green", key="brush")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("red", 3)
    registry.unregister("red")
    assert list(registry) == ["blue"] and "red" not in registry


def test_choices_are_names_that_are_their_own_entries():
    modes = choices("mode", "mode", ("a", "b"))
    assert dict(modes) == {"a": "a", "b": "b"} and len(modes) == 2
