"""Callbacks: delivered after commit from the outbox, signed, retried, ordered, leased.

Receivers are real HTTP servers on loopback (tests/receivers.py); the dispatcher is driven with
`run_once()`, with a small PARTICIPANTS_DELIVERY_SCHEDULE or a clock moved forward instead of
waiting for retries.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from email.utils import formatdate

import pytest
from standardwebhooks.webhooks import Webhook

from engine.jobs.dispatcher import Attempt, DeliveryPolicy, Dispatcher
from tests.conftest import BASE, headers, inspect
from tests.receivers import Receiver, Reply, rows, verify_signature

REGISTERED = {"registrationNumber": "AB-1234"}


# -- fixtures and helpers -----------------------------------------------------------------------

@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def quick_app(apps):
    """Retries are due at once: three retries after the first attempt."""
    return apps(PARTICIPANTS_DELIVERY_SCHEDULE="0,0,0")


def create(client, code="V-1", callback_url=None, secret=None, **properties) -> dict:
    """Create a vehicle that must succeed; returns data.event of the 202, with `pid`."""
    body = {"uniqueCode": code, "properties": {**REGISTERED, **properties}}
    if callback_url:
        body["callback"] = {"url": callback_url, "meta": {"ticket": code}}
    extra = {"X-COREOS-CALLBACK-SECRET": secret} if secret else {}
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers(**extra))
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.json["data"]["event"]["payloadValidated"] is True, response.json
    return {"pid": response.json["data"]["id"], **response.json["data"]["event"]}


def update(client, pid, body, secret=None):
    extra = {"X-COREOS-CALLBACK-SECRET": secret} if secret else {}
    response = client.put(f"{BASE}/vehicles/{pid}", json=body, headers=headers(**extra))
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.json["data"]["event"]


def drain(dispatcher, rounds: int = 50) -> int:
    """run_once until nothing is due; returns how many attempts were made."""
    total = 0
    for _ in range(rounds):
        done = dispatcher.run_once()
        if not done:
            return total
        total += done
    raise AssertionError(f"the outbox did not drain in {rounds} rounds")


def event_body(app, event_id) -> bytes:
    (body,) = rows(app, "SELECT body FROM events WHERE id = ?", event_id)[0]
    return body.encode()


def outbox(app) -> list[dict]:
    return inspect(app).dicts("SELECT * FROM outbox ORDER BY id")


def deliveries(app) -> list[tuple]:
    return rows(app, "SELECT attempt, at, status_code, error, outcome FROM deliveries"
                     " ORDER BY id")


def later(seconds: float):
    """A dispatcher clock `seconds` ahead of the real one."""
    return lambda: time.time() + seconds


# -- delivery after commit ----------------------------------------------------------------------

def test_success_callback_is_the_committed_event(app, client, receiver):
    """A create's callback carries the event exactly as committed, after the request returned."""
    event = create(client, callback_url=receiver.url("/cb"))
    assert receiver.requests == []  # nothing is sent while the request is being answered
    (row,) = outbox(app)
    assert (row["event_id"], row["kind"], row["status"]) == (event["id"], "callback", "pending")

    assert drain(app.extensions["participants"].dispatcher()) == 1

    (got,) = receiver.received("/cb")
    assert got.method == "POST"
    assert got.headers["content-type"] == "application/json"
    assert got.body == event_body(app, event["id"])
    record = got.json()
    assert record["commandName"] == "ParticipantCreationSuccessEvent"
    assert record["payloadValidated"] is True
    assert record["entityInstanceId"] == event["pid"]
    assert record["callbackMeta"] == {"ticket": "V-1"}
    assert got.webhook_id == event["id"] == record["event"]["id"]
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert "webhook-signature" not in got.headers  # no secret, no signature
    assert outbox(app)[0]["status"] == "delivered"


def test_failure_callback_carries_the_failure_event(app, client, receiver):
    """A failed update's callback is its failure event, errors and all."""
    pid = create(client)["pid"]
    event = update(client, pid, {"properties": {"capacityKg": -5},
                                 "callback": {"url": receiver.url("/failed")}})
    assert event["payloadValidated"] is False

    drain(app.extensions["participants"].dispatcher())

    (got,) = receiver.received("/failed")
    record = got.json()
    assert got.webhook_id == event["id"]
    assert record["commandName"] == "ParticipantUpdationFailedEvent"
    assert record["payloadValidated"] is False
    assert record["errorCode"] == event["errorCode"]
    assert [e["path"] for e in record["errors"]] == ["$.properties.capacityKg"]
    assert record["entity"] == {}


