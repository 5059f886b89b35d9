"""Crash consistency: gunicorn and the dispatcher killed with SIGKILL at random moments.

1. Writer threads send creates, attribute updates, combined updates and state events (with
   callback URLs, and some deliberate business failures) to a real gunicorn process group; at a
   random moment the whole group is killed with SIGKILL and restarted on the same database
   (a SQLite file, or a PostgreSQL schema: the database server itself is never killed). After
   every restart a SQLite file must pass `PRAGMA integrity_check` and every write acknowledged
   with 202 must be there, whole: its event with the acknowledged version, the participant row
   equal to its last success event, contiguous sequences, index rows, its outbox row, and its
   stored idempotent answer (byte for byte the one the client got). Writes whose answer was cut
   off by the kill are sent again with the same request id: each ends as exactly one event.
2. A dispatcher process delivering callbacks to a slow receiver is killed with SIGKILL at random
   moments and restarted; in the end every committed event's callback has arrived, repeats only
   under the same webhook-id with the same body, and each participant's first arrivals in event
   order.

Short form by default (CI), long form with RELIABILITY_LONG=1 (30 kills each). The random choices
come from a seed that is part of every request id (`crash-<seed>-w<writer>-<n>`); CRASH_SEED=<seed>
repeats them (the kill moments still depend on timing).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    BASE,
    ROOT,
    Server,
    assert_clean_log,
    close_app,
    headers,
    inspect,
    make_app,
    rows,
    scale,
    service_config,
    wait_until,
)
from tests.receivers import Receiver, Reply

pytestmark = pytest.mark.reliability

TIMEOUT = 60  # seconds: any single wait; generous, only a hang would reach it
SEED = int(os.environ.get("CRASH_SEED") or time.time_ns() % 1_000_000)
ACTIVATE = {"eventCode": "E-022", "reasonCode": "R-0001"}
DEACTIVATE = {"eventCode": "E-023", "reasonCode": "R-0001"}
DECOMMISSION = {"eventCode": "E-024", "reasonCode": "R-0001"}  # never allowed from active
INDEXED = ("registrationNumber", "fuelType")  # the indexed attributes of tests/data vehicles
FUELS = ("Diesel", "Gasoline", "Electric", "CNG")
# What a client may see when the server dies under it (anything before a kill is an error).
CUT_OFF = requests.RequestException


def query(database: str, sql: str, *params) -> list[tuple]:
    return rows(database, sql, *params)


def integrity(database: str) -> str:
    return inspect(database).integrity()


# -- the writers --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Write:
    tenant: str
    request_id: str
    method: str
    path: str
    body: dict

    @property
    def callback_url(self) -> str | None:
        return (self.body.get("callback") or {}).get("url")


@dataclass(frozen=True)
class Ack:
    """A write answered 202, as the client saw it."""

    write: Write
    participant_id: str
    event_id: str
    version: int
    success: bool
    state: str | None
    text: str  # the whole answer: the stored idempotent answer must be the same bytes


@dataclass
class Writer:
    """One client thread's participants (in one tenant) and what happened to its writes."""

    index: int
    callback_url: str
    rng: random.Random
    tenant: str = ""
    states: dict = field(default_factory=dict)  # acknowledged participants -> last known state
    codes: list = field(default_factory=list)  # uniqueCodes of the participants created
    acks: list = field(default_factory=list)
    cut_off: list = field(default_factory=list)  # writes whose answer never came
    errors: list = field(default_factory=list)
    counter: int = 0

    def __post_init__(self):
        self.tenant = "ab"[self.index % 2]

    def _write(self, method: str, path: str, body: dict) -> Write:
        self.counter += 1
        return Write(self.tenant, f"crash-{SEED}-w{self.index}-{self.counter}", method,
                     BASE + path, body)

    def _callback(self, probability: float) -> dict:
        if self.rng.random() < probability:
            return {"callback": {"url": self.callback_url, "meta": {"writer": self.index}}}
        return {}

    def next_write(self) -> Write:
        rng = self.rng
        if not self.states or rng.random() < 0.12:
            code = f"W{self.index}-{self.counter}"
            if self.codes and rng.random() < 0.2:  # a repeated create: a failure event
                code = rng.choice(self.codes)
            body = {"uniqueCode": code, "name": f"Truck {code}", "owner": "operators:fleet",
                    "category": "truck", "subCategory": rng.choice(["small", "large"]),
                    "properties": {"registrationNumber": f"KA-{rng.randrange(10**6):06d}",
                                   "capacityKg": rng.randrange(100, 9000)},
                    **self._callback(0.7)}
            return self._write("POST", "/vehicles", body)
        pid = rng.choice(sorted(self.states))
        state = self.states[pid]
        roll = rng.random()
        patch: dict = {"capacityKg": rng.randrange(100, 9000)}
        if rng.random() < 0.3:
            patch["fuelType"] = rng.choice(FUELS)
        if rng.random() < 0.2:
            patch["address"] = {"city": rng.choice(["Pune", "Delhi"]), "zip": "411001"}
        elif rng.random() < 0.1:
            patch["address"] = None  # merge patch: remove
        if rng.random() < 0.1:
            patch["registrationNumber"] = f"MH-{rng.randrange(10**6):06d}"
        if roll < 0.08:  # a business failure: capacity out of range
            patch["capacityKg"] = 99_999
            return self._write("PUT", f"/vehicles/{pid}", {"properties": patch})
        if roll < 0.14 and state == "active:active":  # a business failure: invalid transition
            return self._write("PUT", f"/vehicles/{pid}/state/event", self._event(DECOMMISSION))
        if roll < 0.35:  # attributes only
            return self._write("PUT", f"/vehicles/{pid}",
                               {"properties": patch, **self._callback(0.2)})
        transition = {"onboarding:pending": ACTIVATE, "active:active": DEACTIVATE,
                      "inactive:inactive": ACTIVATE}.get(state, ACTIVATE)
        if state == "onboarding:pending":
            patch["verified"] = True
        if roll < 0.7:  # combined: attributes and state in one call
            return self._write("PUT", f"/vehicles/{pid}",
                               {"properties": patch, "stateTransition": transition,
                                **self._callback(0.2)})
        return self._write("PUT", f"/vehicles/{pid}/state/event", self._event(transition))

    def _event(self, transition: dict) -> dict:
        return {**transition, "timestamp": int(time.time()), "source": {"appId": "crash-test"},
                "data": {"by": f"writer-{self.index}"}, **self._callback(0.2)}

    def send(self, session: requests.Session, url: str, write: Write) -> Ack | None:
        """Send one write; None when the answer was not a 202 (recorded as an error)."""
        response = session.request(write.method, url + write.path, json=write.body,
                                   headers=headers(write.tenant, write.request_id),
                                   timeout=TIMEOUT)
        if response.status_code != 202:
            self.errors.append(f"{write.method} {write.path} -> {response.status_code} "
                               f"{response.text[:500]}")
            return None
        data = response.json()["data"]
        event = data["event"]
        ack = Ack(write, data["id"], event["id"], event["version"], event["payloadValidated"],
                  event["state"], response.text)
        self.acks.append(ack)
        if ack.success and write.method == "POST":
            self.codes.append(write.body["uniqueCode"])
        if ack.success or ack.participant_id in self.states:
            self.states[ack.participant_id] = ack.state
        return ack

    def run(self, url: str, stop: threading.Event, killed: threading.Event) -> None:
        """Write until stopped; the write under way when the server dies is set aside."""
        with requests.Session() as session:
            while not stop.is_set():
                write = self.next_write()
                try:
                    self.send(session, url, write)
                except CUT_OFF as error:
                    self.cut_off.append(write)
                    if not killed.is_set():
                        self.errors.append(f"{write.method} {write.path} failed before any "
                                           f"kill: {error!r}")
                    return
                except Exception as error:  # surfaced by the test, never lost in a thread
                    self.errors.append(f"{write.method} {write.path}: {error!r}")
                    return


