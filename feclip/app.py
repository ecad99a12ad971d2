"""The Hydra application: `feclip run` (and its alias `python run.py`) composes the config of `feclip/conf/`
and runs one job, or a sweep with `-m`; `feclip predict` is `feclip run mode=predict` with the model and
the input as arguments.

    feclip run                                    # one job on the embedded default
    feclip run -m domain=A,B,C,D freq=dct,fft     # a sweep: one MLflow run per job under one parent run
    feclip run hydra.searchpath=[file:///my/conf] freq=my_variant    # groups of a config folder of one's own
    feclip predict outputs/<date>/<time>/checkpoint /data/new_maps predict.overlays=true

A bad input stops a single job with one line (exit 2; 3 for a path the system refuses: disk full, not
writable); SIGINT / SIGTERM end it KILLED with one line (exit 130 / 143): `feclip.cli`. In a sweep a failing
job is marked FAILED (its folder and run say why) and the sweep goes on; the process exits 1 when any job
failed or never started. `--help` lists the config groups and their options (`feclip.usage`).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import traceback
from collections.abc import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from feclip import CONF_DIR, cli
from feclip.errors import FeclipError

PROG = "feclip"
STOPPED = "what was written is whole; a started job's run.json says KILLED"
HELP_FLAGS = ("-h", "--help")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def entry(cfg: DictConfig) -> float | None:
    """One job of Hydra's: its headline metric (what a sweeper minimises or maximises), None when it has
    none. A bad input ends a single job (exit code); in a sweep it fails that job and the others go on."""
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return cli.load("feclip.jobs.run:main")(cfg)  # after Hydra composed: a mistyped override is fast
    except Exception as error:
        code = cli.report(error, PROG)
        if code is None and not sweep:
            raise  # a bug: its traceback
        if code is None:
            traceback.print_exc()  # a bug in one job: the others still run
        elif not sweep:
            raise SystemExit(code) from None
    return None


def hydra_run(overrides: Sequence[str]) -> int:
    """Hydra's command line on `overrides` (sys.argv is what Hydra parses), once every value they name
    composes (`check_overrides`); the sweep's exit code."""
    check_overrides(overrides)
    saved = sys.argv[1:]
    sys.argv[1:] = list(overrides)
    try:
        entry()
    finally:
        sys.argv[1:] = saved
    return cli.load("feclip.tracking.sweep:sweep_exit_code")()


def check_overrides(argv: Sequence[str]) -> None:
    """Compose the config of every value the command line names before Hydra starts anything: the fixed
    overrides with each value of each discrete sweep in turn (the others at their first value; `interval`
    sweeps are a search's, checked by its plan). A group option or a key that does not exist is one
    `FeclipError` line (exit 2) instead of Hydra's multi-line report (exit 1), and a sweep with one makes no
    parent run. Command lines Hydra's parser refuses are left to Hydra's own message."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args = get_args_parser().parse_args(list(argv))
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except (Exception, SystemExit):
        return
    if args.config_dir or args.config_name or args.config_path:
        return  # another primary config than feclip's: Hydra composes it
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = {o.get_key_element(): _sweep_values(o) for o in parsed if o.is_sweep_override()}
    sweeps = {key: values for key, values in sweeps.items() if values}
    first = {key: values[0] for key, values in sweeps.items()}
    choices = [first, *({**first, key: value} for key, values in sweeps.items() for value in values[1:])]
    GlobalHydra.instance().clear()  # an earlier in-process run's; hydra.main initialises its own
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for chosen in choices:
            _compose([*fixed, *(f"{key}={value}" for key, value in chosen.items())])


def _sweep_values(override) -> list[str]:
    """The values of a discrete sweep override (`a,b`, `range(0,3)`), [] for the others (interval, glob)."""
    try:
        return list(override.sweep_string_iterator()) if override.is_discrete_sweep() else []
    except Exception:  # glob(...): its options are known to the sweeper only
        return []


def _compose(overrides: list[str]) -> None:
    """Compose feclip's config with `overrides` (Hydra's part included: launchers, sweepers, searchpath);
    Hydra's composition errors as one line."""
    from hydra.errors import HydraException, MissingConfigException

    try:
        hydra.compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as error:
        group, _, option = str(error.missing_cfg_file or "").rpartition("/")
        if not group or not error.options:
            raise FeclipError(_first_lines(error)) from None
        expected = ", ".join(sorted(error.options))
        raise FeclipError(
            f"{group}={option} is not an option of config group {group}; expected one of: {expected}"
        ) from None
    except HydraException as error:
        key = getattr(error.__cause__, "full_key", None)
        if not key or "not in struct" not in str(error.__cause__):
            raise FeclipError(_first_lines(error)) from None
        others = [o for o in overrides if cli.override_key(o) != key]
        raise FeclipError(_unknown_key(key, others)) from None


