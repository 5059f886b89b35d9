"""The storage interface, on both backends: units of work commit whole or not at all,
compare-and-set, concurrent writers queue exactly as on SQLite (one event per request id, no
lost update, no duplicate create, contiguous sequences), values round-trip exactly, and a
database that cannot be used is a clean 503 with nothing written."""

from __future__ import annotations

import ast
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from engine.model import commands
from engine.service import idempotency
from engine.service.participants import Service
from engine.storage import open_storage
from engine.storage.interface import StorageConflict, StorageUnavailable, StoredParticipant
from engine.storage.sqlite import sqlite3
from tests.conftest import BASE, ROOT, headers, make_app, service_config

REGISTERED = {"registrationNumber": "AB-1234"}


def _participant(version: int = 1, **changes) -> StoredParticipant:
    fields = dict(tenant_id="t", id="vehicles:1", type="vehicles", unique_code="V-1", name=None,
                  owner=None, category=None, sub_category=None, template_id=None,
                  state="onboarding:pending", properties={"a": 1}, version=version,
                  created_at=1, updated_at=1, state_entered_at=1, created_by=None,
                  updated_by=None, callback=None)
    return StoredParticipant(**{**fields, **changes})


@pytest.fixture
def storage(database):
    store = open_storage(database)
    yield store
    store.close()


@pytest.fixture
def served(database):
    """An app on the test's backend with room for concurrent requests, and its closing."""
    application = make_app(database, PARTICIPANTS_POSTGRES_POOL_MAX=8)
    yield application
    application.extensions["participants"].storage.close()


def _events(storage, tenant: str, pid: str) -> list[dict]:
    with storage.read() as uow:
        return uow.events.history(tenant, pid, 100, 0)[0]


def _concurrently(count: int, work, threads: int = 8) -> list:
    """`work(i)` for i in range(count) from `threads` threads started together."""
    start = threading.Barrier(threads)

    def started(i):
        if i < threads:
            start.wait()
        return work(i)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(started, range(count)))


# -- units of work ------------------------------------------------------------------------------

def test_a_unit_of_work_that_raises_writes_nothing(storage):
    """Everything written in a write block is rolled back when the block raises."""
    with pytest.raises(RuntimeError), storage.write() as uow:
        uow.participants.insert(_participant())
        uow.participants.set_index("t", "vehicles", "vehicles:1", [("a", 1)], replace=False)
        uow.idempotency.claim("t", "r-1", "f", 1)
        uow.events.next_sequence("t", "vehicles:1")
        raise RuntimeError("boom")
    with storage.read() as uow:
        assert uow.participants.get("t", "vehicles:1") is None
        assert uow.idempotency.find("t", "r-1") is None
    with storage.write() as uow:
        assert uow.events.next_sequence("t", "vehicles:1") == 1  # the rollback gave it back


def test_compare_and_set_refuses_a_stale_version(storage):
    """update() writes only over the version it expects."""
    with storage.write() as uow:
        uow.participants.insert(_participant())
    with storage.write() as uow:
        assert uow.participants.update(_participant(2, properties={"a": 2}), 1)
        assert not uow.participants.update(_participant(3, properties={"a": 3}), 1)
    with storage.read() as uow:
        stored = uow.participants.get("t", "vehicles:1")
    assert (stored.version, stored.properties) == (2, {"a": 2})


def test_a_participant_round_trips_exactly(storage):
    """Every field comes back as it was written, JSON members included."""
    written = _participant(name="Ace", owner="operators:1", category="truck",
                           properties={"n": 1.5, "s": "ü\u2028", "l": [1, {"x": None}]},
                           created_by={"id": "u"}, updated_by={"id": "v"},
                           callback={"url": "http://x", "meta": {"k": 1}}, callback_secret="s")
    with storage.write() as uow:
        uow.participants.insert(written)
    with storage.read() as uow:
        assert uow.participants.get("t", "vehicles:1") == written
        assert uow.participants.get("other", "vehicles:1") is None
        assert uow.participants.get("t", "vehicles:1\0") is None  # a key no row can have