def test_a_request_rejected_with_4xx_owes_no_callback(app, client, receiver):
    """Nothing is written for a 400, so nothing is delivered either."""
    body = {"uniqueCode": "V-1", "properties": REGISTERED, "id": "x",
            "callback": {"url": receiver.url()}}
    assert client.post(f"{BASE}/vehicles", json=body, headers=headers()).status_code == 400
    assert outbox(app) == []
    assert drain(app.extensions["participants"].dispatcher()) == 0
    assert receiver.requests == []


def test_running_dispatcher_delivers_and_stops(app, client, receiver):
    """Dispatcher.run delivers new events as they commit and returns soon after stop is set."""
    dispatcher = app.extensions["participants"].dispatcher()
    stop = threading.Event()

    def loop():
        try:
            dispatcher.run(stop, idle=0.02)
        finally:
            dispatcher.storage.close()  # this thread's connection

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        event = create(client, callback_url=receiver.url())
        (got,) = receiver.wait_for(1)
        assert got.webhook_id == event["id"]
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


# -- signatures ---------------------------------------------------------------------------------

def test_whsec_signature_verifies_with_standardwebhooks(app, client, receiver):
    """A whsec_ secret signs with its base64-decoded key, as the reference library checks."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    event = create(client, callback_url=receiver.url(), secret=secret)
    drain(app.extensions["participants"].dispatcher())

    (got,) = receiver.received()
    assert got.webhook_id == event["id"]
    verified = Webhook(secret).verify(got.body, got.headers)
    assert verified == json.loads(event_body(app, event["id"]))
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(got.body, got.headers)


def test_plain_secret_signature_follows_the_spec(app, client, receiver):
    """A plain-text secret's UTF-8 bytes are the HMAC key over "id.timestamp.body"."""
    secret = "plain text secret " + secrets.token_hex(8)
    event = create(client, callback_url=receiver.url(), secret=secret)
    drain(app.extensions["participants"].dispatcher())

    (got,) = receiver.received()
    assert got.webhook_id == event["id"]
    assert got.headers["webhook-signature"].startswith("v1,")
    assert verify_signature(secret, got)
    assert not verify_signature(secret + "x", got)


def test_stored_callback_and_secret_serve_requests_without_them(app, client, receiver):
    """A later request with no callback is delivered to the stored URL, signed with the stored
    secret."""
    secret = "stored-" + secrets.token_hex(8)
    pid = create(client, callback_url=receiver.url("/stored"), secret=secret)["pid"]
    event = update(client, pid, {"properties": {"capacityKg": 300}})
    assert event["payloadValidated"] is True
    drain(app.extensions["participants"].dispatcher())

    first, second = receiver.received("/stored")
    assert second.webhook_id == event["id"]
    assert second.json()["data"]["properties"] == {"capacityKg": 300}
    assert verify_signature(secret, second)


def test_a_request_callback_overrides_the_stored_one(app, client, receiver):
    """A callback given on an update is used for that event (and kept for the next ones)."""
    pid = create(client, callback_url=receiver.url("/old"))["pid"]
    changed = update(client, pid, {"properties": {"axles": 3},
                                   "callback": {"url": receiver.url("/new")}})
    following = update(client, pid, {"properties": {"axles": 4}})
    drain(app.extensions["participants"].dispatcher())

    assert len(receiver.received("/old")) == 1
    assert [r.webhook_id for r in receiver.received("/new")] == [changed["id"], following["id"]]


