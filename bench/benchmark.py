"""Benchmark of the write path: prints figures, asserts nothing about time.

Usage (from the repository root, with the project's environment):

    python bench/benchmark.py [--seconds N] [--threads T] [--dir PATH] [--postgres URL|off]

One run measures and prints, each for N seconds (default 5) after a short warm-up:

1. In-process, synchronous=FULL: a raw sqlite3 transaction (the same pysqlite3 module, WAL,
   BEGIN IMMEDIATE; read one row by key, update it, insert one row, commit) against the engine's
   combined update (`Service.execute` of an attributes-plus-stateTransition update on one
   vehicle, a new request id each time, alternating E-104 "assigned to a trip" with a trip id and
   E-107 "trip closed" clearing it, so every write succeeds). Ops/s, p50 and p99 latency in
   microseconds, and the engine/baseline ratios.
2. Over HTTP, under gunicorn with 2 sync workers on loopback, T client threads (default 4, each
   with its own vehicle and a new connection per request, as sync workers close it): the minimal
   Flask JSON endpoint of bench/minimal_app.py against the real combined
   `PUT /core/api/v2/participants/vehicles/{id}`. Requests/s, p50, p99 and the ratios.
3. Part 1 on PostgreSQL (synchronous_commit=on, as durable as SQLite's FULL): the same raw
   transaction through psycopg (SELECT ... FOR UPDATE, UPDATE, INSERT, COMMIT) against the
   engine's combined update on the PostgreSQL backend.
4. Part 2 with the service on PostgreSQL.
5. Part 1 again with synchronous=NORMAL, for reference (an acknowledged write may then be lost
   on power failure, though never corrupted).

Parts 3 and 4 run in schemas of their own, made and dropped in the --postgres database (default:
the local test server); `--postgres off` leaves them out.

The vehicles type is the shipped one in machines/. Databases live in a temporary folder (under
--dir when given; its file system decides what an fsync costs), removed at the end along with
every server started. The machine's load average is printed first: other work on the machine
skews every figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.loading.registry import load_registry  # noqa: E402
from engine.model.commands import build  # noqa: E402
from engine.service import idempotency  # noqa: E402
from engine.service.participants import Service  # noqa: E402
from engine.storage import open_storage  # noqa: E402
from engine.storage.sqlite import sqlite3  # noqa: E402

BENCH = Path(__file__).resolve().parent
MACHINES = ROOT / "machines"
BASE = "/core/api/v2/participants"
TENANT, TOKEN = "bench", "bench-token"
WARM_UP_SECONDS = 0.5
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A schema of this run's own on `url`, as a URL whose search_path names it; dropped after."""
    import psycopg

    schema = f"bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            separator = "&" if "?" in url else "?"
            yield f"{url}{separator}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')

VEHICLE = {
    "registrationNumber": "KA01AB1234", "vin": "1HGCM82633A004352", "payloadCapacityKg": 9000,
    "gpsDeviceImei": "356938035643809", "insuranceValidUntil": "2030-01-31",
    "inspectionPassed": True,
    "documents": [{"docType": "registrationCertificate", "docNumber": "RC-0001"},
                  {"docType": "insurance", "docNumber": "INS-0001"},
                  {"docType": "pollutionCertificate", "docNumber": "PUC-0001"}],
}
# create, then: documents submitted, inspection passed, activated -> active:available
TO_AVAILABLE = [("E-101", "R-0001"), ("E-102", "R-1101"), ("E-022", "R-0001")]


def trip_update(i: int) -> dict:
    """The i-th combined update of one vehicle: even ones dispatch it, odd ones close the trip."""
    if i % 2 == 0:
        return {"properties": {"currentTripId": f"TRP-{i % 100_000_000:08d}"},
                "stateTransition": {"eventCode": "E-104", "reasonCode": "R-0001"}}
    return {"properties": {"currentTripId": None},
            "stateTransition": {"eventCode": "E-107", "reasonCode": "R-1107"}}


