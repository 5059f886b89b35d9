"""What only PostgreSQL deployments do: keys that include the tenant, an append-only events table
(by triggers, and by privileges for the service's role), migrations that many processes may
start at once, a pool per process that survives lost connections and forks, timeouts on every
connection, LISTEN/NOTIFY, indexed list queries, and answers identical to SQLite's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from engine.storage import StorageUnavailable, open_storage
from engine.storage.interface import StorageConflict, StoredParticipant
from tests.conftest import BASE, ROOT, headers, make_app, postgres_admin, postgres_schema

psycopg = pytest.importorskip("psycopg")

REGISTERED = {"registrationNumber": "AB-1234"}


@pytest.fixture
def url():
    """A fresh, empty PostgreSQL schema, as a database URL."""
    with postgres_schema() as made:
        yield made


@pytest.fixture
def admin():
    conn = postgres_admin()
    yield conn
    conn.close()


def _schema(url: str) -> str:
    return re.search(r"search_path%3D([A-Za-z0-9_]+)", url).group(1)


def _with(url: str, **params) -> str:
    """`url` with more query parameters (application_name, ...)."""
    return url + "".join(f"&{k}={urllib.parse.quote(str(v))}" for k, v in params.items())


def _as_user(url: str, user: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def _close(application) -> None:
    application.extensions["participants"].storage.close()


def _create(client, code="V-1", **extra):
    response = client.post(f"{BASE}/vehicles", headers=headers(),
                           json={"uniqueCode": code, "properties": REGISTERED, **extra})
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.json["data"]["id"]


def _participant(pid: str = "vehicles:1") -> StoredParticipant:
    return StoredParticipant("t", pid, "vehicles", pid, None, None, None, None, None,
                             "onboarding:pending", {"a": 1}, 1, 1, 1, 1, None, None, None)


# -- the schema ---------------------------------------------------------------------------------

def test_every_key_and_unique_constraint_includes_the_tenant(url, admin):
    """Every primary key and unique constraint of the schema has tenant_id as a column (so the
    schema can be distributed by tenant), and every table but schema_version has a key."""
    open_storage(url).close()
    schema = _schema(url)
    constraints = admin.execute(
        "SELECT c.conrelid::regclass::text, c.conname, c.contype,"
        " array(SELECT a.attname::text FROM unnest(c.conkey) k"
        "       JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k)"
        " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
        " WHERE n.nspname = %s AND c.contype IN ('p', 'u')", (schema,)).fetchall()
    tables = {t for (t,) in admin.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))}
    assert {"participants", "attribute_index", "events", "event_sequences", "idempotency",
            "outbox", "deliveries", "batches", "batch_items", "schema_version"} <= tables
    without = [f"{table} {name} {columns}" for table, name, kind, columns in constraints
               if "tenant_id" not in columns]
    assert without == []
    keyed = {table.split(".")[-1].strip('"') for table, _, kind, _ in constraints if kind == "p"}
    assert tables - keyed == {"schema_version"}


def test_events_refuse_update_delete_and_truncate(url, admin):
    """Triggers refuse UPDATE, DELETE, TRUNCATE and upserts on events, even for the table's
    owner; an append succeeds."""
    application = make_app(url)
    try:
        _create(application.test_client())
    finally:
        _close(application)
    schema = _schema(url)
    for statement in (f'UPDATE "{schema}".events SET version = version + 1',
                      f'UPDATE "{schema}".events SET body = body WHERE false',
                      f'DELETE FROM "{schema}".events',
                      f'TRUNCATE "{schema}".events',
                      f'INSERT INTO "{schema}".events (tenant_id, id, participant_id, sequence,'
                      f' version, command_name, success, created_at, body)'
                      f' SELECT tenant_id, id, participant_id, sequence, version, command_name,'
                      f' success, created_at, body FROM "{schema}".events'
                      f' ON CONFLICT (tenant_id, participant_id, sequence)'
                      f' DO UPDATE SET body = \'x\''):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            admin.execute(statement)
    assert admin.execute(f'SELECT COUNT(*) FROM "{schema}".events').fetchone()[0] == 1


@pytest.fixture
def service_role(url, admin):
    """A login role that may read and write every table of the migrated schema except
    UPDATE, DELETE and TRUNCATE on events, and the URL that connects as it."""
    open_storage(url).close()
    schema = _schema(url)
    role = f"svc_{schema}"[:63]
    admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        for grant in (f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
                      f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}"'
                      f' TO "{role}"',
                      f'REVOKE UPDATE, DELETE, TRUNCATE ON "{schema}".events FROM "{role}"',
                      f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"'):
            admin.execute(grant)
        yield role, _as_user(url, role)
    finally:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE usename = %s", (role,))
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')


def test_the_service_runs_as_a_role_that_cannot_change_events(service_role, tmp_path):
    """With no UPDATE, DELETE or TRUNCATE privilege on events the service starts on the
    migrated schema, creates, updates, transitions, delivers from the outbox and applies
    batches; the role itself is refused any change to an event."""
    role, role_url = service_role
    application = make_app(role_url)
    try:
        client = application.test_client()
        pid = _create(client, callback={"url": "http://127.0.0.1:9/cb"})
        updated = client.put(f"{BASE}/vehicles/{pid}", headers=headers(),
                             json={"properties": {"verified": True, "capacityKg": 5},
                                   "stateTransition": {"eventCode": "E-022"}})
        assert updated.json["data"]["event"]["state"] == "active:active", updated.json
        batch = client.post(f"{BASE}/vehicles/batch", headers=headers(), json={
            "payload": [{"uniqueCode": "B-1", "properties": REGISTERED}]})
        assert batch.status_code == 202, batch.get_data(as_text=True)
        dispatcher = application.extensions["participants"].dispatcher()
        while dispatcher.run_once():
            pass
        listed = client.get(f"{BASE}/vehicles", headers=headers())
        assert listed.json["data"]["meta"]["totalElements"] == 2
    finally:
        _close(application)
    with psycopg.connect(role_url, autocommit=True) as conn:
        for statement in ("UPDATE events SET body = body", "DELETE FROM events",
                          "TRUNCATE events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3


_START = """
import sys, time
from engine.storage import open_storage
url, at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, at - time.time()))
store = open_storage(url)
print(store.schema_version)
store.close()
"""


def test_processes_starting_together_on_an_empty_schema_migrate_it_once(url, admin):
    """Six processes opening the same empty schema at the same instant all start; the schema
    is migrated once (one schema_version row per version) and is complete."""
    from engine.storage.postgres.schema import SCHEMA_VERSION

    at = time.time() + 1.5
    processes = [subprocess.Popen([sys.executable, "-c", _START, url, str(at)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
    results = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, [err for _, err in results]
    assert [out.strip() for out, _ in results] == [str(SCHEMA_VERSION)] * 6
    schema = _schema(url)
    assert admin.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY version'
                         ).fetchall() == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert admin.execute(f'SELECT COUNT(*) FROM "{schema}".participants').fetchone() == (0,)


def test_a_schema_of_the_search_path_that_does_not_exist_is_refused(url):
    """A URL whose search_path names no existing schema stops start-up with a clear error."""
    with pytest.raises(ValueError, match="search_path"):
        open_storage(url.replace("search_path%3D", "search_path%3Dno_such_"))


# -- connections --------------------------------------------------------------------------------

def test_a_unique_violation_is_a_conflict_that_rolls_back(url):
    """An insert that loses a race to a committed row raises StorageConflict (the unit of work
    is then run again), and nothing of its transaction stays."""
    storage = open_storage(url)
    try:
        with storage.write() as uow:
            uow.participants.insert(_participant())
        with pytest.raises(StorageConflict), storage.write() as uow:
            uow.events.next_sequence("t", "vehicles:1")
            uow.participants.insert(_participant())
        with storage.write() as uow:
            assert uow.events.next_sequence("t", "vehicles:1") == 1
    finally:
        storage.close()


def test_every_connection_gets_the_timeouts(url):
    """statement_timeout, lock_timeout and idle_in_transaction_session_timeout are set on the
    pool's connections from the settings."""
    application = make_app(url, PARTICIPANTS_POSTGRES_STATEMENT_TIMEOUT_MS=4321,
                           PARTICIPANTS_POSTGRES_LOCK_TIMEOUT_MS=1234,
                           PARTICIPANTS_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS=5678)
    try:
        storage = application.extensions["participants"].storage
        with storage.read() as uow:
            shown = [uow.participants.conn.execute(f"SHOW {name}").fetchone()[0] for name in
                     ("statement_timeout", "lock_timeout",
                      "idle_in_transaction_session_timeout")]
            isolation = uow.participants.conn.execute("SHOW transaction_isolation").fetchone()
        assert shown == ["4321ms", "1234ms", "5678ms"]
        assert isolation == ("repeatable read",)
        with storage.write() as uow:
            assert uow.participants.conn.execute("SHOW transaction_isolation").fetchone() == \
                ("read committed",)
    finally:
        _close(application)


