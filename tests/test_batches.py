"""Batches: accepted at once, applied item by item (JSON and CSV), idempotent, reported.

Items are applied by a BatchWorker, which the dispatcher runs; most tests call the worker
directly with a `limit`, so a batch can be observed half done.
"""

from __future__ import annotations

import io
import json
import threading

import pytest

from engine.jobs.batchworker import BatchWorker
from engine.model.conventions import now_ms
from engine.model.failures import INVALID_ATTRIBUTES, INVALID_STATE_TRANSITION
from engine.service import batchcsv, idempotency
from engine.service.batches import ITEM_SEPARATOR
from tests.conftest import BASE, ROOT, close_app, make_app
from tests.conftest import headers as make_headers
from tests.receivers import Receiver, Reply, rows, verify_signature

BATCH = f"{BASE}/vehicles/batch"
STATUS = f"{BASE}/vehicles/batch/status"
GOOD = {"registrationNumber": "AB-1234"}


@pytest.fixture
def worker(app):
    state = app.extensions["participants"]
    return BatchWorker(state.types, state.service)


def headers(**extra) -> dict:
    return make_headers(**extra)


def submit(client, payload, method="POST", callback=None, **header_fields):
    body = {"payload": payload}
    if callback is not None:
        body["callback"] = callback
    return client.open(BATCH, method=method, json=body, headers=headers(**header_fields))


def upload(client, text: str, method="POST", callback=None, tenant="a", **header_fields):
    data = {"file": (io.BytesIO(text.encode()), "items.csv")}
    if callback is not None:
        data["callback"] = json.dumps(callback)
    return client.open(BATCH, method=method, data=data, content_type="multipart/form-data",
                       headers=make_headers(tenant, **header_fields))


def accepted(response) -> str:
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.json["data"]["id"]


def status(client, batch_id: str, tenant="a") -> dict:
    response = client.get(STATUS, query_string={"batchId": batch_id},
                          headers=make_headers(tenant))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["data"]


def drain(worker) -> None:
    while worker.run_once():
        pass
    worker.run_once()  # completes batches whose last item was applied in the final round


def create(client, code: str, **properties) -> str:
    response = client.post(f"{BASE}/vehicles", headers=headers(), json={
        "uniqueCode": code, "properties": {**GOOD, **properties}})
    assert response.json["data"]["event"]["payloadValidated"], response.json
    return response.json["data"]["id"]


def events(app, participant_id: str) -> list[dict]:
    return [json.loads(body) for (body,) in rows(
        app, "SELECT body FROM events WHERE participant_id = ? ORDER BY seq", participant_id)]


def batch_events(app, batch_id: str) -> list[dict]:
    records = [json.loads(body) for (body,) in rows(app, "SELECT body FROM events ORDER BY seq")]
    return [r for r in records if r["event"].get("batchId") == batch_id]


def participant(client, participant_id: str):
    return client.get(f"{BASE}/vehicles/{participant_id}", headers=headers())


# -- JSON batches ---------------------------------------------------------------------------------

def test_create_batch_applies_good_items_and_reports_bad_ones(client, app, worker):
    """Good items are created; bad ones fail alone, as failure events or refused items."""
    batch_id = accepted(submit(client, [
        {"uniqueCode": "V-1", "properties": GOOD},
        {"uniqueCode": "V-2", "properties": {**GOOD, "capacityKg": "heavy"}},   # failure event
        {"properties": GOOD},                                                   # no uniqueCode
        "not an object",
        {"uniqueCode": "V-1", "properties": GOOD},                              # already exists
        {"uniqueCode": "V-3", "properties": GOOD, "state": "active:active"},    # protected field
        {"uniqueCode": "V-4", "properties": {**GOOD, "axles": 4}, "name": "Four"},
    ]))
    drain(worker)
    summary = status(client, batch_id)
    assert summary["meta"] == {"status": "completed", "success": 2, "failed": 5, "total": 7}
    assert [s["refID"] for s in summary["success"]] == [0, 6]
    errors = {e["refID"]: e for e in summary["errors"]}
    assert sorted(errors) == [1, 2, 3, 4, 5]
    assert errors[1]["errorCode"] == INVALID_ATTRIBUTES.code
    assert "$.properties.capacityKg" in errors[1]["reason"]
    assert errors[2]["reason"] == "invalid item ($.uniqueCode: is required)"
    assert "is not of type 'object'" in errors[3]["reason"]
    assert errors[4]["reason"].startswith("participant already exists")
    assert "'state' is a protected field" in errors[5]["reason"]
    for refused in (2, 3, 5):
        assert set(errors[refused]) == {"refID", "reason"}   # nothing was written for them

    first, fourth = summary["success"]
    assert participant(client, first["id"]).json["data"]["properties"]["registrationNumber"] \
        == "AB-1234"
    assert participant(client, fourth["id"]).json["data"]["name"] == "Four"
    assert participant(client, errors[1]["id"]).status_code == 404


