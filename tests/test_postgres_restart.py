"""A PostgreSQL restart under load (SPEC §6; issue 10): requests during the outage fail cleanly,
the service recovers by itself, and no acknowledged write is lost.

The shared test server cannot be restarted from a test (other suites use it), so this suite
starts a PostgreSQL server of its own: `initdb` into a temporary folder, on a free loopback
port, fsync on, trust authentication. Two independent gunicorn masters (two hosts, each with
its own workers and pools; one with the default pool timeout, one with a short one) serve one
database on it; writer threads send creates, attribute updates, combined updates, state events
and deliberate business failures to both. In the middle of the load the server is restarted
(`pg_ctl restart -m fast`) or crashed (`pg_ctl stop -m immediate`, held down a while, started
again), in turn. Then:

- every answer is a 2xx, a 4xx the engine decided, or a 503 with code 101170025030 and
  `Retry-After`; never a 500, and no traceback in either host's log;
- a write answered 503 is sent again with the same X-COREOS-REQUEST-ID (to the other host, after
  `Retry-After`) and ends as exactly one event, whether or not it had committed before the 503;
- once the server is back, each host answers writes again within a bounded number of retries,
  with the same worker processes (nothing was restarted);
- every write acknowledged with 202 is in the database, whole (tests/test_crash.py's checks:
  its event, contiguous sequences, version = successes, the row = its last success event, index
  and outbox rows, the stored answer = the bytes acknowledged).

The suite runs with the hosts' dispatchers off, then with their embedded dispatchers (the
default in production), whose callbacks must all arrive too, and whose rounds that find the
database away log one line each, never a traceback.

Short form by default (one fast restart, one crash), long form with RELIABILITY_LONG=1 (eight of
each, in turn). Without PostgreSQL's server programs the suite skips, naming what is missing;
under CI=true it fails instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    BASE,
    Server,
    assert_clean_log,
    free_port,
    headers,
    inspect,
    scale,
    wait_until,
)
from tests.receivers import Receiver
from tests.test_crash import SEED, Ack, Write, Writer, check_database

pytestmark = pytest.mark.reliability

TIMEOUT = 60  # seconds: any single wait or request; generous, only a hang would reach it
UNAVAILABLE = "101170025030"  # SPEC §3: the database is unavailable (503, Retry-After)
ATTEMPTS = 30  # a write answered 503 is sent at most this many times in all
DOWN_SECONDS = 3.0  # how long a crashed server stays down before it is started again


# -- a PostgreSQL server of the test's own ------------------------------------------------------

def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: the PostgreSQL restart suite must run)")
    pytest.skip(reason)


def _version(folder: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", Path(folder).parent.name))


def server_programs() -> Path | None:
    """The folder with PostgreSQL's initdb, pg_ctl and postgres: pg_config's, else the newest
    Debian-style /usr/lib/postgresql/<version>/bin, else the one initdb is found in on PATH."""
    candidates = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True,
                                         text=True, timeout=10).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).resolve().parent))
    for folder in filter(None, candidates):
        if all(os.access(Path(folder) / p, os.X_OK) for p in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie is dead enough: it holds no port, no shared memory)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


class PrivatePostgres:
    """A PostgreSQL server in a temporary folder of its own, on a free loopback port; it runs as
    the `postgres` user when the tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self, programs: Path, log_copy: Path):
        self.programs = programs
        self.log_copy = log_copy  # the server's log is copied here (pytest keeps it) at the end
        self.as_user: list[str] = []
        self.owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root, and there is no user `postgres` to run a "
                             "PostgreSQL server as")
            if runuser is None:
                _unavailable("running as root without `runuser` (util-linux): cannot start a "
                             "PostgreSQL server as the user postgres")
            self.as_user = [runuser, "-u", "postgres", "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="participants-pg-"))
        self.data, self.sockets = self.folder / "data", self.folder / "sockets"
        self.log_path = self.folder / "server.log"
        self.port = 0
        self.postmasters: list[int] = []  # every postmaster this object started
        try:
            self.sockets.mkdir()
            if self.owner is not None:
                for path in (self.folder, self.sockets):
                    os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
            self._run("initdb", "-D", str(self.data), "--auth=trust", "--username=postgres",
                      "--encoding=UTF8", "--locale=C")
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> str:
        result = subprocess.run([*self.as_user, str(self.programs / program), *args],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} exited with {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}\n{self.log()[-3000:]}")
        return result.stdout

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _pg_ctl(self, action: str, *options: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t",
                  str(TIMEOUT), *options, action)

    def _postmaster(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        """Start the server (on a free port the first time; a port taken meanwhile by another
        process is given up for another one)."""
        for _ in range(5):
            if not self.port:
                self.port = free_port()
                with open(self.data / "postgresql.conf", "a") as conf:
                    conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                               f"unix_socket_directories = '{self.sockets}'\nfsync = on\n"
                               "synchronous_commit = on\nshared_buffers = 32MB\n")
            try:
                self._pg_ctl("start")
                break
            except RuntimeError:
                if "could not bind" not in self.log():
                    raise
                self.port = 0  # taken by someone else meanwhile: the next line wins
        self.postmasters.append(self._postmaster())

    def restart(self) -> None:
        """pg_ctl restart -m fast: every session ended, a shutdown checkpoint, started again."""
        self._pg_ctl("restart", "-m", "fast")
        self.postmasters.append(self._postmaster())

    def crash(self, down: float) -> None:
        """pg_ctl stop -m immediate (no checkpoint: crash recovery at the next start), `down`
        seconds without a server, then started again."""
        self._pg_ctl("stop", "-m", "immediate")
        time.sleep(down)
        self.start()

    def close(self) -> None:
        """Stop the server (immediately), make sure no process of it is left, remove the
        folder; the server's log is kept at `log_copy`."""
        try:
            if self._postmaster() is not None:
                with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                    self._pg_ctl("stop", "-m", "immediate")
            for pid in filter(None, self.postmasters):
                if _alive(pid):  # pg_ctl could not stop it: end it and its children
                    for child in [pid, *_children(pid)]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child, signal.SIGKILL)
                wait_until(lambda p=pid: not _alive(p), f"PostgreSQL server {pid} to end")
        finally:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log_path, self.log_copy)
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_postgres(tmp_path):
    programs = server_programs()
    if programs is None:
        _unavailable("no PostgreSQL server programs (initdb, pg_ctl, postgres) found")
    server = PrivatePostgres(programs, tmp_path / "postgres.log")
    try:
        server.start()
        yield server
    finally:
        inspect(server.url).close()
        server.close()