def test_describe_names_the_server_schema_and_pool_but_no_password(url):
    """The start-up line says PostgreSQL, its version, where, the schema and the pool size,
    and never the URL's password."""
    with_password = url.replace("postgres@", "postgres:s3cret-pass@", 1)
    if with_password == url:
        pytest.skip("the test server's URL has no user to add a password to")
    storage = open_storage(with_password, pool_max=3)
    try:
        line = storage.describe()
    finally:
        storage.close()
    assert re.fullmatch(r"PostgreSQL \d+\.\d+ at \S+:\d+/\w+ \(schema t_\w+, pool 1-3\)", line)
    assert "s3cret" not in line


def test_a_lock_held_past_the_lock_timeout_is_a_503_that_writes_nothing(url, admin):
    """A write that waits longer than PARTICIPANTS_POSTGRES_LOCK_TIMEOUT_MS is a 503 with
    Retry-After; its request id is not kept, and the same request succeeds afterwards."""
    application = make_app(url, PARTICIPANTS_POSTGRES_LOCK_TIMEOUT_MS=100)
    client = application.test_client()
    sent = headers(request_id="blocked")
    body = {"uniqueCode": "V-1", "properties": REGISTERED}
    schema = _schema(url)
    try:
        with admin.transaction():
            admin.execute(f'LOCK TABLE "{schema}".participants IN ACCESS EXCLUSIVE MODE')
            response = client.post(f"{BASE}/vehicles", json=body, headers=sent)
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.headers["Retry-After"] == "1"
        assert response.json["error"]["code"] == "101170025030"
        assert admin.execute(f'SELECT COUNT(*) FROM "{schema}".idempotency').fetchone() == (0,)
        again = client.post(f"{BASE}/vehicles", json=body, headers=sent)
        assert again.status_code == 202 and again.json["data"]["event"]["payloadValidated"]
    finally:
        _close(application)


