"""Shared fixtures: the test machines, the two storage backends, a read-only view of either
database (`Inspector`, `rows`), the app and a real gunicorn server on either backend."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from engine.loading.registry import load_registry

# pytest imports this file as `conftest`, the tests import their helpers from `tests.conftest`:
# one module under both names, so what it shares (the inspectors' connections) exists once.
sys.modules.setdefault("tests.conftest", sys.modules[__name__])

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
    recorded = []
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    backend = {"sqlite": "SQLite", "postgres": "PostgreSQL"}.get(params.get("backend"))

    def record(guarantee: str, text: str) -> None:
        if backend:  # the suite runs once per backend: one row each
            text = f"{backend}: {text}"
        recorded.append({"guarantee": guarantee, "figure": text, "test": request.node.nodeid})

    yield record
    if FIGURES_FILE and recorded and not request.node.rep_call_failed:
        path = Path(FIGURES_FILE)
        existing = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(existing + recorded, indent=1))


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


# -- the storage backends -----------------------------------------------------------------------
#
# Storage-touching tests take the `database` fixture (or `app`, `client`, `server`, which build on
# the `backend` parameter too): it runs them once on a fresh SQLite file and once on a fresh
# PostgreSQL schema (a database URL whose search_path names a schema made for the test, dropped
# after it). `app`'s schema is migrated ahead by a background thread (a migration takes longer
# than most tests); `database` is empty, so servers started on it migrate it themselves. Without
# a PostgreSQL server the PostgreSQL variants skip with the reason, except under CI=true, where
# they fail: a green CI means both backends ran. Tests of what only SQLite has (PRAGMAs, query
# plans, the writers' flock file, sqlite3 errors) take `sqlite_database` or `sqlite_app` and say
# "sqlite" in their names; tests of several hosts on one database take `postgres_database`.
# Tests read and check rows with `rows`, `count`, `ledger` or an `Inspector` (below): the same
# SQL on either backend.

POSTGRES = os.environ.get("PARTICIPANTS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgres")
_schemas = itertools.count(1)


def is_postgres(database) -> bool:
    return str(database).startswith(("postgresql://", "postgres://"))


def postgres_admin():
    """A psycopg connection to the test server (autocommit), or a skip/failure if none answers."""
    import psycopg

    try:
        return psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        reason = f"no PostgreSQL at {POSTGRES}: {str(error).strip().splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: both backends must run)")
        pytest.skip(reason)


def schema_url(schema: str) -> str:
    """The test server's URL with `schema` first in the search_path."""
    separator = "&" if "?" in POSTGRES else "?"
    return f"{POSTGRES}{separator}options=-csearch_path%3D{schema}"


def _new_schema_name() -> str:
    return f"t_{os.getpid()}_{next(_schemas)}_{time.time_ns() % 10**9}"


@contextlib.contextmanager
def postgres_schema():
    """A fresh (empty) schema on the test server, as a database URL; dropped afterwards."""
    admin = postgres_admin()
    schema = _new_schema_name()
    try:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        yield schema_url(schema)
    finally:
        _dropped(admin, schema)


def _dropped(admin, schema: str) -> None:
    """The end of a test's schema: its inspector closed, the schema dropped, `admin` closed."""
    _close_inspector(schema_url(schema))
    try:
        _drop_schema(admin, schema)
    finally:
        admin.close()