# -- two hosts on it ----------------------------------------------------------------------------

WORKERS = 2  # sync gunicorn workers per host
# How long a request waits for a connection while the server is away, before its 503: the
# default on one host, a short one on the other (there a crash's outage is 503s throughout).
POOL_TIMEOUTS = (10, 1)


def _workers(server: Server) -> set[int]:
    """The gunicorn workers of a host, once all of them run and the host is ready."""
    wait_until(lambda: len(_children(server.process.pid)) == WORKERS
               and requests.get(f"{server.url}{BASE}/vehicles?limit=1", headers=headers(),
                                timeout=TIMEOUT).status_code == 200,
               "the host's workers to start")
    return set(_children(server.process.pid))


@pytest.fixture(params=["off", "embedded"])
def dispatcher(request) -> str:
    """Each host with no dispatcher of its own, then with the embedded one (the default in
    production: it delivers callbacks, runs timers and batches in every server process)."""
    return request.param


@pytest.fixture
def hosts(private_postgres, dispatcher, tmp_path):
    """Two gunicorn masters on the private server; the test checks their logs itself (an
    expected failure must not turn into an error at teardown)."""
    env = {"PARTICIPANTS_DISPATCHER": dispatcher, "PARTICIPANTS_DELIVERY_SCHEDULE": "0,1,1,1,1",
           "PARTICIPANTS_DELIVERY_LEASE_SECONDS": "5"}
    servers = []
    try:
        for i, pool_timeout in enumerate(POOL_TIMEOUTS):
            servers.append(Server(private_postgres.url, tmp_path / f"host-{i}.log",
                                  workers=WORKERS, extra_env={
                                      **env, "PARTICIPANTS_POSTGRES_POOL_TIMEOUT_SECONDS":
                                      str(pool_timeout)}))
        yield servers
    finally:
        for server in servers:
            server.stop()


# -- writers that retry a 503 -------------------------------------------------------------------

ENGINE_4XX = {400, 404, 409, 412, 422}


@dataclass
class Answers:
    """What the clients were answered, over every attempt of every write (thread-safe)."""

    statuses: Counter = field(default_factory=Counter)
    problems: list = field(default_factory=list)  # answers outside the contract
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, write: Write, response: requests.Response) -> None:
        """Count the answer; record it as a problem unless it is what the contract allows."""
        status = response.status_code
        with self.lock:
            self.statuses[status] += 1
        problem = None
        if "Traceback" in response.text:
            problem = "a traceback in the answer"
        elif status == 503:
            code = (response.json().get("error") or {}).get("code")
            if code != UNAVAILABLE or not response.headers.get("Retry-After", "").isdigit():
                problem = f"a 503 with code {code} and Retry-After " \
                          f"{response.headers.get('Retry-After')!r}"
        elif status in ENGINE_4XX:
            if not re.fullmatch(r"\d{12}", (response.json().get("error") or {}).get("code", "")):
                problem = "a 4xx without the error envelope"
        elif status not in (200, 202):
            problem = "a status outside the contract"
        if problem:
            with self.lock:
                self.problems.append(f"{problem}: {write.method} {write.path} -> {status} "
                                     f"{response.text[:500]}")


