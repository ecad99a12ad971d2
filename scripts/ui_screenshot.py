"""Screenshot of a finished sweep's runs table in the MLflow UI (headless Chromium), for the README.

    python run.py -m experiment=smoke domain=A,C freq=dct,fft tracking.uri=sqlite:///shot/mlflow.db
    python scripts/ui_screenshot.py --uri sqlite:///shot/mlflow.db --experiment smoke \
        --out docs/mlflow_runs.png

Starts `mlflow ui` on a free 127.0.0.1 port against the store, opens the experiment's runs page in headless
Chromium (`apt-get install chromium-headless-shell` or `chromium`), writes the PNG and stops the server.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from feclip.tracking import client_for, resolve_tracking_uri, run_url

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"ui_screenshot: error: the MLflow UI at {url} did not answer within {timeout_s:.0f} s")


def screenshot(browser: str, url: str, out: Path, size: str, wait_ms: int) -> None:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += [f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default=None, help="sqlite store (default: sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default="smoke")
    parser.add_argument("--out", default="docs/mlflow_runs.png")
    parser.add_argument("--filter", default="tags.domain != ''", help="runs search (default: the jobs, flat)")
    parser.add_argument("--size", default="1600,800", help="browser window, pixels (w,h)")
    parser.add_argument("--wait-ms", type=int, default=20000, help="page render budget (virtual time)")
    args = parser.parse_args(argv)
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        names = ", ".join(BROWSERS)
        raise SystemExit(f"ui_screenshot: error: no headless browser found; install one of {names}")
    uri = resolve_tracking_uri(args.uri, Path.cwd())
    experiment = client_for(uri).get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"ui_screenshot: error: no experiment {args.experiment!r} in {uri}")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
        + ["--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health", timeout_s=60)
        out = Path(args.out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        query = urllib.parse.urlencode(
            {"searchFilter": args.filter, "orderByKey": "attributes.run_name", "orderByAsc": "true"},
            quote_via=urllib.parse.quote,
        )
        url = f"{run_url(base, experiment.experiment_id)}?{query}"
        screenshot(browser, url, out, args.size, args.wait_ms)
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