class Load:
    """Writers writing on threads of their own (see `writing`), and a kill under them."""

    def __init__(self, writers: list[Writer]):
        self.writers = writers
        self.killed = threading.Event()
        self.started = self.acknowledged()

    def acknowledged(self, writers: list[Writer] | None = None) -> int:
        """How many writes `writers` (all of them by default) have had answered 202 so far."""
        return sum(len(w.acks) for w in (self.writers if writers is None else writers))

    def wait_for(self, count: int, what: str, writers: list[Writer] | None = None) -> None:
        """Until `writers` (all of them by default) have `count` acknowledged writes, or any
        writer has an error."""
        wait_until(lambda: self.acknowledged(writers) >= count
                   or any(w.errors for w in self.writers), what)

    def kill_at_random(self, kill: Callable[[], None], rng: random.Random, after: int,
                       latest: float) -> None:
        """Once `after` more writes are acknowledged, `kill()` at a random moment up to `latest`
        s later; the writes it cuts off are set aside (Writer.cut_off), not errors."""
        self.wait_for(self.started + after, "writes to be acknowledged")
        time.sleep(rng.uniform(0.0, latest))
        self.killed.set()
        kill()


@contextlib.contextmanager
def writing(writers: list[Writer], urls: list[str]) -> Iterator[Load]:
    """The writers write on threads of their own until the block ends, spread over `urls`
    (writer i to urls[i % len(urls)]); then every thread has ended, and no writer may have an
    error."""
    load = Load(writers)
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(urls[w.index % len(urls)], stop,
                                                    load.killed)) for w in writers]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=TIMEOUT)
            assert not thread.is_alive()
    for writer in writers:
        assert not writer.errors, writer.errors


