"""Screenshot of a finished sweep's study in the MLflow UI (headless Chromium), for the README.

    feclip run -m experiment=smoke domain=A,C freq=dct,fft tracking.uri=sqlite:///shot/mlflow.db
    python scripts/ui_screenshot.py --uri sqlite:///shot/mlflow.db --experiment smoke \
        --out docs/mlflow_runs.png

Serves a sqlite store with `mlflow server` on a free 127.0.0.1 port (an http store is used as it is), opens
the experiment's address that feclip prints (`run_url`: its runs in the study view, the "Model training"
pages) in headless Chromium (Debian: `apt-get install chromium`), writes the PNG and stops the server.
`--chart` takes the chart view instead. The helpers (`find_browser`, `dump_dom`, `serving`) also serve
the browser test (tests/tracking/test_ui.py).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from feclip.tracking import client_for, resolve_tracking_uri, run_url

BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")
START_TIMEOUT_S = 90.0  # mlflow's import and the sqlite migrations, on 2 shared cores


def find_browser() -> str | None:
    """The first headless-capable Chromium on PATH, else None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _command(browser: str, size: str, wait_ms: int, profile: str) -> list[str]:
    """Headless Chromium as root in a container: no sandbox, no GPU, a fresh profile (no remembered UI
    settings: what a first visit shows), the page rendered for `wait_ms` of virtual time."""
    return [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        f"--virtual-time-budget={wait_ms}",
    ]


def _chromium(browser: str, url: str, output: str, size: str, wait_ms: int, timeout_s: float) -> str:
    """Run headless Chromium once on `url` with `output` (`--dump-dom`, `--screenshot=PATH`); its stdout.
    Raises RuntimeError with Chromium's last line when it fails."""
    with tempfile.TemporaryDirectory(prefix="feclip-chromium-") as profile:
        command = [*_command(browser, size, wait_ms, profile), output, url]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{browser} did not finish {url} within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"{browser} failed ({done.returncode}): {_last_line(done.stderr)}")
    return done.stdout


def dump_dom(
    browser: str, url: str, size: str = "1600,900", wait_ms: int = 30000, timeout_s: float = 120.0
) -> str:
    """The DOM of `url` after `wait_ms` of virtual time (its scripts run, its requests answered)."""
    return _chromium(browser, url, "--dump-dom", size, wait_ms, timeout_s)


def screenshot(
    browser: str, url: str, out: Path, size: str = "1600,900", wait_ms: int = 30000, timeout_s: float = 120.0
) -> None:
    """A PNG of `url` after `wait_ms` of virtual time, written to `out`."""
    _chromium(browser, url, f"--screenshot={out}", size, wait_ms, timeout_s)
    if not out.exists():
        raise RuntimeError(f"{browser} wrote no screenshot to {out}")


def browser_problem(browser: str) -> str | None:
    """Why `browser` cannot render a page here (one line), or None when it can."""
    try:
        dom = dump_dom(browser, "data:text/html,<p>feclip</p>", wait_ms=100, timeout_s=60)
    except (OSError, RuntimeError) as error:
        return str(error)
    return None if "feclip" in dom else f"{browser} rendered an empty page"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and "dbus" not in line]
    return lines[-1].strip()[:300] if lines else "no output"


def page_text(dom: str) -> str:
    """The visible text of a DOM dump, one space between words."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the MLflow UI at {url} did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def serving(uri: str, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """The UI address of store `uri`: an http(s) server as it is; a sqlite store served by `mlflow server`
    on a free 127.0.0.1 port (its own process group, stopped by that group's id)."""
    if uri.startswith(("http://", "https://")):
        yield uri.rstrip("/")
        return
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers (GenAI features)
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health", server, timeout_s)
        yield base
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=None, help="tracking store (default: sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default="smoke")
    parser.add_argument("--out", default="docs/mlflow_runs.png")
    parser.add_argument("--chart", action="store_true", help="the chart view instead of the runs table")
    parser.add_argument("--size", default="1920,1000", help="browser window, pixels (w,h)")
    parser.add_argument(
        "--wait-ms", type=int, default=None, help="page render budget, virtual time (30000; 60000 --chart)"
    )
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        names = ", ".join(BROWSERS)
        raise SystemExit(f"ui_screenshot: error: no headless browser found; install one of {names}")
    uri = resolve_tracking_uri(args.uri, Path.cwd())
    experiment = client_for(uri).get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"ui_screenshot: error: no experiment {args.experiment!r} in {uri}")
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with serving(uri) as base:
            url = run_url(base, experiment.experiment_id) + ("&compareRunsMode=CHART" if args.chart else "")
            wait_ms = args.wait_ms or (60000 if args.chart else 30000)  # charts are drawn one by one
            screenshot(browser, url, out, size=args.size, wait_ms=wait_ms)
    except RuntimeError as error:
        raise SystemExit(f"ui_screenshot: error: {error}") from None
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
