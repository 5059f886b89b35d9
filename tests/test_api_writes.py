"""The write API: create, update, combined update, state events, If-Match, idempotency, events."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from engine.model.conventions import now_ms
from engine.service import idempotency
from engine.service.participants import participant_id_for
from tests.conftest import BASE, close_app, count, headers, inspect, make_app, rows

ALIAS = BASE.rsplit("/", 1)[0] + "/participant"
REGISTERED = {"registrationNumber": "AB-1234"}


# -- helpers ------------------------------------------------------------------------------------

def create(client, code="V-1", tenant="a", **properties) -> dict:
    """Create a vehicle that must succeed; returns data of the 202."""
    body = {"uniqueCode": code, "properties": {**REGISTERED, **properties}}
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers(tenant))
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.json["data"]["event"]["payloadValidated"] is True, response.json
    return response.json["data"]


def update(client, pid, body, tenant="a", **extra):
    return client.put(f"{BASE}/vehicles/{pid}", json=body, headers=headers(tenant, **extra))


def state_event(client, pid, event_code, tenant="a", timestamp=1_700_000_000, **fields):
    body = {"eventCode": event_code, "timestamp": timestamp, "source": {"appId": "tests"},
            **fields}
    return client.put(f"{BASE}/vehicles/{pid}/state/event", json=body, headers=headers(tenant))


def read(client, pid, tenant="a") -> dict:
    response = client.get(f"{BASE}/vehicles/{pid}", headers=headers(tenant))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["data"]


def outcome(response) -> dict:
    """data.event of an accepted write."""
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.json["data"]["event"]


def stored_events(app, pid=None) -> list[dict]:
    """Event records straight from the events table, in append order."""
    if pid is None:
        return [json.loads(body) for (body,) in rows(app, "SELECT body FROM events ORDER BY seq")]
    return [json.loads(body) for (body,) in rows(
        app, "SELECT body FROM events WHERE participant_id = ? ORDER BY seq", pid)]


def activate(client, pid):
    """Move a pending vehicle to active:active through a combined update."""
    event = outcome(update(client, pid, {"properties": {"verified": True, "capacityKg": 500},
                                         "stateTransition": {"eventCode": "E-022"}}))
    assert event["state"] == "active:active", event


# -- create -------------------------------------------------------------------------------------

def test_create_answers_202_with_the_derived_id_and_initial_state(client):
    """A create answers 202 with id vehicles:<uuid5>, version 1, the initial state, defaults."""
    response = client.post(f"{BASE}/vehicles", headers=headers(),
                           json={"uniqueCode": "V-1", "name": "Big one",
                                 "properties": {**REGISTERED, "capacityKg": 100}})
    event = outcome(response)
    pid = response.json["data"]["id"]
    assert pid == participant_id_for("tenant-a", "vehicles", "V-1")
    assert re.fullmatch(r"vehicles:[0-9a-f-]{36}", pid)
    assert uuid.UUID(pid.split(":", 1)[1]).version == 5
    assert event["commandName"] == "ParticipantCreationSuccessEvent"
    assert event["payloadValidated"] is True
    assert (event["reason"], event["errorCode"]) == ("", None)
    assert (event["state"], event["version"]) == ("onboarding:pending", 1)
    assert response.json["request"] == {
        "uri": f"{BASE}/vehicles", "method": "POST", "queryString": "",
        "body": {"uniqueCode": "V-1", "name": "Big one",
                 "properties": {**REGISTERED, "capacityKg": 100}}}

    participant = read(client, pid)
    assert participant["properties"] == {**REGISTERED, "capacityKg": 100,
                                         "fuelType": "Diesel", "verified": False}
    assert participant["state"] == "onboarding:pending"
    assert participant["version"] == 1
    assert participant["uniqueCode"] == "V-1"
    assert participant["name"] == "Big one"
    assert participant["participantType"] == "vehicles"
    assert participant["createdAt"] == participant["updatedAt"] > 10**12  # epoch milliseconds


def test_create_keeps_given_values_over_defaults(client):
    """An attribute given on create wins over its defaultValue."""
    pid = create(client, fuelType="Electric", verified=True)["id"]
    assert read(client, pid)["properties"]["fuelType"] == "Electric"
    assert read(client, pid)["properties"]["verified"] is True


def test_repeated_create_is_a_failure_event_and_never_a_duplicate(client, app):
    """A second create of the same uniqueCode names the same id and fails: already exists."""
    pid = create(client, capacityKg=10)["id"]
    response = client.post(f"{BASE}/vehicles", headers=headers(), json={
        "uniqueCode": "V-1", "properties": {"registrationNumber": "ZZ-99"}})
    event = outcome(response)
    assert response.json["data"]["id"] == pid
    assert event["payloadValidated"] is False
    assert event["commandName"] == "ParticipantCreationFailedEvent"
    assert event["reason"] == "participant already exists"
    assert event["errorCode"] == "101170021010"
    assert [e["path"] for e in event["errors"]] == ["$.uniqueCode"]
    assert (event["state"], event["version"]) == ("onboarding:pending", 1)
    assert count(app, "participants") == 1
    participant = read(client, pid)
    assert participant["version"] == 1
    assert participant["properties"]["registrationNumber"] == "AB-1234"


def test_failed_create_returns_the_would_be_id_which_answers_404(client, app):
    """A create that fails validation still returns its id, and that id does not exist."""
    response = client.post(f"{BASE}/vehicles", headers=headers(),
                           json={"uniqueCode": "V-9", "properties": {"capacityKg": -1}})
    event = outcome(response)
    pid = response.json["data"]["id"]
    assert pid == participant_id_for("tenant-a", "vehicles", "V-9")
    assert event["payloadValidated"] is False
    assert event["reason"] == "invalid attributes"
    assert event["errorCode"] == "101170021001"
    assert {e["path"] for e in event["errors"]} == {"$.properties.registrationNumber",
                                                    "$.properties.capacityKg"}
    assert (event["state"], event["version"]) == (None, 0)
    for suffix in ("", "/state", "/events"):
        missing = client.get(f"{BASE}/vehicles/{pid}{suffix}", headers=headers())
        assert missing.status_code == 404, suffix
        assert missing.json["error"]["code"] == "101170024042"
    assert count(app, "participants") == 0
    [record] = stored_events(app)
    assert (record["version"], record["entity"]) == (0, {})


# -- update -------------------------------------------------------------------------------------

def test_update_is_a_json_merge_patch_on_the_attributes(client):
    """properties merge as RFC 7396: null removes, objects merge, other keys are kept."""
    pid = create(client, capacityKg=100, axles=2,
                 address={"city": "Pune", "zip": "411001"})["id"]
    event = outcome(update(client, pid, {"properties": {
        "capacityKg": None, "axles": 3, "address": {"city": None}, "documents": ["rc.pdf"]}}))
    assert event["commandName"] == "ParticipantUpdationSuccessEvent"
    assert (event["payloadValidated"], event["version"]) == (True, 2)
    assert read(client, pid)["properties"] == {
        **REGISTERED, "fuelType": "Diesel", "verified": False, "axles": 3,
        "address": {"zip": "411001"}, "documents": ["rc.pdf"]}


def test_update_sets_and_clears_core_fields(client):
    """name, owner, category, subCategory and templateId are set by value and cleared by null."""
    pid = create(client)["id"]
    core = {"name": "Truck 7", "owner": "operators:7", "category": "truck",
            "subCategory": "small", "templateId": "tpl-1"}
    outcome(update(client, pid, {"properties": {}, **core}))
    participant = read(client, pid)
    assert {k: participant[k] for k in core} == core
    outcome(update(client, pid, {"name": None, "templateId": None}))
    participant = read(client, pid)
    assert (participant["name"], participant["templateId"]) == (None, None)
    assert (participant["owner"], participant["version"]) == ("operators:7", 3)


@pytest.mark.parametrize(("body", "reason", "code", "path"), [
    ({"category": "plane"}, "category not allowed", "101170021003", "$.category"),
    ({"category": "truck", "subCategory": "huge"}, "category not allowed", "101170021003",
     "$.subCategory"),
    ({"owner": "riders:1"}, "owner not allowed", "101170021004", "$.owner"),
    ({"properties": {"fuelType": "Coal"}}, "invalid attributes", "101170021001",
     "$.properties.fuelType"),
    ({"properties": {"registrationNumber": None}}, "invalid attributes", "101170021001",
     "$.properties.registrationNumber"),
    ({"properties": {"documents": [1]}}, "invalid attributes", "101170021001",
     "$.properties.documents"),
], ids=["category", "subCategory", "owner", "valueOneOf", "required removed", "item schema"])
def test_update_business_failures_are_failure_events(client, app, body, reason, code, path):
    """An update the type refuses is a 202 failure event and changes nothing."""
    pid = create(client)["id"]
    before = read(client, pid)
    event = outcome(update(client, pid, body))
    assert event["commandName"] == "ParticipantUpdationFailedEvent"
    assert (event["payloadValidated"], event["reason"], event["errorCode"]) == (False, reason, code)
    assert path in [e["path"] for e in event["errors"]]
    assert (event["state"], event["version"]) == ("onboarding:pending", 1)
    assert read(client, pid) == before


def test_combined_update_guard_sees_the_same_requests_properties(client):
    """The guard of E-022 passes only because the same request sets verified and capacityKg."""
    pid = create(client)["id"]
    refused = outcome(state_event(client, pid, "E-022"))
    assert (refused["reason"], refused["errorCode"]) == ("transition guard failed", "101170021094")
    assert "$.properties.verified" in [e["path"] for e in refused["errors"]]

    event = outcome(update(client, pid, {
        "properties": {"verified": True, "capacityKg": 500},
        "stateTransition": {"eventCode": "E-022", "reasonCode": "R-0001"}}))
    assert event["commandName"] == "ParticipantAttributeAndStateUpdationSuccessEvent"
    assert (event["payloadValidated"], event["state"], event["version"]) == (
        True, "active:active", 2)
    participant = read(client, pid)
    assert participant["state"] == "active:active"
    assert participant["properties"]["verified"] is True
    assert participant["properties"]["capacityKg"] == 500


def test_combined_update_checks_the_destination_invariant_on_patched_properties(client):
    """active:active requires capacityKg: a combined update without it fails the invariant."""
    pid = create(client)["id"]
    event = outcome(update(client, pid, {"properties": {"verified": True},
                                         "stateTransition": {"eventCode": "E-022"}}))
    assert (event["reason"], event["errorCode"]) == ("state invariant failed", "101170021095")
    assert [e["path"] for e in event["errors"]] == ["$.properties.capacityKg"]
    assert read(client, pid)["version"] == 1


ATOMIC = [
    pytest.param({"properties": {"verified": True, "capacityKg": -1},
                  "stateTransition": {"eventCode": "E-022"}},
                 "invalid attributes", "101170021001", "$.properties.capacityKg",
                 id="attribute failure with a valid transition"),
    pytest.param({"properties": {"capacityKg": 10, "verified": True},
                  "stateTransition": {"eventCode": "E-023"}},
                 "invalid state transition", "101170021090", "$.stateTransition.eventCode",
                 id="valid attributes with an invalid transition"),
]


@pytest.mark.parametrize(("body", "reason", "code", "path"), ATOMIC)
def test_combined_update_is_all_or_nothing(client, app, body, reason, code, path):
    """A combined update with any failing part changes nothing and appends one failure event."""
    pid = create(client)["id"]
    before = read(client, pid)
    events_before = stored_events(app)
    response = update(client, pid, body)
    event = outcome(response)
    assert response.json["data"]["id"] == pid
    assert event["commandName"] == "ParticipantAttributeAndStateUpdationFailedEvent"
    assert (event["payloadValidated"], event["reason"], event["errorCode"]) == (False, reason, code)
    assert path in [e["path"] for e in event["errors"]]
    assert (event["state"], event["version"]) == ("onboarding:pending", 1)
    assert read(client, pid) == before
    events_after = stored_events(app)
    assert events_after[:-1] == events_before
    [appended] = events_after[len(events_before):]
    assert appended["event"]["id"] == event["id"]
    assert (appended["payloadValidated"], appended["version"], appended["entity"]) == (
        False, 1, {})
    assert appended["errors"] == event["errors"]


def test_invalid_state_transition_reason_is_exactly_the_seeds(client):
    """An event with no transition from the current state fails as 'invalid state transition'."""
    pid = create(client)["id"]
    event = outcome(state_event(client, pid, "E-023", reasonCode="R-0001"))
    assert event["commandName"] == "ParticipantStateUpdationFailedEvent"
    assert event["reason"] == "invalid state transition"
    assert event["errorCode"] == "101170021090"
    assert [e["path"] for e in event["errors"]] == ["$.eventCode"]
    assert (event["state"], event["version"]) == ("onboarding:pending", 1)


# -- the state-event API ------------------------------------------------------------------------

@pytest.mark.parametrize(("timestamp", "stored_ms"), [
    (1_700_000_000, 1_700_000_000_000),
    (1_700_000_000.25, 1_700_000_000_250),
    (1_700_000_000_123, 1_700_000_000_123),
], ids=["seconds", "fractional seconds", "milliseconds"])
def test_state_event_applies_a_transition(client, app, timestamp, stored_ms):
    """PUT …/state/event moves the participant; timestamp is read as seconds or milliseconds."""
    pid = create(client, inspectionPassed=True)["id"]
    response = state_event(client, pid, "E-101", timestamp=timestamp, reasonCode="R-7001",
                           data={"inspector": "bob", "score": 90},
                           source={"appId": "gate", "userId": "u-1", "locId": "hub-1"})
    event = outcome(response)
    assert event["commandName"] == "ParticipantStateUpdationSuccessEvent"
    assert (event["state"], event["version"]) == ("onboarding:inspected", 2)
    assert read(client, pid)["state"] == "onboarding:inspected"
    record = stored_events(app, pid)[-1]
    assert record["data"]["timestamp"] == stored_ms
    assert record["data"]["eventCode"] == "E-101"
    assert record["data"]["reasonCode"] == "R-7001"
    assert record["data"]["data"] == {"inspector": "bob", "score": 90}
    assert record["data"]["source"] == {"appId": "gate", "userId": "u-1", "locId": "hub-1"}
    assert (record["event"]["smEventCode"], record["event"]["smReasonCode"]) == ("E-101", "R-7001")
    assert record["entity"]["state"] == "onboarding:inspected"


def test_exclusive_guards_pick_the_destination(client):
    """E-101 goes to failedInspection when the inspection did not pass."""
    pid = create(client, inspectionPassed=False)["id"]
    event = outcome(state_event(client, pid, "E-101", data={"inspector": "ann"}))
    assert event["state"] == "onboarding:failedInspection"


@pytest.mark.parametrize(("data", "paths"), [
    ({}, {"$.data.inspector"}),
    ({"inspector": "Bob7"}, {"$.data.inspector"}),
    ({"inspector": "bob", "score": 101}, {"$.data.score"}),
    ({"inspector": 5, "score": "high"}, {"$.data.inspector", "$.data.score"}),
], ids=["required", "regex", "range", "types"])
def test_state_event_data_is_checked_against_data_validations(client, data, paths):
    """data failing the event's dataValidations is a failure event naming every bad item."""
    pid = create(client, inspectionPassed=True)["id"]
    event = outcome(state_event(client, pid, "E-101", data=data))
    assert event["commandName"] == "ParticipantStateUpdationFailedEvent"
    assert (event["reason"], event["errorCode"]) == ("invalid event data", "101170021093")
    assert paths <= {e["path"] for e in event["errors"]}
    assert (event["state"], event["version"]) == ("onboarding:pending", 1)
    assert read(client, pid)["state"] == "onboarding:pending"


