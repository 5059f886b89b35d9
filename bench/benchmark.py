"""Benchmark of the write path: prints figures, asserts nothing about time.

Usage (from the repository root, with the project's environment):

    python bench/benchmark.py [--seconds N] [--repeat R] [--parts engine,http,delivery]
                              [--servers sync:2,gthread:2x4] [--threads T] [--events E]
                              [--dir PATH] [--postgres URL|off]

Each measurement runs N seconds (default 5) after a short warm-up; for each backend, SQLite
(synchronous=FULL) and then PostgreSQL (synchronous_commit=on, as durable):

- engine: in-process, a raw transaction (SQLite: the same pysqlite3 module, WAL, BEGIN
  IMMEDIATE; read one row by key, update it, insert one row, commit; PostgreSQL: psycopg,
  SELECT ... FOR UPDATE, UPDATE, INSERT, COMMIT) against the engine's combined update
  (`Service.execute` of an attributes-plus-stateTransition update on one vehicle, a new request
  id each time, alternating E-104 "assigned to a trip" with a trip id and E-107 "trip closed"
  clearing it, so every write succeeds). Ops/s, p50 and p99 latency, and the ratios.
- http: for each gunicorn configuration of --servers (sync workers, or gthread workers with
  threads and keep-alive), the minimal Flask JSON endpoint of bench/minimal_app.py and then the
  real combined `PUT /core/api/v2/participants/vehicles/{id}`, driven by the same client: T
  connections (default 4), each a thread with its own vehicle, kept alive where the server keeps
  them. Requests/s, p50, p99, the server's CPU time per request, and the ratios.
- delivery: a backlog of E callbacks (default 1,000, over 100 vehicles) delivered by one
  dispatcher to a loopback receiver in a process of its own (bench/delivery.py), in
  deliveries/s, against the best PUT rate the http part measured on the same backend: at least
  1× means the dispatcher keeps up with the service's own top load.

Then, for reference, the engine part on SQLite with synchronous=NORMAL (an acknowledged write
may then be lost on power failure, though never corrupted). With --repeat R the whole run is
made R times and every figure and ratio is summarised as min and median.

PostgreSQL parts run in schemas of their own, made and dropped in the --postgres database
(default: the local test server); `--postgres off` leaves them out. The vehicles type is the
shipped one in machines/. Databases live in a temporary folder (under --dir when given; its file
system decides what an fsync costs), removed at the end along with every server started. The
machine's load average is printed first: other work on the machine skews every figure, so read
the ratios, measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
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
sys.path.insert(0, str(BENCH))

from delivery import backlog, receiver  # noqa: E402
from measuring import (  # noqa: E402
    WARM_UP_SECONDS,
    Client,
    Figures,
    ServerConfig,
    gunicorn,
    load,
    parse_servers,
)

MACHINES = ROOT / "machines"
BASE = "/core/api/v2/participants"
TENANT, TOKEN = "bench", "bench-token"
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


# -- over HTTP ------------------------------------------------------------------------------------

def _headers() -> dict:
    return {"X-COREOS-REQUEST-ID": uuid.uuid4().hex, "X-COREOS-TID": TENANT,
            "X-COREOS-ACCESS": TOKEN}


def _real_vehicle(client: Client, code: str, callback: str | None = None) -> str:
    """A vehicle in active:available, made over HTTP (with a stored callback URL, if given)."""
    body = {"uniqueCode": code, "properties": VEHICLE}
    if callback:
        body["callback"] = {"url": callback}
    status, raw = client.request("POST", f"{BASE}/vehicles", body, _headers())
    answer = json.loads(raw)
    if status != 202 or not answer["data"]["event"]["payloadValidated"]:
        raise RuntimeError(f"create failed: {status} {raw!r}")
    pid = answer["data"]["id"]
    for code, reason in TO_AVAILABLE:
        status, raw = client.request("PUT", f"{BASE}/vehicles/{pid}", {
            "properties": {}, "stateTransition": {"eventCode": code, "reasonCode": reason}},
            _headers())
        if status != 202 or b'"payloadValidated":true' not in raw:
            raise RuntimeError(f"{code} failed: {status} {raw!r}")
    return pid


def _trip(path: str, i: int) -> tuple[str, str, bytes, dict]:
    """The i-th combined update of a vehicle as a request, encoded before it is timed."""
    return "PUT", path, json.dumps(trip_update(i)).encode(), _headers()


def over_http(folder: Path, config: ServerConfig, threads: int, seconds: float,
              database: str | None = None) -> tuple[Figures, Figures]:
    """The minimal endpoint, then the service, under the same server configuration and client."""
    with gunicorn("minimal_app:app", folder / f"minimal-{config.name}.log", cwd=BENCH, env={},
                  config=config) as server:
        plain = load("minimal Flask JSON endpoint", server, threads, seconds,
                     lambda n, i: _trip(f"{BASE}/vehicles/vehicles:{n}", i),
                     lambda status, raw: status == 202)

    env = {"PARTICIPANTS_DATABASE": database or str(folder / f"http-{config.name}.db"),
           "PARTICIPANTS_MACHINES": str(MACHINES),
           "PARTICIPANTS_ACCESS_TOKENS": json.dumps({TOKEN: TENANT}),
           "PARTICIPANTS_SYNCHRONOUS": "FULL"}
    with gunicorn("webapp:create_app()", folder / f"service-{config.name}.log", cwd=ROOT,
                  env=env, config=config) as server:
        setup = Client(server.port)
        try:
            pids = [_real_vehicle(setup, f"BENCH-{n}") for n in range(threads)]
        finally:
            setup.close()
        service = load("PUT /participants/vehicles/{id} (combined)", server, threads, seconds,
                       lambda n, i: _trip(f"{BASE}/vehicles/{pids[n]}", i),
                       lambda status, raw: status == 202
                       and b'"payloadValidated":true' in raw)
    return plain, service


@dataclass(frozen=True)
class Live:
    """PUTs owing a callback each, delivered meanwhile by the servers' embedded dispatchers."""

    puts: Figures
    delivered: int     # callbacks that arrived while the PUTs were timed
    drained_ms: float  # from the end of the timing until the last callback arrived

    @property
    def rate(self) -> float:
        return self.delivered / self.puts.seconds if self.puts.seconds else 0.0