def test_claiming_a_key_is_finding_it_for_the_writer_that_claims_it(storage):
    """claim() answers None for a free key (now this write's) and the stored key otherwise;
    save() fills a claimed key in, and nothing of a claim survives a rollback."""
    with storage.write() as uow:
        assert uow.idempotency.claim("t", "r-1", "f", 5) is None
        uow.idempotency.save("t", "r-1", "f", 202, "{}", 5)
    with storage.write() as uow:
        key = uow.idempotency.claim("t", "r-1", "other", 6)
    assert (key.fingerprint, key.status, key.response) == ("f", 202, "{}")
    with pytest.raises(RuntimeError), storage.write() as uow:
        assert uow.idempotency.claim("t", "r-2", "f", 7) is None
        raise RuntimeError("boom")
    with storage.read() as uow:
        assert uow.idempotency.find("t", "r-2") is None


# -- concurrent writers -------------------------------------------------------------------------

def test_a_thousand_identical_requests_at_once_make_one_event(served):
    """1,000 copies of one create (same tenant, request id and body) sent by 8 threads at
    once: every answer is the first one's, byte for byte, and exactly one event is written."""
    body = {"uniqueCode": "V-1", "properties": REGISTERED}
    sent = headers(request_id="same-request")

    def send(_):
        response = served.test_client().post(f"{BASE}/vehicles", json=body, headers=sent)
        return response.status_code, response.get_data(as_text=True)

    answers = _concurrently(1000, send)
    assert {status for status, _ in answers} == {202}
    assert len({text for _, text in answers}) == 1
    storage = served.extensions["participants"].storage
    pid = json.loads(answers[0][1])["data"]["id"]
    recorded = _events(storage, "tenant-a", pid)
    assert [e["commandName"] for e in recorded] == ["ParticipantCreationSuccessEvent"]


def test_concurrent_creates_of_one_unique_code_make_one_participant(served):
    """Twelve creates of one uniqueCode with different request ids at once: one succeeds, the
    others fail with 'already exists' against it (never a 500 or a duplicate); the events'
    sequence numbers are 1..12 without a gap."""
    def send(i):
        response = served.test_client().post(
            f"{BASE}/vehicles", json={"uniqueCode": "V-1", "properties": REGISTERED},
            headers=headers())
        assert response.status_code == 202, response.get_data(as_text=True)
        return response.json["data"]

    answers = _concurrently(12, send)
    outcomes = sorted((a["event"]["payloadValidated"], a["event"]["version"]) for a in answers)
    assert outcomes == [(False, 1)] * 11 + [(True, 1)]
    storage = served.extensions["participants"].storage
    recorded = _events(storage, "tenant-a", answers[0]["id"])
    assert [e["sequence"] for e in recorded] == list(range(1, 13))
    assert recorded[0]["commandName"] == "ParticipantCreationSuccessEvent"
    assert {e["errorCode"] for e in recorded[1:]} == {"101170021010"}


def test_concurrent_updates_of_one_participant_are_never_lost(served):
    """Forty updates of one participant from eight threads at once all succeed, each on the
    version before it: versions 2..41 once each, contiguous sequences, and the last write's
    value is the stored one."""
    client = served.test_client()
    created = client.post(f"{BASE}/vehicles", json={"uniqueCode": "V-1",
                                                     "properties": REGISTERED},
                          headers=headers()).json["data"]
    pid = created["id"]

    def send(i):
        response = served.test_client().put(
            f"{BASE}/vehicles/{pid}", json={"properties": {"capacityKg": i}}, headers=headers())
        assert response.status_code == 202, response.get_data(as_text=True)
        return response.json["data"]["event"]

    answers = _concurrently(40, send)
    assert all(a["payloadValidated"] for a in answers)
    assert sorted(a["version"] for a in answers) == list(range(2, 42))
    storage = served.extensions["participants"].storage
    recorded = _events(storage, "tenant-a", pid)
    assert [e["sequence"] for e in recorded] == [e["version"] for e in recorded] == \
        list(range(1, 42))
    with storage.read() as uow:
        stored = uow.participants.get("tenant-a", pid)
    last = next(i for i, a in enumerate(answers) if a["version"] == 41)
    assert (stored.version, stored.properties["capacityKg"]) == (41, last)


