"""Dry runs (SPEC §7): the same decisions as real writes, and nothing written, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.loading.registry import load_registry
from tests.conftest import BASE, close_app, headers, ledger, make_app

ROOT = Path(__file__).resolve().parent.parent
MACHINES = ROOT / "machines"
VEHICLES = (ROOT / "machines" / "vehicles.yaml").read_text()
DRY = BASE + "/participant-types/{}/dry-run"
REGISTERED = {"registrationNumber": "KA01AB1234", "payloadCapacityKg": 750}
DOCUMENTS = {"vin": "MAT448123K1A00001", "documents": [
    {"docType": "registrationCertificate", "docNumber": "RC-88812"},
    {"docType": "insurance", "docNumber": "POL-1234"},
    {"docType": "pollutionCertificate", "docNumber": "PUC-7781"}]}
# The README's walk-through as dry-run steps.
WALK = [
    {"properties": DOCUMENTS, "stateTransition": {"eventCode": "E-101", "reasonCode": "R-0001"}},
    {"properties": {"gpsDeviceImei": "12345"},
     "stateTransition": {"eventCode": "E-022", "reasonCode": "R-0001"}},
]


@pytest.fixture
def app(app_database):
    """The service on the shipped machines: the README's walk-through is about them."""
    application = make_app(app_database, PARTICIPANTS_MACHINES=str(MACHINES))
    yield application
    close_app(application)


@pytest.fixture(scope="module")
def registry():
    return load_registry(MACHINES)


def dry(client, body, plural="vehicles", tenant="a"):
    return client.post(DRY.format(plural), json=body, headers=headers(tenant))


def ok(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["data"]


def create(client, code="KA01AB1234", tenant="a", **properties) -> str:
    body = {"uniqueCode": code, "properties": {**REGISTERED, **properties}}
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers(tenant))
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.json["data"]["id"]


def test_the_walk_through_decides_like_real_writes_and_writes_nothing(client, app):
    before = ledger(app)
    data = ok(dry(client, {"start": {"create": {"uniqueCode": "KA01AB1234",
                                                 "properties": REGISTERED}},
                           "steps": WALK}))
    assert data["valid"] is True and data["lint"] == []
    assert data["start"]["payloadValidated"] is True
    assert data["start"]["to"] == "onboarding:pendingDocuments"
    first, second = data["steps"]
    assert first["from"] == "onboarding:pendingDocuments"
    assert first["to"] == "onboarding:awaitingInspection" and first["payloadValidated"]
    assert first["commandName"] == "ParticipantAttributeAndStateUpdationSuccessEvent"
    assert second["payloadValidated"] is False
    assert second["errorCode"] == "101170021090"
    assert second["reason"] == "invalid state transition"
    paths = {e["path"] for e in second["errors"]}
    assert "$.stateTransition.eventCode" in paths and "$.properties.gpsDeviceImei" in paths
    # a failed step leaves the participant as it was, and the next starts from there
    assert second["from"] == second["to"] == "onboarding:awaitingInspection"
    assert second["properties"] == first["properties"]
    assert data["final"]["state"] == "onboarding:awaitingInspection"
    assert "gpsDeviceImei" not in data["final"]["properties"]
    assert ledger(app) == before

    # the same requests written for real reach the same outcomes
    pid = create(client)
    real = client.put(f"{BASE}/vehicles/{pid}", json=WALK[0], headers=headers())
    assert real.json["data"]["event"]["payloadValidated"] is True
    real = client.put(f"{BASE}/vehicles/{pid}", json=WALK[1], headers=headers())
    assert real.json["data"]["event"]["errorCode"] == second["errorCode"]


def test_available_events_follow_the_state(client, registry):
    data = ok(dry(client, {"steps": [{"properties": DOCUMENTS | REGISTERED,
                                      "stateTransition": {"eventCode": "E-101"}}]}))
    step = data["steps"][0]
    assert step["payloadValidated"], step
    assert step["availableEvents"] == registry["vehicles"].machine.triggers(step["to"])
    assert step["availableEvents"]