# -- figures --------------------------------------------------------------------------------------

@dataclass
class Figures:
    label: str
    count: int
    seconds: float
    latencies_ns: list[int]
    failures: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in microseconds (nearest rank)."""
        ordered = sorted(self.latencies_ns)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] / 1000

    def row(self, unit: str) -> str:
        line = (f"  {self.label:<44} {self.rate:>9,.0f} {unit:<5}"
                f" p50 {self.percentile(50):>8,.0f} µs   p99 {self.percentile(99):>8,.0f} µs"
                f"   (n={self.count:,})")
        if self.failures:
            line += f"   {self.failures} FAILED"
        return line


def ratio(measured: Figures, reference: Figures, what: str, unit: str) -> str:
    return (f"  {what:<44} {measured.rate / reference.rate:>9.2f}× the {unit},"
            f" {measured.percentile(50) / reference.percentile(50):.2f}× the p50,"
            f" {measured.percentile(99) / reference.percentile(99):.2f}× the p99")


def measure(label: str, seconds: float, step: Callable[[object], bool],
            prepare: Callable[[], object] = lambda: None) -> Figures:
    """Time `step(prepare())` (True when it succeeded), after a warm-up, for `seconds`.

    Only `step` is timed: `prepare` builds its input outside the measurement.
    """
    deadline = time.perf_counter() + WARM_UP_SECONDS
    while time.perf_counter() < deadline:
        step(prepare())
    latencies, failures = [], 0
    start = time.perf_counter()
    deadline = start + seconds
    clock = time.perf_counter_ns
    while True:
        argument = prepare()
        t0 = clock()
        ok = step(argument)
        latencies.append(clock() - t0)
        failures += not ok
        if time.perf_counter() >= deadline:
            break
    return Figures(label, len(latencies), time.perf_counter() - start, latencies, failures)


# -- 1 and 3: in-process -------------------------------------------------------------------------

def baseline(folder: Path, synchronous: str, seconds: float) -> Figures:
    """BEGIN IMMEDIATE; read a row by key; update it; insert a row; COMMIT."""
    conn = sqlite3.connect(folder / f"baseline-{synchronous}.db", isolation_level=None,
                           timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("CREATE TABLE items (id TEXT PRIMARY KEY, version INTEGER NOT NULL,"
                     " body TEXT NOT NULL)")
        conn.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, item_id TEXT NOT NULL,"
                     " version INTEGER NOT NULL, body TEXT NOT NULL)")
        conn.execute("CREATE INDEX log_item ON log (item_id, version)")
        conn.executemany("INSERT INTO items VALUES (?, 1, ?)",
                         [(f"item-{i}", json.dumps(VEHICLE)) for i in range(1000)])
        event = json.dumps({"event": "x" * 1500})
        counter = iter(range(10**12))

        def step(key: str) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            version, body = conn.execute("SELECT version, body FROM items WHERE id = ?",
                                         (key,)).fetchone()
            updated = conn.execute("UPDATE items SET version = version + 1, body = ?"
                                   " WHERE id = ? AND version = ?", (body, key, version)).rowcount
            conn.execute("INSERT INTO log (item_id, version, body) VALUES (?, ?, ?)",
                         (key, version + 1, event))
            conn.execute("COMMIT")
            return updated == 1

        return measure(f"raw sqlite3 transaction ({synchronous})", seconds, step,
                       lambda: f"item-{next(counter) % 1000}")
    finally:
        conn.close()


def pg_baseline(url: str, seconds: float) -> Figures:
    """psycopg, one transaction: read a row by key; update it; insert a row; commit."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id text PRIMARY KEY, version bigint NOT NULL,"
                     " body text NOT NULL)")
        conn.execute("CREATE TABLE log (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     " item_id text NOT NULL, version bigint NOT NULL, body text NOT NULL)")
        conn.execute("CREATE INDEX log_item ON log (item_id, version)")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO items VALUES (%s, 1, %s)",
                               [(f"item-{i}", json.dumps(VEHICLE)) for i in range(1000)])
        event = json.dumps({"event": "x" * 1500})
        counter = iter(range(10**12))

        def step(key: str) -> bool:
            with conn.transaction():
                version, body = conn.execute("SELECT version, body FROM items WHERE id = %s"
                                             " FOR UPDATE", (key,)).fetchone()
                updated = conn.execute("UPDATE items SET version = version + 1, body = %s"
                                       " WHERE id = %s AND version = %s",
                                       (body, key, version)).rowcount
                conn.execute("INSERT INTO log (item_id, version, body) VALUES (%s, %s, %s)",
                             (key, version + 1, event))
            return updated == 1

        return measure("raw psycopg transaction (synchronous_commit=on)", seconds, step,
                       lambda: f"item-{next(counter) % 1000}")