@dataclass
class Retried:
    """A write answered 503 at least once, then acknowledged."""

    write: Write
    first_503_ms: int  # when the first 503 arrived (epoch ms, the service's clock too)
    attempts: int


@dataclass
class PatientWriter(Writer):
    """A test_crash Writer whose writes answered 503 are sent again, with the same request id,
    to the other host after Retry-After, until one is acknowledged (ATTEMPTS at most)."""

    urls: tuple = ()
    answers: Answers | None = None
    retried: list = field(default_factory=list)
    refused: list = field(default_factory=list)  # writes answered with an engine 4xx

    def deliver(self, session: requests.Session, write: Write, host: int,
                alternate: bool = True) -> tuple[Ack | None, int]:
        """Send `write` until it is answered with anything but a 503; (its Ack or None, how
        many times it was sent)."""
        first_503 = None
        for attempt in range(ATTEMPTS):
            url = self.urls[(host + attempt) % 2 if alternate else host]
            try:
                response = session.request(write.method, url + write.path, json=write.body,
                                           headers=headers(write.tenant, write.request_id),
                                           timeout=TIMEOUT)
            except requests.RequestException as error:  # gunicorn never dies in this suite
                self.errors.append(f"{write.method} {write.path}: {error!r}")
                return None, attempt + 1
            self.answers.check(write, response)
            if response.status_code != 503:
                break
            if first_503 is None:
                first_503 = time.time_ns() // 1_000_000
            time.sleep(int(response.headers.get("Retry-After") or 1))
        else:
            self.errors.append(f"{write.method} {write.path}: still 503 after {ATTEMPTS} "
                               f"attempts")
            return None, ATTEMPTS
        if response.status_code != 202:
            if response.status_code in ENGINE_4XX:
                self.refused.append(write)
            return None, attempt + 1
        ack = self._acknowledged(write, response)
        if first_503 is not None:
            self.retried.append(Retried(write, first_503, attempt + 1))
        return ack, attempt + 1

    def _acknowledged(self, write: Write, response: requests.Response) -> Ack:
        """Record a 202 as Writer.send does."""
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

    def write_until(self, stop: threading.Event) -> None:
        """Write (first to this writer's host) until stopped; the write under way is finished."""
        with requests.Session() as session:
            while not stop.is_set() and not self.errors:
                try:
                    self.deliver(session, self.next_write(), self.index % 2)
                except Exception as error:  # surfaced by the test, never lost in a thread
                    self.errors.append(f"{error!r}")

    def probe(self, session: requests.Session, host: int) -> int:
        """A new participant created through host `host` alone: how many times it was sent."""
        self.counter += 1
        code = f"P{self.index}-{self.counter}"
        write = self._write("POST", "/vehicles", {
            "uniqueCode": code, "properties": {"registrationNumber": f"PR-{self.counter:06d}"}})
        ack, attempts = self.deliver(session, write, host, alternate=False)
        assert ack is not None and ack.success, (self.errors, self.answers.problems)
        return attempts


# -- the test -----------------------------------------------------------------------------------