# -- the consistency check ----------------------------------------------------------------------

def check_database(database: str, acks: list[Ack]) -> dict:
    """Everything a crash must never break; returns a few counts for the figures."""
    assert integrity(database) == "ok", integrity(database)
    db = inspect(database)
    with db.snapshot():  # one snapshot for every read below
        events = db.rows(
            "SELECT id, tenant_id, participant_id, sequence, version, success, request_id, body"
            " FROM events ORDER BY tenant_id, participant_id, sequence")
        participants = {
            (r[0], r[1]): r for r in db.rows(
                "SELECT tenant_id, id, name, owner, category, sub_category, template_id, state,"
                " properties, version, created_at, updated_at, callback FROM participants")}
        index_rows = defaultdict(set)
        for tenant, _type, name, value, pid in db.index_rows():
            index_rows[tenant, pid].add((name, value))
        outbox = defaultdict(list)
        for event_id, kind, url in db.rows("SELECT event_id, kind, url FROM outbox"):
            outbox[event_id].append((kind, url))
        answers = {(r[0], r[1]): r[2:] for r in db.rows(
            "SELECT tenant_id, request_id, status, response FROM idempotency")}

    by_id = {}
    log = defaultdict(list)
    by_request = Counter()
    for event_id, tenant, pid, sequence, version, success, request_id, body in events:
        record = json.loads(body)
        by_id[event_id] = (tenant, pid, version, success, request_id)
        log[tenant, pid].append((sequence, version, success, record))
        by_request[tenant, request_id] += 1

    # Every acknowledged write is there, as acknowledged, with its idempotent answer.
    for ack in acks:
        key = (f"tenant-{ack.write.tenant}", ack.write.request_id)
        assert by_id.get(ack.event_id) == (key[0], ack.participant_id, ack.version,
                                           int(ack.success), ack.write.request_id), \
            f"acknowledged event lost or changed: {ack}"
        assert answers.get(key) == (202, ack.text), f"stored answer differs from the ack: {ack}"
        if ack.write.callback_url:
            assert ("callback", ack.write.callback_url) in outbox[ack.event_id], \
                f"acknowledged event without its outbox row: {ack}"

    # One event per request id, and each event's answer stored with it (and nothing else).
    assert max(by_request.values(), default=1) == 1, by_request.most_common(3)
    assert set(by_request) == set(answers), (set(by_request) ^ set(answers))
    for (tenant, request_id), (status, text) in answers.items():
        event_id = json.loads(text)["data"]["event"]["id"]
        assert status == 202 and by_id[event_id][0::4] == (tenant, request_id)

    # Each participant: contiguous sequences, versions counting successes, the row = the last
    # success event's entity, index rows = its indexed attributes, outbox rows as owed.
    for (tenant, pid), records in log.items():
        assert [r[0] for r in records] == list(range(1, len(records) + 1)), (pid, records)
        successes = 0
        last = None
        for _sequence, version, success, record in records:
            successes += success
            assert version == successes, f"{pid}: version {version} after {successes} successes"
            if success:
                last = record["entity"]
            owed = (record["event"].get("callback") or {}).get("url")
            assert outbox[record["event"]["id"]] == ([("callback", owed)] if owed else []), \
                f"{pid}: outbox rows {outbox[record['event']['id']]} for a callback to {owed}"
        row = participants.get((tenant, pid))
        if last is None:
            assert row is None, f"{pid} exists without a success event"
            continue
        assert row is not None, f"{pid} has success events but no row"
        (_t, _i, name, owner, category, sub_category, template_id, state, properties, version,
         created_at, updated_at, callback) = row
        properties = json.loads(properties)
        stored = {"participant_name": name, "owner_id": owner, "category": category,
                  "sub_category": sub_category, "template_id": template_id, "state": state,
                  "version": version, "created_at": created_at, "updated_at": updated_at,
                  "callback": (json.loads(callback) or {}).get("url") if callback else None,
                  "attributes": properties}
        expected = {k: last[k] for k in stored if k != "attributes"}
        expected["attributes"] = {**last["indexed_attributes"], **last["non_indexed_attributes"]}
        assert stored == expected, f"{pid} half-updated: row {stored} vs last event {expected}"
        assert version == successes
        assert index_rows.get((tenant, pid), set()) == {
            (k, v) for k, v in properties.items() if k in INDEXED}, f"{pid}: index rows"
    assert set(participants) <= set(log), "participant rows without any event"
    assert set(index_rows) <= set(participants), "index rows without a participant"
    assert set(outbox) <= set(by_id), "outbox rows without their event"
    return {"events": len(events), "participants": len(participants),
            "outbox": sum(map(len, outbox.values()))}