def _terminate(admin, application_name: str, waiting: bool = False) -> int:
    return len(admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
        + (" AND wait_event_type = 'Lock'" if waiting else ""), (application_name,)).fetchall())


def test_connections_lost_between_requests_are_replaced(url, admin):
    """pg_terminate_backend of every pooled connection between two requests: the next request
    succeeds on a new connection, with nothing lost."""
    name = f"pst-{time.time_ns()}"
    application = make_app(_with(url, application_name=name))
    try:
        client = application.test_client()
        first = _create(client, "V-1")
        assert _terminate(admin, name) >= 1
        second = _create(client, "V-2")
        listed = client.get(f"{BASE}/vehicles", headers=headers())
        assert {p["id"] for p in listed.json["data"]["participants"]} == {first, second}
    finally:
        _close(application)


def test_a_connection_lost_mid_transaction_is_a_503_with_nothing_half_written(url, admin):
    """A write whose connection is terminated while it waits inside its transaction answers
    503; none of what it had written stays, and the same request then succeeds."""
    name = f"pst-{time.time_ns()}"
    application = make_app(_with(url, application_name=name))
    client = application.test_client()
    schema = _schema(url)
    sent = headers(request_id="cut-off")
    body = {"uniqueCode": "V-1", "properties": REGISTERED}
    answers = []
    watcher = postgres_admin()  # pg_stat_activity is a snapshot per transaction: look outside
    try:
        with admin.transaction():
            # the write gets as far as the events table: idempotency, participant, index and
            # sequence rows are written (uncommitted) when its connection goes
            admin.execute(f'LOCK TABLE "{schema}".events IN EXCLUSIVE MODE')
            writer = threading.Thread(target=lambda: answers.append(
                client.post(f"{BASE}/vehicles", json=body, headers=sent)))
            writer.start()
            deadline = time.monotonic() + 10
            while not _terminate(watcher, name, waiting=True):
                assert time.monotonic() < deadline, "the write never waited on the lock"
                time.sleep(0.01)
            writer.join(10)
        assert answers[0].status_code == 503, answers[0].get_data(as_text=True)
        for table in ("participants", "idempotency", "attribute_index", "event_sequences",
                      "events", "outbox"):
            assert admin.execute(f'SELECT COUNT(*) FROM "{schema}".{table}').fetchone() == (0,)
        again = client.post(f"{BASE}/vehicles", json=body, headers=sent)
        assert again.status_code == 202 and again.json["data"]["event"]["payloadValidated"]
    finally:
        watcher.close()
        _close(application)