def test_every_applied_item_has_its_own_event_with_the_batch_id(client, app, worker):
    """Each applied item, success or failure, is one event carrying batchId."""
    batch_id = accepted(submit(client, [
        {"uniqueCode": "V-1", "properties": GOOD},
        {"uniqueCode": "V-2", "properties": {"registrationNumber": 5}},
        {"uniqueCode": "V-3", "properties": GOOD},
        {"uniqueCode": ""},
    ]))
    drain(worker)
    summary = status(client, batch_id)
    recorded = batch_events(app, batch_id)
    assert len(recorded) == 3
    by_event = {e["event"]["id"]: e for e in recorded}
    entries = summary["success"] + [e for e in summary["errors"] if "eventId" in e]
    assert sorted(e["eventId"] for e in entries) == sorted(by_event)
    for entry in entries:
        event = by_event[entry["eventId"]]
        assert event["event"]["batchId"] == batch_id
        assert event["entityInstanceId"] == entry["id"]
        assert event["requestId"].endswith(f"{ITEM_SEPARATOR}{entry['refID']}")
    assert [e["payloadValidated"] for e in recorded] == [True, False, True]


def test_update_batch_with_mixed_items(client, app, worker):
    """Updates, combined updates and their failures apply per item; unknown ids fail alone."""
    one, two, three = (create(client, f"V-{i}") for i in (1, 2, 3))
    rider = "riders:00000000-0000-5000-8000-000000000000"
    batch_id = accepted(submit(client, method="PUT", payload=[
        {"id": one, "properties": {"axles": 3}, "name": "One"},
        {"id": two, "properties": {"verified": True, "capacityKg": 10},
         "stateTransition": {"eventCode": "E-022", "reasonCode": "R-0001"}},
        {"id": three, "stateTransition": {"eventCode": "E-023"}},     # not from onboarding
        {"id": "vehicles:missing", "properties": {}},
        {"id": rider, "properties": {}},
        {"id": one, "uniqueCode": "X"},                              # not an update field
        {"properties": {"axles": 4}},                                # no id
        {"id": one, "properties": {"axles": 5}},
    ]))
    drain(worker)
    summary = status(client, batch_id)
    assert summary["meta"] == {"status": "completed", "success": 3, "failed": 5, "total": 8}
    assert [(s["refID"], s["id"]) for s in summary["success"]] == [(0, one), (1, two), (7, one)]
    errors = {e["refID"]: e for e in summary["errors"]}
    assert errors[2]["errorCode"] == INVALID_STATE_TRANSITION.code
    assert errors[2]["reason"].startswith("invalid state transition")
    assert errors[3] == {"refID": 3, "id": "vehicles:missing",
                         "reason": "participant 'vehicles:missing' not found in this tenant"}
    assert errors[4]["reason"] == f"participant '{rider}' not found in this tenant"
    assert "'uniqueCode' is a protected field" in errors[5]["reason"]
    assert errors[6]["reason"] == "invalid item ($.id: is required)"

    assert participant(client, one).json["data"]["properties"]["axles"] == 5
    assert participant(client, one).json["data"]["version"] == 3
    assert participant(client, two).json["data"]["state"] == "active:active"
    assert participant(client, three).json["data"]["version"] == 1
    commands = [e["commandName"] for e in events(app, two)]
    assert commands[-1] == "ParticipantAttributeAndStateUpdationSuccessEvent"


def test_a_failing_item_does_not_roll_back_the_items_around_it(client, app, worker):
    """Items before and after a failure keep their effects; the failure changes nothing."""
    pid = create(client, "V-1")
    batch_id = accepted(submit(client, method="PUT", payload=[
        {"id": pid, "properties": {"axles": 3}},
        {"id": pid, "properties": {"axles": 99}},
        {"id": pid, "properties": {"capacityKg": 7}},
    ]))
    drain(worker)
    assert status(client, batch_id)["meta"]["failed"] == 1
    data = participant(client, pid).json["data"]
    assert data["properties"]["axles"] == 3 and data["properties"]["capacityKg"] == 7
    assert data["version"] == 3
    assert [e["version"] for e in events(app, pid)] == [1, 2, 2, 3]


