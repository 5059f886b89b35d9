"""Background work needs no second command (SPEC §6): the embedded dispatcher.

A server started exactly as the SPEC says (`flask --app webapp run`, `gunicorn
'webapp:create_app()'`), with nothing else running, delivers a signed callback, fires a ttl and
completes a batch; with PARTICIPANTS_DISPATCHER=off it does none of that until a `flask --app
webapp dispatch` process runs. In-process tests show that an idle dispatcher never opens a write
transaction (counted on the storage interface on both backends, and on SQLite also statement by
statement with the connection's trace callback), wakes at once on this process's commits and
finds other processes' work by polling. Everything runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import click
import pytest
import requests

from engine.storage.sqlite import SqliteStorage
from tests.conftest import (
    BASE,
    ROOT,
    TEST_MACHINES,
    TOKENS,
    close_app,
    free_port,
    headers,
    make_app,
    service_config,
)
from tests.receivers import Receiver, Reply, rows, verify_signature

SECRET = "embedded-secret"
REGISTERED = {"registrationNumber": "AB-1234"}
TTL_SECONDS = 1


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def machines(tmp_path) -> Path:
    """The test machines with a 1-second ttl: onboarding:failedInspection -> onboarding:pending."""
    folder = tmp_path / "machines"
    shutil.copytree(TEST_MACHINES, folder)
    path = folder / "vehicles.yaml"
    text = path.read_text()
    short, count = re.subn(r"ttl: \{time: 1d, destination: onboarding:pending\}",
                           f"ttl: {{time: {TTL_SECONDS}s, destination: onboarding:pending}}", text)
    assert count == 1, "the test machine's failedInspection ttl has changed"
    path.write_text(short)
    return folder


# -- what every server must do by itself ----------------------------------------------------------

def call(method: str, url: str, **kwargs) -> requests.Response:
    with requests.Session() as session:  # closed at once: no socket is left for the GC to find
        return session.request(method, url, timeout=10, **kwargs)


class Work:
    """A callback, a ttl and a batch, started over HTTP; `arrived` checks what was delivered."""

    def __init__(self, base_url: str, receiver: Receiver, tag: str):
        self.receiver = receiver
        self.tag = tag
        secret = {"X-COREOS-CALLBACK-SECRET": SECRET}
        created = call("POST", f"{base_url}{BASE}/vehicles", headers=headers(**secret), json={
            "uniqueCode": f"{tag}-V", "properties": {**REGISTERED, "inspectionPassed": False},
            "callback": {"url": receiver.url(f"/{tag}/cb")}})
        assert created.status_code == 202, created.text
        self.pid = created.json()["data"]["id"]
        inspected = call("PUT", f"{base_url}{BASE}/vehicles/{self.pid}/state/event",
                         headers=headers(), json={
                             "eventCode": "E-101", "reasonCode": "R-7001",
                             "timestamp": int(time.time()), "source": {"appId": "tests"},
                             "data": {"inspector": "bob"}})
        assert inspected.status_code == 202, inspected.text
        event = inspected.json()["data"]["event"]
        assert event["state"] == "onboarding:failedInspection", event
        self.entered = time.time()
        batch = call("POST", f"{base_url}{BASE}/vehicles/batch", headers=headers(**secret), json={
            "payload": [{"uniqueCode": f"{tag}-B{i}", "properties": REGISTERED} for i in range(3)],
            "callback": {"url": receiver.url(f"/{tag}/batch"), "meta": {"tag": tag}}})
        assert batch.status_code == 202, batch.text
        self.batch_id = batch.json()["data"]["id"]

    def arrived(self, timeout: float = 15.0) -> None:
        calls = self.receiver.wait_for(3, f"/{self.tag}/cb", timeout=timeout)
        assert all(verify_signature(SECRET, c) for c in calls)
        timer = calls[2].json()
        assert timer["entityInstanceId"] == self.pid
        assert timer["data"]["ttl"] == f"{TTL_SECONDS}s"
        assert timer["data"]["toState"] == timer["entity"]["state"] == "onboarding:pending"
        assert calls[2].at >= self.entered + TTL_SECONDS - 0.1
        (summary,) = self.receiver.wait_for(1, f"/{self.tag}/batch", timeout=timeout)
        assert verify_signature(SECRET, summary)
        assert summary.webhook_id == self.batch_id
        body = summary.json()
        assert body["meta"] == {"status": "completed", "success": 3, "failed": 0, "total": 3}
        assert body["callbackMeta"] == {"tag": self.tag}

    def nothing_arrived(self) -> None:
        assert self.receiver.received() == []


def environment(tmp_path: Path, machines: Path, database: str, **settings) -> dict:
    """The process environment of the SPEC's commands: the four settings (plus `settings`) and
    no other PARTICIPANTS_ or FLASK_ variable, so every other setting is its default."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PARTICIPANTS_", "FLASK_"))}
    env.update({
        "PARTICIPANTS_DATABASE": str(database),
        "PARTICIPANTS_MACHINES": str(machines),
        "PARTICIPANTS_ACCESS_TOKENS": json.dumps(TOKENS),
        "PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "XDG_RUNTIME_DIR": str(tmp_path),  # where gunicorn puts its control socket
        **settings,
    })
    return env