def test_the_secret_is_never_stored_in_events_nor_echoed(app, client, receiver):
    """The callback secret is not in the event log, any response, or a delivered outbox row."""
    secret = "never-echo-" + secrets.token_hex(12)
    extra = {"X-COREOS-CALLBACK-SECRET": secret}
    body = {"uniqueCode": "V-9", "properties": REGISTERED, "callback": {"url": receiver.url()}}
    request_id = "create-with-secret"
    responses = [client.post(f"{BASE}/vehicles", json=body,
                             headers=headers(request_id=request_id, **extra))]
    pid = responses[0].json["data"]["id"]
    responses.append(client.post(f"{BASE}/vehicles", json=body,  # the replay
                                 headers=headers(request_id=request_id, **extra)))
    responses.append(client.put(f"{BASE}/vehicles/{pid}", json={"properties": {"axles": 99}},
                                headers=headers(**extra)))  # a failure event
    responses.append(client.post(f"{BASE}/vehicles", json={**body, "bogus": 1},
                                 headers=headers(**extra)))  # a 400 echoes the request
    for path in (f"/vehicles/{pid}", f"/vehicles/{pid}/state", f"/vehicles/{pid}/events",
                 "/vehicles"):
        responses.append(client.get(BASE + path, headers=headers()))
    assert [r.status_code for r in responses[:4]] == [202, 202, 202, 400]
    for response in responses:
        assert secret not in response.get_data(as_text=True)
        assert secret not in str(response.headers)

    drain(app.extensions["participants"].dispatcher())
    assert len(receiver.received()) == 2
    assert all(verify_signature(secret, r) for r in receiver.received())
    for table in ("events", "idempotency", "outbox", "deliveries"):
        for row in rows(app, f"SELECT * FROM {table}"):
            assert secret not in json.dumps(row), (table, row)


# -- retries ------------------------------------------------------------------------------------

def test_a_500_is_retried_with_the_same_webhook_id(quick_app, receiver):
    """After a 500 the same event is sent again, and each attempt is a deliveries row."""
    receiver.program("/cb", Reply(500), Reply(200))
    client = quick_app.test_client()
    event = create(client, callback_url=receiver.url("/cb"))
    dispatcher = quick_app.extensions["participants"].dispatcher()
    before = int(time.time() * 1000)
    assert dispatcher.run_once() == 1
    assert outbox(quick_app)[0]["status"] == "pending"
    assert dispatcher.run_once() == 1
    after = int(time.time() * 1000)

    first, second = receiver.received("/cb")
    assert first.webhook_id == second.webhook_id == event["id"]
    assert first.body == second.body
    attempts = deliveries(quick_app)
    assert [(a[0], a[2], a[3], a[4]) for a in attempts] == [
        (1, 500, "HTTP 500", "retry"), (2, 200, None, "delivered")]
    assert all(before <= a[1] <= after for a in attempts)
    (row,) = outbox(quick_app)
    assert (row["status"], row["attempts"]) == ("delivered", 2)
    assert row["delivered_at"] is not None


def test_retries_back_off_on_the_default_schedule(app, client, receiver):
    """With the default schedule the first retry waits about 5 s (±10 % jitter)."""
    receiver.program("/cb", Reply(503), Reply(200))
    create(client, callback_url=receiver.url("/cb"))
    participants = app.extensions["participants"]
    assert participants.dispatcher().run_once() == 1
    (attempt,) = deliveries(app)
    due = outbox(app)[0]["next_attempt_at"]
    assert 4500 <= due - attempt[1] <= 5500
    assert participants.dispatcher().run_once() == 0  # not due yet
    assert participants.dispatcher(clock=later(6)).run_once() == 1
    assert [r.headers["webhook-id"] for r in receiver.received()] == \
        [outbox(app)[0]["event_id"]] * 2
    assert outbox(app)[0]["status"] == "delivered"


@pytest.mark.parametrize("retry_after", ["120", "date"])
def test_retry_after_is_honoured(quick_app, receiver, retry_after):
    """A 429's Retry-After (seconds or an HTTP date) pushes the next attempt at least that far."""
    value = formatdate(time.time() + 121, usegmt=True) if retry_after == "date" else retry_after
    receiver.program("/cb", Reply(429, retry_after=value), Reply(200))
    create(quick_app.test_client(), callback_url=receiver.url("/cb"))
    participants = quick_app.extensions["participants"]
    assert participants.dispatcher().run_once() == 1

    (attempt,) = deliveries(quick_app)
    assert attempt[2:] == (429, "HTTP 429", "retry")
    assert outbox(quick_app)[0]["next_attempt_at"] - attempt[1] >= 119_000
    assert participants.dispatcher().run_once() == 0
    assert participants.dispatcher(clock=later(60)).run_once() == 0
    assert participants.dispatcher(clock=later(125)).run_once() == 1
    assert outbox(quick_app)[0]["status"] == "delivered"
    assert len(receiver.received("/cb")) == 2