# -- CSV ------------------------------------------------------------------------------------------

CREATE_CSV = (
    "uniqueCode,name,owner,category,subCategory,registrationNumber,capacityKg,axles,verified,"
    "documents,address\n"
    'V-1,Truck one,operators:1,truck,large,AB-1234,1200.5,3,yes,"[""rc"", ""ins""]",'
    '"{""city"": ""Pune""}"\n'
    "V-2,,,,,CD-5678,,,,,\n"
    "V-3,Bad number,,,,EF-9012,heavy,2,no,,\n"
    "V-4,Too,many,cells,,GH-3456,1,2,true,,,,\n"
    "V-5,Bad JSON,,,,IJ-7890,,,,[not json,\n"
    "\n"
    "V-6,Bad boolean,,,,KL-1234,,,maybe,,\n"
)


def test_csv_create_types_cells_and_fails_bad_rows_alone(client, app, worker):
    """Cells are typed by dataType; bad rows and untypable cells fail as their own items."""
    batch_id = accepted(upload(client, CREATE_CSV))
    drain(worker)
    summary = status(client, batch_id)
    assert summary["meta"] == {"status": "completed", "success": 2, "failed": 4, "total": 6}
    first, second = (participant(client, s["id"]).json["data"] for s in summary["success"])
    assert first["name"] == "Truck one" and first["owner"] == "operators:1"
    assert first["category"] == "truck" and first["subCategory"] == "large"
    assert first["properties"] == {"registrationNumber": "AB-1234", "capacityKg": 1200.5,
                                   "axles": 3, "verified": True, "documents": ["rc", "ins"],
                                   "address": {"city": "Pune"}, "fuelType": "Diesel"}
    assert second["name"] is None  # an empty cell leaves the field out
    assert second["properties"] == {"registrationNumber": "CD-5678", "fuelType": "Diesel",
                                    "verified": False}
    errors = {e["refID"]: e for e in summary["errors"]}
    assert sorted(errors) == [2, 3, 4, 5]   # refID counts data rows; blank lines are not rows
    assert errors[2]["errorCode"] == INVALID_ATTRIBUTES.code
    assert "$.properties.capacityKg" in errors[2]["reason"]
    assert errors[3] == {"refID": 3, "reason": "line 5: 13 cells, but the header names 11 columns"}
    assert "$.properties.documents" in errors[4]["reason"]
    assert "$.properties.verified" in errors[5]["reason"]
    (failed_event,) = [e for e in batch_events(app, batch_id)
                       if e["event"]["id"] == errors[2]["eventId"]]
    assert failed_event["errors"][0]["path"] == "$.properties.capacityKg"


def test_csv_update_with_state_transition_columns(client, app, worker):
    """An update file sets attributes and sends eventCode/reasonCode as the stateTransition."""
    one, two = create(client, "V-1"), create(client, "V-2")
    text = ("id,name,verified,capacityKg,eventCode,reasonCode\n"
            f"{one},Renamed,true,10,E-022,R-0001\n"
            f"{two},,,abc,,\n"
            "vehicles:missing,x,,,,\n"
            f"{two},,,,,R-0001\n")
    batch_id = accepted(upload(client, text, method="PUT"))
    drain(worker)
    summary = status(client, batch_id)
    assert [s["refID"] for s in summary["success"]] == [0]
    data = participant(client, one).json["data"]
    assert (data["name"], data["state"]) == ("Renamed", "active:active")
    errors = {e["refID"]: e for e in summary["errors"]}
    assert errors[1]["errorCode"] == INVALID_ATTRIBUTES.code and errors[1]["id"] == two
    assert errors[2]["reason"] == "participant 'vehicles:missing' not found in this tenant"
    assert errors[3]["reason"] == \
        "invalid item ($.stateTransition.eventCode: is required)"
    assert participant(client, two).json["data"]["version"] == 1