class Process:
    """A command run from the repository root, its output in a log file."""

    def __init__(self, argv: list[str], env: dict, log_path: Path, ready_url: str | None = None):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        if ready_url is None:
            return
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{argv} exited:\n{self.log}")
            try:
                if call("GET", ready_url, headers=headers()).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{argv} did not answer in 30 s:\n{self.log}")
            time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> str:
        """SIGTERM; the process must exit 0 within 10 s. Returns its log."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"no exit 10 s after SIGTERM:\n{self.log}") from None
        assert code == 0, self.log
        assert "Traceback" not in self.log, self.log
        return self.log

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def processes():
    started: list[Process] = []

    def start(*args, **kwargs) -> Process:
        started.append(Process(*args, **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def server(start, tmp_path: Path, machines: Path, database: str, command: str,
           **settings) -> tuple:
    """A server started exactly with one of the SPEC's commands; returns (process, base url)."""
    port = free_port()
    argv = {"flask run": ["flask", "--app", "webapp", "run", "--port", str(port)],
            "gunicorn": ["gunicorn", "webapp:create_app()", "-b", f"127.0.0.1:{port}"]}[command]
    base_url = f"http://127.0.0.1:{port}"
    process = start(argv, environment(tmp_path, machines, database, **settings),
                    tmp_path / f"{command.replace(' ', '-')}.log",
                    ready_url=f"{base_url}{BASE}/participant-types")
    return process, base_url


def no_claims_left(database: str, delivered: int = 4) -> None:
    """Every outbox row delivered (3 callbacks and a batch summary per Work): none leased."""
    assert rows(database, "SELECT status, COUNT(*) FROM outbox GROUP BY status") == [
        ("delivered", delivered)]


@pytest.mark.parametrize("command", ["flask run", "gunicorn"])
def test_a_server_alone_delivers_fires_timers_and_completes_batches(
        tmp_path, machines, database, receiver, processes, command):
    process, base_url = server(processes, tmp_path, machines, database, command)
    work = Work(base_url, receiver, "alone")
    work.arrived()
    log = process.terminate()
    if command == "gunicorn":  # (flask run does not show the app's info messages)
        assert len(re.findall(r"embedded dispatcher \S+ started", log)) == 1, log
        assert len(re.findall(r"embedded dispatcher \S+ stopped", log)) == 1, log  # at exit
    no_claims_left(database)


def test_sigterm_lets_the_delivery_in_flight_finish(tmp_path, machines, database, receiver,
                                                    processes):
    """gunicorn's worker exits on SIGTERM; at exit the embedded dispatcher finishes the slow
    delivery under way, records it, and leaves no lease behind. (One delivery at a time here:
    with more, every one in flight would finish, however many the race let start.)"""
    receiver.program("/slow", Reply(200, delay=1.0))
    process, base_url = server(processes, tmp_path, machines, database, "gunicorn",
                               PARTICIPANTS_DELIVERY_CONCURRENCY="1")
    for i in range(3):
        created = call("POST", f"{base_url}{BASE}/vehicles", headers=headers(), json={
            "uniqueCode": f"S-{i}", "properties": REGISTERED,
            "callback": {"url": receiver.url("/slow")}})
        assert created.status_code == 202, created.text
    receiver.wait_for(1, "/slow")
    process.terminate()
    assert len(receiver.received("/slow")) == 1
    assert sorted(rows(database, "SELECT status, lease_owner FROM outbox")) == [
        ("delivered", None), ("pending", None), ("pending", None)]
    assert rows(database, "SELECT status_code, outcome FROM deliveries") == [(200, "delivered")]


