"""Shared fixtures: the test machine folder and its loaded registry."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.loading.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent

# Reliability suites run short by default and long with RELIABILITY_LONG=1; their figures go to
# the JSON file named by RELIABILITY_FIGURES (reliability/report.py renders the README table).
LONG = os.environ.get("RELIABILITY_LONG") == "1"
FIGURES_FILE = os.environ.get("RELIABILITY_FIGURES")


def scale(short: int, long: int) -> int:
    """How many of something a reliability suite does: `long` under RELIABILITY_LONG=1."""
    return long if LONG else short


@pytest.fixture
def figure(request):
    """Record what a reliability test proved: `figure(guarantee, text)` (one row each)."""
    rows = []

    def record(guarantee: str, text: str) -> None:
        rows.append({"guarantee": guarantee, "figure": text, "test": request.node.nodeid})

    yield record
    if FIGURES_FILE and rows and not request.node.rep_call_failed:
        path = Path(FIGURES_FILE)
        existing = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(existing + rows, indent=1))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call_failed = report.failed
    return report
TEST_MACHINES = Path(__file__).resolve().parent / "data" / "machines"


@pytest.fixture(scope="session")
def registry():
    return load_registry(TEST_MACHINES)


@pytest.fixture(scope="session")
def vehicles(registry):
    return registry["vehicles"]


# -- the HTTP service ---------------------------------------------------------------------------

BASE = "/core/api/v2/participants"
TOKENS = {"token-a": "tenant-a", "token-b": "tenant-b"}
_request_ids = itertools.count(1)


def headers(tenant: str = "a", request_id: str | None = None, **extra) -> dict:
    """Valid headers for tenant 'a' or 'b', with a fresh request id unless one is given."""
    out = {
        "X-COREOS-REQUEST-ID": request_id or f"req-{next(_request_ids)}-{time.time_ns()}",
        "X-COREOS-TID": f"tenant-{tenant}",
        "X-COREOS-ACCESS": f"token-{tenant}",
    }
    out.update(extra)
    return out


def service_config(database) -> dict:
    return {
        "PARTICIPANTS_DATABASE": str(database),
        "PARTICIPANTS_MACHINES": str(TEST_MACHINES),
        "PARTICIPANTS_ACCESS_TOKENS": json.dumps(TOKENS),
        "PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS": "1",
        # Tests drive dispatchers by hand (run_once) or start them on purpose; an app created in
        # the test process, or a server started with this, runs none of its own.
        "PARTICIPANTS_DISPATCHER": "off",
    }


@pytest.fixture
def app(tmp_path):
    from webapp import create_app

    application = create_app({**service_config(tmp_path / "participants.db"), "TESTING": True})
    yield application
    application.extensions["participants"].storage.close()


@pytest.fixture
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real gunicorn process serving the app on loopback."""

    def __init__(self, database, workers: int = 2, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **service_config(database), **(extra_env or {})}
        self.log_path = Path(str(database) + ".log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind",
                 f"127.0.0.1:{self.port}", "--graceful-timeout", "5", "--no-control-socket",
                 "webapp:create_app()"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log_path.read_text(errors="replace"))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not start in 30 s")

    def stop(self) -> str:
        """Stop the server and return everything it logged."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def server(tmp_path):
    """gunicorn with 2 sync workers on a fresh database; its log is checked for tracebacks."""
    srv = Server(tmp_path / "participants.db")
    yield srv
    log = srv.stop()
    assert "Traceback" not in log, log
    assert "database is locked" not in log, log