def test_a_refused_write_leaves_no_trace_of_its_request_id(served):
    """A 404 (the request id claimed, then the write rolled back) stores no key: the id may be
    used again for another request, which then succeeds."""
    client = served.test_client()
    sent = headers(request_id="reused-after-404")
    missing = client.put(f"{BASE}/vehicles/vehicles:00000000-0000-5000-8000-000000000000",
                         json={"properties": {}}, headers=sent)
    assert missing.status_code == 404
    storage = served.extensions["participants"].storage
    with storage.read() as uow:
        assert uow.idempotency.find("tenant-a", "reused-after-404") is None
    created = client.post(f"{BASE}/vehicles", json={"uniqueCode": "V-1",
                                                     "properties": REGISTERED}, headers=sent)
    assert created.status_code == 202 and created.json["data"]["event"]["payloadValidated"]


class _LosingRaces:
    """A storage whose next `losses` write transactions lose a race at commit."""

    def __init__(self, storage, losses: int):
        self.storage, self.losses, self.writes = storage, losses, 0

    def __getattr__(self, name):
        return getattr(self.storage, name)

    @contextmanager
    def write(self):
        self.writes += 1
        with self.storage.write() as uow:
            yield uow
            if self.losses:
                self.losses -= 1
                raise StorageConflict("a concurrent transaction won")


def _create_command(request_id: str) -> commands.Command:
    body = {"uniqueCode": "V-1", "properties": REGISTERED}
    return commands.build("create", body, tenant_id="t", request_id=request_id,
                          fingerprint=idempotency.fingerprint("POST", "/vehicles", body))


def test_a_unit_of_work_that_loses_a_race_is_run_again(storage, vehicles):
    """A write that raises StorageConflict is decided and written again from the start; one
    that keeps losing gives up with StorageConflict (a 503) and writes nothing."""
    losing = _LosingRaces(storage, losses=2)
    result = Service(losing).execute(vehicles, _create_command("r-1"),
                                     lambda pid, record, state: (202, pid))
    assert losing.writes == 3 and not result.replayed
    assert [e["sequence"] for e in _events(storage, "t", result.body)] == [1]

    hopeless = _LosingRaces(storage, losses=100)
    with pytest.raises(StorageConflict):
        Service(hopeless).execute(vehicles, _create_command("r-2"),
                                  lambda pid, record, state: (202, pid))
    with storage.read() as uow:
        assert uow.idempotency.find("t", "r-2") is None


# -- values the backends must treat alike -------------------------------------------------------

ODD_PROPERTIES = {
    "registrationNumber": "AB-1234", "capacityKg": 1.0, "axles": 2,
    "address": {"zip": "1e308", "city": "ü\u2028\U0001F600", "b": 1e308, "a": -0.0, "n": 5e-324,
                "big": 2**70, "one": 1, "oneish": 1.0, "long": "x" * 100_000, "empty": ""},
    "documents": ["b", "a", "\\u0000 is text"],
}


