"""Callback delivery benchmark: prints figures, asserts nothing about time.

Usage (from the repository root, with the project's environment):

    python bench/delivery.py [--events N] [--participants P] [--receiver-delay-ms D]
                             [--postgres URL|off]

Writes a backlog in process (P vehicles created with a callback to a loopback receiver, then
combined updates spread over them, N events in all, default 1,000 over 100 vehicles, every one
owing a signed callback), then runs one dispatcher until the receiver has every event, and prints
deliveries per second. The receiver (bench/receiver.py) runs in a process of its own, with
keep-alive; with --receiver-delay-ms it answers each callback that much later, as a
distant receiver would. A second pass writes events one at a time while a dispatcher thread runs,
for the commit-to-arrival latency of a quiet system. bench/benchmark.py runs the backlog part
beside its HTTP measurements, to compare deliveries/s with the PUTs/s the service accepts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from webapp import create_app  # noqa: E402

BASE = "/core/api/v2/participants"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _headers(request_id: str) -> dict:
    return {"X-COREOS-REQUEST-ID": request_id, "X-COREOS-TID": "bench",
            "X-COREOS-ACCESS": "bench-token", "X-COREOS-CALLBACK-SECRET": SECRET}


@contextmanager
def receiver(delay_ms: float = 0) -> Iterator[Receiver]:
    """bench/receiver.py in a process of its own, answering after `delay_ms`."""
    process = subprocess.Popen([sys.executable, str(BENCH / "receiver.py"), "--delay-ms",
                                str(delay_ms)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        yield Receiver(port)
    finally:
        process.terminate()
        process.wait(timeout=15)


class Receiver:
    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"

    def _call(self, method: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, "/arrivals")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def arrivals(self) -> dict[str, float]:
        """webhook-id -> epoch seconds of its first arrival."""
        return self._call("GET")

    def forget(self) -> None:
        self._call("DELETE")


def _app(folder: Path, database: str | None):
    database = database or str(folder / f"delivery-{uuid.uuid4().hex[:8]}.db")
    return create_app({"PARTICIPANTS_DATABASE": database,
                       "PARTICIPANTS_MACHINES": str(ROOT / "machines"),
                       "PARTICIPANTS_ACCESS_TOKENS": json.dumps({"bench-token": "bench"}),
                       "PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS": "1",
                       "PARTICIPANTS_DISPATCHER": "off"})  # the dispatchers below only


def _create(client, code: str, url: str) -> tuple[str, str]:
    reply = client.post(f"{BASE}/vehicles", json={
        "uniqueCode": code, "callback": {"url": url},
        "properties": {"registrationNumber": "KA01AB1234", "payloadCapacityKg": 900}},
        headers=_headers(f"create-{code}"))
    data = reply.json["data"]
    if reply.status_code != 202 or not data["event"]["payloadValidated"]:
        raise RuntimeError(f"create failed: {reply.status_code} {reply.get_data()!r}")
    return data["id"], data["event"]["id"]


def _update(client, pid: str, i: int) -> str:
    reply = client.put(f"{BASE}/vehicles/{pid}",
                       json={"properties": {"payloadCapacityKg": 900 + i % 1000}},
                       headers=_headers(f"update-{pid}-{i}"))
    data = reply.json["data"]
    if reply.status_code != 202 or not data["event"]["payloadValidated"]:
        raise RuntimeError(f"update failed: {reply.status_code} {reply.get_data()!r}")
    return data["event"]["id"]


@dataclass(frozen=True)
class Drain:
    """One dispatcher emptying a backlog."""

    label: str
    deliveries: int
    seconds: float
    rounds: int

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        return (f"  {self.label:<48} {self.rate:>9,.0f} deliveries/s"
                f"   ({self.deliveries:,} in {self.seconds:.2f} s, {self.rounds} rounds)")


def backlog(folder: Path, receiver: Receiver, events: int, participants: int,
            database: str | None = None, label: str = "one dispatcher, backlog") -> Drain:
    """Write `events` events owing callbacks over `participants` vehicles, then time one
    dispatcher delivering them all to `receiver`."""
    app = _app(folder, database)
    state = app.extensions["participants"]
    try:
        client = app.test_client()
        receiver.forget()
        participants = max(1, min(participants, events))
        pids, written = [], set()
        for n in range(participants):
            pid, event_id = _create(client, f"D-{n}", receiver.url)
            pids.append(pid)
            written.add(event_id)
        for i in range(events - participants):
            written.add(_update(client, pids[i % participants], i))
        dispatcher = state.dispatcher()
        done = rounds = 0
        started = time.perf_counter()
        while done < len(written):
            attempted = dispatcher.run_once()
            done += attempted
            rounds += 1
            if not attempted:
                time.sleep(0.001)
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"{label}: {done} of {len(written)} delivered in 300 s")
        elapsed = time.perf_counter() - started
        arrived = set(receiver.arrivals())
        if not written <= arrived:
            raise RuntimeError(f"{label}: {len(written - arrived)} events never arrived")
        return Drain(label, done, elapsed, rounds)
    finally:
        state.storage.close()


def quiet(folder: Path, receiver: Receiver, count: int = 100) -> list[float]:
    """Commit-to-arrival latencies (ms) of events written one at a time, 20 ms apart, while a
    dispatcher thread polls every 10 ms when idle."""
    app = _app(folder, None)
    state = app.extensions["participants"]
    client = app.test_client()
    receiver.forget()
    stop = threading.Event()
    dispatcher = state.dispatcher()
    thread = threading.Thread(target=dispatcher.run, args=(stop, 0.01))
    thread.start()
    committed = {}
    try:
        for i in range(count):
            _pid, event_id = _create(client, f"Q-{i}", receiver.url)
            committed[event_id] = time.time()
            time.sleep(0.02)
        deadline = time.monotonic() + 60
        while True:
            arrivals = receiver.arrivals()
            if set(committed) <= set(arrivals) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        dispatcher.wake()
        thread.join()
        state.storage.close()
    return [(arrivals[k] - committed[k]) * 1000 for k in committed if k in arrivals]


def _percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--receiver-delay-ms", type=float, default=0)
    parser.add_argument("--postgres", default=POSTGRES, metavar="URL",
                        help="also measure on PostgreSQL, in a schema of its own ('off': not)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="delivery-bench-"))
    try:
        with receiver(args.receiver_delay_ms) as target:
            print(f"Backlog of {args.events:,} signed callbacks over {args.participants} "
                  f"vehicles, loopback receiver answering after {args.receiver_delay_ms:g} ms:")
            print(backlog(folder, target, args.events, args.participants,
                          label="SQLite (synchronous=FULL)").row())
            if args.postgres != "off":
                from benchmark import postgres_schema

                with postgres_schema(args.postgres) as url:
                    print(backlog(folder, target, args.events, args.participants, url,
                                  label="PostgreSQL").row())
            latency = quiet(folder, target)
            print("One event at a time (SQLite), dispatcher thread polling every 10 ms when idle:")
            print(f"  commit-to-arrival p50 {_percentile(latency, 0.5):,.1f} ms, "
                  f"p99 {_percentile(latency, 0.99):,.1f} ms (n={len(latency)})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