def test_gunicorn_preload_hands_the_dispatcher_to_each_worker(
        tmp_path, machines, database, receiver, processes):
    """With --preload the app is created in the master before the fork: the master's
    dispatcher stops at the fork and every worker starts its own."""
    port = free_port()
    process = processes(
        ["gunicorn", "--preload", "--workers", "2", "webapp:create_app()",
         "-b", f"127.0.0.1:{port}"], environment(tmp_path, machines, database),
        tmp_path / "preload.log", ready_url=f"http://127.0.0.1:{port}{BASE}/participant-types")
    work = Work(f"http://127.0.0.1:{port}", receiver, "preload")
    work.arrived()
    log = process.terminate()
    assert len(re.findall(r"embedded dispatcher \S+ started", log)) == 3, log  # master, 2 workers
    master = int(re.search(r"Listening at: \S+ \((\d+)\)", log).group(1))
    assert re.search(rf"embedded dispatcher {master}-\S+ stopped", log), log  # at the first fork
    no_claims_left(database)


def test_off_delivers_nothing_until_a_dispatch_process_runs(
        tmp_path, machines, database, receiver, processes):
    web, base_url = server(processes, tmp_path, machines, database, "gunicorn",
                           PARTICIPANTS_DISPATCHER="off")
    first = Work(base_url, receiver, "off")
    time.sleep(TTL_SECONDS + 1.5)  # past the ttl, and more than a poll
    first.nothing_arrived()
    assert rows(database, "SELECT state FROM participants WHERE id = ?", first.pid) == [
        ("onboarding:failedInspection",)]
    assert rows(database, "SELECT status FROM batches") == [("pending",)]

    dispatch = processes(["flask", "--app", "webapp", "dispatch"],
                         environment(tmp_path, machines, database,
                                     PARTICIPANTS_DISPATCHER="off"),
                         tmp_path / "dispatch.log")
    first.arrived()
    second = Work(base_url, receiver, "dispatch")  # written while the dispatcher runs
    second.arrived()
    dispatch.terminate()
    assert "embedded dispatcher" not in web.terminate()
    no_claims_left(database, 8)


def test_flask_routes_with_the_default_setting_just_lists_the_routes(tmp_path, machines,
                                                                     database):
    """`flask routes` (any command but run) loads the app, starts no dispatcher, and exits."""
    env = environment(tmp_path, machines, database)
    done = subprocess.run(["flask", "--app", "webapp", "routes"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "participant_alias" in done.stdout


@pytest.mark.parametrize("name", ["routes", "dispatch", "shell"])
def test_create_app_inside_another_command_starts_no_dispatcher(database, name):
    from webapp import create_app

    with click.Context(click.Command(name)):
        app = create_app({**service_config(database), "PARTICIPANTS_DISPATCHER": "embedded"})
    assert app.extensions["participants"].embedded is None
    close_app(app)


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, value, problem", [
    ("PARTICIPANTS_DISPATCHER", "threads", "expected embedded or off, got 'threads'"),
    ("PARTICIPANTS_DISPATCHER", "", "expected embedded or off"),
    ("PARTICIPANTS_DISPATCHER_POLL_SECONDS", "0", "expected seconds above 0"),
    ("PARTICIPANTS_DISPATCHER_POLL_SECONDS", "soon", "expected seconds above 0"),
])
def test_a_bad_dispatcher_setting_stops_start_up(tmp_path, setting, value, problem):
    from webapp import create_app

    with pytest.raises(ValueError, match=f"configuration {setting}: {re.escape(problem)}"):
        create_app({**service_config(tmp_path / "p.db"), setting: value})


def test_the_settings_are_case_and_space_tolerant(database):
    from webapp import create_app

    app = create_app({**service_config(database), "PARTICIPANTS_DISPATCHER": " OFF ",
                      "PARTICIPANTS_DISPATCHER_POLL_SECONDS": "0.25"})
    participants = app.extensions["participants"]
    assert participants.embedded is None and participants.poll_seconds == 0.25
    participants.storage.close()


# -- an embedded dispatcher in this process ------------------------------------------------------

@pytest.fixture
def embedded_app(database, machines):
    """An app created in this process with the embedded dispatcher on (poll 30 s: whatever
    arrives sooner was woken by a commit of this process)."""
    app = make_app(database, PARTICIPANTS_MACHINES=str(machines),
                   PARTICIPANTS_DISPATCHER="embedded", PARTICIPANTS_DISPATCHER_POLL_SECONDS="30")
    participants = app.extensions["participants"]
    yield app
    assert participants.embedded.stop()
    participants.storage.close()