def engine(folder: Path, synchronous: str, seconds: float, database: str | None = None
           ) -> Figures:
    """Service.execute of combined updates on one vehicle, each with a new request id."""
    ptype = load_registry(MACHINES)["vehicles"]
    store = open_storage(database or str(folder / f"engine-{synchronous}.db"),
                         synchronous=synchronous)
    service = Service(store)
    backend = "PostgreSQL" if database else synchronous

    def run(kind: str, body: dict, participant_id: str | None = None) -> dict:
        request_id = str(uuid.uuid4())
        command = build(kind, body, tenant_id=TENANT, request_id=request_id,
                        fingerprint=idempotency.fingerprint("PUT", request_id, body),
                        participant_id=participant_id)
        result = service.execute(ptype, command, render)
        return json.loads(result.body)

    def render(participant_id: str, record: dict, state: str | None) -> tuple[int, str]:
        return 202, json.dumps({"id": participant_id, "ok": record["payloadValidated"],
                                "version": record["version"], "state": state})

    try:
        created = run("create", {"uniqueCode": "BENCH-1", "properties": VEHICLE})
        pid = created["id"]
        for code, reason in TO_AVAILABLE:
            outcome = run("update", {"properties": {},
                                     "stateTransition": {"eventCode": code, "reasonCode": reason}},
                          pid)
            if not outcome["ok"]:
                raise RuntimeError(f"setting up the vehicle failed at {code}: {outcome}")
        bodies = (trip_update(0), trip_update(1))
        counter = iter(range(10**12))

        def prepare():
            request_id = uuid.uuid4().hex
            return build("update", bodies[next(counter) % 2], tenant_id=TENANT,
                         request_id=request_id, fingerprint=request_id, participant_id=pid)

        def step(command) -> bool:
            return '"ok": true' in service.execute(ptype, command, render).body

        return measure(f"engine combined update ({backend})", seconds, step, prepare)
    finally:
        store.close()