@pytest.mark.parametrize(("text", "problem"), [
    ("uniqueCode,registrationNumber,colour\nV-1,AB-1234,red\n", "unknown column 'colour'"),
    ("name,registrationNumber\nx,AB-1234\n", "a column 'uniqueCode' is required"),
    ("uniqueCode,name,name\nV-1,a,b\n", "column 'name' appears twice"),
    ("uniqueCode,,name\nV-1,,b\n", "column name is empty"),
    ("uniqueCode,registrationNumber\n", "has a header but no rows"),
    ("", "is required"),
    ("uniqueCode,id\nV-1,x\n", "unknown column 'id'"),
    ("uniqueCode,eventCode\nV-1,E-022\n", "unknown column 'eventCode'"),
])
def test_a_bad_csv_header_refuses_the_whole_file(client, app, text, problem):
    """The header is the request's shape: a problem with it is a 400 and nothing is stored."""
    response = upload(client, text)
    assert response.status_code == 400, response.get_data(as_text=True)
    messages = [e["message"] for e in response.json["error"]["additionalInfo"]["errors"]]
    assert any(problem in m for m in messages), messages
    assert rows(app, "SELECT COUNT(*) FROM batches") == [(0,)]


def test_csv_upload_refusals(client):
    """Not UTF-8, unknown form parts, a missing file and a bad callback part are 400s."""
    data = {"file": (io.BytesIO(b"uniqueCode\n\xff\xfe\n"), "x.csv")}
    response = client.post(BATCH, data=data, headers=headers())
    assert response.status_code == 400
    assert response.json["error"]["description"].startswith("the CSV file is not UTF-8")
    data = {"file": (io.BytesIO(b"uniqueCode\nV-1\n"), "x.csv"), "extra": "1"}
    assert client.post(BATCH, data=data, headers=headers()).status_code == 400
    assert client.post(BATCH, data={"callback": "{}"}, content_type="multipart/form-data",
                       headers=headers()).status_code == 400
    for callback in ("{not json", '{"meta": {}}', '{"url": "ftp://example.com/x"}'):
        data = {"file": (io.BytesIO(b"uniqueCode\nV-1\n"), "x.csv"), "callback": callback}
        response = client.post(BATCH, data=data, headers=headers())
        assert response.status_code == 400, (callback, response.get_data(as_text=True))


def test_csv_byte_order_mark_and_crlf_are_accepted(client, worker):
    """A spreadsheet's UTF-8 BOM and CRLF line ends are read like plain UTF-8."""
    text = "\ufeffuniqueCode,registrationNumber,axles\r\nV-1,AB-1234,3\r\n"
    batch_id = accepted(upload(client, text))
    drain(worker)
    summary = status(client, batch_id)
    assert summary["meta"]["success"] == 1, summary
    data = participant(client, summary["success"][0]["id"]).json["data"]
    assert data["properties"]["axles"] == 3


@pytest.mark.parametrize(("data_type", "text", "value"), [
    ("string", " spaced ", " spaced "),
    ("number", "12", 12),
    ("number", "-1.5e3", -1500.0),
    ("number", "nan", "nan"),
    ("number", "1e400", "1e400"),
    ("number", "ten", "ten"),
    ("integer", "+7", 7),
    ("integer", "7.0", "7.0"),
    ("boolean", "TRUE", True),
    ("boolean", "No", False),
    ("boolean", "0", False),
    ("boolean", "y", "y"),
    ("object", '{"a": 1}', {"a": 1}),
    ("array", "[1, 2]", [1, 2]),
    ("array", "[NaN]", "[NaN]"),
    ("array", "[1,", "[1,"),
])
def test_csv_cells_are_typed_by_data_type(data_type, text, value):
    """A cell becomes its attribute's type, or stays text for validation to report."""
    assert batchcsv.typed(data_type, text) == value


def test_example_files_apply_to_the_shipped_vehicles(database):
    """examples/vehicles-create.csv then examples/vehicles-update.csv apply without failures."""
    app = make_app(database, PARTICIPANTS_MACHINES=str(ROOT / "machines"),
                   PARTICIPANTS_ACCESS_TOKENS=json.dumps({"demo-token": "demo"}), TESTING=False)
    try:
        client = app.test_client()
        state = app.extensions["participants"]
        worker = BatchWorker(state.types, state.service)
        demo = {"X-COREOS-TID": "demo", "X-COREOS-ACCESS": "demo-token"}
        for method, name in (("POST", "vehicles-create.csv"), ("PUT", "vehicles-update.csv")):
            data = {"file": (io.BytesIO((ROOT / "examples" / name).read_bytes()), name)}
            response = client.open(BATCH, method=method, data=data,
                                   headers={**demo, "X-COREOS-REQUEST-ID": name})
            batch_id = accepted(response)
            drain(worker)
            response = client.get(STATUS, query_string={"batchId": batch_id},
                                  headers={**demo, "X-COREOS-REQUEST-ID": "status"})
            summary = response.json["data"]
            assert summary["meta"]["failed"] == 0, summary["errors"]
            assert summary["meta"]["success"] == summary["meta"]["total"] == 4
    finally:
        close_app(app)