def test_odd_values_round_trip_byte_for_byte(client):
    """Numbers PostgreSQL's jsonb would rewrite (1.0, -0.0, 1e308, 5e-324, 2^70), escapes,
    astral characters and a 100,000-character string come back exactly as SQLite returns them:
    the answer holds the very text that was sent (with its keys in order, as the engine
    keeps properties)."""
    body = {"uniqueCode": "V-ODD", "properties": ODD_PROPERTIES}
    sent = json.dumps(body["properties"]["address"], separators=(",", ":"), ensure_ascii=False,
                      sort_keys=True)
    created = client.post(f"{BASE}/vehicles", json=body, headers=headers())
    assert created.status_code == 202 and created.json["data"]["event"]["payloadValidated"], \
        created.get_data(as_text=True)[:500]
    answer = client.get(f"{BASE}/vehicles/{created.json['data']['id']}", headers=headers())
    assert f'"address":{sent}' in answer.get_data(as_text=True)
    assert '"capacityKg":1.0' in answer.get_data(as_text=True)


@pytest.mark.parametrize("body", [
    {"uniqueCode": "V-\0", "properties": REGISTERED},
    {"uniqueCode": "V-1", "name": "a\0b", "properties": REGISTERED},
    {"uniqueCode": "V-1", "properties": {**REGISTERED, "address": {"city": "\0"}}},
    {"uniqueCode": "V-1", "properties": {**REGISTERED, "address": {"ci\0ty": "x"}}},
    {"uniqueCode": "V-1", "properties": REGISTERED, "callback": {"url": "http://x/\0"}},
], ids=["uniqueCode", "name", "attribute", "key", "callback"])
def test_a_nul_character_in_a_body_is_a_400_on_both_backends(client, body):
    """U+0000 anywhere in a body (PostgreSQL text cannot hold it) is the same 400, naming its
    path, on both backends; nothing is written."""
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers())
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.json["error"]
    assert "U+0000" in error["description"]
    assert error["additionalInfo"]["errors"][0]["path"].startswith("$.")
    listed = client.get(f"{BASE}/vehicles", headers=headers())
    assert listed.json["data"]["meta"]["totalElements"] == 0


def test_the_service_refuses_a_nul_character_before_any_backend_sees_it(storage, vehicles):
    """A command whose body holds U+0000 (not through the API, which answers 400) is refused
    with UnstorableText on both backends, and nothing is written."""
    from engine.errors import UnstorableText

    body = {"uniqueCode": "V-1", "properties": {**REGISTERED, "address": {"city": "a\0"}}}
    command = commands.build("create", body, tenant_id="t", request_id="r-nul", fingerprint="f")
    with pytest.raises(UnstorableText) as raised:
        Service(storage).execute(vehicles, command, lambda pid, record, state: (202, pid))
    assert raised.value.path == "$.properties.address.city"
    with storage.read() as uow:
        assert uow.idempotency.find("t", "r-nul") is None