class _MigratedSchemas:
    """Schemas made and migrated ahead by a background thread, for the in-process apps of the
    `app` fixture: on PostgreSQL a migration takes longer than most tests, and most tests use
    `app`. The migration is the backend's own (open_storage); the app then finds the schema
    current. Tests that start server processes use `database`: an empty schema that the
    processes migrate themselves at start-up."""

    AHEAD = 2  # one thread makes them: more would only compete with the tests for the CPUs

    def __init__(self):
        self.ready: queue.Queue[str] = queue.Queue(maxsize=self.AHEAD)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def take(self) -> str:
        """A migrated schema's name (skips or fails as postgres_admin does without a server)."""
        if self.thread is None:
            postgres_admin().close()
            self.thread = threading.Thread(target=self._make, name="migrated-schemas",
                                           daemon=True)
            self.thread.start()
        while True:
            try:
                return self.ready.get(timeout=1)
            except queue.Empty:
                if self.error is not None or not self.thread.is_alive():
                    raise RuntimeError("no migrated schema was made") from self.error

    def _make(self) -> None:
        from engine.storage import open_storage

        admin = postgres_admin()
        try:
            while not self.stopping.is_set():
                schema = _new_schema_name()
                admin.execute(f'CREATE SCHEMA "{schema}"')
                open_storage(schema_url(schema)).close()
                while not self.stopping.is_set():
                    try:
                        self.ready.put(schema, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                else:
                    _drop_schema(admin, schema)
        except BaseException as error:  # surfaced by take()
            self.error = error
        finally:
            admin.close()

    def close(self) -> None:
        """Stop making schemas and drop the ones nobody took."""
        if self.thread is None:
            return
        import psycopg

        self.stopping.set()
        self.thread.join(timeout=30)
        try:
            admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError:
            return  # the server went away: nothing to drop them from
        try:
            while True:
                try:
                    _drop_schema(admin, self.ready.get_nowait())
                except queue.Empty:
                    break
        finally:
            admin.close()


_MIGRATED = _MigratedSchemas()


@contextlib.contextmanager
def migrated_postgres_schema():
    """A fresh schema on the test server, migrated already, as a database URL; dropped
    afterwards."""
    schema = _MIGRATED.take()
    try:
        yield schema_url(schema)
    finally:
        _dropped(postgres_admin(), schema)


@pytest.fixture(scope="session", autouse=True)
def _migrated_schemas_dropped():
    yield
    _MIGRATED.close()


def _drop_schema(admin, schema: str) -> None:
    """DROP SCHEMA … CASCADE; a connection of the test still holding locks in it (a transaction
    left open) is ended, and named in a failure, rather than left to hang the suite."""
    import psycopg

    admin.execute("SET lock_timeout = '10s'")
    try:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        return
    except psycopg.errors.LockNotAvailable:
        pass
    holders = admin.execute(
        "SELECT DISTINCT a.pid, a.state, left(a.query, 200) FROM pg_locks l"
        " JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE n.nspname = %s AND l.pid <> pg_backend_pid()", (schema,)).fetchall()
    for pid, _state, _query in holders:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    pytest.fail(f"connections still held locks in schema {schema} after the test: {holders}")


def _fresh(backend: str, folder: Path, name: str, stack: contextlib.ExitStack) -> str:
    if backend == "sqlite":
        return str(folder / f"{name}.db")
    return stack.enter_context(postgres_schema())


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """The backend a test runs on: "sqlite", then "postgres"."""
    return request.param


@pytest.fixture
def database(backend, tmp_path):
    """A fresh database of each backend: a SQLite file path, or a PostgreSQL URL."""
    with contextlib.ExitStack() as stack:
        yield _fresh(backend, tmp_path, "participants", stack)


@pytest.fixture
def app_database(backend, tmp_path):
    """A fresh database of each backend for an in-process app: on PostgreSQL a schema migrated
    ahead (see _MigratedSchemas), never used before, dropped after the test."""
    if backend == "sqlite":
        yield str(tmp_path / "participants.db")
        return
    with migrated_postgres_schema() as url:
        yield url


@pytest.fixture
def new_database(backend, tmp_path):
    """Make more fresh databases of the test's backend: `new_database()` → path or URL."""
    with contextlib.ExitStack() as stack:
        made = itertools.count(1)
        yield lambda: _fresh(backend, tmp_path, f"database-{next(made)}", stack)


@pytest.fixture
def sqlite_database(tmp_path):
    """A fresh SQLite file, for tests of what only SQLite has (PRAGMAs, query plans, flocks)."""
    return str(tmp_path / "participants.db")


@pytest.fixture
def postgres_database():
    """A fresh PostgreSQL schema, for tests of what only PostgreSQL deployments do."""
    with postgres_schema() as url:
        yield url


# -- looking at a database ----------------------------------------------------------------------

def database_of(target) -> str:
    """The database of an app, a Server, an Inspector, or a database (path or URL) itself."""
    config = getattr(target, "config", None)
    if config is not None and "PARTICIPANTS_DATABASE" in config:
        return str(config["PARTICIPANTS_DATABASE"])
    database = getattr(target, "database", None)
    return str(database if database is not None else target)


class Inspector:
    """Plain SQL on either backend, on a connection of its own (never the app's).

    Tables and columns have the same names on both backends, so tests write one statement with
    `?` placeholders; on PostgreSQL they become psycopg's `%s`. JSON columns come back as their
    text on both (json.loads works on either), rows as tuples. Each statement commits by itself
    (autocommit), so every read sees what is committed; `snapshot()` groups reads into one
    consistent view. Whatever needs another statement per dialect lives here, not in the tests.
    """

    def __init__(self, target, timeout: float = 30.0):
        self.database = database_of(target)
        self.backend = "postgres" if is_postgres(self.database) else "sqlite"
        self.timeout = timeout
        self._conn = None
        self._lock = threading.RLock()  # receivers' handler threads read too
        self._schema: dict[tuple[str, str], list[str]] = {}  # (what, table) -> column names

    # -- the connection ----------------------------------------------------------------------

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """What the driver raises for a statement the database refuses."""
        if self.backend == "postgres":
            import psycopg

            return (psycopg.Error,)
        from engine.storage.sqlite import sqlite3

        return (sqlite3.DatabaseError,)

    def _connection(self):
        if self._conn is None:
            if self.backend == "postgres":
                import psycopg
                from psycopg.types.string import TextLoader

                conn = psycopg.connect(self.database, autocommit=True, connect_timeout=10)
                for name in ("json", "jsonb"):
                    conn.adapters.register_loader(name, TextLoader)
                conn.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")
            else:
                from engine.storage.sqlite import sqlite3

                conn = sqlite3.connect(self.database, isolation_level=None,
                                       check_same_thread=False, timeout=self.timeout)
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._conn = conn
        return self._conn

    def _sql(self, sql: str) -> str:
        if self.backend == "postgres":
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- statements --------------------------------------------------------------------------

    def rows(self, sql: str, *params) -> list[tuple]:
        """Every row of one query, as tuples."""
        with self._lock:
            cursor = self._connection().execute(self._sql(sql), params)
            return [tuple(row) for row in cursor.fetchall()]

    def dicts(self, sql: str, *params) -> list[dict]:
        """Every row of one query, as {column: value}."""
        with self._lock:
            cursor = self._connection().execute(self._sql(sql), params)
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def value(self, sql: str, *params):
        """The first column of the first row (None without rows)."""
        found = self.rows(sql, *params)
        return found[0][0] if found else None

    def count(self, table: str, where: str = "", *params) -> int:
        return self.value(f'SELECT COUNT(*) FROM "{table}"' + (f" WHERE {where}" if where else ""),
                          *params)

    def execute(self, sql: str, *params) -> None:
        """A statement that writes (tests that tamper with rows); raises one of `errors`."""
        with self._lock:
            self._connection().execute(self._sql(sql), params)

    @contextlib.contextmanager
    def snapshot(self):
        """Every read in the block sees the same committed state."""
        with self._lock:
            conn = self._connection()
            if self.backend == "postgres":
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    yield self
            else:
                conn.execute("BEGIN")
                try:
                    yield self
                finally:
                    conn.execute("COMMIT")

    # -- the schema --------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """The tables of the service's schema, by name (once it has any: tests never migrate
        halfway through)."""
        return self._cached("tables", "", self._tables)

    def _tables(self, _) -> list[str]:
        if self.backend == "postgres":
            sql = ("SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()"
                   " ORDER BY tablename")
        else:
            sql = ("SELECT name FROM sqlite_master WHERE type = 'table'"
                   " AND name NOT LIKE 'sqlite_%' ORDER BY name")
        return [r[0] for r in self.rows(sql)]

    def _cached(self, what: str, table: str, find) -> list[str]:
        """Schema facts of a table that exists (tests never migrate halfway through)."""
        key = (what, table)
        if key not in self._schema:
            found = find(table)
            if not found:
                return found
            self._schema[key] = found
        return self._schema[key]

    def columns(self, table: str) -> list[str]:
        """The table's columns in their order (the order of SELECT *)."""
        return self._cached("columns", table, self._columns)

    def _columns(self, table: str) -> list[str]:
        if self.backend == "postgres":
            return [r[0] for r in self.rows(
                "SELECT column_name FROM information_schema.columns WHERE table_schema ="
                " current_schema() AND table_name = ? ORDER BY ordinal_position", table)]
        return [r[1] for r in self.rows(f'PRAGMA table_info("{table}")')]

    def primary_key(self, table: str) -> list[str]:
        return self._cached("primary key", table, self._primary_key)

    def _primary_key(self, table: str) -> list[str]:
        if self.backend == "postgres":
            return [r[0] for r in self.rows(
                "SELECT k.column_name FROM information_schema.table_constraints c"
                " JOIN information_schema.key_column_usage k"
                " ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema"
                " AND k.table_name = c.table_name WHERE c.table_schema = current_schema()"
                " AND c.table_name = ? AND c.constraint_type = 'PRIMARY KEY'"
                " ORDER BY k.ordinal_position", table)]
        info = self.rows(f'PRAGMA table_info("{table}")')
        return [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]

    def order_by(self, table: str, alias: str = "") -> str:
        """An ORDER BY clause that lists the table's rows in a stable order (its key)."""
        prefix = f"{alias}." if alias else ""
        key = self.primary_key(table) or self.columns(table)
        return "ORDER BY " + ", ".join(f'{prefix}"{c}"' for c in key)

    def ledger(self) -> dict[str, int]:
        """Row counts of every table (whatever tables the schema has today)."""
        with self.snapshot():
            return {t: self.count(t) for t in self.tables()}

    def index_rows(self, where: str = "", *params) -> list[tuple]:
        """attribute_index as (tenant_id, type, name, value, participant_id), the value as the
        engine indexes it (engine/model/conventions.py index_value) whatever the column types."""
        columns = self.columns("attribute_index")
        values = [c for c in columns if c == "value" or c.startswith("value_")]
        found = self.dicts("SELECT * FROM attribute_index" + (f" WHERE {where}" if where else ""),
                           *params)
        out = []
        for row in found:
            value = next((row[c] for c in values if row[c] is not None), None)
            if isinstance(value, bool):
                value = int(value)
            elif type(value).__name__ == "Decimal":  # PostgreSQL's numeric
                exact = value.is_finite() and value == value.to_integral_value()
                value = int(value) if exact else float(value)
            out.append((row["tenant_id"], row["type"], row["name"], value,
                        row["participant_id"]))
        return out

    # -- locks and health --------------------------------------------------------------------

    def write_would_wait(self, table: str, where: str, *params) -> bool:
        """Whether a writer of the matching rows would have to wait for another transaction
        (SQLite: for the database's write lock; PostgreSQL: for a lock on one of the rows)."""
        with self._lock:
            conn = self._connection()
            if self.backend == "postgres":
                import psycopg

                try:
                    with conn.transaction():
                        conn.execute(self._sql(f'SELECT 1 FROM "{table}" WHERE {where}'
                                               " FOR UPDATE NOWAIT"), params)
                except psycopg.errors.LockNotAvailable:
                    return True
                return False
            from engine.storage.sqlite import sqlite3

            conn.execute("PRAGMA busy_timeout = 1000")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                if "locked" in str(error):
                    return True
                raise
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("ROLLBACK")
            return False

    def integrity(self) -> str:
        """"ok", or what is wrong with the database (SQLite checks the file; a PostgreSQL
        server recovers by itself, and the tests never kill it, so its answer is "ok" when it
        answers at all)."""
        if self.backend == "postgres":
            self.rows("SELECT COUNT(*) FROM events")
            return "ok"
        found = self.rows("PRAGMA integrity_check")
        return "ok" if found == [("ok",)] else repr(found)