# -- 1. gunicorn killed with SIGKILL ------------------------------------------------------------

def test_every_acknowledged_write_survives_kill_9_of_the_server(database, tmp_path, figure):
    """kill -9 of gunicorn (master and workers) under load, then restart, again and again."""
    kills = scale(5, 30)
    rng = random.Random(SEED)
    log_path = tmp_path / "gunicorn.log"
    receiver = Receiver()  # callbacks are owed to it: outbox rows are written (nobody delivers)
    writers = [Writer(i, receiver.url("/cb"), random.Random(rng.random())) for i in range(6)]
    acks: list[Ack] = []
    cut_off = committed_before_kill = 0
    counts: dict = {}
    server = None
    try:
        for cycle in range(kills + 1):
            server = Server(database, log_path, workers=3)
            counts = check_database(database, acks)

            # Writes whose answer the last kill cut off: each is applied exactly once, whether
            # or not it had committed before the kill (then its stored answer is replayed).
            with requests.Session() as session:
                for writer in writers:
                    pending, writer.cut_off = writer.cut_off, []
                    for write in pending:
                        cut_off += 1
                        before = query(database, "SELECT id FROM events WHERE tenant_id = ?"
                                       " AND request_id = ?", f"tenant-{write.tenant}",
                                       write.request_id)
                        committed_before_kill += bool(before)
                        ack = writer.send(session, server.url, write)
                        assert ack is not None, writer.errors
                        if before:
                            assert before == [(ack.event_id,)], (write, before, ack)
            if cycle == kills:
                break

            with writing(writers, [server.url]) as load:
                # A random moment, once this round has acknowledged a few writes.
                load.kill_at_random(server.kill, rng, after=10, latest=1.5)
            acks = [a for w in writers for a in w.acks]

        acks = [a for w in writers for a in w.acks]
        counts = check_database(database, acks)
        log = server.stop()
        server = None
    finally:
        if server is not None:
            server.kill()
        receiver.close()
    assert_clean_log(log)

    failures = sum(not a.success for a in acks)
    with_callback = sum(bool(a.write.callback_url) for a in acks)
    checked = f", integrity_check ok after {kills + 1} starts" \
        if inspect(database).backend == "sqlite" else f" after {kills + 1} starts"
    figure("Every write acknowledged with 202 survives kill -9 of the server, whole",
           f"{kills} kill -9 of gunicorn (3 workers, 6 writers): {len(acks):,} acknowledged "
           f"writes ({failures:,} failure events), 0 lost, 0 half-updated of "
           f"{counts['participants']:,} participants, {counts['events']:,} events with "
           f"contiguous sequences and version = successes{checked}")
    figure("No acknowledged event lacks its outbox row or its idempotent answer",
           f"{with_callback:,} acknowledged writes with a callback: 0 without an outbox row; "
           f"{counts['outbox']:,} outbox rows, each owed; every stored answer = the bytes "
           f"acknowledged")
    figure("A write cut off by kill -9 is applied once when retried with its request id",
           f"{cut_off} writes in flight at a kill ({committed_before_kill} had committed), "
           "retried: each is exactly one event")


# -- 2. the dispatcher killed with SIGKILL ------------------------------------------------------

DISPATCH_SETTINGS = {"PARTICIPANTS_DELIVERY_SCHEDULE": "0,0,0,0,0",
                     "PARTICIPANTS_DELIVERY_LEASE_SECONDS": "1"}


