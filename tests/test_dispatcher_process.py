"""`flask --app webapp dispatch` as a process of its own: delivery, SIGTERM, and kill -9.

The test writes events through an in-process app on the same database (SQLite or PostgreSQL);
the dispatcher process delivers them to a loopback receiver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BASE, ROOT, close_app, headers, make_app, service_config
from tests.receivers import Receiver, Reply, rows

REGISTERED = {"registrationNumber": "AB-1234"}
SETTINGS = {"PARTICIPANTS_DELIVERY_SCHEDULE": "0,0,0"}


class DispatchProcess:
    """One `flask --app webapp dispatch` process on the test's database."""

    def __init__(self, database: str, log_path: Path, settings: dict | None = None):
        self.log_path = log_path
        env = {**os.environ, **service_config(database), **SETTINGS, **(settings or {})}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "webapp", "dispatch"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 5.0) -> int:
        """SIGTERM, then the exit status (the process is killed if it does not exit in time)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"no exit {timeout} s after SIGTERM:\n{self.log}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def writer(database):
    """An in-process app on the same database, for writing events and reading tables."""
    app = make_app(database, **SETTINGS)
    yield app
    close_app(app)


@pytest.fixture
def start(database, tmp_path):
    """Start dispatcher processes; any still running at the end are killed and reaped."""
    started: list[DispatchProcess] = []

    def run(name: str = "dispatch", **settings) -> DispatchProcess:
        started.append(DispatchProcess(database, tmp_path / f"{name}-{len(started)}.log",
                                       settings))
        return started[-1]

    yield run
    for process in started:
        process.kill()


def create_many(app, count: int, url: str) -> list[str]:
    """Create `count` vehicles with a callback; returns their events' ids."""
    client = app.test_client()
    ids = []
    for i in range(count):
        body = {"uniqueCode": f"V-{i}", "properties": REGISTERED, "callback": {"url": url}}
        response = client.post(f"{BASE}/vehicles", json=body, headers=headers())
        assert response.status_code == 202, response.get_data(as_text=True)
        ids.append(response.json["data"]["event"]["id"])
    return ids