# -- 2: over HTTP ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_control_socket() -> list[str]:
    """gunicorn >= 24 opens a control socket at one fixed path; two servers would share it."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(
        s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


@contextmanager
def gunicorn(app: str, log_path: Path, *, cwd: Path, env: dict, workers: int) -> Iterator[int]:
    """A gunicorn server on a free loopback port for the duration of the block; yields the port."""
    port = _free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind",
             f"127.0.0.1:{port}", "--graceful-timeout", "5", *_no_control_socket(), app],
            cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start in 30 s") from None
                time.sleep(0.1)
        yield port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        text = log_path.read_text(errors="replace")
        if "Traceback" in text or "database is locked" in text:
            print(f"  !! the server log {log_path.name} shows errors:\n{text}", file=sys.stderr)


def _send(port: int, method: str, path: str, body: dict | None, headers: dict
          ) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload,
                     headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _headers() -> dict:
    return {"X-COREOS-REQUEST-ID": uuid.uuid4().hex, "X-COREOS-TID": TENANT,
            "X-COREOS-ACCESS": TOKEN}


def _real_vehicle(port: int, n: int) -> str:
    """A vehicle in active:available, made over HTTP."""
    status, raw = _send(port, "POST", f"{BASE}/vehicles",
                        {"uniqueCode": f"BENCH-{n}", "properties": VEHICLE}, _headers())
    answer = json.loads(raw)
    if status != 202 or not answer["data"]["event"]["payloadValidated"]:
        raise RuntimeError(f"create failed: {status} {raw!r}")
    pid = answer["data"]["id"]
    for code, reason in TO_AVAILABLE:
        status, raw = _send(port, "PUT", f"{BASE}/vehicles/{pid}", {
            "properties": {}, "stateTransition": {"eventCode": code, "reasonCode": reason}},
            _headers())
        if status != 202 or b'"payloadValidated":true' not in raw:
            raise RuntimeError(f"{code} failed: {status} {raw!r}")
    return pid


def load(label: str, port: int, threads: int, seconds: float,
         request: Callable[[int, int], tuple[str, dict, dict]],
         ok: Callable[[int, bytes], bool]) -> Figures:
    """`threads` clients each sending `request(client, i)` back to back; warm-up, then timed."""
    latencies: list[list[int]] = [[] for _ in range(threads)]
    failures = [0] * threads
    counters = [0] * threads
    timed = threading.Event()
    stop = threading.Event()
    problems: list[BaseException] = []

    def client(n: int) -> None:
        try:
            while not stop.is_set():
                path, body, headers = request(n, counters[n])
                counters[n] += 1
                t0 = time.perf_counter_ns()
                status, raw = _send(port, "PUT", path, body, headers)
                elapsed = time.perf_counter_ns() - t0
                if timed.is_set() and not stop.is_set():
                    latencies[n].append(elapsed)
                    failures[n] += not ok(status, raw)
                elif not ok(status, raw):
                    raise RuntimeError(f"warm-up request failed: {status} {raw[:300]!r}")
        except Exception as error:  # reported by the caller
            problems.append(error)
            stop.set()

    workers = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(WARM_UP_SECONDS)
    timed.set()
    start = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    elapsed = time.perf_counter() - start
    for worker in workers:
        worker.join(timeout=70)
    if problems:
        raise RuntimeError(f"{label}: {problems[0]!r}") from problems[0]
    merged = [x for part in latencies for x in part]
    return Figures(label, len(merged), elapsed, merged, sum(failures))


def over_http(folder: Path, threads: int, seconds: float, workers: int,
              database: str | None = None) -> tuple[Figures, Figures]:
    with gunicorn("minimal_app:app", folder / "minimal.log", cwd=BENCH, env={},
                  workers=workers) as port:
        def minimal(n: int, i: int):
            return f"{BASE}/vehicles/vehicles:{n}", trip_update(i), _headers()

        plain = load("minimal Flask JSON endpoint", port, threads, seconds, minimal,
                     lambda status, raw: status == 202)

    env = {"PARTICIPANTS_DATABASE": database or str(folder / "http.db"),
           "PARTICIPANTS_MACHINES": str(MACHINES),
           "PARTICIPANTS_ACCESS_TOKENS": json.dumps({TOKEN: TENANT}),
           "PARTICIPANTS_SYNCHRONOUS": "FULL"}
    with gunicorn("webapp:create_app()", folder / "service.log", cwd=ROOT, env=env,
                  workers=workers) as port:
        pids = [_real_vehicle(port, n) for n in range(threads)]

        def real(n: int, i: int):
            return f"{BASE}/vehicles/{pids[n]}", trip_update(i), _headers()

        service = load("PUT /participants/vehicles/{id} (combined)", port, threads, seconds,
                       real, lambda status, raw: status == 202
                       and b'"payloadValidated":true' in raw)
    return plain, service


# -- the run ------------------------------------------------------------------------------------

def _file_system(path: Path) -> str:
    """The mount's type for `path`, from /proc/mounts where there is one."""
    try:
        best, kind = "", "unknown"
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fs = line.split()[:3]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fs
        return kind
    except OSError:
        return "unknown"


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwind, so servers are stopped and files removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="how long each measurement runs (default 5)")
    parser.add_argument("--threads", type=int, default=4,
                        help="HTTP client threads (default 4)")
    parser.add_argument("--workers", type=int, default=2,
                        help="gunicorn sync workers (default 2)")
    parser.add_argument("--postgres", default=POSTGRES, metavar="URL",
                        help="PostgreSQL database to measure in (a schema of its own is made "
                             f"and dropped; default {POSTGRES}); 'off' skips PostgreSQL")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the temporary databases go (default: the system's temp)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.threads < 1 or args.workers < 1:
        parser.error("--seconds must be positive; --threads and --workers at least 1")
    signal.signal(signal.SIGTERM, _terminate)

    folder = Path(tempfile.mkdtemp(prefix="participants-bench-", dir=args.dir))
    try:
        load1, load5, _ = os.getloadavg()
        print(f"Participant Service benchmark: {args.seconds:g} s per measurement, "
              f"{WARM_UP_SECONDS:g} s warm-up")
        print(f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version} "
              f"({sqlite3.__name__}), {os.cpu_count()} CPUs, load average {load1:.2f} "
              f"(5 min {load5:.2f}), databases on {_file_system(folder.resolve())}")
        print()
        print("1. One write transaction in-process, synchronous=FULL")
        base_full = baseline(folder, "FULL", args.seconds)
        engine_full = engine(folder, "FULL", args.seconds)
        print(base_full.row("ops/s"))
        print(engine_full.row("ops/s"))
        print(ratio(engine_full, base_full, "engine / baseline", "ops/s"))
        print()
        print(f"2. HTTP on loopback: gunicorn, {args.workers} sync workers, "
              f"{args.threads} client threads, one connection per request")
        plain, service = over_http(folder, args.threads, args.seconds, args.workers)
        print(plain.row("req/s"))
        print(service.row("req/s"))
        print(ratio(service, plain, "service / minimal endpoint", "requests/s"))
        print()
        figures = [base_full, engine_full, plain, service]
        if args.postgres != "off":
            print()
            print("3. One write transaction in-process, PostgreSQL (synchronous_commit=on)")
            with postgres_schema(args.postgres) as url:
                base_pg = pg_baseline(url, args.seconds)
            with postgres_schema(args.postgres) as url:
                engine_pg = engine(folder, "FULL", args.seconds, url)
            print(base_pg.row("ops/s"))
            print(engine_pg.row("ops/s"))
            print(ratio(engine_pg, base_pg, "engine / baseline", "ops/s"))
            print()
            print(f"4. HTTP on loopback, PostgreSQL: gunicorn, {args.workers} sync workers, "
                  f"{args.threads} client threads")
            with postgres_schema(args.postgres) as url:
                plain_pg, service_pg = over_http(folder, args.threads, args.seconds,
                                                 args.workers, url)
            print(plain_pg.row("req/s"))
            print(service_pg.row("req/s"))
            print(ratio(service_pg, plain_pg, "service / minimal endpoint", "requests/s"))
            figures += [base_pg, engine_pg, plain_pg, service_pg]
        print()
        print("5. For reference: part 1 with synchronous=NORMAL")
        base_normal = baseline(folder, "NORMAL", args.seconds)
        engine_normal = engine(folder, "NORMAL", args.seconds)
        print(base_normal.row("ops/s"))
        print(engine_normal.row("ops/s"))
        print(ratio(engine_normal, base_normal, "engine / baseline", "ops/s"))
        figures += [base_normal, engine_normal]
        failed = sum(f.failures for f in figures)
        if failed:
            print(f"\n{failed} operations did not succeed: the figures above are not valid.")
            return 1
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