def test_create_app_starts_a_dispatcher_that_commits_wake_at_once(embedded_app, receiver):
    """Each commit that queues work rings the doorbell: the callback, the 1 s ttl and the
    batch summary all arrive long before the 30 s poll."""
    participants = embedded_app.extensions["participants"]
    assert participants.embedded.running
    time.sleep(0.2)  # let it settle into its wait
    with embedded_app.test_client() as client:
        work = LocalWork(client, receiver)
    started = time.monotonic()
    work.arrived(timeout=10)
    assert time.monotonic() - started < 5
    assert participants.embedded.stop()
    assert not participants.embedded.running
    assert participants.embedded.stop()  # again: nothing to do


class LocalWork(Work):
    """The same work through a Flask test client."""

    def __init__(self, client, receiver: Receiver, tag: str = "local"):
        self.receiver, self.tag = receiver, tag
        secret = {"X-COREOS-CALLBACK-SECRET": SECRET}
        created = client.post(f"{BASE}/vehicles", headers=headers(**secret), json={
            "uniqueCode": f"{tag}-V", "properties": {**REGISTERED, "inspectionPassed": False},
            "callback": {"url": receiver.url(f"/{tag}/cb")}})
        assert created.status_code == 202, created.get_data(as_text=True)
        self.pid = created.json["data"]["id"]
        inspected = client.put(f"{BASE}/vehicles/{self.pid}/state/event", headers=headers(),
                               json={"eventCode": "E-101", "reasonCode": "R-7001",
                                     "timestamp": int(time.time()),
                                     "source": {"appId": "tests"}, "data": {"inspector": "bob"}})
        assert inspected.status_code == 202, inspected.get_data(as_text=True)
        self.entered = time.time()
        batch = client.post(f"{BASE}/vehicles/batch", headers=headers(**secret), json={
            "payload": [{"uniqueCode": f"{tag}-B{i}", "properties": REGISTERED} for i in range(3)],
            "callback": {"url": receiver.url(f"/{tag}/batch"), "meta": {"tag": tag}}})
        assert batch.status_code == 202, batch.get_data(as_text=True)
        self.batch_id = batch.json["data"]["id"]


class Transactions:
    """Every unit of work each thread opens on a storage (`write()` or `read()`): the storage
    interface, so the same count holds on either backend."""

    def __init__(self, storage):
        self.opened: list[tuple[str, str]] = []
        for kind in ("write", "read"):
            setattr(storage, kind, self._counted(kind, getattr(storage, kind)))

    def _counted(self, kind: str, open_unit):
        @contextmanager
        def counted(*args, **kwargs):
            self.opened.append((threading.current_thread().name, kind))
            with open_unit(*args, **kwargs) as uow:
                yield uow
        return counted

    def of(self, thread_name: str) -> list[str]:
        return [kind for name, kind in list(self.opened) if name == thread_name]


class Traced:
    """Every statement a thread runs on the store's real SQLite connections (trace callback)."""

    def __init__(self, store: SqliteStorage):
        self.statements: list[tuple[str, str]] = []
        original = store.connect

        def connect():
            conn = original()
            conn.set_trace_callback(
                lambda sql: self.statements.append((threading.current_thread().name, sql)))
            return conn

        store.close()  # this thread's connection is opened again, traced
        store.connect = connect

    def of(self, thread_name: str) -> list[str]:
        return [sql for name, sql in list(self.statements) if name == thread_name]

    @staticmethod
    def writes(statements: list[str]) -> list[str]:
        return [s for s in statements if s.strip().upper().startswith("BEGIN IMMEDIATE")]


def _settled(app, client, receiver) -> None:
    """Callbacks delivered, a participant waiting on a (far) timer, a completed batch."""
    participants = app.extensions["participants"]
    work = LocalWork(client, receiver, "idle")
    later = participants.dispatcher()
    for _ in range(10):
        if not later.run_once():
            break
    receiver.wait_for(2, "/idle/cb")
    receiver.wait_for(1, "/idle/batch")
    assert rows(app, "SELECT DISTINCT status FROM outbox") == [("delivered",)]
    # the failed inspection waits on its 1 d ttl; the batch's vehicles on none
    assert rows(app, "SELECT state FROM participants WHERE id = ?", work.pid) == [
        ("onboarding:failedInspection",)]