def test_a_database_that_refuses_connections_is_a_503_and_the_service_recovers(service_role,
                                                                              admin):
    """While the database refuses the service's connections every request is a 503 within the
    pool timeout; once it accepts them again the service serves without a restart."""
    role, role_url = service_role
    application = make_app(role_url, PARTICIPANTS_POSTGRES_POOL_TIMEOUT_SECONDS=0.5)
    client = application.test_client()
    try:
        _create(client, "V-1")
        admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE usename = %s", (role,))
        down = client.post(f"{BASE}/vehicles", headers=headers(),
                           json={"uniqueCode": "V-2", "properties": REGISTERED})
        assert down.status_code == 503 and down.headers["Retry-After"] == "1"
        assert client.get(f"{BASE}/vehicles", headers=headers()).status_code == 503
        admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        deadline = time.monotonic() + 20
        while True:
            response = client.get(f"{BASE}/vehicles", headers=headers())
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.json["data"]["meta"]["totalElements"] == 1
    finally:
        admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        _close(application)


def test_a_forked_child_uses_a_pool_of_its_own_and_leaves_the_parents_alone(url):
    """A process forked after the pool opened writes through a new pool; the inherited
    connections are never used, and dropping them in the child does not end the parent's
    sessions (the parent keeps its very connection)."""
    storage = open_storage(url, pool_min=1, pool_max=1)
    try:
        with storage.read() as uow:
            before = uow.participants.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        pid = os.fork()
        if pid == 0:  # the child: write, drop the inherited connections, and leave
            code = 1
            try:
                with storage.write() as uow:
                    uow.participants.insert(_participant("vehicles:child"))
                    code = 0 if uow.participants.conn.execute(
                        "SELECT pg_backend_pid()").fetchone()[0] != before else 2
                storage.close()
                import gc

                from engine.storage.postgres import storage as module
                module._INHERITED.clear()
                gc.collect()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with storage.read() as uow:
            after = uow.participants.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert uow.participants.get("t", "vehicles:child") is not None
        assert after == before
    finally:
        storage.close()


def test_a_commit_in_another_process_rings_the_doorbell(url):
    """A write that queued background work NOTIFYs on commit, so a dispatcher of another
    process (here: another storage) wakes at once; a rolled-back one notifies nobody."""
    listening, writing = open_storage(url), open_storage(url)
    try:
        bell = listening.doorbell
        deadline = time.monotonic() + 10
        while bell.rings == 0:  # the listener rings once it listens
            assert time.monotonic() < deadline, "the listener never started"
            time.sleep(0.01)
        seen = bell.rings
        with pytest.raises(RuntimeError), writing.write():
            writing.work_queued()
            raise RuntimeError("rolled back")
        assert not bell.wait(seen, 0.5)
        with writing.write():
            writing.work_queued()
        assert bell.wait(seen, 5)
    finally:
        listening.close()
        writing.close()


# -- list queries -------------------------------------------------------------------------------