def _unknown_key(key: str, others: list[str]) -> str:
    """The line for an override of a key the config does not have: the keys its parent node does have (when
    the `others` compose: another wrong one leaves the list out)."""
    from hydra.errors import HydraException
    from omegaconf import DictConfig, OmegaConf

    parent, known = key.rpartition(".")[0], ""
    with contextlib.suppress(HydraException):
        cfg = hydra.compose(config_name="config", overrides=others)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        known = f"; expected one of: {', '.join(sorted(node))}" if isinstance(node, DictConfig) else ""
    return f"{key} is not a config key{known} (a new key is added with +{key}=...)"


def _first_lines(error: BaseException) -> str:
    """The first line of `error` and of its cause (`Could not override 'model.lamda'. (Key 'lamda' is not in
    struct)`), and Hydra's hint to append a key when it gave one."""
    lines = str(error).strip().splitlines()
    cause = str(error.__cause__).strip().splitlines()[0] if error.__cause__ else ""
    hint = next((line for line in lines[1:] if "+" in line and "append" in line), "")
    return "; ".join(part for part in (lines[0] + (f" ({cause})" if cause else ""), hint) if part)


def main(argv: Sequence[str] | None = None, prog: str = "python run.py", name: str = PROG) -> int:
    """`feclip run [-m] [overrides]`: the exit code. `-h` / `--help`: the config groups, their options and
    the values the registries allow (Hydra's own help: `--hydra-help`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(flag in argv for flag in HELP_FLAGS):
        print(cli.load("feclip.usage:run_help")(prog, argv))
        return cli.EXIT_OK
    return cli.guard(lambda: hydra_run(argv), name, stopped=STOPPED)


def hydra_quoted(value: str) -> str:
    """`value` as one quoted Hydra override value (a path with spaces, brackets, a glob, a quote): quotes and
    the backslashes before a quote or the end are escaped (Hydra's quoted-value grammar)."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), value)
    return f"'{escaped}'"


def predict_main(argv: Sequence[str] | None = None, prog: str = "feclip predict", name: str = PROG) -> int:
    """`feclip predict <checkpoint> <input> [overrides]`: apply a saved model to a folder or glob of TIFFs.

    The same as `feclip run mode=predict model.checkpoint=<checkpoint> predict.input=<input> [overrides]`:
    predictions.csv, summary.json (and overlays) in the job folder; the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [-h] checkpoint input [key=value ...]",
        description="apply a saved model to a folder or glob of TIFFs (= feclip run mode=predict ...)",
        epilog="key=value: config overrides, e.g. predict.overlays=true predict.operating_point=fa5",
    )
    parser.add_argument("checkpoint", help="a saved model: <job folder>/checkpoint")
    parser.add_argument("input", help="a folder of TIFFs or a glob ('/data/new/*.tiff')")
    args, extra = parser.parse_known_args(argv)
    overrides = [
        "mode=predict",
        f"model.checkpoint={hydra_quoted(args.checkpoint)}",
        f"predict.input={hydra_quoted(args.input)}",
        *extra,
    ]
    return cli.guard(lambda: hydra_run(overrides), name, stopped=STOPPED)