def test_state_event_steps_and_event_data(client):
    start = {"state": "onboarding:pendingDocuments", "properties": REGISTERED}
    data = ok(dry(client, {"start": start, "steps": [{"eventCode": "E-023", "reasonCode": "R-0001"},
                                                     {"eventCode": "E-999"}]}))
    moved, unknown = data["steps"]
    assert moved["commandName"].startswith("ParticipantStateUpdation")
    assert moved["payloadValidated"], moved
    assert moved["to"].startswith("inactive")
    assert unknown["payloadValidated"] is False and unknown["errors"][0]["path"] == "$.eventCode"


def test_start_from_a_stored_participant_reads_but_never_writes(client, app):
    pid = create(client)
    before = ledger(app)
    data = ok(dry(client, {"start": {"participantId": pid}, "steps": WALK[:1]}))
    assert data["steps"][0]["from"] == "onboarding:pendingDocuments"
    assert data["final"]["state"] == "onboarding:awaitingInspection"
    assert ledger(app) == before
    stored = client.get(f"{BASE}/vehicles/{pid}", headers=headers()).json["data"]
    assert stored["version"] == 1


def test_foreign_or_missing_participant_is_404(client):
    pid = create(client, tenant="a")
    assert dry(client, {"start": {"participantId": pid}}, tenant="b").status_code == 404
    assert dry(client, {"replay": {"participantId": pid}}, tenant="b").status_code == 404
    assert dry(client, {"start": {"participantId": "vehicles:nope"}}).status_code == 404
    assert dry(client, {"start": {"participantId": "riders:x"}}).status_code == 404


def test_a_create_start_that_fails_has_no_steps(client):
    data = ok(dry(client, {"start": {"create": {"uniqueCode": "X", "properties": {}}},
                           "steps": WALK}))
    assert data["start"]["payloadValidated"] is False
    assert data["start"]["errorCode"]
    assert data["steps"] == [] and data["final"] is None


def test_a_create_of_an_existing_code_fails_as_it_would_for_real(client):
    create(client, code="DUP")
    data = ok(dry(client, {"start": {"create": {"uniqueCode": "DUP", "properties": REGISTERED}}}))
    assert data["start"]["payloadValidated"] is False
    assert data["start"]["errorCode"] == "101170021010", data["start"]
    assert data["final"] is None


def test_default_start_is_the_initial_state(client, registry):
    data = ok(dry(client, {}))
    assert data["final"]["state"] == registry["vehicles"].definition.initial_state


def test_a_draft_with_lint_errors_answers_its_problems_and_no_steps(client):
    broken = VEHICLES.replace("E-101", "E-1O1", 1)
    data = ok(dry(client, {"machine": broken, "steps": WALK}))
    assert data["valid"] is False and data["steps"] == [] and data["final"] is None
    assert data["lint"]
    problem = data["lint"][0]
    assert set(problem) == {"rule", "severity", "line", "column", "message"}
    line = next(i for i, text in enumerate(broken.splitlines(), 1) if "E-1O1" in text)
    assert any(p["line"] == line and p["severity"] == "error" for p in data["lint"]), data["lint"]


def test_a_draft_decides_instead_of_the_loaded_machine(client):
    start = {"state": "onboarding:pendingDocuments", "properties": REGISTERED}
    loaded = ok(dry(client, {"start": start, "steps": WALK[:1]}))
    assert loaded["steps"][0]["to"] == "onboarding:awaitingInspection"
    same = ok(dry(client, {"machine": VEHICLES, "start": start, "steps": WALK[:1]}))
    assert same["valid"] is True and same["steps"] == loaded["steps"]
    stricter = ok(dry(client, {"machine": _stricter_inspection(), "start": start,
                               "steps": WALK[:1]}))
    step = stricter["steps"][0]
    assert step["payloadValidated"] is False and step["errorCode"], step
    assert step["to"] == "onboarding:pendingDocuments"


def test_a_draft_must_describe_this_plural(client):
    data = ok(dry(client, {"machine": VEHICLES}, plural="riders"))
    assert data["valid"] is False
    assert any(p["rule"] == "E010" and "'vehicles'" in p["message"] for p in data["lint"])


def test_an_unknown_plural_without_a_draft_is_404(client):
    assert dry(client, {}, plural="spaceships").status_code == 404