def test_list_queries_on_attributes_use_the_indexes(url, admin, vehicles):
    """With 5,000 participants, a selective query on an indexed attribute (term, terms, range,
    exists) reads indexes, never a sequential scan of participants or attribute_index."""
    from engine.service.queries import ListQuery
    from engine.storage.postgres import queries
    from engine.storage.postgres.repositories import PARTICIPANT_COLUMNS

    open_storage(url).close()
    schema = _schema(url)
    with admin.transaction():
        admin.execute(
            f'INSERT INTO "{schema}".participants (tenant_id, id, type, unique_code, state,'
            " properties, version, created_at, updated_at) SELECT 'tenant-a', 'vehicles:' || i,"
            " 'vehicles', 'V-' || i, 'onboarding:pending', '{}', 1, i, i"
            " FROM generate_series(1, 5000) AS i")
        admin.execute(
            f'INSERT INTO "{schema}".attribute_index (tenant_id, type, name, participant_id,'
            " value_text) SELECT 'tenant-a', 'vehicles', 'registrationNumber', 'vehicles:' || i,"
            " 'RN-' || i FROM generate_series(1, 5000) AS i")
    admin.execute(f'ANALYZE "{schema}".participants')
    admin.execute(f'ANALYZE "{schema}".attribute_index')

    class Explaining:
        """A connection that EXPLAINs each statement instead of running it."""

        def __init__(self, conn):
            self.conn, self.plans = conn, []

        def execute(self, statement, params):
            plan = self.conn.execute(f"EXPLAIN (FORMAT JSON) {statement}", params).fetchone()[0]
            self.plans.append(json.dumps(plan))
            return self.conn.execute("SELECT 0")

    for clauses in ({"term": [{"key": "registrationNumber", "value": "RN-42"}]},
                    {"terms": [{"key": "registrationNumber", "values": ["RN-1", "RN-2"]}]},
                    {"range": [{"key": "registrationNumber", "relation": "gte",
                                "value": "RN-9998"}]}):
        with psycopg.connect(url, autocommit=True) as conn:
            explaining = Explaining(conn)
            queries.run(explaining, vehicles.definition, "tenant-a",
                        ListQuery(clauses=clauses, sort_key="uniqueCode"), PARTICIPANT_COLUMNS)
        for plan in explaining.plans:
            assert '"Seq Scan"' not in plan, (clauses, plan)


GADGETS = """\
participantType: {singular: gadget, plural: gadgets}
version: 1.0.0
description: Things with an indexed attribute of every kind.
attributes:
  label: {dataType: string, indexed: true}
  size: {dataType: number, indexed: true}
  count: {dataType: integer, indexed: true}
  flag: {dataType: boolean, indexed: true}
  extra: {dataType: object}
reasons:
  R-0001: Default
events:
  E-001: {description: Retire, reasonCodes: [R-0001]}
states:
  live:
    subStates:
      live:
        transitions:
          - {eventCode: E-001, destination: retired}
  retired:
    defaultSubState: retired
    terminalStates: [retired]
    subStates:
      retired: {}
"""

# Values where SQLite and PostgreSQL differ unless told: case folding beyond ASCII, wildcard
# characters, strings sharing a long first part, integers past 2^53 next to floats, -0.0, huge
# and tiny numbers, booleans, and attributes left out (sorted as NULL).
LABELS = ["alpha", "Alpha", "ÉCOLE", "école", "a_b", "a%b", "a\\b", "", "\U0001F600", "\u2028x",
          "z" * 250 + "a", "z" * 250 + "b", "z" * 199, "Z" * 3000, None]
SIZES = [1, 1.0, 1.5, -0.0, 0, 2**53, 2**53 + 1, float(2**53), 2**60 + 10, float(2**60), 1e308,
         5e-324, -1e300, 2**70, None]
NAMES = ["Beta", "beta", None, "β", "B"] * 3
GADGET_BODIES = [
    {"uniqueCode": f"G-{i:02}", **({"name": name} if name is not None else {}),
     "properties": {k: v for k, v in (("label", label), ("size", size), ("count", i % 4),
                                      ("flag", i % 3 == 0), ("extra", {"b": 1.0, "a": [size]}))
                    if v is not None}}
    for i, (label, size, name) in enumerate(zip(LABELS, SIZES, NAMES, strict=True))]


