"""The storage interface: units of work commit whole or not at all, compare-and-set, and a
database that cannot be used is a clean 503 with nothing written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.storage import open_storage
from engine.storage.interface import StorageUnavailable, StoredParticipant
from engine.storage.sqlite import sqlite3
from tests.conftest import BASE, ROOT, headers, service_config


def _participant(version: int = 1, **changes) -> StoredParticipant:
    fields = dict(tenant_id="t", id="vehicles:1", type="vehicles", unique_code="V-1", name=None,
                  owner=None, category=None, sub_category=None, template_id=None,
                  state="onboarding:pending", properties={"a": 1}, version=version,
                  created_at=1, updated_at=1, state_entered_at=1, created_by=None,
                  updated_by=None, callback=None)
    return StoredParticipant(**{**fields, **changes})


@pytest.fixture
def storage(tmp_path):
    store = open_storage(str(tmp_path / "participants.db"))
    yield store
    store.close()


def test_a_unit_of_work_that_raises_writes_nothing(storage):
    """Everything written in a write block is rolled back when the block raises."""
    with pytest.raises(RuntimeError), storage.write() as uow:
        uow.participants.insert(_participant())
        uow.participants.set_index("t", "vehicles", "vehicles:1", [("a", 1)], replace=False)
        raise RuntimeError("boom")
    with storage.read() as uow:
        assert uow.participants.get("t", "vehicles:1") is None


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


def test_a_locked_database_answers_503_and_writes_nothing(tmp_path):
    """A write that cannot get the database within the busy timeout is a 503 with Retry-After,
    never a 500 or a traceback; the service works again once the lock is gone."""
    from webapp import create_app

    database = tmp_path / "participants.db"
    app = create_app({**service_config(database), "PARTICIPANTS_BUSY_TIMEOUT_MS": 50})
    client = app.test_client()
    blocker = sqlite3.connect(str(database), isolation_level=None)
    body = {"uniqueCode": "V-1", "properties": {"registrationNumber": "AB-1234"}}
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


def test_unavailable_is_not_a_bug_of_the_statement(storage):
    """Only a file that cannot be used becomes StorageUnavailable; a broken statement stays
    what it is."""
    with pytest.raises(sqlite3.OperationalError), storage.write() as uow:
        uow.participants.conn.execute("SELECT * FROM no_such_table")
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
    "service": {"model", "storage", "delivery"},
    "jobs": {"model", "storage", "delivery", "service"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("engine")}
    return found


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
        if "flask" in {m.split(".")[0] for m in _imports_all(text)}:
            problems.append(f"{path.relative_to(ROOT)} imports Flask")
        if layer != "storage" and any(d in _imports_all(text)
                                      for d in ("sqlite3", "psycopg", "psycopg_pool",
                                                "sqlite_utils")):
            problems.append(f"{path.relative_to(ROOT)} imports a database driver")
        for module in _imports(path):
            target = module.split(".")[1] if module.count(".") else ""
            if target in ("", "errors", layer) or target in ALLOWED.get(layer, set()):
                continue
            problems.append(f"{path.relative_to(ROOT)} ({layer}) imports {module}")
    assert not problems, "\n".join(problems)


def _imports_all(text: str) -> set[str]:
    tree = ast.parse(text)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
    return names


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