@pytest.mark.parametrize(("event_code", "reason_code", "reason", "code", "path"), [
    ("E-999", None, "unknown event", "101170021091", "$.eventCode"),
    ("E-022", "R-9999", "reason code not allowed", "101170021092", "$.reasonCode"),
    ("E-022", "R-5334", "reason code not allowed", "101170021092", "$.reasonCode"),
    ("E-022", None, "transition guard failed", "101170021094", "$.properties.verified"),
], ids=["undeclared event", "undeclared reason", "reason not allowed", "guard"])
def test_state_event_business_failures(client, event_code, reason_code, reason, code, path):
    """Well-formed events the type refuses are failure events with a stable errorCode."""
    pid = create(client)["id"]
    fields = {"reasonCode": reason_code} if reason_code else {}
    event = outcome(state_event(client, pid, event_code, **fields))
    assert (event["payloadValidated"], event["reason"], event["errorCode"]) == (False, reason, code)
    assert path in [e["path"] for e in event["errors"]]
    assert read(client, pid)["version"] == 1


def test_terminal_state_has_no_way_out(client):
    """A participant in inactive:dead refuses every event as an invalid state transition."""
    pid = create(client)["id"]
    activate(client, pid)
    assert outcome(state_event(client, pid, "E-023"))["state"] == "inactive:inactive"
    assert outcome(state_event(client, pid, "E-024"))["state"] == "inactive:dead"
    event = outcome(state_event(client, pid, "E-022"))
    assert event["reason"] == "invalid state transition"
    assert (event["state"], event["version"]) == ("inactive:dead", 4)