def _queries():
    values = ["alpha", "ALPHA", "école", "ÉCOLE", "a", "A", "é", "É", "_", "%", "\\", "z" * 200,
              "z" * 250 + "a", "a\0b", "", 1, 1.0, 1.5, 0, -0.0, 2**53, 2**53 + 1, 2**60 + 10,
              1.1529215046068470e18, 9.2e18, True, False, "1", "true"]
    for key in ("label", "size", "count", "flag", "name", "version", "uniqueCode"):
        yield {"exists": [{"key": key}]}
        for value in values:
            yield {"term": [{"key": key, "value": value}]}
            if isinstance(value, str) and value:
                yield {"prefix": [{"key": key, "value": value}]}
                yield {"match": [{"key": key, "value": value}]}
            if not isinstance(value, bool):
                for relation in ("gt", "gte", "lt", "lte"):
                    yield {"range": [{"key": key, "relation": relation, "value": value}]}
        yield {"terms": [{"key": key, "values": values}]}
        yield {"terms": [{"key": key, "values": [1, "1", 2**53, "alpha", True]}]}


def test_both_backends_answer_every_list_query_alike(url, tmp_path):
    """The same participants (every kind of indexed value, odd strings and numbers) on SQLite
    and on PostgreSQL: about 2,000 list queries over every operator, key kind and value kind,
    and sorts by every kind of key in both directions, answer the same bytes on both
    (timestamps aside), as do the participants themselves."""
    machines = tmp_path / "machines"
    machines.mkdir()
    (machines / "gadgets.yaml").write_text(GADGETS)
    settings = {"PARTICIPANTS_MACHINES": str(machines)}
    sqlite_app = make_app(str(tmp_path / "participants.db"), **settings)
    postgres_app = make_app(url, **settings)
    stamps = re.compile(r'"(createdAt|updatedAt)":\d+')
    try:
        clients = [sqlite_app.test_client(), postgres_app.test_client()]
        for body in GADGET_BODIES:
            answers = [c.post(f"{BASE}/gadgets", json=body, headers=headers()) for c in clients]
            assert [a.status_code for a in answers] == [202, 202], answers[0].get_data()
            assert answers[0].json["data"]["event"]["payloadValidated"], answers[0].json
        differ, asked = [], 0
        sorts = [(key, by) for key in ("label", "size", "count", "flag", "name", "uniqueCode")
                 for by in ("asc", "desc")]
        for i, query in enumerate(_queries()):
            key, by = sorts[i % len(sorts)]
            params = {"query": json.dumps(query), "sortKey": key, "sortBy": by, "limit": 100}
            texts = [stamps.sub("", c.get(f"{BASE}/gadgets", headers=headers(),
                                          query_string=params).get_data(as_text=True))
                     for c in clients]
            asked += 1
            if texts[0] != texts[1]:
                differ.append(f"{params}:\n  sqlite   {texts[0][:300]}\n"
                              f"  postgres {texts[1][:300]}")
        for key, by in sorts:
            params = {"sortKey": key, "sortBy": by, "limit": 100, "select[]": ["uniqueCode"]}
            texts = [c.get(f"{BASE}/gadgets", headers=headers(), query_string=params)
                     .get_data(as_text=True) for c in clients]
            if texts[0] != texts[1]:
                differ.append(f"sorted by {key} {by}:\n  {texts[0][:300]}\n  {texts[1][:300]}")
        assert not differ, f"{len(differ)} of {asked} differ:\n" + "\n".join(differ[:5])
        assert asked > 1000
        listed = clients[0].get(f"{BASE}/gadgets", headers=headers(), query_string={"limit": 100})
        for participant in listed.json["data"]["participants"]:
            texts = [stamps.sub("", c.get(f"{BASE}/gadgets/{participant['id']}",
                                          headers=headers()).get_data(as_text=True))
                     for c in clients]
            assert texts[0] == texts[1]
    finally:
        _close(sqlite_app)
        _close(postgres_app)


def test_the_readme_documents_every_postgres_setting():
    """Every PARTICIPANTS_POSTGRES_* setting the app reads is in the README's settings table."""
    from webapp import DEFAULTS

    readme = Path(ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(PARTICIPANTS_POSTGRES_\w+)` \|", readme, re.M))
    assert documented == {name for name in DEFAULTS if name.startswith("PARTICIPANTS_POSTGRES_")}


def test_storage_unavailable_at_start_up_is_reported(admin):
    """A server that does not answer at start-up is StorageUnavailable naming the problem."""
    with pytest.raises(StorageUnavailable, match="cannot be used"):
        open_storage("postgresql://postgres@127.0.0.1:9/test", connect_timeout=1)