def test_replay_lists_the_steps_a_draft_decides_differently(client, app):
    pid = create(client)
    assert client.put(f"{BASE}/vehicles/{pid}", json=WALK[0], headers=headers()).status_code == 202
    assert client.put(f"{BASE}/vehicles/{pid}", json=WALK[1], headers=headers()).status_code == 202
    same = ok(dry(client, {"replay": {"participantId": pid}}))
    assert [s["differs"] for s in same["steps"]] == [False, False, False]
    assert same["differences"] == 0
    recorded = [s["recorded"]["payloadValidated"] for s in same["steps"]]
    assert recorded == [True, True, False]

    # a draft whose guard of E-101 wants a fourth document refuses step 2, and so step 3's
    # state differs too (it starts from pendingDocuments)
    stricter = _stricter_inspection()
    before = ledger(app)
    data = ok(dry(client, {"machine": stricter, "replay": {"participantId": pid}}))
    assert ledger(app) == before
    assert data["valid"] is True, data["lint"]
    flags = [s["differs"] for s in data["steps"]]
    assert flags[0] is False and flags[1] is True, data["steps"]
    step = data["steps"][1]
    assert step["recorded"]["payloadValidated"] is True
    assert step["simulated"]["payloadValidated"] is False
    assert step["simulated"]["errors"]
    assert data["differences"] == sum(flags)


def _stricter_inspection() -> str:
    """vehicles.yaml with E-101's guard asking for at least four documents."""
    lines = VEHICLES.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if "minItems: 3" in line:
            lines[i] = line.replace("minItems: 3", "minItems: 4")
            return "".join(lines)
    pytest.fail("vehicles.yaml has no `minItems: 3` to make stricter")


@pytest.mark.parametrize("body, path", [
    ({"steps": "no"}, "$.steps"),
    ({"steps": [{"properties": []}]}, "$.steps[0].properties"),
    ({"steps": [{"eventCode": "E-1"}]}, "$.steps[0].eventCode"),
    ({"steps": [{"eventCode": "E-101", "bogus": 1}]}, "$.steps[0]"),
    ({"steps": [{}] * 1001}, "$.steps"),
    ({"start": {"state": "x", "participantId": "y"}}, "$.start"),
    ({"start": {}}, "$.start"),
    ({"start": {"create": {"properties": {}}}}, "$.start.create"),
    ({"machine": 5}, "$.machine"),
    ({"replay": {}}, "$.replay"),
    ({"nonsense": True}, "$"),
])
def test_malformed_bodies_are_400_naming_the_place(client, body, path):
    response = dry(client, body)
    assert response.status_code == 400, response.get_data(as_text=True)
    paths = [e["path"] for e in response.json["error"]["additionalInfo"]["errors"]]
    assert any(p.startswith(path) for p in paths), paths


def test_a_start_state_the_type_lacks_is_400(client):
    response = dry(client, {"start": {"state": "flying:high"}})
    assert response.status_code == 400
    assert response.json["error"]["additionalInfo"]["errors"][0]["path"] == "$.start.state"


def test_replay_with_steps_is_400(client):
    pid = create(client)
    response = dry(client, {"replay": {"participantId": pid}, "steps": []})
    assert response.status_code == 400


@pytest.mark.parametrize("text", [
    "", "\0", "{", "- a\n- b", "participantType: [1, 2]", "a: &x [*x]", "x" * 100_000,
    "!!python/object/apply:os.system ['true']", "<<: *missing",
])
def test_hostile_draft_texts_are_answered_never_a_500(client, text):
    response = dry(client, {"machine": text} if text else {"machine": " "})
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    if response.status_code == 200:
        assert response.json["data"]["valid"] is False


def test_dry_run_needs_the_same_headers_as_every_call(client):
    assert client.post(DRY.format("vehicles"), json={}).status_code == 400
    wrong = headers("a") | {"X-COREOS-ACCESS": "nope"}
    assert client.post(DRY.format("vehicles"), json={}, headers=wrong).status_code == 401


def test_nothing_written_even_for_steps_that_would_notify(client, app):
    before = ledger(app)
    steps = [{"properties": {"color": "red"}, "callback": {"url": "http://127.0.0.1:9/x"}}] * 3
    response = dry(client, {"steps": steps})
    assert response.status_code == 200
    assert ledger(app) == before