def test_seed_alias_route_updates_the_participant(client):
    """PUT /core/api/v2/participant/vehicles/{id} is the update route under the seed's path."""
    pid = create(client)["id"]
    response = client.put(f"{ALIAS}/vehicles/{pid}", headers=headers(), json={
        "properties": {"verified": True, "capacityKg": 5},
        "stateTransition": {"eventCode": "E-022", "reasonCode": "R-0001"}})
    event = outcome(response)
    assert response.json["data"]["id"] == pid
    assert event["commandName"] == "ParticipantAttributeAndStateUpdationSuccessEvent"
    assert (event["state"], event["version"]) == ("active:active", 2)
    assert response.json["request"]["uri"] == f"{ALIAS}/vehicles/{pid}"
    assert read(client, pid)["state"] == "active:active"


def test_alias_route_answers_404_for_unknown_participants(client):
    """The alias confines itself to existing participants like the main route."""
    response = client.put(f"{ALIAS}/vehicles/vehicles:nope", headers=headers(),
                          json={"properties": {}})
    assert response.status_code == 404
    assert response.json["error"]["code"] == "101170024042"


# -- If-Match -----------------------------------------------------------------------------------

def _write_routes():
    return [
        pytest.param(lambda pid: f"{BASE}/vehicles/{pid}", {"properties": {"axles": 4}},
                     id="update"),
        pytest.param(lambda pid: f"{ALIAS}/vehicles/{pid}", {"properties": {"axles": 4}},
                     id="alias"),
        pytest.param(lambda pid: f"{BASE}/vehicles/{pid}/state/event",
                     {"eventCode": "E-101", "timestamp": 1_700_000_000,
                      "source": {"appId": "t"}, "data": {"inspector": "bob"}}, id="state event"),
    ]


