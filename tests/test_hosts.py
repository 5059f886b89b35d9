"""Several hosts on one PostgreSQL database (SPEC §6): stateless service processes share it.

Two independent gunicorn masters stand for two hosts: each with its own workers, its own
connection pools and its own embedded dispatcher (PARTICIPANTS_DISPATCHER=embedded), on one
PostgreSQL schema, with clients spread across both:

- N copies of one request (same request id) → one event, the same answer from either host;
- 64 conflicting transitions on one participant → exactly one winner, every other one a failure
  event or a 412;
- kill -9 of one host (master and workers) under load → every write acknowledged by either host
  is there, whole (tests/test_crash.py's checks), the writes cut off by the kill apply once when
  sent again to the other host, the other host keeps serving, and its dispatcher delivers every
  committed callback, the dead host's claims included once their lease ends.

Restarting the PostgreSQL server itself under load is not tested here: the test server is shared
with other suites and cannot be stopped from a test.

Short form by default (one kill), long form with RELIABILITY_LONG=1 (kills of each host in turn).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import BASE, Server, assert_clean_log, headers, rows, scale, wait_until
from tests.receivers import Receiver
from tests.test_crash import SEED, Writer, check_database, writing

pytestmark = pytest.mark.reliability

TIMEOUT = 60
ACTIVATE = {"eventCode": "E-022", "reasonCode": "R-0001"}
DEACTIVATE = {"eventCode": "E-023", "reasonCode": "R-0001"}
INVALID_TRANSITION = "101170021090"
# Each host runs its own dispatcher; a dead host's claims come back after this lease.
HOST_ENV = {"PARTICIPANTS_DISPATCHER": "embedded", "PARTICIPANTS_DELIVERY_LEASE_SECONDS": "2",
            "PARTICIPANTS_DELIVERY_SCHEDULE": "0,1,1,1,1"}


class Hosts:
    """Two gunicorn masters on one database; `start(i)` (re)starts host i."""

    def __init__(self, database: str, tmp_path, workers: int = 2):
        self.database, self.tmp_path, self.workers = database, tmp_path, workers
        self.servers: list[Server | None] = [None, None]
        self.starts = 0
        for i in range(2):
            self.start(i)

    def start(self, i: int) -> Server:
        self.starts += 1
        self.servers[i] = Server(self.database, self.tmp_path / f"host-{i}-{self.starts}.log",
                                 workers=self.workers, extra_env=HOST_ENV)
        return self.servers[i]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def stop(self) -> list[str]:
        logs = []
        for server in self.servers:
            if server is not None:
                logs.append(server.stop())
        self.servers = [None, None]
        return logs


@pytest.fixture
def hosts(postgres_database, tmp_path):
    both = Hosts(postgres_database, tmp_path)
    try:
        yield both
    finally:
        logs = both.stop()
    for log in logs:
        assert_clean_log(log)


def _call(url: str, method: str, path: str, body=None, tenant: str = "a",
          request_id: str | None = None, **extra) -> requests.Response:
    response = requests.request(method, url + BASE + path, json=body, timeout=TIMEOUT,
                                headers=headers(tenant, request_id, **extra))
    assert response.status_code < 500, response.text
    return response


def _fire(calls) -> list[requests.Response]:
    """Every call on its own thread, released together."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait(timeout=TIMEOUT)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def _active(url: str, code: str) -> str:
    """A new verified vehicle moved to active:active (version 2)."""
    created = _call(url, "POST", "/vehicles", {"uniqueCode": code, "properties": {
        "registrationNumber": "AB-1234", "capacityKg": 1000, "verified": True}})
    assert created.status_code == 202 and created.json()["data"]["event"]["payloadValidated"]
    pid = created.json()["data"]["id"]
    moved = _call(url, "PUT", f"/vehicles/{pid}", {"stateTransition": ACTIVATE})
    assert moved.json()["data"]["event"]["version"] == 2, moved.text
    return pid


def _log(database: str, pid: str) -> list[tuple]:
    """(sequence, version, success) of one participant's events, checked contiguous."""
    found = rows(database, "SELECT sequence, version, success FROM events WHERE tenant_id = ?"
                           " AND participant_id = ? ORDER BY sequence", "tenant-a", pid)
    assert [r[0] for r in found] == list(range(1, len(found) + 1)), found
    version = 0
    for _sequence, stored, success in found:
        version += bool(success)
        assert stored == version
    return found


def test_postgres_identical_requests_to_two_hosts_write_one_event(hosts, figure):
    """Copies of one combined update, same request id, spread over both hosts: one event, and
    every 202 from either host is the same bytes."""
    copies = scale(64, 400)
    pid = _active(hosts.urls[0], "TWIN-HOSTS")
    request_id = f"hosts-twin-{time.time_ns()}"
    body = {"properties": {"capacityKg": 4200}, "stateTransition": DEACTIVATE}
    calls = [lambda url=hosts.urls[i % 2]: _call(url, "PUT", f"/vehicles/{pid}", body,
                                                 request_id=request_id)
             for i in range(copies)]
    responses = _fire(calls[:64])  # together; then the rest of the long form, 32 at a time
    with ThreadPoolExecutor(max_workers=32) as pool:
        responses += list(pool.map(lambda call: call(), calls[64:]))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {202, 409}, statuses
    answered = {r.content for r in responses if r.status_code == 202}
    assert len(answered) == 1, answered
    assert json.loads(next(iter(answered)))["data"]["event"]["payloadValidated"]
    assert rows(hosts.database, "SELECT COUNT(*) FROM events WHERE request_id = ?",
                request_id) == [(1,)]
    assert rows(hosts.database, "SELECT COUNT(*) FROM idempotency WHERE request_id = ?",
                request_id) == [(1,)]
    assert len(_log(hosts.database, pid)) == 3
    figure("Identical requests spread over two hosts write once",
           f"{copies} copies of one request over 2 gunicorn masters on one schema: 1 event, "
           f"{statuses[202] - 1} byte-identical replays, {statuses[409]} × 409, 0 × 5xx")


