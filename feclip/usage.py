"""What `feclip --help` and `feclip run --help` print instead of Hydra's generic help: every config group
with its options, one line each (the first sentence of the option file's leading comment; `*` marks the
default), and the config keys whose values the registries check (`feclip.config.CHOICES`). The groups come
from the packaged `feclip/conf/` and from the `file://` folders of a `hydra.searchpath=[...]` override, so a
user's own config folder shows its groups and options too.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from feclip import CONF_DIR, config
from feclip.cli import one_line

WIDTH = 110  # characters per line
SEARCHPATH = "hydra.searchpath="
SENTENCE = re.compile(r"(.+?[.!?])(?=\s+[A-Z(`]|$)")  # up to the first full stop before a capital


def description(path: Path) -> str:
    """The first sentence of a YAML file's leading comment block (`# @package` lines skipped); '' if none."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.lstrip("# ").startswith("@package"):
            lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    found = SENTENCE.match(text)
    return found[1] if found else text


def group_options(folders: Sequence[Path]) -> dict[str, dict[str, str]]:
    """{group: {option: description}} of every `<group>/<option>.yaml` in the folders (nested groups as
    `hydra/launcher`); of options of the same name the first folder's, as on Hydra's search path."""
    groups: dict[str, dict[str, str]] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.yaml")):
            group = path.parent.relative_to(folder).as_posix()
            if group != ".":
                groups.setdefault(group, {}).setdefault(path.stem, description(path))
    return groups


def defaults(folder: Path = CONF_DIR) -> dict[str, str | None]:
    """{group: default option} in the order of the primary config's defaults list (None: no default)."""
    entries = OmegaConf.load(folder / "config.yaml").defaults
    return {str(k): v for entry in entries if isinstance(entry, DictConfig) for k, v in entry.items()}


def user_folders(overrides: Sequence[str]) -> list[Path]:
    """The `file://` folders of a `hydra.searchpath=[...]` override (`pkg://` entries are not listed)."""
    folders = []
    for override in (o for o in overrides if o.startswith(SEARCHPATH)):
        entries = OverridesParser.create().parse_override(override).value()
        folders += [Path(e.removeprefix("file://")) for e in entries if str(e).startswith("file://")]
    return folders


def groups_table(folders: Sequence[Path]) -> list[str]:
    """One line per option: group (on its first option), option (`*` the default), description."""
    groups, chosen = group_options(folders), defaults()
    order = [*(g for g in chosen if g in groups), *sorted(g for g in groups if g not in chosen)]
    group_width = max(map(len, groups)) + 2
    option_width = max(len(o) for options in groups.values() for o in options) + 4
    lines = []
    for group in order:
        for i, (option, text) in enumerate(groups[group].items()):
            mark = " *" if chosen.get(group) == option else ""
            head = f"  {group if i == 0 else '':<{group_width}}{option + mark:<{option_width}}"
            lines.append(head + one_line(text, WIDTH - len(head)))
    return lines


def choices_table() -> list[str]:
    """One entry per config key whose value a registry checks: key, what it chooses, the allowed values."""
    width = max(map(len, config.CHOICES)) + 4
    return [
        textwrap.fill(
            f"{registry.kind}: {', '.join(registry)}",
            WIDTH,
            initial_indent=f"  {key:<{width}}",
            subsequent_indent=" " * (width + 2),
        )
        for key, registry in config.CHOICES.items()
    ]


def config_help(overrides: Sequence[str] = ()) -> str:
    """The config groups and the registry-checked values; `overrides`: where a user's folders come from."""
    folders = [CONF_DIR, *user_folders(overrides)]
    return "\n".join(
        [
            f"config groups (group=option, * the default; files: {', '.join(map(str, folders))}):",
            *groups_table(folders),
            "",
            "values the registries check (key=value; all keys of the composed config: feclip run --cfg job):",
            *choices_table(),
        ]
    )


def run_help(prog: str, overrides: Sequence[str] = ()) -> str:
    """`feclip run --help`: usage, how to sweep and add a config folder, then `config_help`."""
    about = (
        "One job (one MLflow run and a job folder) of the composed config; -m: a sweep over comma-separated "
        f"values, e.g. {prog} -m domain=A,B,C,D freq=dct,fft. A config folder of one's own adds groups and "
        f"options: {prog} hydra.searchpath=[file:///my/conf] freq=my_variant (my/conf/freq/my_variant.yaml)."
    )
    usage = f"usage: {prog} [-m] [group=option ...] [key=value ...] [--cfg job] [--hydra-help]"
    return "\n".join([usage, "", textwrap.fill(about, WIDTH), "", config_help(overrides)])
