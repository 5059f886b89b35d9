"""onRequest and onError hooks: the waited call before the write, replacements, and delivery."""

from __future__ import annotations

import json
import threading

import pytest

from engine.model.failures import HOOK_REJECTED
from tests.conftest import BASE, close_app, free_port, headers, inspect, make_app
from tests.receivers import Receiver, Reply, rows

REGISTERED = {"registrationNumber": "AB-1234"}
WAIT = {"wait": True, "acceptableStatusCodes": [200], "raiseErrorOnStatusMismatch": True}


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def vehicle(client) -> str:
    """A pending vehicle with capacity 100; its id."""
    body = {"uniqueCode": "V-1", "properties": {**REGISTERED, "capacityKg": 100}}
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers())
    assert response.json["data"]["event"]["payloadValidated"] is True, response.json
    return response.json["data"]["id"]


def hook(url: str, **fields) -> dict:
    return {"url": url, "onResponse": WAIT, **fields}


def read(client, pid) -> dict:
    response = client.get(f"{BASE}/vehicles/{pid}", headers=headers())
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["data"]


def stored_events(app, pid) -> list[dict]:
    return [json.loads(body) for (body,) in rows(
        app, "SELECT body FROM events WHERE participant_id = ? ORDER BY seq", pid)]


def accepted(response) -> dict:
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.json["data"]["event"]


# -- waited onRequest ---------------------------------------------------------------------------

def test_a_hook_status_outside_the_acceptable_ones_vetoes_the_write(app, client, vehicle,
                                                                    receiver):
    """403 from a waited hook is a failure event naming the hook and status; nothing changes."""
    receiver.program("/veto", Reply(403, body={"message": "no"}))
    url = receiver.url("/veto")
    body = {"properties": {"capacityKg": 900}, "onRequest": hook(url)}
    event = accepted(client.put(f"{BASE}/vehicles/{vehicle}", json=body, headers=headers()))

    assert event["payloadValidated"] is False
    assert event["errorCode"] == HOOK_REJECTED.code
    assert event["reason"] == HOOK_REJECTED.reason
    (error,) = event["errors"]
    assert error["path"] == "$.onRequest"
    assert url in error["message"] and "403" in error["message"]
    assert (event["state"], event["version"]) == ("onboarding:pending", 1)
    participant = read(client, vehicle)
    assert participant["version"] == 1
    assert participant["properties"]["capacityKg"] == 100
    record = stored_events(app, vehicle)[-1]
    assert record["commandName"] == "ParticipantUpdationFailedEvent"
    assert record["data"]["onRequest"] == {"url": url, "status": 403}
    (call,) = receiver.received("/veto")
    assert call.method == "POST"
    assert call.json() == body  # no requestBody: the hook gets the client's request


def test_a_mismatch_without_raise_error_lets_the_write_through(client, vehicle, receiver):
    """raiseErrorOnStatusMismatch false: the hook's 500 is recorded, the update applies."""
    receiver.program("/hook", Reply(500))
    on_request = hook(receiver.url("/hook"), onResponse={
        "wait": True, "acceptableStatusCodes": [200], "raiseErrorOnStatusMismatch": False})
    body = {"properties": {"capacityKg": 900}, "onRequest": on_request}
    event = accepted(client.put(f"{BASE}/vehicles/{vehicle}", json=body, headers=headers()))
    assert event["payloadValidated"] is True
    assert read(client, vehicle)["properties"]["capacityKg"] == 900