@pytest.mark.parametrize(("url", "body"), _write_routes())
def test_stale_if_match_is_412_and_writes_nothing(client, app, url, body):
    """If-Match naming an older version answers 412 and leaves participant and log alone."""
    pid = create(client, inspectionPassed=True)["id"]
    outcome(update(client, pid, {"properties": {"axles": 2}}))
    before, events_before = read(client, pid), count(app, "events")
    keys_before = count(app, "idempotency")
    response = client.put(url(pid), json=body, headers=headers(**{"If-Match": '"1"'}))
    assert response.status_code == 412
    assert response.json["error"]["code"] == "101170024120"
    assert read(client, pid) == before
    assert count(app, "events") == events_before
    assert count(app, "idempotency") == keys_before


@pytest.mark.parametrize("if_match", ['"2"', "2", 'W/"2"', "*"])
@pytest.mark.parametrize(("url", "body"), _write_routes())
def test_current_if_match_is_applied(client, url, body, if_match):
    """If-Match naming the current version (or *) lets the write through."""
    pid = create(client, inspectionPassed=True)["id"]
    outcome(update(client, pid, {"properties": {"axles": 2}}))
    event = outcome(client.put(url(pid), json=body, headers=headers(**{"If-Match": if_match})))
    assert (event["payloadValidated"], event["version"]) == (True, 3)
    assert read(client, pid)["version"] == 3


