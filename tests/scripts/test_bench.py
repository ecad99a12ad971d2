"""scripts/bench.py end to end on the tiny backbone (one repeat): its sections run, its JSON holds what its
tables print, and its conv tiles are the ones the adapters take. Timings are never asserted."""

import importlib.util
import json

import pytest
from helpers import ROOT

from feclip.model.winograd import MAX_TILE, MIN_CHANNELS, tile_size

SPEC = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_inference_conv_and_training_sections_write_their_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--batch", "2", "--repeats", "1", "--skip", "lfs,taps", "--conv", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "RANDOM INIT" in printed and "## 3x3 'same' convolution" in printed
    results = json.loads(out.read_text())
    inference = results["inference"]
    assert inference["theoretical_ratio_winograd"] is None  # the tiny backbone (64 wide) keeps nn.Conv2d
    for name in ("plain", "dct", "fft"):
        assert inference[name]["s_per_batch"] > 0 and inference[name]["ratio"] > 0
    assert inference["plain"]["ratio"] == 1.0
    gh, gw = results["image_size"][0] // 16, results["image_size"][1] // 16
    conv = results["conv"]
    assert conv["tiles"] == {
        "fwd": tile_size(gh, gw, batch=2),
        "fwd+bwd": tile_size(gh, gw, batch=2, training=True),
    }
    widths = {int(w) for w in conv["by_width"]}
    assert widths == {64, 128, 256, 384, 512, 768, 1024}
    expected = {f"{w}/{m}" for w in (512, 768, 1024) if w >= MIN_CHANNELS for m in range(2, MAX_TILE + 1)}
    assert set(conv["by_tile"]) == expected
    assert results["train"]["cached_fft_over_dct"] > 0


def test_a_bad_section_is_one_line(capsys):
    assert bench.main(["--skip", "nope"]) == 2
    assert "--skip ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize(("grid", "expected"), [((14, 14), 441 / 196), ((24, 24), 1024 / 576)])
def test_the_winograd_mac_bound_counts_the_tile_of_the_batch(grid, expected):
    """By hand, products per token (in D^2) at batch 8: 14x14 takes m = 5, 9 tiles of 49 = 441 per 196 tokens;
    24x24 takes m = 6, 16 tiles of 64 = 1024 per 576 tokens (cost 64 (128 + 60) = 12032 against m = 4:
    36 (288 + 60) = 12528 and m = 5: 49 (200 + 60) = 12740). The direct convolution makes 9."""
    assert bench.winograd_macs(grid, 8) == pytest.approx(expected, rel=1e-12)
    assert bench.theoretical_ratio(12, 4, 9.0) == pytest.approx((144 + 40) / 144, rel=1e-12)