_INSPECTORS: dict[str, Inspector] = {}
_INSPECTORS_LOCK = threading.Lock()


def inspect(target) -> Inspector:
    """The shared Inspector of an app's, a server's or a named database (closed after the test)."""
    database = database_of(target)
    with _INSPECTORS_LOCK:
        found = _INSPECTORS.get(database)
        if found is None:
            found = _INSPECTORS[database] = Inspector(database)
        return found


def _close_inspector(database: str) -> None:
    with _INSPECTORS_LOCK:
        found = _INSPECTORS.pop(database, None)
    if found is not None:
        found.close()


@pytest.fixture(autouse=True)
def _inspectors_closed():
    yield
    for database in list(_INSPECTORS):
        _close_inspector(database)


def rows(target, sql: str, *params) -> list[tuple]:
    """One query on the database of `target` (an app, a Server, a path or URL), as tuples."""
    return inspect(target).rows(sql, *params)


def count(target, table: str, where: str = "", *params) -> int:
    """How many rows `table` of the database of `target` has (matching `where`)."""
    return inspect(target).count(table, where, *params)


def ledger(target) -> dict[str, int]:
    """Row counts of every table of the database of `target`."""
    return inspect(target).ledger()


# -- the app ------------------------------------------------------------------------------------

def make_app(database, **overrides):
    """The app on `database` with the test settings, and any setting overridden."""
    from webapp import create_app

    return create_app({**service_config(database), "TESTING": True, **overrides})