def test_410_stops_retrying(quick_app, receiver):
    """410 Gone ends the delivery after one attempt: failed, never retried."""
    receiver.program("/cb", Reply(410))
    create(quick_app.test_client(), callback_url=receiver.url("/cb"))
    participants = quick_app.extensions["participants"]
    assert participants.dispatcher().run_once() == 1
    assert participants.dispatcher(clock=later(10 * 86400)).run_once() == 0

    assert len(receiver.received("/cb")) == 1
    (row,) = outbox(quick_app)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    ((number, _at, status, error, outcome),) = deliveries(quick_app)
    assert (number, status, outcome) == (1, 410, "failed")
    assert "410" in error


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(quick_app, receiver):
    """A 302 to another loopback path is recorded as a failed attempt; the target is never hit."""
    receiver.program("/cb", Reply(302, location=receiver.url("/elsewhere")), Reply(200))
    create(quick_app.test_client(), callback_url=receiver.url("/cb"))
    dispatcher = quick_app.extensions["participants"].dispatcher()
    assert dispatcher.run_once() == 1

    assert receiver.received("/elsewhere") == []
    ((number, _at, status, error, outcome),) = deliveries(quick_app)
    assert (number, status, outcome) == (1, 302, "retry")
    assert "302" in error
    (row,) = outbox(quick_app)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert dispatcher.run_once() == 1  # retried at the original URL, not the Location
    assert len(receiver.received("/cb")) == 2
    assert receiver.received("/elsewhere") == []


def test_a_slow_receiver_times_out_and_is_retried(apps, receiver):
    """A receiver slower than PARTICIPANTS_DELIVERY_TIMEOUT_SECONDS is a failed attempt."""
    app = apps(PARTICIPANTS_DELIVERY_SCHEDULE="0,0,0",
                   PARTICIPANTS_DELIVERY_TIMEOUT_SECONDS="1")
    receiver.program("/slow", Reply(200, delay=4), Reply(200))
    event = create(app.test_client(), callback_url=receiver.url("/slow"))
    dispatcher = app.extensions["participants"].dispatcher()
    started = time.monotonic()
    assert dispatcher.run_once() == 1
    assert time.monotonic() - started < 3
    ((_n, _at, status, error, outcome),) = deliveries(app)
    assert (status, outcome) == (None, "retry")
    assert "timed out" in error
    assert dispatcher.run_once() == 1

    first, second = receiver.received("/slow")
    assert first.webhook_id == second.webhook_id == event["id"]
    assert outbox(app)[0]["status"] == "delivered"


def test_after_the_last_attempt_the_row_is_failed_not_dropped(apps, receiver):
    """With a two-retry schedule, the third failed attempt marks the row failed and keeps it."""
    app = apps(PARTICIPANTS_DELIVERY_SCHEDULE="0,0")
    receiver.program("/down", Reply(503))
    secret = "kept-until-given-up-" + secrets.token_hex(4)
    create(app.test_client(), callback_url=receiver.url("/down"), secret=secret)
    participants = app.extensions["participants"]
    assert [participants.dispatcher().run_once() for _ in range(3)] == [1, 1, 1]
    assert participants.dispatcher(clock=later(30 * 86400)).run_once() == 0

    assert len(receiver.received("/down")) == 3
    (row,) = outbox(app)
    assert (row["status"], row["attempts"], row["last_error"]) == ("failed", 3, "HTTP 503")
    assert row["secret"] is None
    assert [(a[0], a[2], a[4]) for a in deliveries(app)] == [
        (1, 503, "retry"), (2, 503, "retry"), (3, 503, "failed")]


def test_a_failed_row_does_not_block_the_participants_later_events(apps, receiver):
    """Once an event's delivery has given up, the participant's next events still go out."""
    app = apps(PARTICIPANTS_DELIVERY_SCHEDULE="")
    receiver.program("/cb", Reply(500), Reply(200))
    client = app.test_client()
    pid = create(client, callback_url=receiver.url("/cb"))["pid"]
    dispatcher = app.extensions["participants"].dispatcher()
    assert dispatcher.run_once() == 1
    assert outbox(app)[0]["status"] == "failed"  # no retries at all in an empty schedule
    event = update(client, pid, {"properties": {"axles": 2}})
    assert dispatcher.run_once() == 1
    assert receiver.received("/cb")[-1].webhook_id == event["id"]


