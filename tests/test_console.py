"""The `feclip` command: --version and --help answer from the package (the help lists every config group and
option from the config folders and every registry-checked key with its values), each subcommand is its
entry point under another name, and every failure is one `feclip: ...` line with its exit code."""

import os
import subprocess
import sys

import pytest
from helpers import ROOT, small_data

import feclip
from feclip import app, config, console, usage

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def test_the_command_line_is_read_before_torch_is_imported():
    """A mistyped command or config override answers in about a second: the entry points load their
    work (torch, open_clip, mlflow) only when it runs (`cli.load`)."""
    code = "import sys, feclip.app, feclip.console; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.stdout == "[]\n", done.stderr


def test_version_is_the_package_metadata(capsys):
    assert console.main(["--version"]) == 0
    assert capsys.readouterr().out == f"feclip {feclip.__version__}\n" and feclip.__version__[0].isdigit()
    assert (
        f"\n## [{feclip.__version__}] - " in (ROOT / "CHANGELOG.md").read_text()
    )  # each version has an entry


def test_help_lists_the_commands_the_config_groups_and_the_registries(capsys):
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in console.COMMANDS)
    options = usage.group_options([feclip.CONF_DIR])
    assert {"method", "freq", "experiment", "hydra/launcher"} <= set(options)
    lines = out.splitlines()
    for group, names in options.items():  # the group on its first line, then an option and its line each
        assert any(line.split()[:1] == [group] for line in lines), group
        for name, text in names.items():
            assert any(name in line.split()[:2] and text[:20] in line for line in lines), (group, name)
    assert "  dct *  " in out and "Horizontal LFS window 1x5: HDMAP faults are thin horizontal bands." in out
    for key in config.CHOICES:
        assert any(line.startswith(f"  {key} ") for line in lines), key
    assert "frequency transform: dct, fft" in out and max(map(len, lines)) <= usage.WIDTH


def test_run_help_adds_the_groups_of_a_users_config_folder(tmp_path, capsys):
    (tmp_path / "freq").mkdir()
    (tmp_path / "freq" / "my_variant.yaml").write_text("# My variant: a 1x5 window.\ndefaults:\n  - dct\n")
    assert app.main([f"hydra.searchpath=[file://{tmp_path}]", "--help"], prog="feclip run") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: feclip run [-m]") and f"files: {feclip.CONF_DIR}, {tmp_path}" in out
    assert any(line.split()[:2] == ["my_variant", "My"] for line in out.splitlines())


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "feclip: error: no command; expected one of: run, predict, report, compare, sync, cache"),
        (["frob"], "feclip: error: unknown command 'frob'; expected one of: run, predict,"),
        (["cache", "--list", "--dir", "{file}"], "feclip: error: --dir {file} is a file; expected the cache"),
        (["sync", "{tmp}"], "feclip: error: {tmp}"),
        (["compare", "{tmp}/none", "--baseline", "x"], "feclip: error: {tmp}/none: no such folder"),
        (
            ["report", "--uri", "sqlite:///{tmp}/none.db", "--experiment", "x", "--out", "{tmp}/out"],
            "feclip: error: tracking database {tmp}/none.db",
        ),
    ],
)
def test_a_failing_command_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("not a folder")
    paths = {"file": tmp_path / "file", "tmp": tmp_path}
    assert console.main([arg.format(**paths) for arg in argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith(message.format(**paths)) and error.count("\n") == 1, error


def feclip_command(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "feclip", *args]
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def test_run_and_predict_stop_on_bad_input_in_one_line(tmp_path):
    """`feclip run` is run.py (a config value refused before any work); `feclip predict` quotes its paths
    for Hydra (spaces, brackets) and names the checkpoint it cannot use."""
    ran = feclip_command("run", "seed=-1", *small_data(tmp_path), cwd=tmp_path)
    assert ran.returncode == 2 and ran.stderr.endswith(
        "feclip: error: seed=-1 is not allowed; expected an integer in [0, 2**32 - 1] (numpy's seed range)\n"
    )
    checkpoint = tmp_path / "a model [v1]"
    checkpoint.mkdir()
    predicted = feclip_command("predict", str(checkpoint), str(tmp_path / "*.tiff"), cwd=tmp_path)
    assert predicted.returncode == 2, predicted.stderr
    assert predicted.stderr.splitlines()[-1] == (
        f"feclip: error: {checkpoint} is not a feclip model directory: predictor.json is missing"
    )


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["domain=E"], "domain=E is not an option of config group domain; expected one of: A, B, C, D"),
        (
            ["-m", "freq=dct,fftt"],
            "freq=fftt is not an option of config group freq; expected one of: conv_adapter",
        ),
        (
            ["-m", "domain=A", "hydra/launcher=joblibb"],
            "hydra/launcher=joblibb is not an option of config group",
        ),
        (["model.lamda=0.1"], "model.lamda is not a config key; expected one of: adapters, checkpoint"),
        (["model.lamda=0.1", "model.foo=2"], "model.lamda is not a config key (a new key is added with"),
        (
            ["-m", "seed=0,1", "eval.split.refs=3"],
            "eval.split.refs is not a config key; expected one of: dev_fraction",
        ),
    ],
)
def test_an_unknown_option_or_key_is_one_line_before_anything_runs(tmp_path, overrides, line):
    """What Hydra reports in many lines with exit 1 after a sweep's parent run exists: one line, exit 2,
    no folder and no store written; every value of a sweep is checked."""
    done = feclip_command("run", *overrides, f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"feclip: error: {line}"), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_option_a_sweep_names_is_composed_once_the_others_at_their_first(monkeypatch):
    composed = []
    monkeypatch.setattr(app, "_compose", composed.append)
    app.check_overrides(
        ["-m", "domain=A,B,C", "freq=dct,fft", "seed=range(0,2)", "model.lam=interval(0.1,0.5)"]
    )
    first = ["domain=A", "freq=dct", "seed=0"]
    assert composed == [
        first,
        ["domain=B", "freq=dct", "seed=0"],
        ["domain=C", "freq=dct", "seed=0"],
        ["domain=A", "freq=fft", "seed=0"],
        ["domain=A", "freq=dct", "seed=1"],
    ]