# -- idempotency ----------------------------------------------------------------------------------

def test_a_replayed_batch_is_answered_the_same_and_applied_once(client, app, worker):
    """The same request id and body replays the answer byte for byte and creates nothing twice."""
    payload = [{"uniqueCode": f"V-{i}", "properties": GOOD} for i in range(5)]
    first = submit(client, payload, **{"X-COREOS-REQUEST-ID": "batch-1"})
    batch_id = accepted(first)
    worker.run_once(limit=2)
    again = submit(client, payload, **{"X-COREOS-REQUEST-ID": "batch-1"})
    assert again.status_code == 202 and again.data == first.data
    drain(worker)
    after = submit(client, payload, **{"X-COREOS-REQUEST-ID": "batch-1"})
    assert after.data == first.data
    drain(worker)
    assert rows(app, "SELECT COUNT(*) FROM batches") == [(1,)]
    assert len(batch_events(app, batch_id)) == 5
    assert rows(app, "SELECT COUNT(*) FROM participants") == [(5,)]
    assert status(client, batch_id)["meta"] == {"status": "completed", "success": 5,
                                                "failed": 0, "total": 5}

    changed = submit(client, payload[:4], **{"X-COREOS-REQUEST-ID": "batch-1"})
    assert changed.status_code == 422
    as_update = submit(client, payload, method="PUT", **{"X-COREOS-REQUEST-ID": "batch-1"})
    assert as_update.status_code == 422


def test_a_replayed_csv_upload_is_answered_the_same(client, app):
    """A CSV upload is identified by its bytes and callback: the same file replays."""
    text = "uniqueCode,registrationNumber\nV-1,AB-1234\n"
    first = upload(client, text, **{"X-COREOS-REQUEST-ID": "csv-1"})
    assert accepted(first)
    assert upload(client, text, **{"X-COREOS-REQUEST-ID": "csv-1"}).data == first.data
    other = upload(client, text + "V-2,CD-5678\n", **{"X-COREOS-REQUEST-ID": "csv-1"})
    assert other.status_code == 422
    assert rows(app, "SELECT COUNT(*) FROM batches") == [(1,)]


def test_two_workers_on_one_batch_apply_each_item_once(client, app):
    """Workers racing on the same items replay each other's writes instead of repeating them."""
    state = app.extensions["participants"]
    batch_id = accepted(submit(client, [{"uniqueCode": f"V-{i}", "properties": GOOD}
                                        for i in range(40)]))
    workers = [BatchWorker(state.types, state.service, per_batch=7) for _ in range(2)]
    start = threading.Barrier(2)

    def run(worker):
        start.wait()
        drain(worker)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert status(client, batch_id)["meta"] == {"status": "completed", "success": 40,
                                                "failed": 0, "total": 40}
    assert len(batch_events(app, batch_id)) == 40


def test_a_worker_that_stops_midway_leaves_the_rest_to_the_next(client, app, worker):
    """Items are applied one transaction each: a new worker picks up exactly what is left."""
    state = app.extensions["participants"]
    batch_id = accepted(submit(client, [{"uniqueCode": f"V-{i}", "properties": GOOD}
                                        for i in range(6)]))
    stop = threading.Event()
    stop.set()
    assert worker.run_once(stop=stop) == 0
    assert worker.run_once(limit=4) == 4
    drain(BatchWorker(state.types, state.service))
    assert len(batch_events(app, batch_id)) == 6
    assert status(client, batch_id)["meta"]["success"] == 6


def test_a_round_ends_after_round_seconds_but_applies_at_least_one_item(client, app):
    """A round is bounded in time, so the dispatcher's deliveries never wait long for it."""
    state = app.extensions["participants"]
    batch_id = accepted(submit(client, [{"uniqueCode": f"V-{i}", "properties": GOOD}
                                        for i in range(3)]))
    worker = BatchWorker(state.types, state.service, round_seconds=0)
    assert [worker.run_once() for _ in range(4)] == [1, 1, 1, 0]
    assert status(client, batch_id)["meta"]["status"] == "completed"


def test_item_request_ids_cannot_be_sent_by_clients(client):
    """An item's request id contains a character clients cannot send in X-COREOS-REQUEST-ID."""
    response = client.post(f"{BASE}/vehicles", json={"uniqueCode": "V-1", "properties": GOOD},
                           headers=headers(**{"X-COREOS-REQUEST-ID":
                                              f"b{ITEM_SEPARATOR}0".encode().decode("latin-1")}))
    assert response.status_code == 400