def test_if_match_takes_the_etag_of_a_read(client):
    """The ETag of a read is what If-Match takes."""
    pid = create(client)["id"]
    etag = client.get(f"{BASE}/vehicles/{pid}", headers=headers()).headers["ETag"]
    assert outcome(update(client, pid, {"name": "x"}, **{"If-Match": etag}))["version"] == 2
    stale = update(client, pid, {"name": "y"}, **{"If-Match": etag})
    assert stale.status_code == 412


# -- versions and events ------------------------------------------------------------------------

def test_version_grows_by_one_per_success_and_failures_keep_it(client, app):
    """Each success adds exactly 1 to the version; a failure event carries it unchanged."""
    pid = create(client)["id"]
    steps = [
        (update, {"properties": {"axles": 3}}, True),
        (update, {"properties": {"axles": 99}}, False),
        (update, {"name": "n"}, True),
        (update, {"stateTransition": {"eventCode": "E-023"}}, False),
        (update, {"properties": {"verified": True, "capacityKg": 1},
                  "stateTransition": {"eventCode": "E-022"}}, True),
    ]
    expected = 1
    for write, body, ok in steps:
        event = outcome(write(client, pid, body))
        assert event["payloadValidated"] is ok, (body, event)
        expected += ok
        assert event["version"] == expected
        assert read(client, pid)["version"] == expected
        assert client.get(f"{BASE}/vehicles/{pid}", headers=headers()).headers["ETag"] == \
            f'"{expected}"'
    for ok, event_code in ((True, "E-023"), (False, "E-023"), (True, "E-024")):
        event = outcome(state_event(client, pid, event_code))
        assert event["payloadValidated"] is ok
        expected += ok
        assert event["version"] == expected
    records = stored_events(app, pid)
    assert [r["sequence"] for r in records] == list(range(1, len(records) + 1))
    successes = [r["version"] for r in records if r["payloadValidated"]]
    assert successes == list(range(1, expected + 1))


def test_replaying_success_events_reproduces_the_participant(client, app):
    """The last success event's entity holds the participant's current state and attributes."""
    pid = create(client, address={"city": "Pune"})["id"]
    outcome(update(client, pid, {"properties": {"address": {"zip": "1"}, "axles": 3}}))
    activate(client, pid)
    assert outcome(update(client, pid, {"properties": {"axles": 1}}))["payloadValidated"] is False
    participant = read(client, pid)
    last = [r for r in stored_events(app, pid) if r["payloadValidated"]][-1]
    entity = last["entity"]
    assert entity["state"] == participant["state"]
    assert entity["version"] == participant["version"]
    assert {**entity["indexed_attributes"], **entity["non_indexed_attributes"]} == \
        participant["properties"]
    assert set(entity["indexed_attributes"]) == {"registrationNumber", "fuelType"}


COMMAND_NAMES = [
    ("create", True, "ParticipantCreationSuccessEvent"),
    ("create", False, "ParticipantCreationFailedEvent"),
    ("update", True, "ParticipantUpdationSuccessEvent"),
    ("update", False, "ParticipantUpdationFailedEvent"),
    ("state", True, "ParticipantStateUpdationSuccessEvent"),
    ("state", False, "ParticipantStateUpdationFailedEvent"),
    ("combined", True, "ParticipantAttributeAndStateUpdationSuccessEvent"),
    ("combined", False, "ParticipantAttributeAndStateUpdationFailedEvent"),
]


