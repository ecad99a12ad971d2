"""Variant x domain report of tracked runs (markdown + CSV), with the docs/rivals.md anchors beside them: the
same as `feclip report` (`feclip/tracking/commands.py`), kept for checkouts without the `feclip` command.

    python scripts/report.py --uri sqlite:///mlflow.db --experiment feclip --metrics auroc acc_oracle \
        acc_val --out report/
    python scripts/report.py --experiment default_sweep --sweep-dir multirun/2025-11-28/23-50-01  # one sweep
"""

from __future__ import annotations

from feclip.tracking.commands import report_main


def main(argv: list[str] | None = None) -> int:
    return report_main(argv, prog="scripts/report.py", name="report")


if __name__ == "__main__":
    raise SystemExit(main())
