"""State timers: sub-state ttls and terminalTTL archiving, run by the dispatcher on its clock.

The dispatcher is given a clock ahead of the real one (`dispatcher(clock=...)`), so a day-long
ttl is due without waiting; the participants' timestamps are the real ones of their writes.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from engine.jobs.timers import TIMER_USER, Timers
from engine.model.failures import ALREADY_EXISTS, INVALID_STATE_TRANSITION
from tests.conftest import BASE, headers
from tests.receivers import Receiver, rows, verify_signature

DAY = 86400
REGISTERED = {"registrationNumber": "AB-1234"}


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def later(seconds: float):
    return lambda: time.time() + seconds


def create(client, code="V-1", callback_url=None, secret=None, **properties) -> str:
    body = {"uniqueCode": code, "properties": {**REGISTERED, **properties}}
    if callback_url:
        body["callback"] = {"url": callback_url}
    extra = {"X-COREOS-CALLBACK-SECRET": secret} if secret else {}
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers(**extra))
    assert response.json["data"]["event"]["payloadValidated"] is True, response.json
    return response.json["data"]["id"]


def state_event(client, pid, event_code, **fields) -> dict:
    body = {"eventCode": event_code, "timestamp": int(time.time()), "source": {"appId": "tests"},
            **fields}
    response = client.put(f"{BASE}/vehicles/{pid}/state/event", json=body, headers=headers())
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.json["data"]["event"]


def failed_inspection(client, **create_fields) -> str:
    """A vehicle in onboarding:failedInspection (ttl 1d back to onboarding:pending)."""
    pid = create(client, inspectionPassed=False, **create_fields)
    event = state_event(client, pid, "E-101", reasonCode="R-7001", data={"inspector": "bob"})
    assert event["state"] == "onboarding:failedInspection", event
    return pid


def active(client, code="V-1") -> str:
    """A vehicle in active:active (ttl 30d to inactive:inactive)."""
    pid = create(client, code=code)
    response = client.put(f"{BASE}/vehicles/{pid}", headers=headers(), json={
        "properties": {"verified": True, "capacityKg": 500},
        "stateTransition": {"eventCode": "E-022"}})
    assert response.json["data"]["event"]["state"] == "active:active", response.json
    return pid


def read(client, pid):
    return client.get(f"{BASE}/vehicles/{pid}", headers=headers())


def stored_events(app, pid) -> list[dict]:
    return [json.loads(body) for (body,) in rows(
        app, "SELECT body FROM events WHERE participant_id = ? ORDER BY seq", pid)]


def drain(dispatcher) -> None:
    for _ in range(20):
        if not dispatcher.run_once():
            return
    raise AssertionError("the outbox did not drain")


# -- ttl ----------------------------------------------------------------------------------------

def test_a_ttl_moves_the_participant_and_tells_the_stored_callback(app, client, receiver):
    """After 1d in failedInspection the timer moves the vehicle back to pending, with an event
    that says so, delivered to the stored callback and signed with the stored secret."""
    secret = "timer-secret"
    pid = failed_inspection(client, callback_url=receiver.url("/cb"), secret=secret)
    drain(app.extensions["participants"].dispatcher(clock=later(DAY + 60)))

    participant = read(client, pid).json["data"]
    assert (participant["state"], participant["version"]) == ("onboarding:pending", 3)
    assert participant["updatedBy"] == TIMER_USER
    record = stored_events(app, pid)[-1]
    assert record["commandName"] == "ParticipantStateUpdationSuccessEvent"
    assert record["payloadValidated"] is True
    assert record["data"]["ttl"] == "1d"
    assert record["data"]["fromState"] == "onboarding:failedInspection"
    assert record["data"]["toState"] == "onboarding:pending"
    assert record["data"]["source"]["userId"] == "state-timer"
    assert record["event"]["userInfo"] == TIMER_USER
    assert record["entity"]["state"] == "onboarding:pending"

    calls = receiver.received("/cb")
    assert len(calls) == 3  # create, inspection, timer
    assert calls[-1].webhook_id == record["event"]["id"]
    assert calls[-1].json()["data"]["ttl"] == "1d"
    assert verify_signature(secret, calls[-1])


def test_a_ttl_is_not_due_before_its_time(app, client):
    """A minute short of the ttl nothing moves and no event is written."""
    pid = failed_inspection(client)
    participants = app.extensions["participants"]
    participants.dispatcher(clock=later(DAY - 60)).run_once()
    participant = read(client, pid).json["data"]
    assert (participant["state"], participant["version"]) == ("onboarding:failedInspection", 2)
    assert len(stored_events(app, pid)) == 2


def test_a_30_day_ttl_deactivates_an_active_vehicle(app, client):
    """active:active has a 30d ttl to inactive:inactive; it runs once, not again later."""
    pid = active(client)
    participants = app.extensions["participants"]
    participants.dispatcher(clock=later(29 * DAY)).run_once()
    assert read(client, pid).json["data"]["state"] == "active:active"
    participants.dispatcher(clock=later(30 * DAY + 60)).run_once()
    participants.dispatcher(clock=later(61 * DAY)).run_once()
    participant = read(client, pid).json["data"]
    assert (participant["state"], participant["version"]) == ("inactive:inactive", 3)


class _ClientFirst:
    """The service, with a client's write landing between the timer's read and its write."""

    def __init__(self, service, client_write):
        self.service, self.storage, self.client_write = service, service.storage, client_write

    def execute(self, ptype, command, render):
        self.client_write()
        return self.service.execute(ptype, command, render)


def test_a_client_transition_that_lands_first_wins_over_the_timer(app, client):
    """The timer sees a changed version and does nothing: one transition, never both."""
    pid = active(client)
    participants = app.extensions["participants"]
    outcomes = []
    racing = _ClientFirst(participants.service,
                          lambda: outcomes.append(state_event(client, pid, "E-023")))
    Timers(participants.types, racing).run_due(time.time() + 31 * DAY)

    assert [o["payloadValidated"] for o in outcomes] == [True]
    participant = read(client, pid).json["data"]
    assert (participant["state"], participant["version"]) == ("inactive:inactive", 3)
    assert participant["updatedBy"] != TIMER_USER
    names = [e["commandName"] for e in stored_events(app, pid)]
    assert names == ["ParticipantCreationSuccessEvent",
                     "ParticipantAttributeAndStateUpdationSuccessEvent",
                     "ParticipantStateUpdationSuccessEvent"]
    assert "ttl" not in stored_events(app, pid)[-1]["data"]
    participants.dispatcher(clock=later(62 * DAY)).run_once()
    assert read(client, pid).json["data"]["version"] == 3


def test_when_the_timer_lands_first_the_client_transition_fails(app, client):
    """After the timer moved it, the client's deactivation is an invalid state transition."""
    pid = active(client)
    app.extensions["participants"].dispatcher(clock=later(31 * DAY)).run_once()
    event = state_event(client, pid, "E-023")
    assert event["payloadValidated"] is False
    assert event["errorCode"] == INVALID_STATE_TRANSITION.code
    successes = [e for e in stored_events(app, pid)
                 if e["commandName"] == "ParticipantStateUpdationSuccessEvent"]
    assert len(successes) == 1 and successes[0]["data"]["ttl"] == "30d"


