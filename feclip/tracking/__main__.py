"""python -m feclip.tracking sync | report ...: the tracking commands (`feclip.tracking.commands`)."""

from __future__ import annotations

import argparse

from feclip.tracking.commands import report_main, sync_main

COMMANDS = {"sync": sync_main, "report": report_main}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feclip.tracking", description=__doc__.split(":")[0])
    parser.add_argument("command", choices=COMMANDS, help="sync: log job folders; report: tables of runs")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's (COMMAND --help)")
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args.arguments)


if __name__ == "__main__":
    raise SystemExit(main())