def close_app(application) -> None:
    application.extensions["participants"].storage.close()


@pytest.fixture
def app(app_database):
    application = make_app(app_database)
    yield application
    close_app(application)


@pytest.fixture
def sqlite_app(sqlite_database):
    application = make_app(sqlite_database)
    yield application
    close_app(application)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def apps(new_database):
    """Build more apps on fresh databases of the test's backend: `apps(**settings)`, or
    `apps(database=..., **settings)` for another app on a database already made."""
    built = []

    def build(database=None, **settings):
        application = make_app(database or new_database(), **settings)
        built.append(application)
        return application

    yield build
    for application in built:
        close_app(application)


# -- a real server ------------------------------------------------------------------------------

def wait_until(condition, what: str, timeout: float = 60):
    """The first true value of `condition()` (polled), or an AssertionError naming `what` after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> list[int]:
    """Members of process group `pgid` still running (zombies hold no locks: dead enough)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            alive.append(int(entry))
    return alive


class Server:
    """A real gunicorn process group serving the app on loopback, on a SQLite file or a
    PostgreSQL URL; its output is appended to `log_path`. It is a session of its own, so that
    kill() reaches every worker, and it counts as started once it answers a request."""

    TIMEOUT = 60  # seconds: any one wait for the server; only a hang reaches it

    def __init__(self, database, log_path, workers: int = 2, extra_env: dict | None = None):
        self.database = str(database)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **service_config(database), **(extra_env or {})}
        self.log_path = Path(log_path)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind",
                 f"127.0.0.1:{self.port}", "--graceful-timeout", "5", "--no-control-socket",
                 "webapp:create_app()"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_until(self._answers, "gunicorn to answer", self.TIMEOUT)
        except BaseException:
            self.kill()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log}")
        try:
            response = requests.get(f"{self.url}{BASE}/participant-types", headers=headers(),
                                    timeout=5)
        except requests.RequestException:
            return False
        return response.status_code == 200

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the master and every worker; returns once none of them runs."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        wait_until(lambda: not _group_alive(self.process.pid), "the killed workers to die",
                   self.TIMEOUT)

    def stop(self) -> str:
        """Stop the server (SIGTERM, SIGKILL if that takes too long); returns its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.log


def assert_clean_log(log: str) -> None:
    """No traceback and never SQLite's lock error in a server's log."""
    assert "Traceback" not in log, log[-5000:]
    assert "database is locked" not in log, log[-5000:]


@pytest.fixture
def server(database, tmp_path):
    """gunicorn with 2 sync workers on a fresh database; its log is checked for tracebacks."""
    srv = Server(database, tmp_path / "gunicorn.log")
    yield srv
    assert_clean_log(srv.stop())