def _write_of_kind(client, kind: str, ok: bool):
    if kind == "create":
        props = REGISTERED if ok else {}
        return client.post(f"{BASE}/vehicles", headers=headers(),
                           json={"uniqueCode": "V-2", "properties": props})
    pid = create(client, inspectionPassed=True)["id"]
    if kind == "update":
        return update(client, pid, {"properties": {"axles": 3 if ok else 1}})
    if kind == "state":
        return state_event(client, pid, "E-101" if ok else "E-023", data={"inspector": "bob"})
    return update(client, pid, {"properties": {"verified": True, "capacityKg": 1},
                                "stateTransition": {"eventCode": "E-022" if ok else "E-024"}})


@pytest.mark.parametrize(("kind", "ok", "name"), COMMAND_NAMES,
                         ids=[name for _, _, name in COMMAND_NAMES])
def test_event_command_names(client, app, kind, ok, name):
    """Every write kind and outcome names its event as SPEC §4 says, in the response and log."""
    event = outcome(_write_of_kind(client, kind, ok))
    assert (event["commandName"], event["payloadValidated"]) == (name, ok)
    record = stored_events(app)[-1]
    assert record["commandName"] == record["event"]["eventType"] == name
    assert record["event"]["id"] == event["id"]


def test_event_record_follows_the_seed_envelope(client, app):
    """A stored event carries the seed's envelope, version, and on failure the errors."""
    user = {"id": "u-1", "name": "Asha", "appId": "console"}
    rid = "env-req-1"
    response = client.post(f"{BASE}/vehicles", json={
        "uniqueCode": "V-7", "properties": REGISTERED,
        "callback": {"url": "http://127.0.0.1:9/cb", "meta": {"k": "v"}}},
        headers=headers(request_id=rid, **{"X-COREOS-USERINFO": json.dumps(user)}))
    pid = response.json["data"]["id"]
    outcome(update(client, pid, {"stateTransition": {"eventCode": "E-023",
                                                     "reasonCode": "R-0001"}}))
    success, failure = stored_events(app, pid)
    assert success["businessCommand"] == "participantsVehiclesEntityCreate"
    assert success["requestId"] == success["event"]["requestId"] == rid
    assert (success["entityName"], success["entityVersion"]) == ("vehicles", "1.0.0")
    assert (success["entityInstanceId"], success["tenantId"]) == (pid, "tenant-a")
    assert (success["version"], success["payloadValidated"]) == (1, True)
    assert success["errorCode"] is None
    assert success["data"]["uniqueCode"] == "V-7"
    assert success["data"]["updatedBy"] == user
    assert int(success["data"]["updatedAt"]) > 10**12
    assert success["entity"]["state"] == "onboarding:pending"
    assert success["entity"]["participant_id"] == pid
    assert success["callbackMeta"] == {"k": "v"}
    assert "errors" not in success
    assert success["event"]["eventType"] == "ParticipantCreationSuccessEvent"
    assert success["event"]["uniqueCode"] == "V-7"
    assert success["event"]["userInfo"] == user
    assert success["event"]["callback"]["url"] == "http://127.0.0.1:9/cb"
    for key in ("id", "eventVersion", "createdTime", "domain", "participant_id",
                "participant_type", "tenantId", "failureReason", "errorCode"):
        assert key in success["event"], key

    assert failure["commandName"] == "ParticipantAttributeAndStateUpdationFailedEvent"
    assert (failure["version"], failure["entity"]) == (1, {})
    assert failure["reason"] == failure["event"]["failureReason"] == "invalid state transition"
    assert failure["errorCode"] == failure["event"]["errorCode"] == "101170021090"
    assert failure["errors"][0]["path"] == "$.stateTransition.eventCode"
    assert (failure["data"]["eventCode"], failure["data"]["reasonCode"]) == ("E-023", "R-0001")
    assert (failure["event"]["smEventCode"], failure["event"]["smReasonCode"]) == (
        "E-023", "R-0001")


# -- idempotency --------------------------------------------------------------------------------

