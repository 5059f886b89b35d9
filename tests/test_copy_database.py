"""Moving up: `flask --app webapp copy-database --to postgresql://…` copies a SQLite database
into an empty PostgreSQL database, verifies it, and the service on PostgreSQL answers exactly
as it did on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import BASE, ROOT, headers, make_app, postgres_admin, postgres_schema
from tests.receivers import Receiver

REGISTERED = {"registrationNumber": "AB-1234"}


def _scenario(app, receiver_url: str) -> list[str]:
    """Writes of every kind on `app`: creates, updates, a failure, callbacks, a batch."""
    client = app.test_client()
    ids = []
    for i in range(3):
        response = client.post(f"{BASE}/vehicles", json={
            "uniqueCode": f"V-{i}", "name": f"Truck {i}", "properties": {
                "registrationNumber": f"AB-{1000 + i}", "capacityKg": 500.25 + i},
            "callback": {"url": receiver_url, "meta": {"n": i}}},
            headers=headers(**{"X-COREOS-CALLBACK-SECRET": "s3cret"}))
        assert response.status_code == 202, response.get_data(as_text=True)
        ids.append(response.json["data"]["id"])
    client.put(f"{BASE}/vehicles/{ids[0]}", json={"properties": {"address": {"city": "Zürich"}}},
               headers=headers())
    client.put(f"{BASE}/vehicles/{ids[1]}", json={"properties": {"nope": 1}}, headers=headers())
    client.post(f"{BASE}/vehicles", json={"uniqueCode": "V-0", "properties": REGISTERED},
                headers=headers(request_id="again"))
    batch = client.post(f"{BASE}/vehicles/batch", json={"payload": [
        {"uniqueCode": "B-1", "properties": REGISTERED}, {"uniqueCode": "B-2"}]},
        headers=headers())
    assert batch.status_code == 202, batch.get_data(as_text=True)
    dispatcher = app.extensions["participants"].dispatcher()
    for _ in range(20):
        if not dispatcher.run_once():
            break
    return ids


def _answers(app, ids: list[str]) -> list:
    client = app.test_client()
    out = [client.get(f"{BASE}/vehicles?limit=100&sortKey=uniqueCode&sortBy=asc",
                      headers=headers()).json["data"]]
    for pid in ids:
        out.append(client.get(f"{BASE}/vehicles/{pid}", headers=headers()).json["data"])
        out.append(client.get(f"{BASE}/vehicles/{pid}/events", headers=headers()).json["data"])
    return out


def _copy(source: str, target: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PARTICIPANTS_DATABASE": source,
           "PARTICIPANTS_MACHINES": str(ROOT / "tests" / "data" / "machines")}
    return subprocess.run([sys.executable, "-m", "flask", "--app", "webapp", "copy-database",
                           "--to", target], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def target():
    with postgres_schema() as url:
        yield url


def test_a_sqlite_database_moves_to_postgresql_whole(tmp_path, target):
    """Every table arrives and verifies; the service on PostgreSQL answers the same reads, and
    the next write of a participant continues its event sequence."""
    source = str(tmp_path / "participants.db")
    with Receiver() as receiver:
        lite = make_app(source)
        ids = _scenario(lite, receiver.url())
        before = _answers(lite, ids)
        lite.extensions["participants"].storage.close()
    result = _copy(source, target)
    assert result.returncode == 0, result.stderr
    for table in ("participants", "attribute_index", "events", "idempotency", "outbox",
                  "deliveries", "batches", "batch_items"):
        assert f"verified {table}: " in result.stdout, result.stdout
    assert "Traceback" not in result.stderr
    moved = make_app(target)
    try:
        assert _answers(moved, ids) == before
        client = moved.test_client()
        response = client.put(f"{BASE}/vehicles/{ids[0]}",
                              json={"properties": {"capacityKg": 7.5}}, headers=headers())
        event = response.json["data"]["event"]
        assert event["payloadValidated"], response.get_data(as_text=True)
        history = client.get(f"{BASE}/vehicles/{ids[0]}/events", headers=headers()).json["data"]
        # created, updated, a repeated create refused: the new write is the fourth
        assert [e["sequence"] for e in history["events"]] == [1, 2, 3, 4]
        # a replayed request id answers what SQLite answered, byte for byte
        replay = client.post(f"{BASE}/vehicles", json={"uniqueCode": "V-0",
                                                       "properties": REGISTERED},
                             headers=headers(request_id="again"))
        assert replay.status_code == 202
    finally:
        moved.extensions["participants"].storage.close()


def test_a_target_that_is_not_empty_is_refused(tmp_path, target):
    """The copy writes only into an empty database: a second copy is refused, nothing added."""
    source = str(tmp_path / "participants.db")
    lite = make_app(source)
    lite.test_client().post(f"{BASE}/vehicles", json={"uniqueCode": "V-1",
                                                       "properties": REGISTERED},
                            headers=headers())
    lite.extensions["participants"].storage.close()
    assert _copy(source, target).returncode == 0
    again = _copy(source, target)
    assert again.returncode == 1 and "not empty" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr
    schema = target.rsplit("%3D", 1)[1]
    with postgres_admin() as admin:
        assert admin.execute(f'SELECT COUNT(*) FROM "{schema}".participants').fetchone()[0] == 1


def test_a_target_that_is_not_postgresql_is_a_usage_error(tmp_path):
    """--to must be a postgresql:// URL: exit 2, saying so."""
    result = _copy(str(tmp_path / "participants.db"), str(tmp_path / "other.db"))
    assert result.returncode == 2 and "--to takes a postgresql:// URL" in result.stderr


def test_a_source_that_is_postgresql_already_is_a_usage_error(target):
    """The copy reads a SQLite file: a service on PostgreSQL is told it is there already."""
    with postgres_schema() as other:
        result = _copy(target, other)
    assert result.returncode == 2 and "PostgreSQL already" in result.stderr, result.stderr