def test_items_with_a_waited_hook_keep_their_batch(client, app, worker):
    """A waited onRequest hook of an item may replace fields; the item stays in its batch."""
    pid = create(client, "V-1")
    with Receiver() as receiver:
        receiver.program("/hook", Reply(200, body={"data": {"properties": {"axles": 4}}}))
        hook = {"url": receiver.url("/hook"), "onResponse": {
            "wait": True, "acceptableStatusCodes": [200], "raiseErrorOnStatusMismatch": True}}
        batch_id = accepted(submit(client, method="PUT", payload=[
            {"id": pid, "properties": {"axles": 3}, "onRequest": hook}]))
        drain(worker)
        (call,) = receiver.received("/hook")
    assert call.json() == {"properties": {"axles": 3}, "onRequest": hook}
    assert status(client, batch_id)["meta"]["success"] == 1
    assert participant(client, pid).json["data"]["properties"]["axles"] == 4
    (event,) = batch_events(app, batch_id)
    assert event["data"]["onRequest"]["replaced"] == {"properties": {"axles": 4}}


def test_an_item_in_flight_elsewhere_is_left_for_a_later_round(client, app, worker):
    """An item whose request id another worker has reserved stays pending and is not counted."""
    batch_id = accepted(submit(client, [{"uniqueCode": "V-1", "properties": GOOD}],
                               **{"X-COREOS-REQUEST-ID": "held"}))
    request_id = f"held{ITEM_SEPARATOR}0"
    storage = app.extensions["participants"].storage
    with storage.write() as uow:
        uow.idempotency.reserve("tenant-a", request_id,
                                idempotency.fingerprint("BATCH", batch_id, 0), now_ms(),
                                now_ms() + 60_000)
    assert worker.run_once() == 0
    assert status(client, batch_id)["meta"] == {"status": "processing", "success": 0,
                                                "failed": 0, "total": 1}
    with storage.write() as uow:
        uow.idempotency.release("tenant-a", request_id)
    drain(worker)
    assert status(client, batch_id)["meta"]["status"] == "completed"


# -- status ---------------------------------------------------------------------------------------

def test_status_while_in_progress_and_after(client, worker):
    """Status counts what is done so far, then the whole batch once completed."""
    batch_id = accepted(submit(client, [
        {"uniqueCode": "V-1", "properties": GOOD},
        {"uniqueCode": "V-2", "properties": {}},
        {"uniqueCode": "V-3", "properties": GOOD},
        {"properties": GOOD},
    ]))
    before = status(client, batch_id)
    assert before["meta"] == {"status": "pending", "success": 0, "failed": 1, "total": 4}
    assert before["success"] == [] and [e["refID"] for e in before["errors"]] == [3]
    assert worker.run_once(limit=2) == 2
    during = status(client, batch_id)
    assert during["meta"] == {"status": "processing", "success": 1, "failed": 2, "total": 4}
    assert [s["refID"] for s in during["success"]] == [0]
    assert [e["refID"] for e in during["errors"]] == [1, 3]
    drain(worker)
    after = status(client, batch_id)
    assert after["batchId"] == batch_id and after["participantType"] == "vehicles"
    assert after["meta"] == {"status": "completed", "success": 2, "failed": 2, "total": 4}
    assert [s["refID"] for s in after["success"]] == [0, 2]


def test_a_batch_of_only_refused_items_completes(client, worker):
    """A batch whose every item was refused on arrival completes on the worker's next round."""
    batch_id = accepted(submit(client, [{"properties": {}}, 7]))
    assert worker.run_once() == 0
    assert status(client, batch_id)["meta"] == {"status": "completed", "success": 0,
                                                "failed": 2, "total": 2}


def test_status_is_confined_to_the_tenant_and_type(client):
    """Another tenant's batch, another type's, or an unknown id is 404; batchId is required."""
    batch_id = accepted(submit(client, [{"uniqueCode": "V-1", "properties": GOOD}]))
    assert status(client, batch_id)["meta"]["total"] == 1
    other_tenant = client.get(STATUS, query_string={"batchId": batch_id},
                              headers=make_headers("b"))
    assert other_tenant.status_code == 404
    assert other_tenant.json["error"]["code"] == "101170024043"
    other_type = client.get(f"{BASE}/riders/batch/status", query_string={"batchId": batch_id},
                            headers=headers())
    assert other_type.status_code == 404
    unknown = client.get(STATUS, query_string={"batchId": "batch:nope"}, headers=headers())
    assert unknown.status_code == 404
    assert client.get(STATUS, headers=headers()).status_code == 400
    assert client.get(STATUS, query_string={"batchId": batch_id, "x": "1"},
                      headers=headers()).status_code == 400
    assert client.get(f"{BASE}/trains/batch/status", query_string={"batchId": batch_id},
                      headers=headers()).status_code == 404