def test_the_hook_answer_replaces_the_payload_but_not_protected_fields(app, client, vehicle,
                                                                       receiver):
    """{"data": {...}} from the hook replaces properties and core fields; ids and state stay."""
    answer = {"data": {
        "properties": {"capacityKg": 777, "axles": 4}, "name": "Hooked",
        "id": "vehicles:evil", "state": "inactive:dead", "version": 42, "tenantId": "tenant-b",
        "createdAt": 1, "uniqueCode": "STOLEN",
    }}
    receiver.program("/replace", Reply(200, body=answer))
    url = receiver.url("/replace")
    body = {"properties": {"capacityKg": 500}, "onRequest": hook(url)}
    event = accepted(client.put(f"{BASE}/vehicles/{vehicle}", json=body, headers=headers()))
    assert event["payloadValidated"] is True, event

    participant = read(client, vehicle)
    assert participant["properties"] == {**REGISTERED, "capacityKg": 777, "axles": 4,
                                         "fuelType": "Diesel", "verified": False}
    assert participant["name"] == "Hooked"
    assert (participant["id"], participant["uniqueCode"]) == (vehicle, "V-1")
    assert (participant["state"], participant["version"]) == ("onboarding:pending", 2)
    assert participant["createdAt"] != 1
    other_tenant = client.get(f"{BASE}/vehicles/{vehicle}", headers=headers("b"))
    assert other_tenant.status_code == 404

    record = stored_events(app, vehicle)[-1]
    assert record["data"]["onRequest"] == {
        "url": url, "status": 200,
        "replaced": {"properties": {"capacityKg": 777, "axles": 4}, "name": "Hooked"},
        "ignored": ["createdAt", "id", "state", "tenantId", "uniqueCode", "version"]}
    assert record["data"]["properties"] == {"capacityKg": 777, "axles": 4}
    assert record["entity"]["non_indexed_attributes"]["capacityKg"] == 777


def test_a_replacement_is_validated_like_the_request(client, vehicle, receiver):
    """The hook's properties go through the type's validation: a bad value is a failure event."""
    receiver.program("/hook", Reply(200, body={"data": {"properties": {"capacityKg": -1}}}))
    body = {"properties": {"capacityKg": 500}, "onRequest": hook(receiver.url("/hook"))}
    event = accepted(client.put(f"{BASE}/vehicles/{vehicle}", json=body, headers=headers()))
    assert event["payloadValidated"] is False
    assert [e["path"] for e in event["errors"]] == ["$.properties.capacityKg"]
    assert read(client, vehicle)["properties"]["capacityKg"] == 100


def test_a_state_event_hook_may_replace_the_event_data(client, receiver):
    """A state event's hook can replace `data` before the event's dataValidations run."""
    body = {"uniqueCode": "V-2", "properties": {**REGISTERED, "inspectionPassed": True}}
    pid = client.post(f"{BASE}/vehicles", json=body, headers=headers()).json["data"]["id"]
    receiver.program("/hook", Reply(200, body={"data": {"data": {"inspector": "bob"}}}))
    event_body = {"eventCode": "E-101", "reasonCode": "R-7001", "timestamp": 1_700_000_000,
                  "source": {"appId": "tests"}, "data": {"inspector": "NOT VALID"},
                  "onRequest": hook(receiver.url("/hook"))}
    event = accepted(client.put(f"{BASE}/vehicles/{pid}/state/event", json=event_body,
                                headers=headers()))
    assert event["payloadValidated"] is True, event
    assert event["state"] == "onboarding:inspected"