def wait_until(condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_each_delivered_at_least_once(receiver: Receiver, expected: list[str]) -> None:
    """Every event arrived; a repeat is the same webhook-id with the same body."""
    by_id: dict[str, set[bytes]] = {}
    for got in receiver.received("/cb"):
        by_id.setdefault(got.webhook_id, set()).add(got.body)
    assert set(by_id) == set(expected)
    assert all(len(bodies) == 1 for bodies in by_id.values())


# -- tests --------------------------------------------------------------------------------------

def test_the_process_delivers_and_exits_0_on_sigterm(writer, start, receiver):
    """Callbacks of events written after start-up arrive; SIGTERM ends the process with 0."""
    process = start()
    expected = create_many(writer, 3, receiver.url("/cb"))
    receiver.wait_for(3, "/cb", timeout=15)
    assert sorted(r.webhook_id for r in receiver.received("/cb")) == sorted(expected)
    started = time.monotonic()
    assert process.terminate() == 0, process.log
    assert time.monotonic() - started < 5
    assert "Traceback" not in process.log
    assert rows(writer, "SELECT DISTINCT status FROM outbox") == [("delivered",)]


def test_sigterm_finishes_the_delivery_in_flight_and_hands_back_the_rest(writer, start,
                                                                         receiver):
    """The slow deliveries under way (two at a time here) are completed and recorded; the
    claims not yet started are released."""
    receiver.program("/cb", Reply(200, delay=1.0))
    create_many(writer, 5, receiver.url("/cb"))
    process = start(PARTICIPANTS_DELIVERY_CONCURRENCY="2")
    receiver.wait_for(2, "/cb", timeout=15)
    assert process.terminate() == 0, process.log

    assert len(receiver.received("/cb")) == 2
    statuses = rows(writer, "SELECT status, lease_owner FROM outbox ORDER BY id")
    assert statuses.count(("delivered", None)) == 2
    assert statuses.count(("pending", None)) == 3
    assert rows(writer, "SELECT attempt, status_code, outcome FROM deliveries") == [
        (1, 200, "delivered")] * 2


def _killed_mid_run(writer, start, receiver) -> tuple[list[str], int]:
    """30 events, a slow receiver, and a dispatcher killed with SIGKILL while delivering."""
    # The eighth delivery hangs, so the kill surely lands while it is in flight.
    receiver.program("/cb", *[Reply(200, delay=0.05)] * 7, Reply(200, delay=10),
                     Reply(200, delay=0.05))
    expected = create_many(writer, 30, receiver.url("/cb"))
    # Two at a time, so a round claims 8 rows: the hanging eighth holds the first round open,
    # and the rows after it are never claimed by this process.
    first = start("killed", PARTICIPANTS_DELIVERY_CONCURRENCY="2")
    receiver.wait_for(8, "/cb", timeout=15)
    first.process.kill()  # SIGKILL: no handler runs, claims stay leased
    first.process.wait()
    assert first.process.returncode == -signal.SIGKILL
    (leased,) = rows(writer, "SELECT COUNT(*) FROM outbox WHERE status = 'leased'")[0]
    assert leased > 0  # the kill really left claims behind
    return expected, leased


def assert_in_flight_delivery_repeated(receiver: Receiver) -> None:
    """The delivery cut short by the kill was made again, under the same webhook-id."""
    calls = receiver.received("/cb")
    in_flight = calls[7].webhook_id
    assert [c.webhook_id for c in calls].count(in_flight) == 2


def test_after_kill_9_another_dispatcher_delivers_every_event(writer, start, receiver):
    """A second process delivers what was never claimed; the dead one's claims come back after
    the lease (taken over here by a dispatcher whose clock is past it). Nothing is lost."""
    expected, leased = _killed_mid_run(writer, start, receiver)
    second = start("second")
    wait_until(lambda: rows(writer, "SELECT COUNT(*) FROM outbox WHERE status = 'delivered'")
               == [(len(expected) - leased,)], what="the unclaimed rows to be delivered")
    assert second.terminate() == 0, second.log
    assert rows(writer, "SELECT COUNT(*) FROM outbox WHERE status = 'leased'") == [(leased,)]

    participants = writer.extensions["participants"]
    takeover = participants.dispatcher(
        clock=lambda: time.time() + participants.policy.lease_seconds + 1)
    while takeover.run_once():
        pass

    assert_each_delivered_at_least_once(receiver, expected)
    assert_in_flight_delivery_repeated(receiver)
    assert rows(writer, "SELECT DISTINCT status FROM outbox") == [("delivered",)]


@pytest.mark.slow
def test_after_kill_9_a_new_process_takes_over_once_the_lease_expires(writer, start, receiver):
    """The same, with a real second process waiting out the 60-second lease."""
    expected, _leased = _killed_mid_run(writer, start, receiver)
    second = start("second")
    lease = writer.extensions["participants"].policy.lease_seconds
    wait_until(lambda: rows(writer, "SELECT COUNT(*) FROM outbox WHERE status != 'delivered'")
               == [(0,)], timeout=lease + 30, what="every row to be delivered")
    assert second.terminate() == 0, second.log
    assert_each_delivered_at_least_once(receiver, expected)
    assert_in_flight_delivery_repeated(receiver)


def test_once_delivers_what_is_due_and_exits_0(writer, database, receiver):
    """`dispatch --once` delivers the due rows, retries included, and exits 0."""
    receiver.program("/cb", Reply(500), Reply(200))
    expected = create_many(writer, 2, receiver.url("/cb"))
    env = {**os.environ, **service_config(database), **SETTINGS}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "webapp", "dispatch", "--once"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted({r.webhook_id for r in receiver.received("/cb")}) == sorted(expected)
    assert len(receiver.received("/cb")) == 3
    assert rows(writer, "SELECT DISTINCT status FROM outbox") == [("delivered",)]