# -- callback -------------------------------------------------------------------------------------

def test_the_batch_callback_is_delivered_once_with_the_summary(client, app):
    """When the last item is applied, the summary is POSTed once, signed, with the batch id."""
    dispatcher = app.extensions["participants"].dispatcher()
    with Receiver() as receiver:
        callback = {"url": receiver.url("/batch"), "meta": {"job": 42}}
        batch_id = accepted(submit(client, [
            {"uniqueCode": "V-1", "properties": GOOD},
            {"uniqueCode": "V-2", "properties": {"axles": 1}},
            {"uniqueCode": "V-3", "properties": GOOD,
             "callback": {"url": receiver.url("/item")}},
        ], callback=callback, **{"X-COREOS-CALLBACK-SECRET": "s3cret"}))
        for _ in range(10):
            dispatcher.run_once()
        (received,) = receiver.wait_for(1, "/batch")
        item_calls = receiver.wait_for(1, "/item")
        for _ in range(5):
            dispatcher.run_once()
        assert len(receiver.received("/batch")) == 1
        assert len(receiver.received("/item")) == 1
    assert received.webhook_id == batch_id
    assert verify_signature("s3cret", received)
    body = received.json()
    assert body == {**status(client, batch_id), "callbackMeta": {"job": 42}}
    assert body["meta"] == {"status": "completed", "success": 2, "failed": 1, "total": 3}
    assert item_calls[0].json()["event"]["batchId"] == batch_id
    assert verify_signature("s3cret", item_calls[0])
    assert rows(app, "SELECT callback_secret, token FROM batches") == [(None, None)]


def test_no_callback_before_the_batch_completes(client, app, worker):
    """Nothing is queued for the batch's callback while items are pending."""
    accepted(submit(client, [{"uniqueCode": f"V-{i}", "properties": GOOD} for i in range(3)],
                    callback={"url": "http://127.0.0.1:9/batch"}))
    worker.run_once(limit=2)
    assert rows(app, "SELECT COUNT(*) FROM outbox WHERE kind = 'batchCallback'") == [(0,)]
    drain(worker)
    assert rows(app, "SELECT COUNT(*) FROM outbox WHERE kind = 'batchCallback'") == [(1,)]


# -- limits and refusals --------------------------------------------------------------------------

@pytest.fixture
def small_app(apps):
    return apps(PARTICIPANTS_MAX_BATCH_ITEMS="3", PARTICIPANTS_MAX_BATCH_BODY_BYTES="4096",
                TESTING=False)


def test_more_items_than_the_limit_is_413(small_app):
    """A batch over PARTICIPANTS_MAX_BATCH_ITEMS is refused whole, JSON or CSV."""
    client = small_app.test_client()
    payload = [{"uniqueCode": f"V-{i}", "properties": GOOD} for i in range(4)]
    response = submit(client, payload)
    assert response.status_code == 413
    assert response.json["error"]["description"] == \
        "the batch has 4 items; at most 3 are accepted in one batch"
    assert accepted(submit(client, payload[:3]))
    text = "uniqueCode,registrationNumber\n" + "".join(f"V-{i},AB-1234\n" for i in range(4))
    assert upload(client, text).status_code == 413
    assert rows(small_app, "SELECT COUNT(*) FROM batches") == [(1,)]


def test_batch_bodies_have_their_own_size_limit(small_app, app):
    """PARTICIPANTS_MAX_BATCH_BODY_BYTES bounds a batch body, not PARTICIPANTS_MAX_BODY_BYTES."""
    client = small_app.test_client()
    big = [{"uniqueCode": "V-1", "properties": {**GOOD, "pad": "x" * 5000}}]
    assert submit(client, big).status_code == 413
    assert upload(client, "uniqueCode\n" + "V-1\n" * 1200).status_code == 413
    over_a_mebibyte = [{"uniqueCode": f"V-{i}", "properties": {**GOOD, "pad": "x" * 2000}}
                       for i in range(600)]
    assert accepted(submit(app.test_client(), over_a_mebibyte))


