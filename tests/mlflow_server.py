"""A real `mlflow server` on 127.0.0.1 for tests: a free port, a tmp sqlite backend, a tmp artifact root.

Use the `mlflow_server` fixture (module scope) by importing it into a test file
(`from mlflow_server import mlflow_server  # noqa: F401`), or `running_mlflow_server(folder)` directly.
The server runs in its own process group and is stopped by that group's id, always.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

START_TIMEOUT_S = 90.0  # 2 shared cores: import + DB migrations can take a while


@dataclass(frozen=True)
class MlflowServer:
    uri: str  # http://127.0.0.1:<port>
    backend_uri: str  # sqlite:///<folder>/server.db
    artifact_root: Path
    pid: int
    log: Path  # server stdout + stderr


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(uri: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server at {uri} not up after {timeout_s:.0f} s: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (server + its workers), SIGKILL after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
            return


@contextlib.contextmanager
def running_mlflow_server(folder: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[MlflowServer]:
    """Start `mlflow server` (1 worker) with its store under `folder`; yield once /health answers; stop it."""
    folder.mkdir(parents=True, exist_ok=True)
    port, artifacts, log = free_port(), folder / "artifacts", folder / "server.log"
    backend = f"sqlite:///{folder / 'server.db'}"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend,
        "--default-artifact-root",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers (GenAI features)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        uri = f"http://127.0.0.1:{port}"
        _wait_until_up(uri, process, log, timeout_s)
        yield MlflowServer(uri, backend, artifacts, process.pid, log)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server