def _replay_cases():
    return [
        pytest.param("POST", lambda pid: f"{BASE}/vehicles",
                     {"uniqueCode": "V-3", "properties": REGISTERED}, id="create"),
        pytest.param("POST", lambda pid: f"{BASE}/vehicles",
                     {"uniqueCode": "V-3", "properties": {}}, id="failed create"),
        pytest.param("PUT", lambda pid: f"{BASE}/vehicles/{pid}",
                     {"properties": {"axles": 3}}, id="update"),
        pytest.param("PUT", lambda pid: f"{BASE}/vehicles/{pid}",
                     {"stateTransition": {"eventCode": "E-024"}}, id="failed combined update"),
        pytest.param("PUT", lambda pid: f"{BASE}/vehicles/{pid}/state/event",
                     {"eventCode": "E-101", "timestamp": 1, "source": {"appId": "t"},
                      "data": {"inspector": "bob"}}, id="state event"),
        pytest.param("PUT", lambda pid: f"{ALIAS}/vehicles/{pid}",
                     {"properties": {"axles": 3}}, id="alias"),
    ]


@pytest.mark.parametrize(("method", "url", "body"), _replay_cases())
def test_repeated_request_id_replays_the_first_response_byte_for_byte(
        client, app, method, url, body):
    """Same request id and body: the stored response comes back identical, nothing is written."""
    pid = create(client, inspectionPassed=True)["id"]
    rid = "replay-1"
    first = client.open(url(pid), method=method, json=body, headers=headers(request_id=rid))
    assert first.status_code == 202
    state = (count(app, "events"), count(app, "participants"), read(client, pid))
    again = client.open(url(pid), method=method, json=body, headers=headers(request_id=rid))
    assert again.status_code == first.status_code
    assert again.get_data() == first.get_data()
    assert (count(app, "events"), count(app, "participants"), read(client, pid)) == state


def test_replay_ignores_key_order_in_the_body(client, app):
    """A repeat whose body differs only in key order is the same request."""
    rid = "replay-order"
    first = client.post(f"{BASE}/vehicles", headers=headers(request_id=rid),
                        data='{"uniqueCode": "V-4", "properties": {"registrationNumber": "AB-1"}}',
                        content_type="application/json")
    again = client.post(f"{BASE}/vehicles", headers=headers(request_id=rid),
                        data='{"properties": {"registrationNumber": "AB-1"}, "uniqueCode": "V-4"}',
                        content_type="application/json")
    assert again.get_data() == first.get_data()
    assert count(app, "events") == 1


@pytest.mark.parametrize(("method", "url", "body"), [
    ("POST", BASE + "/vehicles", {"uniqueCode": "V-1",
                                  "properties": {"registrationNumber": "ZZ-1"}}),
    ("POST", BASE + "/vehicles", {"uniqueCode": "V-2", "properties": REGISTERED}),
    ("PUT", BASE + "/vehicles/{pid}", {"properties": {}}),
    ("PUT", ALIAS + "/vehicles/{pid}", {"properties": {}}),
], ids=["other properties", "other uniqueCode", "other route", "alias route"])
def test_request_id_reused_for_a_different_request_is_422(client, app, method, url, body):
    """A request id already used for another request answers 422 and writes nothing."""
    rid = "reused-1"
    first = client.post(f"{BASE}/vehicles", headers=headers(request_id=rid),
                        json={"uniqueCode": "V-1", "properties": REGISTERED})
    pid = first.json["data"]["id"]
    events_before, keys_before = count(app, "events"), count(app, "idempotency")
    response = client.open(url.format(pid=pid), method=method, json=body,
                           headers=headers(request_id=rid))
    assert response.status_code == 422
    assert response.json["error"]["code"] == "101170024220"
    assert (count(app, "events"), count(app, "idempotency")) == (events_before, keys_before)
    assert count(app, "participants") == 1
    replay = client.post(f"{BASE}/vehicles", headers=headers(request_id=rid),
                         json={"uniqueCode": "V-1", "properties": REGISTERED})
    assert replay.get_data() == first.get_data()


def test_two_tenants_use_the_same_request_id_independently(client, app):
    """Request ids are scoped to the tenant: the same id creates in each tenant."""
    body = {"uniqueCode": "V-1", "properties": REGISTERED}
    a = client.post(f"{BASE}/vehicles", json=body, headers=headers("a", request_id="shared"))
    b = client.post(f"{BASE}/vehicles", json=body, headers=headers("b", request_id="shared"))
    assert outcome(a)["payloadValidated"] is True
    assert outcome(b)["payloadValidated"] is True
    assert a.json["data"]["id"] != b.json["data"]["id"]
    assert count(app, "participants") == 2
    again = client.post(f"{BASE}/vehicles", json=body, headers=headers("b", request_id="shared"))
    assert again.get_data() == b.get_data()


def _reserve(app, request_id: str, body: dict, lease_from: int, lease_ms: int) -> None:
    """Mark (tenant-a, request_id) in flight, as a process working on it would."""
    digest = idempotency.fingerprint("POST", f"{BASE}/vehicles", body)
    with app.extensions["participants"].storage.write() as uow:
        uow.idempotency.reserve("tenant-a", request_id, digest, lease_from, lease_from + lease_ms)