def test_postgres_conflicting_transitions_on_two_hosts_have_one_winner(hosts, figure):
    """64 deactivations of one participant at once over both hosts, half of them naming the
    version just read (If-Match): one is applied; the others are failure events (invalid
    transition) or 412."""
    pid = _active(hosts.urls[1], "RACE-HOSTS")
    event = {**DEACTIVATE, "timestamp": int(time.time()), "source": {"appId": "hosts"}}
    calls = [lambda url=hosts.urls[i % 2], match=i % 4 < 2: _call(
        url, "PUT", f"/vehicles/{pid}/state/event", event,
        **({"If-Match": '"2"'} if match else {})) for i in range(64)]
    responses = _fire(calls)

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {202, 412}, statuses
    events = [r.json()["data"]["event"] for r in responses if r.status_code == 202]
    winners = [e for e in events if e["payloadValidated"]]
    assert len(winners) == 1 and winners[0]["version"] == 3, winners
    assert {(e["errorCode"], e["state"], e["version"]) for e in events if not
            e["payloadValidated"]} <= {(INVALID_TRANSITION, "inactive:inactive", 3)}
    found = _log(hosts.database, pid)
    assert len(found) == 2 + len(events)  # every 202 is one event; a 412 writes nothing
    assert rows(hosts.database, "SELECT version, state FROM participants WHERE id = ?",
                pid) == [(3, "inactive:inactive")]
    figure("Conflicting transitions over two hosts have exactly one winner",
           f"64 concurrent E-023 on one participant over 2 gunicorn masters (half with "
           f"If-Match): 1 winner, {len(events) - 1} failure events, {statuses[412]} × 412, "
           "0 × 5xx")


def test_postgres_kill_9_of_one_host_loses_nothing_and_the_other_keeps_serving(
        hosts, figure):
    """Writers on both hosts; one host (master and workers) is killed with SIGKILL at a random
    moment: the other keeps answering; the writes cut off are sent again to it and apply once;
    every acknowledged write is whole in the database; every committed callback is delivered
    (the dead host's claims after their lease)."""
    kills = scale(1, 6)
    rng = random.Random(SEED)
    receiver = Receiver()
    writers = [Writer(i, receiver.url("/cb"), random.Random(rng.random())) for i in range(6)]
    cut_off = served_after_kill = 0
    counts: dict = {}
    try:
        for round_ in range(kills):
            victim, survivor = round_ % 2, 1 - round_ % 2
            with writing(writers, hosts.urls) as load:  # writer i on host i % 2
                load.kill_at_random(hosts.servers[victim].kill, rng, after=20, latest=1.0)
                # The survivor's writers go on: it answers while the other host is dead.
                on_survivor = [w for w in writers if w.index % 2 == survivor]
                before = load.acknowledged(on_survivor)
                load.wait_for(before + 20, "the other host to keep serving", on_survivor)
                served_after_kill += load.acknowledged(on_survivor) - before
            assert all(not w.cut_off for w in writers if w.index % 2 == survivor)

            # What the kill cut off is sent again, to the survivor: each applies exactly once.
            with requests.Session() as session:
                for writer in writers:
                    pending, writer.cut_off = writer.cut_off, []
                    for write in pending:
                        cut_off += 1
                        assert writer.send(session, hosts.urls[survivor], write) is not None, \
                            writer.errors
            acks = [a for w in writers for a in w.acks]
            counts = check_database(hosts.database, acks)
            assert_clean_log(hosts.servers[victim].log)
            hosts.start(victim)

        # Every committed callback arrives: the dead host's claims come back after the lease.
        owed = {a.event_id for a in acks if a.write.callback_url}
        wait_until(lambda: owed <= {r.webhook_id for r in receiver.received("/cb")},
                   "every committed callback to arrive", timeout=TIMEOUT)
        wait_until(lambda: rows(hosts.database, "SELECT COUNT(*) FROM outbox"
                                                " WHERE status != 'delivered'") == [(0,)],
                   "every outbox row to be delivered", timeout=TIMEOUT)
        bodies: dict[str, set] = {}
        for call in receiver.received("/cb"):
            bodies.setdefault(call.webhook_id, set()).add(call.body)
        assert all(len(b) == 1 for b in bodies.values()), "a repeat with a different body"
        counts = check_database(hosts.database, acks)
    finally:
        receiver.close()
    figure("kill -9 of one of two hosts loses no acknowledged write; the other keeps serving",
           f"{kills} kill -9 of one of 2 gunicorn masters on one schema (6 writers over both): "
           f"{len(acks):,} acknowledged writes, 0 lost, 0 half-updated of "
           f"{counts['participants']:,} participants; {served_after_kill} writes answered by "
           f"the other host while the first was dead; {cut_off} writes cut off, retried on the "
           f"other host: each exactly one event; {len(owed):,} callbacks committed, all "
           "delivered")