def test_an_unreachable_hook_fails_the_operation(client, vehicle):
    """A hook on a closed port is a failure event; the participant is unchanged."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    body = {"properties": {"capacityKg": 900}, "onRequest": hook(url)}
    event = accepted(client.put(f"{BASE}/vehicles/{vehicle}", json=body, headers=headers()))
    assert event["payloadValidated"] is False
    assert event["errorCode"] == HOOK_REJECTED.code
    (error,) = event["errors"]
    assert error["path"] == "$.onRequest.url"
    assert url in error["message"]
    assert read(client, vehicle)["version"] == 1


def test_a_hook_slower_than_the_hook_timeout_fails_the_operation(database, receiver):
    """PARTICIPANTS_HOOK_TIMEOUT_SECONDS bounds the waited call."""
    app = make_app(database, PARTICIPANTS_HOOK_TIMEOUT_SECONDS="1")
    try:
        receiver.program("/slow", Reply(200, delay=3))
        body = {"uniqueCode": "V-1", "properties": REGISTERED,
                "onRequest": hook(receiver.url("/slow"))}
        response = app.test_client().post(f"{BASE}/vehicles", json=body, headers=headers())
        event = accepted(response)
        assert event["payloadValidated"] is False
        assert event["errorCode"] == HOOK_REJECTED.code
        assert "timed out" in event["errors"][0]["message"]
    finally:
        close_app(app)


def test_the_hook_is_called_before_the_write_outside_the_lock_with_templated_headers(
        app, client, vehicle, receiver):
    """At call time the participant is unchanged and the database is free to write."""
    seen = []

    def look(_received):
        db = inspect(app)
        version = db.value("SELECT version FROM participants WHERE id = ?", vehicle)
        assert not db.write_would_wait("participants", "id = ?", vehicle), \
            "the hook is called while the write holds its lock"
        seen.append(version)

    receiver.program("/hook", Reply(200, on_receive=look))
    on_request = hook(receiver.url("/hook"), requestHeader={
        "X-Request": "{{request_id}}", "X-Tenant": "{{tenant_id}}",
        "Authorization": "Bearer {{token}}", "X-Mixed": "{{tenant_id}}/{{request_id}}!",
        "X-Plain": "no template"})
    request_id = "hook-headers-1"
    body = {"properties": {"capacityKg": 900}, "onRequest": on_request}
    event = accepted(client.put(f"{BASE}/vehicles/{vehicle}", json=body,
                                headers=headers(request_id=request_id)))
    assert event["payloadValidated"] is True

    assert seen == [1]
    assert read(client, vehicle)["version"] == 2
    (call,) = receiver.received("/hook")
    assert call.headers["x-request"] == request_id
    assert call.headers["x-tenant"] == "tenant-a"
    assert call.headers["authorization"] == "Bearer token-a"
    assert call.headers["x-mixed"] == f"tenant-a/{request_id}!"
    assert call.headers["x-plain"] == "no template"


def test_a_replayed_request_never_calls_the_hook_again(app, client, vehicle, receiver):
    """The same request id answers from the stored response, without a second hook call."""
    body = {"properties": {"capacityKg": 900}, "onRequest": hook(receiver.url("/hook"))}
    first = client.put(f"{BASE}/vehicles/{vehicle}", json=body,
                       headers=headers(request_id="replay-1"))
    again = client.put(f"{BASE}/vehicles/{vehicle}", json=body,
                       headers=headers(request_id="replay-1"))
    assert first.status_code == again.status_code == 202
    assert first.get_data() == again.get_data()
    assert len(receiver.received("/hook")) == 1
    assert len(stored_events(app, vehicle)) == 2


def test_a_repeat_while_the_hook_is_slow_gets_409(app, client, vehicle, receiver):
    """While the waited hook runs, the same request id is in flight: 409, and no second call."""
    receiver.program("/slow", Reply(200, delay=1))
    body = {"properties": {"capacityKg": 900}, "onRequest": hook(receiver.url("/slow"))}
    target = f"{BASE}/vehicles/{vehicle}"
    results = {}

    def first():
        try:
            results["first"] = app.test_client().put(target, json=body,
                                                      headers=headers(request_id="slow-1"))
        finally:
            app.extensions["participants"].storage.close()  # this thread's connection

    thread = threading.Thread(target=first)
    thread.start()
    try:
        receiver.wait_for(1, "/slow")
        repeat = client.put(target, json=body, headers=headers(request_id="slow-1"))
    finally:
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert repeat.status_code == 409, repeat.get_data(as_text=True)
    assert results["first"].status_code == 202
    replay = client.put(target, json=body, headers=headers(request_id="slow-1"))
    assert replay.get_data() == results["first"].get_data()
    assert len(receiver.received("/slow")) == 1
    assert read(client, vehicle)["version"] == 2


def test_a_hook_request_that_ends_in_404_can_be_repeated(client, receiver):
    """A waited hook on a participant that does not exist: the repeat is 404 again, not 409."""
    target = f"{BASE}/vehicles/vehicles:00000000-0000-0000-0000-000000000000"
    body = {"properties": {"capacityKg": 900}, "onRequest": hook(receiver.url("/hook"))}
    first = client.put(target, json=body, headers=headers(request_id="missing-1"))
    again = client.put(target, json=body, headers=headers(request_id="missing-1"))
    assert first.status_code == 404
    assert again.status_code == 404, again.get_data(as_text=True)


def test_a_hook_header_http_cannot_carry_is_not_a_server_error(client, receiver):
    """A requestHeader value with a line break is refused cleanly (400 or failure event)."""
    on_request = hook(receiver.url("/hook"), requestHeader={"X-Note": "a\r\nInjected: 1"})
    body = {"uniqueCode": "V-1", "properties": REGISTERED, "onRequest": on_request}
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers(request_id="crlf-1"))
    assert response.status_code in (400, 202), response.get_data(as_text=True)
    if response.status_code == 202:
        assert response.json["data"]["event"]["errorCode"] == HOOK_REJECTED.code
    again = client.post(f"{BASE}/vehicles", json=body, headers=headers(request_id="crlf-1"))
    assert again.status_code == response.status_code
    assert "Injected" not in json.dumps([r.headers for r in receiver.received()])


# -- onRequest without waiting, and onError -----------------------------------------------------

def test_an_unwaited_hook_is_fired_later_by_the_dispatcher(app, client, receiver):
    """wait:false does not hold the request; the dispatcher sends the hook after commit."""
    on_request = {"url": receiver.url("/later"), "method": "PUT", "onResponse": {"wait": False},
                  "requestBody": {"hello": "world"},
                  "requestHeader": {"X-Request": "{{request_id}}", "X-Token": "{{token}}"}}
    body = {"uniqueCode": "V-1", "properties": REGISTERED, "onRequest": on_request}
    response = client.post(f"{BASE}/vehicles", json=body,
                           headers=headers(request_id="unwaited-1"))
    event = accepted(response)
    assert event["payloadValidated"] is True
    assert receiver.received() == []
    assert rows(app, "SELECT kind, status FROM outbox") == [("onRequest", "pending")]
    assert "onRequest" not in stored_events(app, response.json["data"]["id"])[0]["data"]

    assert app.extensions["participants"].dispatcher().run_once() == 1
    (call,) = receiver.received("/later")
    assert call.method == "PUT"
    assert call.json() == {"hello": "world"}
    assert call.headers["x-request"] == "unwaited-1"
    assert call.headers["x-token"] == "token-a"
    assert call.webhook_id == event["id"]
    assert rows(app, "SELECT status, headers FROM outbox") == [("delivered", None)]


def test_on_error_is_delivered_on_failure_only(app, client, receiver):
    """onError goes out, like a callback, for a failure event; a success owes it nothing."""
    on_error = {"url": receiver.url("/error"), "requestHeader": {"X-Tenant": "{{tenant_id}}"}}
    ok = {"uniqueCode": "V-1", "properties": REGISTERED, "onError": on_error}
    accepted(client.post(f"{BASE}/vehicles", json=ok, headers=headers()))
    dispatcher = app.extensions["participants"].dispatcher()
    assert dispatcher.run_once() == 0
    assert rows(app, "SELECT COUNT(*) FROM outbox") == [(0,)]

    bad = {"uniqueCode": "V-2", "properties": {"registrationNumber": "no"}, "onError": on_error}
    failed = accepted(client.post(f"{BASE}/vehicles", json=bad, headers=headers()))
    assert failed["payloadValidated"] is False
    assert dispatcher.run_once() == 1

    (call,) = receiver.received("/error")
    assert call.method == "POST"
    assert call.webhook_id == failed["id"]
    assert call.headers["x-tenant"] == "tenant-a"
    record = call.json()
    assert record["commandName"] == "ParticipantCreationFailedEvent"
    assert record["errors"][0]["path"] == "$.properties.registrationNumber"


def test_a_delivery_header_http_cannot_carry_does_not_wedge_the_dispatcher(app, client, receiver):
    """An onError row whose header cannot be sent is recorded as an attempt; others still go."""
    on_error = {"url": receiver.url("/error"), "requestHeader": {"X-Note": "a\r\nInjected: 1"}}
    bad = {"uniqueCode": "V-2", "properties": {"registrationNumber": "no"}, "onError": on_error,
           "callback": {"url": receiver.url("/cb")}}
    response = client.post(f"{BASE}/vehicles", json=bad, headers=headers())
    if response.status_code == 400:
        return  # refused at request time: nothing can reach the dispatcher
    accepted(response)
    dispatcher = app.extensions["participants"].dispatcher()
    for _ in range(3):
        dispatcher.run_once()
    assert len(receiver.received("/cb")) == 1
    assert rows(app, "SELECT kind, status FROM outbox WHERE kind = 'onError'") == \
        [("onError", "failed")]
    assert rows(app, "SELECT COUNT(*) FROM deliveries d JOIN outbox o ON o.id = d.outbox_id"
                     " WHERE o.kind = 'onError'") == [(1,)]