def test_postgres_restart_under_load_fails_cleanly_recovers_and_loses_nothing(
        private_postgres, hosts, dispatcher, figure):
    """Restarts and crashes of the PostgreSQL server under write load over two hosts: 503s
    with Retry-After (never a 500, never a traceback), recovery without restarting gunicorn,
    each retried write applied once, every acknowledged write whole in the database."""
    outages = scale(2, 16)
    rng = random.Random(SEED)
    urls = tuple(s.url for s in hosts)
    workers = [_workers(s) for s in hosts]
    answers = Answers()
    receiver = Receiver()
    writers = [PatientWriter(i, receiver.url("/cb"), random.Random(rng.random()), urls=urls,
                             answers=answers) for i in range(6)]
    prober = PatientWriter(6, receiver.url("/cb"), random.Random(rng.random()), urls=urls,
                           answers=answers)
    everyone = [*writers, prober]
    kinds: Counter = Counter()
    recovery: list[int] = []  # per outage and host: sends until its first write was acknowledged
    counts: dict = {}
    try:
        for outage in range(outages):
            kind = ("fast restart", "crash")[outage % 2]
            stop = threading.Event()
            threads = [threading.Thread(target=w.write_until, args=(stop,)) for w in writers]
            started = sum(len(w.acks) for w in writers)
            for thread in threads:
                thread.start()
            try:
                wait_until(lambda n=started: sum(len(w.acks) for w in writers) >= n + 30
                           or any(w.errors for w in writers), "writes to be acknowledged")
                time.sleep(rng.uniform(0.0, 1.0))  # a random moment under load
                if kind == "crash":
                    private_postgres.crash(DOWN_SECONDS)
                else:
                    private_postgres.restart()
                kinds[kind] += 1
                inspect(private_postgres.url).close()  # its connection went with the server
                # The server is back: each host acknowledges a new write by itself.
                with requests.Session() as session:
                    recovery += [prober.probe(session, host) for host in range(2)]
                back = sum(len(w.acks) for w in writers)
                wait_until(lambda n=back: sum(len(w.acks) for w in writers) >= n + 30
                           or any(w.errors for w in writers), "writes after the outage")
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=TIMEOUT * 5)
                    assert not thread.is_alive()
            for writer in everyone:
                assert not writer.errors, writer.errors
            assert not answers.problems, answers.problems
            counts = check_database(private_postgres.url, [a for w in everyone for a in w.acks])

        acks = [a for w in everyone for a in w.acks]
        db = inspect(private_postgres.url)
        owed = {r[0] for r in db.rows("SELECT event_id FROM outbox")}
        if dispatcher == "embedded":  # every committed callback arrives, the outages' included
            wait_until(lambda: owed <= {r.webhook_id for r in receiver.received("/cb")}
                       and db.count("outbox", "status != 'delivered'") == 0,
                       "every committed callback to be delivered")
    finally:
        receiver.close()

    # Nothing was restarted: the same gunicorn masters and workers served throughout; and
    # neither host logged a traceback, to its last line.
    for server, before in zip(hosts, workers, strict=True):
        assert server.process.poll() is None, server.log[-3000:]
        assert _workers(server) == before, server.log[-3000:]
    for server in hosts:
        assert_clean_log(server.stop())

    retried = [r for w in writers for r in w.retried]
    created = dict(db.rows("SELECT request_id, created_at FROM events"))
    events_of = Counter(r[0] for r in db.rows("SELECT request_id FROM events"))
    assert all(events_of[r.write.request_id] == 1 for r in retried), "a retried write's events"
    # A write answered 503 whose event is older than that 503 had committed: the answer to its
    # COMMIT was lost with the connection, and the retry replayed the stored answer.
    committed_first = sum(created[r.write.request_id] <= r.first_503_ms for r in retried)
    refused = [write for w in writers for write in w.refused]
    assert not [write for write in refused if write.request_id in created], \
        "an engine 4xx wrote an event"
    statuses = answers.statuses
    how = (f"with their embedded dispatchers ({len(owed):,} callbacks committed, all delivered)"
           if dispatcher == "embedded" else "without dispatchers")
    pools = " and ".join(f"{t} s" for t in POOL_TIMEOUTS)
    figure("A PostgreSQL restart or crash under load is answered 503, never 500, and loses "
           "no acknowledged write",
           f"PostgreSQL: {kinds['fast restart']} × pg_ctl restart -m fast and {kinds['crash']} "
           f"× stop -m immediate (down {DOWN_SECONDS:.0f} s) of the database server under 6 "
           f"writers over 2 gunicorn masters {how}, pool timeouts {pools}: {len(acks):,} "
           f"acknowledged writes, 0 lost, 0 half-updated of {counts['participants']:,} "
           f"participants, {counts['events']:,} events with contiguous sequences; "
           f"{statuses[503]:,} × 503 (code {UNAVAILABLE}, Retry-After), {len(refused)} × 4xx, "
           "0 × 500, 0 tracebacks")
    figure("A write answered 503 and sent again with its request id is applied once",
           f"PostgreSQL: {len(retried)} writes answered 503 during the outages, sent again "
           f"with the same request id to the other host: each exactly one event "
           f"({committed_first} had committed before their 503 and replayed the stored "
           f"answer); at most {max((r.attempts for r in retried), default=1)} sends per write")
    at_once = sum(sends == 1 for sends in recovery)
    figure("The service recovers from a PostgreSQL restart without being restarted",
           f"PostgreSQL: after each of {outages} outages, the first write sent to each of the 2 "
           f"gunicorn masters once the server was back was acknowledged: {at_once} of "
           f"{len(recovery)} at once"
           + (f", the others after at most {max(recovery) - 1} retries (Retry-After 1 s)"
              if at_once < len(recovery) else "")
           + "; the same worker processes served throughout")