def start_dispatcher(database: str, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, **service_config(database), **DISPATCH_SETTINGS}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "flask", "--app", "webapp", "dispatch"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_no_committed_callback_is_lost_when_the_dispatcher_is_killed(database, tmp_path, figure):
    """kill -9 of `flask --app webapp dispatch` while it delivers to a slow receiver."""
    kills = scale(3, 30)
    rng = random.Random(SEED)
    log_path = tmp_path / "dispatch.log"
    receiver = Receiver()
    receiver.program("/cb", Reply(200, delay=0.03))  # slow-ish: a kill lands mid-delivery
    participants: list[str] = []
    order: dict[str, list[str]] = {}  # participant -> its events' ids, oldest first

    app = client = None

    def write(count: int) -> None:
        """`count` more events that owe a callback: new vehicles and updates of known ones."""
        for _ in range(count):
            if len(participants) < 10 or rng.random() < 0.4:
                code = f"D-{len(participants)}"
                response = client.post(f"{BASE}/vehicles", headers=headers(), json={
                    "uniqueCode": code, "properties": {"registrationNumber": "AB-1234"},
                    "callback": {"url": receiver.url("/cb")}})
            else:
                pid = rng.choice(participants)
                response = client.put(f"{BASE}/vehicles/{pid}", headers=headers(), json={
                    "properties": {"capacityKg": rng.randrange(1, 9000)}})
            assert response.status_code == 202, response.get_data(as_text=True)
            data = response.json["data"]
            assert data["event"]["payloadValidated"], data
            if data["id"] not in order:
                participants.append(data["id"])
            order.setdefault(data["id"], []).append(data["event"]["id"])

    def outstanding() -> int:
        return query(database, "SELECT COUNT(*) FROM outbox WHERE status != 'delivered'")[0][0]

    def claimed_by(pid: int) -> int:
        """Rows leased by that process (the dispatcher's owner id starts with its pid)."""
        return query(database, "SELECT COUNT(*) FROM outbox WHERE status = 'leased'"
                               " AND lease_owner LIKE ?", f"{pid}-%")[0][0]

    process = None
    leases_left = 0  # kills that left claims of the killed process behind
    try:
        app = make_app(database, **DISPATCH_SETTINGS)
        client = app.test_client()
        write(60)
        for _ in range(kills):
            if outstanding() < 40:
                write(60)
            process = start_dispatcher(database, log_path)
            # A random moment once it is delivering (it has claimed rows; start-up takes a while).
            wait_until(lambda p=process: claimed_by(p.pid) or p.poll() is not None,
                       "the dispatcher to claim deliveries")
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            time.sleep(rng.uniform(0.0, 0.5))
            process.kill()  # SIGKILL
            process.wait()
            assert process.returncode == -signal.SIGKILL
            assert integrity(database) == "ok", integrity(database)
            leases_left += bool(claimed_by(process.pid))
            process = None

        # One last dispatcher delivers the rest, including the rows the dead ones had leased.
        process = start_dispatcher(database, log_path)
        wait_until(lambda: outstanding() == 0 or process.poll() is not None,
                   "every callback to be delivered", timeout=TIMEOUT * 3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT) == 0, log_path.read_text(errors="replace")[-3000:]
        process = None
    finally:
        if process is not None:
            process.kill()
            process.wait()
        if app is not None:
            close_app(app)
        receiver.close()
    assert_clean_log(log_path.read_text(errors="replace"))

    committed = [e for events in order.values() for e in events]
    assert integrity(database) == "ok"
    assert query(database, "SELECT status, COUNT(*) FROM outbox GROUP BY status") == [
        ("delivered", len(committed))]
    calls = receiver.received("/cb")
    bodies = defaultdict(set)
    for call in calls:
        bodies[call.webhook_id].add(call.body)
    lost = set(committed) - set(bodies)
    assert not lost, f"{len(lost)} committed callbacks never arrived: {sorted(lost)[:5]}"
    assert set(bodies) == set(committed), "callbacks of events nobody committed"
    assert all(len(b) == 1 for b in bodies.values()), "a repeat with a different body"
    first_arrivals = list(dict.fromkeys(call.webhook_id for call in calls))
    position = {event_id: i for i, event_id in enumerate(first_arrivals)}
    for pid, events in order.items():
        assert sorted(events, key=position.__getitem__) == events, f"{pid}: out of order"
    duplicates = len(calls) - len(bodies)
    figure("No committed callback is lost when the dispatcher is killed with kill -9",
           f"{kills} kill -9 of the dispatcher while delivering ({leases_left} left claims "
           f"behind; lease 1 s): {len(committed):,} callbacks committed, {len(bodies):,} "
           f"arrived, 0 lost, {duplicates} duplicates (same webhook-id and body), per-participant "
           "order kept" + (", integrity_check ok after every kill"
                           if inspect(database).backend == "sqlite" else ""))