# -- order and leases ---------------------------------------------------------------------------

def test_a_participants_second_callback_waits_for_the_first(quick_app, receiver):
    """Deliveries of one participant go out in event order, even while the first is retried."""
    receiver.program("/order", Reply(500), Reply(200))
    client = quick_app.test_client()
    first = create(client, callback_url=receiver.url("/order"))
    second = update(client, first["pid"], {"properties": {"axles": 3}})
    other = create(client, code="V-2", callback_url=receiver.url("/other"))
    dispatcher = quick_app.extensions["participants"].dispatcher()

    assert dispatcher.run_once() == 2  # the first event (500) and the other participant's
    assert [r.webhook_id for r in receiver.received("/order")] == [first["id"]]
    assert dispatcher.run_once() == 1  # the first again (200); the second still waits
    assert [r.webhook_id for r in receiver.received("/order")] == [first["id"]] * 2
    assert dispatcher.run_once() == 1
    assert dispatcher.run_once() == 0
    assert [r.webhook_id for r in receiver.received("/order")] == \
        [first["id"], first["id"], second["id"]]
    assert [r.webhook_id for r in receiver.received("/other")] == [other["id"]]


def test_a_rounds_deliveries_are_in_flight_together(apps, receiver):
    """Rows of different participants claimed in one round go out at the same time: three
    deliveries meet at the receiver before any of them is answered."""
    app = apps(PARTICIPANTS_DELIVERY_CONCURRENCY="3")
    together = threading.Barrier(3, timeout=5)
    receiver.program("/cb", Reply(200, on_receive=lambda received: together.wait()))
    client = app.test_client()
    expected = {create(client, code=f"V-{i}", callback_url=receiver.url("/cb"))["id"]
                for i in range(3)}
    assert app.extensions["participants"].dispatcher().run_once() == 3
    assert {r.webhook_id for r in receiver.received("/cb")} == expected
    assert not together.broken
    assert [row["status"] for row in outbox(app)] == ["delivered"] * 3
    assert len(deliveries(app)) == 3


def test_two_dispatchers_never_deliver_the_same_row(app, client, receiver):
    """Dispatchers claiming at the same time split the outbox; each event arrives exactly once."""
    receiver.program("/cb", Reply(200, delay=0.005))
    expected = {create(client, code=f"V-{i}", callback_url=receiver.url("/cb"))["id"]
                for i in range(30)}
    store = app.extensions["participants"].storage
    policy = DeliveryPolicy(schedule=(0,), batch=3)
    start = threading.Barrier(3)
    counts = []

    def work():
        dispatcher = Dispatcher(store, allow_private=True, policy=policy)
        try:
            start.wait()
            counts.append(drain(dispatcher, rounds=100))
        finally:
            store.close()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)

    ids = [r.webhook_id for r in receiver.received("/cb")]
    assert sorted(ids) == sorted(expected)  # every event once, none twice
    assert sum(counts) == 30
    assert all(row["status"] == "delivered" and row["attempts"] == 1 for row in outbox(app))
    assert len(deliveries(app)) == 30


def test_a_crashed_dispatchers_lease_expires_and_is_taken_over(app, client, receiver):
    """A claim that is never recorded blocks others until the lease runs out, then is retried."""
    event = create(client, callback_url=receiver.url())
    participants = app.extensions["participants"]
    crashed = participants.dispatcher()
    (claimed,) = crashed.claim()  # ...and the process dies before delivering it
    assert outbox(app)[0]["status"] == "leased"

    assert participants.dispatcher().run_once() == 0
    assert participants.dispatcher(clock=later(30)).run_once() == 0
    lease = participants.policy.lease_seconds
    assert participants.dispatcher(clock=later(lease + 1)).run_once() == 1

    (got,) = receiver.received()
    assert got.webhook_id == event["id"]
    assert outbox(app)[0]["status"] == "delivered"
    # The crashed one coming back cannot overwrite what the new lease holder recorded.
    crashed.record(claimed, Attempt("retry", 500, "HTTP 500", 1))
    (row,) = outbox(app)
    assert (row["status"], row["attempts"]) == ("delivered", 1)
