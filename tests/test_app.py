"""feclip.app: `feclip predict` hands its paths to Hydra as quoted values that parse back to the same path."""

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from feclip.app import hydra_quoted


@pytest.mark.parametrize(
    "path", ["/a b/*.tiff", "/d/[ab].tiff", "it's", "/x=y,z", "back\\slash", "ends\\", "quote\\'d"]
)
def test_a_path_survives_hydra_quoting(path):
    value = OverridesParser.create().parse_override(f"predict.input={hydra_quoted(path)}").value()
    assert value == path