@pytest.mark.parametrize("body", [
    {},
    {"payload": []},
    {"payload": {"uniqueCode": "V-1"}},
    {"payload": [{"uniqueCode": "V-1", "properties": {}}], "extra": 1},
    {"payload": [{"uniqueCode": "V-1", "properties": {}}], "callback": {"meta": {}}},
    {"payload": [{"uniqueCode": "V-1", "properties": {}}],
     "callback": {"url": "ftp://example.com/x"}},
])
def test_a_malformed_batch_is_400(client, app, body):
    """The batch's own shape is checked before its items; nothing is stored on a 400."""
    response = client.post(BATCH, json=body, headers=headers())
    assert response.status_code == 400, response.get_data(as_text=True)
    assert rows(app, "SELECT COUNT(*) FROM batches") == [(0,)]


def test_error_echo_leaves_the_items_out(client):
    """A refused batch echoes its item count, not its items."""
    response = client.post(BATCH, json={"payload": [{}] * 3, "extra": 1}, headers=headers())
    assert response.status_code == 400
    assert response.json["request"]["body"] == {"extra": 1, "items": 3}


def test_other_refusals(client):
    """Unknown type 404, wrong media type 415, bad credentials 401."""
    payload = {"payload": [{"uniqueCode": "V-1", "properties": GOOD}]}
    assert client.post(f"{BASE}/trains/batch", json=payload, headers=headers()).status_code \
        == 404
    assert client.post(BATCH, data="x", content_type="text/csv",
                       headers=headers()).status_code == 415
    assert client.post(BATCH, json=payload, headers=headers(**{
        "X-COREOS-ACCESS": "token-b"})).status_code == 401


def test_batch_routes_do_not_shadow_participant_routes(client):
    """GET …/vehicles/batch is still a participant lookup (and finds none)."""
    response = client.get(f"{BASE}/vehicles/batch", headers=headers())
    assert response.status_code == 404
    assert response.json["error"]["code"] == "101170024042"


def test_the_dispatcher_applies_batches(client, app):
    """The dispatcher's rounds apply batch items: `make run` and `flask dispatch` apply them."""
    batch_id = accepted(submit(client, [{"uniqueCode": f"V-{i}", "properties": GOOD}
                                        for i in range(3)]))
    dispatcher = app.extensions["participants"].dispatcher()
    assert dispatcher.run_once() == 3
    dispatcher.run_once()
    assert status(client, batch_id)["meta"]["status"] == "completed"


# -- sharing the write lock -----------------------------------------------------------------------

def test_sqlite_foreground_writes_announce_themselves_and_background_ones_do_not(sqlite_app):
    """While a write waits or runs, writers_waiting() says so, unless it is a background one
    (SQLite: a shared flock on the writers' file)."""
    store = sqlite_app.extensions["participants"].storage
    assert not store.writers_waiting()
    inside, leave = threading.Event(), threading.Event()

    def write(background: bool) -> None:
        try:
            if background:
                with store.background(), store.write():
                    inside.set()
                    leave.wait(5)
            else:
                with store.write():
                    inside.set()
                    leave.wait(5)
        finally:
            store.close()

    for background, expected in ((False, True), (True, False)):
        inside.clear()
        leave.clear()
        thread = threading.Thread(target=write, args=(background,))
        thread.start()
        assert inside.wait(5)
        assert store.writers_waiting() is expected
        leave.set()
        thread.join()
    assert not store.writers_waiting()


def test_sqlite_the_worker_holds_off_while_writes_wait_but_never_stops(sqlite_app):
    """Before each item the worker waits for announced writes, at most max_hold_off (SQLite:
    what a waiting write holds is a shared flock on the writers' file)."""
    import fcntl
    import os
    import time

    client = sqlite_app.test_client()
    state = sqlite_app.extensions["participants"]
    batch_id = accepted(submit(client, [{"uniqueCode": f"V-{i}", "properties": GOOD}
                                        for i in range(3)]))
    worker = BatchWorker(state.types, state.service, max_hold_off=0.05)
    waiting = os.open(state.storage.path + "-writers", os.O_RDWR)
    try:
        fcntl.flock(waiting, fcntl.LOCK_SH)  # what a write waiting for the lock holds
        started = time.monotonic()
        assert worker.run_once() == 3
        assert time.monotonic() - started >= 3 * 0.05
        fcntl.flock(waiting, fcntl.LOCK_UN)
        drain(worker)
    finally:
        os.close(waiting)
    assert status(client, batch_id)["meta"]["status"] == "completed"