def test_a_nul_character_in_a_csv_cell_fails_only_its_item(app, client):
    """A CSV row with U+0000 in a cell is its own item's failure; the other rows apply."""
    csv_text = "uniqueCode,registrationNumber,name\nV-1,AB-1234,a\0b\nV-2,AB-2345,fine\n"
    response = client.post(f"{BASE}/vehicles/batch", headers=headers(),
                           data={"file": (io.BytesIO(csv_text.encode()), "v.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_data(as_text=True)
    dispatcher = app.extensions["participants"].dispatcher()
    while dispatcher.run_once():
        pass
    listed = client.get(f"{BASE}/vehicles", headers=headers())
    assert [p["uniqueCode"] for p in listed.json["data"]["participants"]] == ["V-2"]


@pytest.mark.parametrize("value", ["\0", "AB\0", "\0AB"])
@pytest.mark.parametrize("operator", ["term", "terms", "range", "prefix", "match"])
def test_a_nul_character_in_a_query_matches_nothing_stored(client, operator, value):
    """A query value with U+0000 is answered 200 on both backends; no stored string holds one,
    so only a range can match (its bound is cut before the U+0000)."""
    client.post(f"{BASE}/vehicles", json={"uniqueCode": "V-1", "properties": REGISTERED},
                headers=headers())
    clause = {"key": "registrationNumber", "value": value}
    if operator == "terms":
        clause = {"key": "registrationNumber", "values": [value]}
    elif operator == "range":
        clause["relation"] = "gte"
    response = client.get(f"{BASE}/vehicles", headers=headers(),
                          query_string={"query": json.dumps({operator: [clause]})})
    assert response.status_code == 200, response.get_data(as_text=True)
    # a range bound is cut before the U+0000: "AB-1234" is above "" and "AB"
    expected = 1 if operator == "range" else 0
    assert response.json["data"]["meta"]["totalElements"] == expected


@pytest.mark.parametrize(("query", "expected"), [
    ({"term": [{"key": "name", "value": 5}]}, set()),
    ({"term": [{"key": "name", "value": "5"}]}, {"V-5"}),
    ({"term": [{"key": "version", "value": "1"}]}, set()),
    ({"term": [{"key": "version", "value": 1.0}]}, {"V-5", "V-6"}),
    ({"range": [{"key": "version", "relation": "lt", "value": 1.5}]}, {"V-5", "V-6"}),
    ({"range": [{"key": "version", "relation": "gt", "value": "0"}]}, set()),
    ({"range": [{"key": "registrationNumber", "relation": "gt", "value": 0}]}, set()),
    ({"range": [{"key": "registrationNumber", "relation": "lt", "value": "Z"}]}, {"V-5", "V-6"}),
    ({"prefix": [{"key": "version", "value": "1"}]}, set()),
    ({"match": [{"key": "registrationNumber", "value": "ab-"}]}, {"V-5", "V-6"}),
    ({"terms": [{"key": "name", "values": [5, "5", True]}]}, {"V-5"}),
], ids=["number vs text field", "text vs text field", "text vs number field", "1.0 is 1",
        "fractional bound", "text bound on a number field", "number bound on a text attribute",
        "text bound on a text attribute", "prefix on a number field", "match folds ASCII",
        "terms keep their own kind"])
def test_values_compare_only_with_values_of_their_kind(client, query, expected):
    """On both backends a number never equals or bounds a string (nor a string a number), and
    prefix and match apply to strings only."""
    for code, name in (("V-5", "5"), ("V-6", "six")):
        client.post(f"{BASE}/vehicles", headers=headers(),
                    json={"uniqueCode": code, "name": name, "properties": REGISTERED})
    response = client.get(f"{BASE}/vehicles", headers=headers(),
                          query_string={"query": json.dumps(query)})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert {p["uniqueCode"] for p in response.json["data"]["participants"]} == expected


@pytest.mark.parametrize(("name", "value"), [
    ("PARTICIPANTS_POSTGRES_POOL_MAX", 0), ("PARTICIPANTS_POSTGRES_POOL_MIN", -1),
    ("PARTICIPANTS_POSTGRES_POOL_MIN", 9), ("PARTICIPANTS_POSTGRES_LOCK_TIMEOUT_MS", "soon"),
    ("PARTICIPANTS_POSTGRES_POOL_TIMEOUT_SECONDS", 0), ("PARTICIPANTS_POSTGRES_NOTIFY", "maybe"),
])
def test_postgres_settings_are_checked_on_either_backend(sqlite_database, name, value):
    """A malformed PostgreSQL setting stops start-up, naming the setting, even on SQLite."""
    with pytest.raises(ValueError, match=name):
        make_app(sqlite_database, **{name: value})


# -- a database that cannot be used -------------------------------------------------------------

def test_a_locked_sqlite_database_answers_503_and_writes_nothing(sqlite_database):
    """A write that cannot get the database within the busy timeout is a 503 with Retry-After,
    never a 500 or a traceback; the service works again once the lock is gone."""
    from webapp import create_app

    app = create_app({**service_config(sqlite_database), "PARTICIPANTS_BUSY_TIMEOUT_MS": 50})
    client = app.test_client()
    blocker = sqlite3.connect(sqlite_database, isolation_level=None)
    body = {"uniqueCode": "V-1", "properties": REGISTERED}
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        response = client.post(f"{BASE}/vehicles", json=body, headers=headers())
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.headers["Retry-After"] == "1"
        error = response.json["error"]
        assert error["code"] == "101170025030" and "unavailable" in error["description"]
        blocker.execute("ROLLBACK")
        assert blocker.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
        again = client.post(f"{BASE}/vehicles", json=body, headers=headers())
        assert again.status_code == 202 and again.json["data"]["event"]["payloadValidated"]
    finally:
        blocker.close()
        app.extensions["participants"].storage.close()


def test_a_write_that_keeps_losing_races_is_a_503():
    """StorageConflict escaping every retry is answered like an unavailable database: 503."""
    from webapp.errors import status_and_code

    assert status_and_code(StorageConflict("lost")) == status_and_code(
        StorageUnavailable("away")) == (503, "101170025030")


def test_unavailable_is_not_a_bug_of_the_statement(storage):
    """Only a database that cannot be used becomes StorageUnavailable; a broken statement
    stays what it is."""
    with pytest.raises(Exception) as raised, storage.write() as uow:
        uow.participants.conn.execute("SELECT * FROM no_such_table")
    assert not isinstance(raised.value, StorageUnavailable | StorageConflict)
    assert issubclass(StorageUnavailable, Exception)


# -- the layers ---------------------------------------------------------------------------------

ENGINE = ROOT / "engine"
# which layers each layer may import (besides itself, engine.errors and the standard library)
ALLOWED = {
    "model": set(),
    "loading": {"model", "lint"},
    "lint": {"model", "loading", "schemas"},
    "storage": {"model"},
    "delivery": {"model"},
    "service": {"model", "loading", "storage", "delivery"},
    "jobs": {"model", "storage", "delivery", "service"},
}


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("engine")}
    return found


def _imports_all(text: str) -> set[str]:
    tree = ast.parse(text)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
    return names


def test_the_engine_layers_import_only_downwards():
    """Data flows HTTP -> service -> storage: no layer imports one above it, nothing in
    engine/ imports Flask, and only storage/ speaks SQL drivers."""
    problems = []
    for path in sorted(ENGINE.rglob("*.py")):
        parts = path.relative_to(ENGINE).parts
        if len(parts) == 1:
            continue  # engine/errors.py, engine/__init__.py
        layer = parts[0]
        text = path.read_text("utf-8")
        if "flask" in _imports_all(text):
            problems.append(f"{path.relative_to(ROOT)} imports Flask")
        if layer != "storage" and _imports_all(text) & {"sqlite3", "psycopg", "psycopg_pool",
                                                        "sqlite_utils"}:
            problems.append(f"{path.relative_to(ROOT)} imports a database driver")
        for module in _imports(path):
            target = module.split(".")[1] if module.count(".") else ""
            if target in ("", "errors", layer) or target in ALLOWED.get(layer, set()):
                continue
            problems.append(f"{path.relative_to(ROOT)} ({layer}) imports {module}")
    assert not problems, "\n".join(problems)


def test_no_sql_outside_the_storage_package():
    """No module of engine/ or webapp/ outside storage/ holds an SQL statement."""
    import re

    statement = re.compile(r"^\s*(SELECT\s.+\sFROM\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|"
                           r"DELETE\s+FROM\s|CREATE\s+(TABLE|INDEX|TRIGGER)\s)", re.I | re.S)
    offenders = []
    for folder in (ENGINE, ROOT / "webapp"):
        for path in folder.rglob("*.py"):
            if "storage" in path.relative_to(ROOT).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and statement.match(node.value):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_web_layer_never_reaches_a_backend():
    """webapp/ opens the storage and maps its errors, but reaches data only through the
    service: it imports no backend module."""
    offenders = [f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / "webapp").rglob("*.py")
                 for m in _imports(p)
                 if m.startswith(("engine.storage.sqlite", "engine.storage.postgres"))]
    assert offenders == []