LIVE_VEHICLES = 25  # per client connection, updated in turn


def live(folder: Path, config: ServerConfig, threads: int, seconds: float, target,
         database: str | None = None) -> Live:
    """The combined PUT again, every vehicle with a stored callback to `target`, the embedded
    dispatchers delivering as the writes commit: do the deliveries keep pace? Each client
    updates LIVE_VEHICLES vehicles in turn (one participant's callbacks go out one at a time, in
    order, so a fleet's worth of them is what a dispatcher can spread)."""
    env = {"PARTICIPANTS_DATABASE": database or str(folder / f"live-{config.name}.db"),
           "PARTICIPANTS_MACHINES": str(MACHINES),
           "PARTICIPANTS_ACCESS_TOKENS": json.dumps({TOKEN: TENANT}),
           "PARTICIPANTS_SYNCHRONOUS": "FULL", "PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS": "1"}
    with gunicorn("webapp:create_app()", folder / f"live-{config.name}.log", cwd=ROOT,
                  env=env, config=config) as server:
        setup = Client(server.port)
        try:
            pids = [[_real_vehicle(setup, f"LIVE-{n}-{k}", target.url)
                     for k in range(LIVE_VEHICLES)] for n in range(threads)]
        finally:
            setup.close()
        # the i-th request of a client goes to its vehicle i % LIVE_VEHICLES, whose own
        # sequence of trips alternates as trip_update's does
        puts = load("PUT, each owing a callback", server, threads, seconds,
                    lambda n, i: _trip(f"{BASE}/vehicles/{pids[n][i % LIVE_VEHICLES]}",
                                       i // LIVE_VEHICLES),
                    lambda status, raw: status == 202 and b'"payloadValidated":true' in raw)
        began, ended = puts.window
        deadline = time.monotonic() + 60
        while True:  # every event written by then has arrived, or a minute has passed
            arrivals = target.arrivals()
            last = max(arrivals.values(), default=ended)
            if time.time() - last > 0.5 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    delivered = sum(began <= at <= ended for at in arrivals.values())
    return Live(puts, delivered, max(0.0, last - ended) * 1000)


# -- the run ------------------------------------------------------------------------------------

class Run:
    """One run's figures: printed as they come, and kept by name for the summary of repeats."""

    def __init__(self):
        self.values: dict[str, tuple[float, str]] = {}  # name -> (value, unit)
        self.failures: list[str] = []  # measurements in which some operation failed

    def keep(self, name: str, value: float, unit: str) -> None:
        self.values[name] = (value, unit)

    def figures(self, section: str, *rows: tuple[Figures, str]) -> None:
        for figures, unit in rows:
            print(figures.row(unit))
            if figures.failures:
                self.failures.append(f"{section}: {figures.label}")
            self.keep(f"{section}: {figures.label}", figures.rate, unit)
            self.keep(f"{section}: {figures.label}, p99", figures.percentile(99) / 1000, "ms")
            if figures.cpu_seconds is not None:
                self.keep(f"{section}: {figures.label}, server CPU", figures.cpu_per_request,
                          "µs/req")

    def ratio(self, section: str, measured: Figures, reference: Figures, what: str,
              unit: str) -> None:
        print(ratio(measured, reference, what, unit))
        self.keep(f"{section}: {what}", measured.rate / reference.rate, "×")
        self.keep(f"{section}: {what}, p99", measured.percentile(99) / reference.percentile(99),
                  "× p99")


def _in_process(run: Run, section: str, base: Figures, eng: Figures) -> None:
    run.figures(section, (base, "ops/s"), (eng, "ops/s"))
    run.ratio(section, eng, base, "engine / baseline", "ops/s")


def _http(run: Run, args, folder: Path, backend: str, url: str | None
          ) -> tuple[float, ServerConfig | None]:
    """Every server configuration on one backend; the best PUT rate measured, and where."""
    best = (0.0, None)
    for config in args.servers:
        section = f"HTTP {backend}, {config.name}"
        print(f"  -- gunicorn, {config.describe()}, {args.threads} client connections")
        if url is None:
            plain, service = over_http(folder, config, args.threads, args.seconds)
        else:
            with postgres_schema(url) as schema:
                plain, service = over_http(folder, config, args.threads, args.seconds, schema)
        run.figures(section, (plain, "req/s"), (service, "req/s"))
        run.ratio(section, service, plain, "service / minimal endpoint", "requests/s")
        if service.rate > best[0]:
            best = (service.rate, config)
    return best


def _delivery(run: Run, args, folder: Path, backend: str, url: str | None,
              best: tuple[float, ServerConfig | None]) -> None:
    section = f"delivery {backend}"
    put_rate, config = best
    with receiver() as target:
        if url is None:
            drained = backlog(folder, target, args.events, 100, label="one dispatcher, backlog")
        else:
            with postgres_schema(url) as schema:
                drained = backlog(folder, target, args.events, 100, schema,
                                  label="one dispatcher, backlog")
        print(drained.row())
        run.keep(f"{section}: {drained.label}", drained.rate, "deliveries/s")
        if put_rate:
            print(f"  {'backlog deliveries / the best PUT rate above':<48} "
                  f"{drained.rate / put_rate:>9.2f}×  (at least 1: one dispatcher keeps up)")
            run.keep(f"{section}: backlog deliveries / best PUT rate", drained.rate / put_rate,
                     "×")
        config = config or args.servers[0]
        print(f"  -- live, gunicorn {config.describe()}: PUTs with a callback each, the "
              "embedded dispatchers delivering meanwhile")
        if url is None:
            result = live(folder, config, args.threads, args.seconds, target)
        else:
            with postgres_schema(url) as schema:
                result = live(folder, config, args.threads, args.seconds, target, schema)
    run.figures(section, (result.puts, "req/s"))
    print(f"  {'callbacks delivered meanwhile':<48} {result.rate:>9,.0f} /s    "
          f"{result.rate / result.puts.rate:.2f}× the PUTs; the last arrived "
          f"{result.drained_ms:,.0f} ms after the last PUT")
    run.keep(f"{section}: live deliveries / PUTs", result.rate / result.puts.rate, "×")
    run.keep(f"{section}: live, last callback after the last PUT", result.drained_ms, "ms")


def _once(args, folder: Path) -> Run:
    run = Run()
    parts = args.parts
    postgres = args.postgres != "off"
    backends = [("SQLite", None)] + ([("PostgreSQL", args.postgres)] if postgres else [])
    number = 0
    for backend, url in backends:
        if "engine" in parts:
            number += 1
            if url is None:
                print(f"{number}. One write transaction in-process, SQLite synchronous=FULL")
                base, eng = baseline(folder, "FULL", args.seconds), engine(folder, "FULL",
                                                                          args.seconds)
            else:
                print(f"{number}. One write transaction in-process, PostgreSQL "
                      "(synchronous_commit=on)")
                with postgres_schema(url) as schema:
                    base = pg_baseline(schema, args.seconds)
                with postgres_schema(url) as schema:
                    eng = engine(folder, "FULL", args.seconds, schema)
            _in_process(run, f"in-process {backend}", base, eng)
            print()
        best = (0.0, None)
        if "http" in parts:
            number += 1
            print(f"{number}. HTTP on loopback, {backend}: the minimal endpoint and the combined "
                  "PUT under the same server")
            best = _http(run, args, folder, backend, url)
            print()
        if "delivery" in parts:
            number += 1
            print(f"{number}. Callbacks, {backend}: a backlog of {args.events:,} (100 vehicles) "
                  "delivered by one dispatcher to a loopback receiver, then live")
            _delivery(run, args, folder, backend, url, best)
            print()
    if "engine" in parts:
        number += 1
        print(f"{number}. For reference: SQLite in-process with synchronous=NORMAL")
        _in_process(run, "in-process SQLite NORMAL", baseline(folder, "NORMAL", args.seconds),
                    engine(folder, "NORMAL", args.seconds))
        print()
    return run


def _summary(runs: list[Run]) -> None:
    print(f"Summary of {len(runs)} runs: min and median")
    width = max(map(len, runs[0].values))
    for name, (_, unit) in runs[0].values.items():
        values = sorted(r.values[name][0] for r in runs if name in r.values)
        median = statistics.median(values)
        digits = 2 if unit.startswith("×") else (1 if unit == "ms" else 0)
        print(f"  {name:<{width}} {values[0]:>9,.{digits}f} {median:>9,.{digits}f} {unit}")


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


PARTS = ("engine", "http", "delivery")
SERVERS = "sync:2,gthread:2x4"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="how long each measurement runs (default 5)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run everything this many times, then print min and median")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"which parts to run, of {','.join(PARTS)} (default all)")
    parser.add_argument("--servers", default=SERVERS,
                        help="gunicorn configurations for the HTTP part: sync:WORKERS or "
                             f"gthread:WORKERSxTHREADS, comma-separated (default {SERVERS})")
    parser.add_argument("--threads", type=int, default=4,
                        help="HTTP client connections, each a thread (default 4)")
    parser.add_argument("--events", type=int, default=1000,
                        help="callbacks in the delivery backlog (default 1000)")
    parser.add_argument("--postgres", default=POSTGRES, metavar="URL",
                        help="PostgreSQL database to measure in (a schema of its own is made "
                             f"and dropped; default {POSTGRES}); 'off' skips PostgreSQL")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the temporary databases go (default: the system's temp)")
    args = parser.parse_args(argv)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if args.parts - set(PARTS) or not args.parts:
        parser.error(f"--parts takes some of {','.join(PARTS)}")
    try:
        args.servers = parse_servers(args.servers)
    except ValueError as error:
        parser.error(str(error))
    if args.seconds <= 0 or args.threads < 1 or args.repeat < 1 or args.events < 100:
        parser.error("--seconds must be positive, --threads and --repeat at least 1, "
                     "--events at least 100")
    signal.signal(signal.SIGTERM, _terminate)

    folder = Path(tempfile.mkdtemp(prefix="participants-bench-", dir=args.dir))
    try:
        runs = []
        for n in range(args.repeat):
            load1, load5, _ = os.getloadavg()
            which = f", run {n + 1} of {args.repeat}" if args.repeat > 1 else ""
            print(f"Participant Service benchmark{which}: {args.seconds:g} s per measurement, "
                  f"{WARM_UP_SECONDS:g} s warm-up")
            print(f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version} "
                  f"({sqlite3.__name__}), {os.cpu_count()} CPUs, load average {load1:.2f} "
                  f"(5 min {load5:.2f}), databases on {_file_system(folder.resolve())}")
            print()
            own = folder / f"run-{n + 1}"  # every run starts from empty databases
            own.mkdir()
            runs.append(_once(args, own))
        if args.repeat > 1:
            _summary(runs)
        failed = [name for run in runs for name in run.failures]
        if failed:
            print(f"\n{len(failed)} measurements had operations that did not succeed: the "
                  "figures above are not valid.")
            return 1
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