def _idle_for_a_second(dispatcher, name: str) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop, 0.1), name=name)
    thread.start()
    time.sleep(1.0)
    stop.set()
    dispatcher.wake()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_an_idle_dispatcher_takes_no_write_lock(app, client, receiver):
    """With callbacks delivered, participants waiting on (far) timers and a completed batch,
    run_once and a running dispatcher only read: one read transaction per poll, no write."""
    participants = app.extensions["participants"]
    _settled(app, client, receiver)

    transactions = Transactions(participants.storage)
    dispatcher = participants.dispatcher()
    assert dispatcher.run_once() == 0
    assert "write" not in transactions.of(threading.current_thread().name)
    assert dispatcher.next_due() > time.time() * 1000 + 3600_000  # the 1 d ttl

    _idle_for_a_second(dispatcher, "idle-dispatcher")
    opened = transactions.of("idle-dispatcher")
    assert "write" not in opened
    assert 3 <= len(opened) <= 12  # one read transaction per 0.1 s poll
    participants.storage.close()


def test_sqlite_an_idle_dispatcher_runs_a_few_reads_per_poll(sqlite_app, receiver):
    """On SQLite, statement by statement: an idle poll never runs BEGIN IMMEDIATE, only BEGIN,
    three reads (batches, outbox, timers) and COMMIT."""
    participants = sqlite_app.extensions["participants"]
    _settled(sqlite_app, sqlite_app.test_client(), receiver)

    traced = Traced(participants.storage)
    dispatcher = participants.dispatcher()
    assert dispatcher.run_once() == 0
    assert Traced.writes(traced.of(threading.current_thread().name)) == []

    _idle_for_a_second(dispatcher, "idle-dispatcher")
    statements = traced.of("idle-dispatcher")
    assert Traced.writes(statements) == []
    assert all(s.split()[0].upper() in ("BEGIN", "SELECT", "COMMIT") for s in statements)
    polls = sum(1 for s in statements if s.strip().upper() == "BEGIN")
    assert 3 <= polls <= 12  # one read transaction per 0.1 s poll
    # BEGIN, three reads (batches, outbox, timers), COMMIT: the round itself never ran
    assert len(statements) <= 5 * polls
    participants.storage.close()


def test_the_poll_finds_another_process_commits(database, receiver):
    """A second app on the same database stands for another process: its commits ring no bell
    here, and the dispatcher finds them at its next poll (0.3 s), opening a write transaction
    only then."""
    here, there = make_app(database), make_app(database)
    participants = here.extensions["participants"]
    transactions = Transactions(participants.storage)
    dispatcher = participants.dispatcher()
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop, 0.3), name="polling-dispatcher")
    thread.start()
    try:
        time.sleep(0.5)
        assert "write" not in transactions.of("polling-dispatcher")
        response = there.test_client().post(f"{BASE}/vehicles", headers=headers(), json={
            "uniqueCode": "V-1", "properties": REGISTERED, "callback": {"url": receiver.url()}})
        assert response.status_code == 202
        written = time.monotonic()
        receiver.wait_for(1, timeout=5)
        assert time.monotonic() - written < 1.5
        assert "write" in transactions.of("polling-dispatcher")  # the claim and its record
    finally:
        stop.set()
        dispatcher.wake()
        thread.join(timeout=5)
        for app in (here, there):
            close_app(app)
    assert not thread.is_alive()


def test_a_retry_is_made_when_due_not_at_the_next_poll(database, receiver):
    """The dispatcher sleeps until the next due time when that comes before the poll."""
    app = make_app(database, PARTICIPANTS_DELIVERY_SCHEDULE="1,1")
    participants = app.extensions["participants"]
    receiver.program("/cb", Reply(500), Reply(200))
    dispatcher = participants.dispatcher()
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop, 30.0))
    thread.start()
    try:
        time.sleep(0.1)
        response = app.test_client().post(f"{BASE}/vehicles", headers=headers(), json={
            "uniqueCode": "V-1", "properties": REGISTERED,
            "callback": {"url": receiver.url("/cb")}})
        assert response.status_code == 202
        first, second = receiver.wait_for(2, "/cb", timeout=10)
        assert 0.85 <= second.at - first.at < 3  # the 1 s retry (+/-10 %), not the 30 s poll
    finally:
        stop.set()
        dispatcher.wake()
        thread.join(timeout=5)
        participants.storage.close()
    assert not thread.is_alive()