def test_two_dispatchers_apply_a_due_timer_once(app, client):
    """Dispatchers running timers at the same moment move the participant once."""
    pid = failed_inspection(client)
    participants = app.extensions["participants"]
    start = threading.Barrier(2)

    def run():
        dispatcher = participants.dispatcher(clock=later(DAY + 60))
        try:
            start.wait()
            dispatcher.run_once()
        finally:
            participants.storage.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert read(client, pid).json["data"]["version"] == 3
    assert len(stored_events(app, pid)) == 3


# -- terminalTTL --------------------------------------------------------------------------------

def test_terminal_ttl_archives_but_keeps_the_history(app, client):
    """90d in inactive:dead archives: 404 and out of lists, events still readable, no re-create."""
    pid = active(client)
    kept = create(client, code="V-2")
    state_event(client, pid, "E-023")
    assert state_event(client, pid, "E-024")["state"] == "inactive:dead"
    participants = app.extensions["participants"]

    participants.dispatcher(clock=later(89 * DAY)).run_once()
    assert read(client, pid).status_code == 200
    participants.dispatcher(clock=later(90 * DAY + 60)).run_once()

    assert read(client, pid).status_code == 404
    state = client.get(f"{BASE}/vehicles/{pid}/state", headers=headers())
    assert state.status_code == 404
    listed = client.get(f"{BASE}/vehicles", headers=headers()).json["data"]
    assert [p["id"] for p in listed["participants"]] == [kept]
    assert listed["meta"]["totalElements"] == 1
    history = client.get(f"{BASE}/vehicles/{pid}/events", headers=headers())
    assert history.status_code == 200
    assert history.json["data"]["meta"]["totalElements"] == 4
    assert [e["entityInstanceId"] for e in history.json["data"]["events"]] == [pid] * 4
    assert history.json["data"]["events"][-1]["entity"]["state"] == "inactive:dead"
    update = client.put(f"{BASE}/vehicles/{pid}", json={"properties": {}}, headers=headers())
    assert update.status_code == 404

    again = client.post(f"{BASE}/vehicles", json={"uniqueCode": "V-1", "properties": REGISTERED},
                        headers=headers())
    assert again.status_code == 202, again.get_data(as_text=True)
    event = again.json["data"]["event"]
    assert event["payloadValidated"] is False
    assert event["errorCode"] == ALREADY_EXISTS.code
    assert again.json["data"]["id"] == pid
    assert read(client, pid).status_code == 404
    assert rows(app, "SELECT COUNT(*) FROM participants") == [(2,)]


def test_a_client_request_id_shaped_like_a_timers_does_not_stop_the_dispatcher(app, client,
                                                                               receiver):
    """Request ids are the client's to choose: one that equals a timer's own id must neither
    block the timer forever nor stop the dispatcher from delivering anyone's callbacks."""
    pid = active(client)
    version = read(client, pid).json["data"]["version"]
    clash = client.put(f"{BASE}/vehicles/{pid}", json={"properties": {"axles": 99}},
                       headers=headers(request_id=f"ttl:{pid}:{version}"))
    assert clash.json["data"]["event"]["payloadValidated"] is False  # version unchanged
    bystander = {"uniqueCode": "V-2", "properties": REGISTERED,
                 "callback": {"url": receiver.url("/bystander")}}
    client.post(f"{BASE}/vehicles", json=bystander, headers=headers())

    dispatcher = app.extensions["participants"].dispatcher(clock=later(31 * DAY))
    dispatcher.run_once()

    assert len(receiver.received("/bystander")) == 1
    assert read(client, pid).json["data"]["state"] == "inactive:inactive"
