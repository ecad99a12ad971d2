"""python -m feclip.tracking sync <job or sweep folder> [--uri URI]: log finished job folders afterwards."""

from __future__ import annotations

import argparse

from feclip.cli import guard
from feclip.tracking.sync import sync


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feclip.tracking", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sync_parser = commands.add_parser("sync", help="log a job folder or a sweep folder into a store")
    sync_parser.add_argument(
        "folder", help="a job folder (with run.json) or a sweep folder (with sweep.json)"
    )
    sync_parser.add_argument(
        "--uri", default=None, help="target store (default: the one the job was tracked in)"
    )
    args = parser.parse_args(argv)
    stopped = "the runs logged so far are complete; run the same command again to finish"
    return guard(lambda: _sync(args.folder, args.uri), "feclip.tracking", stopped=stopped)


def _sync(folder: str, uri: str | None) -> int:
    run_ids = sync(folder, uri)
    print(f"synced {len(run_ids)} runs from {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