def test_request_id_in_flight_is_409(client, app):
    """A request id whose reservation is still leased answers 409 and writes nothing."""
    body = {"uniqueCode": "V-1", "properties": REGISTERED}
    _reserve(app, "in-flight", body, now_ms(), 60_000)
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers(request_id="in-flight"))
    assert response.status_code == 409
    assert response.json["error"]["code"] == "101170024090"
    assert (count(app, "events"), count(app, "participants")) == (0, 0)
    other = client.post(f"{BASE}/vehicles", json={**body, "uniqueCode": "V-2"},
                        headers=headers(request_id="in-flight"))
    assert other.status_code == 422


def test_expired_reservation_is_taken_over(client, app):
    """A reservation whose lease ran out (its process died) is taken over by the repeat."""
    body = {"uniqueCode": "V-1", "properties": REGISTERED}
    _reserve(app, "abandoned", body, now_ms() - 120_000, 60_000)
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers(request_id="abandoned"))
    assert outcome(response)["payloadValidated"] is True
    assert (count(app, "events"), count(app, "participants")) == (1, 1)
    again = client.post(f"{BASE}/vehicles", json=body, headers=headers(request_id="abandoned"))
    assert again.get_data() == response.get_data()
    assert count(app, "events") == 1


# -- the append-only event table ----------------------------------------------------------------

_COLUMNS = ("id, tenant_id, participant_id, participant_type, sequence, version, command_name,"
            " success, request_id, created_at, body")
# Statements both backends understand; each must be refused by the database itself.
TAMPERING = [
    "UPDATE events SET body = '{}'",
    "UPDATE events SET version = version + 1 WHERE seq = 1",
    "UPDATE events SET request_id = 'x' WHERE seq = (SELECT MAX(seq) FROM events)",
    "DELETE FROM events",
    "DELETE FROM events WHERE seq = 1",
    f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM events WHERE seq = 1"
    " ON CONFLICT (tenant_id, participant_id, sequence) DO UPDATE SET request_id = 'x'",
    f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM events WHERE seq = 1"
    " ON CONFLICT (tenant_id, participant_id, sequence) DO UPDATE"
    " SET version = excluded.version + 1",
]
# SQLite's ways of replacing a row (REPLACE deletes the conflicting row without firing DELETE
# triggers), and its upserts without a conflict target or on its single-column unique keys.
SQLITE_TAMPERING = [
    "INSERT OR REPLACE INTO events SELECT * FROM events WHERE seq = 1",
    "REPLACE INTO events SELECT * FROM events WHERE seq = 1",
    f"INSERT OR REPLACE INTO events ({_COLUMNS}) SELECT 'other-id', tenant_id, participant_id,"
    " participant_type, sequence, version, command_name, success, request_id, created_at, 'x'"
    " FROM events WHERE seq = 1",
    "INSERT INTO events SELECT * FROM events WHERE seq = 1"
    " ON CONFLICT DO UPDATE SET body = 'x'",
    "INSERT INTO events SELECT * FROM events WHERE seq = 1"
    " ON CONFLICT (seq) DO UPDATE SET body = excluded.body || 'x'",
    f"INSERT INTO events ({_COLUMNS}) SELECT id, tenant_id, participant_id, participant_type,"
    " sequence + 100, version, command_name, success, request_id, created_at, body"
    " FROM events WHERE seq = 1 ON CONFLICT (id) DO UPDATE SET body = 'x'",
]


def _refused_and_unchanged(app, client, statement) -> None:
    pid = create(client)["id"]
    outcome(update(client, pid, {"properties": {"axles": 3}}))
    db = inspect(app)
    before = db.rows(f"SELECT * FROM events {db.order_by('events')}")
    assert len(before) == 2
    with pytest.raises(db.errors) as refused:
        db.execute(statement)
    assert "append-only" in str(refused.value), refused.value
    assert db.rows(f"SELECT * FROM events {db.order_by('events')}") == before


@pytest.mark.parametrize("statement", TAMPERING)
def test_events_table_refuses_changes(client, app, statement):
    """UPDATE, DELETE and upserts on events raise, and the table stays as it was."""
    _refused_and_unchanged(app, client, statement)


@pytest.mark.parametrize("statement", SQLITE_TAMPERING)
def test_sqlite_events_table_refuses_replace_and_upserts(sqlite_app, statement):
    """SQLite's REPLACE and upserts on any of its unique keys raise too (a trigger refuses any
    insert that would conflict)."""
    _refused_and_unchanged(sqlite_app, sqlite_app.test_client(), statement)


def test_postgres_events_table_refuses_truncate(postgres_database):
    """PostgreSQL refuses TRUNCATE of the event table at the database level."""
    application = make_app(postgres_database)
    try:
        _refused_and_unchanged(application, application.test_client(), "TRUNCATE events")
    finally:
        close_app(application)
