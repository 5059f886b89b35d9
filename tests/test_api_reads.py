"""The read API, list queries, and the tenant and access-token boundaries around every route."""

from __future__ import annotations

import json

import pytest

from engine.service.queries import ListQuery
from engine.storage.sqlite.queries import run as run_query
from engine.storage.sqlite.repositories import PARTICIPANT_COLUMNS
from tests.conftest import BASE, count, headers, rows

ALIAS = BASE.rsplit("/", 1)[0] + "/participant"


# -- helpers ------------------------------------------------------------------------------------

def create(client, code, tenant="a", properties=None, **core) -> str:
    """Create a vehicle that must succeed; returns its id."""
    body = {"uniqueCode": code, "properties": properties or {"registrationNumber": "AB-1234"},
            **core}
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers(tenant))
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.json["data"]["event"]["payloadValidated"] is True, response.json
    return response.json["data"]["id"]


def update(client, pid, body, tenant="a", **extra):
    response = client.put(f"{BASE}/vehicles/{pid}", json=body, headers=headers(tenant, **extra))
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.json["data"]["event"]["payloadValidated"] is True, response.json
    return response


def state_event(client, pid, event_code):
    response = client.put(f"{BASE}/vehicles/{pid}/state/event", headers=headers(), json={
        "eventCode": event_code, "timestamp": 1_700_000_000, "source": {"appId": "t"}})
    assert response.json["data"]["event"]["payloadValidated"] is True, response.json


def get(client, url, tenant="a", **params):
    return client.get(url, query_string=params, headers=headers(tenant))


def codes(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [p["uniqueCode"] for p in response.json["data"]["participants"]]


# -- one participant ----------------------------------------------------------------------------

def test_get_participant_returns_every_field_and_the_version_as_etag(client):
    """GET …/{id} answers the participant object with ETag = version."""
    user = {"id": "u-1", "name": "Asha", "appId": "console"}
    response = client.post(f"{BASE}/vehicles", headers=headers(**{
        "X-COREOS-USERINFO": json.dumps(user)}), json={
        "uniqueCode": "V-1", "name": "Truck", "owner": "operators:1", "category": "truck",
        "subCategory": "large", "templateId": "tpl", "properties": {"registrationNumber": "AB-1"}})
    pid = response.json["data"]["id"]
    read = client.get(f"{BASE}/vehicles/{pid}", headers=headers())
    assert read.status_code == 200
    assert read.headers["ETag"] == '"1"'
    assert read.mimetype == "application/json"
    data = read.json["data"]
    created = data.pop("createdAt")
    assert data.pop("updatedAt") == created
    assert data == {
        "id": pid, "uniqueCode": "V-1", "name": "Truck", "owner": "operators:1",
        "participantType": "vehicles",
        "properties": {"registrationNumber": "AB-1", "fuelType": "Diesel", "verified": False},
        "state": "onboarding:pending", "category": "truck", "subCategory": "large",
        "templateId": "tpl", "version": 1, "createdBy": user, "updatedBy": user}
    assert read.json["request"] == {"uri": f"{BASE}/vehicles/{pid}", "method": "GET",
                                    "queryString": "", "body": None}
    update(client, pid, {"properties": {"axles": 3}})
    again = client.get(f"{BASE}/vehicles/{pid}", headers=headers())
    assert again.headers["ETag"] == '"2"'
    assert again.json["data"]["updatedAt"] >= created
    assert again.json["data"]["createdAt"] == created


@pytest.mark.parametrize("pid", ["vehicles:00000000-0000-5000-8000-000000000000", "nope",
                                 "riders:1", "vehicles:"])
@pytest.mark.parametrize("suffix", ["", "/state", "/events"])
def test_missing_participant_is_404(client, pid, suffix):
    """An id that names no participant of this type answers 404 with the not-found code."""
    response = client.get(f"{BASE}/vehicles/{pid}{suffix}", headers=headers())
    assert response.status_code == 404
    assert response.json["error"]["code"] == "101170024042"


@pytest.mark.parametrize("url", ["/trains", "/trains/trains:1", "/trains/trains:1/state",
                                 "/trains/trains:1/events", "/participant-types/trains"])
def test_unknown_participant_type_is_404(client, url):
    """A plural name no machine file declares answers 404 with the unknown-type code."""
    response = client.get(BASE + url, headers=headers())
    assert response.status_code == 404
    assert response.json["error"]["code"] == "101170024041"


def test_get_state_reports_main_and_sub_state_and_terminality(client):
    """GET …/state answers state, mainState, subState, isTerminal, version and updatedAt."""
    pid = create(client, "V-1")
    expected = [("onboarding:pending", False, 1)]
    update(client, pid, {"properties": {"verified": True, "capacityKg": 10},
                         "stateTransition": {"eventCode": "E-022"}})
    expected.append(("active:active", False, 2))
    state_event(client, pid, "E-023")
    expected.append(("inactive:inactive", False, 3))
    state_event(client, pid, "E-024")
    expected.append(("inactive:dead", True, 4))
    response = client.get(f"{BASE}/vehicles/{pid}/state", headers=headers())
    assert response.status_code == 200
    data = response.json["data"]
    state, terminal, version = expected[-1]
    assert data["updatedAt"] > 10**12
    assert {k: v for k, v in data.items() if k != "updatedAt"} == {
        "id": pid, "state": state, "mainState": "inactive", "subState": "dead",
        "isTerminal": terminal, "version": version}
    assert response.headers["ETag"] == '"4"'


def test_get_state_of_a_new_participant(client):
    """A new participant is in the initial state and not terminal."""
    pid = create(client, "V-1")
    data = client.get(f"{BASE}/vehicles/{pid}/state", headers=headers()).json["data"]
    assert (data["state"], data["mainState"], data["subState"]) == (
        "onboarding:pending", "onboarding", "pending")
    assert (data["isTerminal"], data["version"]) == (False, 1)


# -- event history ------------------------------------------------------------------------------

@pytest.fixture
def history(client):
    """A vehicle with five events: create, three updates, and one failure."""
    pid = create(client, "V-1")
    for axles in (3, 4, 5):
        update(client, pid, {"properties": {"axles": axles}})
    failed = client.put(f"{BASE}/vehicles/{pid}", json={"properties": {"axles": 1}},
                        headers=headers())
    assert failed.json["data"]["event"]["payloadValidated"] is False
    return pid


def test_events_are_listed_oldest_first(client, history):
    """GET …/events lists every event of the participant, oldest first, with the total."""
    response = client.get(f"{BASE}/vehicles/{history}/events", headers=headers())
    assert response.status_code == 200
    data = response.json["data"]
    assert data["meta"] == {"totalElements": 5}
    assert [e["sequence"] for e in data["events"]] == [1, 2, 3, 4, 5]
    assert [e["version"] for e in data["events"]] == [1, 2, 3, 4, 4]
    assert [e["commandName"] for e in data["events"]] == [
        "ParticipantCreationSuccessEvent"] + ["ParticipantUpdationSuccessEvent"] * 3 + [
        "ParticipantUpdationFailedEvent"]
    assert {e["entityInstanceId"] for e in data["events"]} == {history}


@pytest.mark.parametrize(("limit", "offset", "sequences"), [
    (2, 0, [1, 2]), (2, 1, [2, 3]), (2, 4, [5]), (100, 0, [1, 2, 3, 4, 5]), (1, 5, []),
    (50, 1000, []),
])
def test_events_page_with_limit_and_offset(client, history, limit, offset, sequences):
    """limit and offset page through the history; totalElements is the full count."""
    response = get(client, f"{BASE}/vehicles/{history}/events", limit=limit, offset=offset)
    assert response.status_code == 200
    assert [e["sequence"] for e in response.json["data"]["events"]] == sequences
    assert response.json["data"]["meta"]["totalElements"] == 5


@pytest.mark.parametrize("params", [
    {"limit": 0}, {"limit": 101}, {"limit": "x"}, {"limit": "-1"}, {"limit": "1.5"},
    {"limit": ""}, {"offset": "-1"}, {"offset": "x"}, {"limit": "\u00b2"}, {"offset": "\u00b9"},
], ids=["limit 0", "limit 101", "limit text", "limit negative", "limit fraction", "limit empty",
        "offset negative", "offset text", "limit superscript", "offset superscript"])
def test_events_bad_paging_is_400(client, history, params):
    """A limit outside 1..100 or an offset that is not a whole number answers 400."""
    response = get(client, f"{BASE}/vehicles/{history}/events", **params)
    assert response.status_code == 400, response.get_data(as_text=True)
    [name] = params
    assert response.json["error"]["additionalInfo"]["errors"][0]["path"] == f"$.{name}"


# -- participant types --------------------------------------------------------------------------

def test_participant_types_lists_the_loaded_definitions(client):
    """GET /participant-types answers every loaded type, attributes as an OS1 list."""
    response = client.get(f"{BASE}/participant-types", headers=headers())
    assert response.status_code == 200
    [vehicles] = response.json["data"]["participantTypes"]
    assert (vehicles["singular"], vehicles["plural"], vehicles["version"]) == (
        "vehicle", "vehicles", "1.0.0")


def test_participant_type_has_attributes_states_events_and_diagram(client):
    """GET /participant-types/vehicles answers the definition with its state diagram."""
    response = client.get(f"{BASE}/participant-types/vehicles", headers=headers())
    assert response.status_code == 200
    data = response.json["data"]
    assert isinstance(data["attributes"], list)
    by_name = {a["name"]: a for a in data["attributes"]}
    assert list(by_name) == ["registrationNumber", "capacityKg", "axles", "fuelType", "verified",
                             "inspectionPassed", "documents", "address"]
    assert by_name["registrationNumber"]["dataType"] == "string"
    assert by_name["registrationNumber"]["indexed"] is True
    assert by_name["registrationNumber"]["validation"] == {"required": True,
                                                           "regex": "^[A-Z0-9-]{4,12}$"}
    assert by_name["fuelType"]["defaultValue"] == "Diesel"
    assert by_name["capacityKg"]["validation"] == {"range": {"min": 0, "max": 40000}}
    assert by_name["documents"]["schema"] == {"items": {"type": "string"}}
    assert {a["dataType"] for a in data["attributes"]} == {
        "string", "number", "integer", "boolean", "array", "object"}
    assert data["initialState"] == "onboarding:pending"
    assert [s["name"] for s in data["states"]] == ["onboarding", "active", "inactive"]
    assert set(data["events"]) == {"E-022", "E-023", "E-024", "E-101"}
    assert data["events"]["E-101"]["reasonCodes"] == ["R-7001", "R-5334"]
    assert set(data["events"]["E-101"]["dataValidations"]) == {"inspector", "score"}
    assert data["reasons"]["R-0001"] == "Default"
    assert data["terminalTTL"] == "90d"
    assert "stateDiagram" in data["diagram"]
    for state in ("pending", "active", "dead"):
        assert state in data["diagram"]


# -- list queries -------------------------------------------------------------------------------

@pytest.fixture
def fleet(client):
    """Four vehicles of tenant a (one without fuelType, one updated) and one of tenant b."""
    return make_fleet(client)


def make_fleet(client) -> dict[str, str]:
    ids = {
        "V-1": create(client, "V-1", properties={"registrationNumber": "AAA-111"},
                      name="Big Truck", owner="operators:1", category="truck",
                      subCategory="large"),
        "V-2": create(client, "V-2", properties={"registrationNumber": "AAB-222",
                                                 "fuelType": "Electric"},
                      name="small truck", category="truck", subCategory="small"),
        "V-3": create(client, "V-3", properties={"registrationNumber": "BBB-333",
                                                 "fuelType": "Gasoline"},
                      name="Bike One_", category="bike"),
        "V-4": create(client, "V-4", properties={"registrationNumber": "CCC-444"}),
    }
    update(client, ids["V-4"], {"properties": {"fuelType": None}})
    create(client, "V-1", tenant="b", properties={"registrationNumber": "AAA-111"},
           name="Big Truck", category="truck")
    return ids


QUERIES = [
    ("term on an indexed attribute", {"term": [{"key": "fuelType", "value": "Diesel"}]}, {"V-1"}),
    ("term on a core field", {"term": [{"key": "category", "value": "truck"}]}, {"V-1", "V-2"}),
    ("term on state", {"term": [{"key": "state", "value": "onboarding:pending"}]},
     {"V-1", "V-2", "V-3", "V-4"}),
    ("term is exact", {"term": [{"key": "registrationNumber", "value": "aaa-111"}]}, set()),
    ("terms on an indexed attribute",
     {"terms": [{"key": "fuelType", "values": ["Electric", "Gasoline", "CNG"]}]}, {"V-2", "V-3"}),
    ("terms on a core field", {"terms": [{"key": "uniqueCode", "values": ["V-1", "V-3"]}]},
     {"V-1", "V-3"}),
    ("range gt on an indexed attribute",
     {"range": [{"key": "registrationNumber", "relation": "gt", "value": "BBB-333"}]}, {"V-4"}),
    ("range gte on an indexed attribute",
     {"range": [{"key": "registrationNumber", "relation": "gte", "value": "BBB-333"}]},
     {"V-3", "V-4"}),
    ("range lt on an indexed attribute",
     {"range": [{"key": "registrationNumber", "relation": "lt", "value": "AAB-222"}]}, {"V-1"}),
    ("range lte on an indexed attribute",
     {"range": [{"key": "registrationNumber", "relation": "lte", "value": "AAB-222"}]},
     {"V-1", "V-2"}),
    ("range gte on a core number", {"range": [{"key": "version", "relation": "gte", "value": 2}]},
     {"V-4"}),
    ("range lt on a core number", {"range": [{"key": "version", "relation": "lt", "value": 2}]},
     {"V-1", "V-2", "V-3"}),
    ("range gt on createdAt", {"range": [{"key": "createdAt", "relation": "gt", "value": 0}]},
     {"V-1", "V-2", "V-3", "V-4"}),
    ("range lte on updatedAt", {"range": [{"key": "updatedAt", "relation": "lte", "value": 0}]},
     set()),
    ("prefix on an indexed attribute",
     {"prefix": [{"key": "registrationNumber", "value": "AA"}]}, {"V-1", "V-2"}),
    ("prefix on a core field", {"prefix": [{"key": "name", "value": "Bi"}]}, {"V-1", "V-3"}),
    ("prefix is literal", {"prefix": [{"key": "name", "value": "%"}]}, set()),
    ("exists on an indexed attribute", {"exists": [{"key": "fuelType"}]}, {"V-1", "V-2", "V-3"}),
    ("exists on a core field", {"exists": [{"key": "owner"}]}, {"V-1"}),
    ("exists on name", {"exists": [{"key": "name"}]}, {"V-1", "V-2", "V-3"}),
    ("match is a case-insensitive substring", {"match": [{"key": "name", "value": "TRUCK"}]},
     {"V-1", "V-2"}),
    ("match on an indexed attribute", {"match": [{"key": "registrationNumber", "value": "b-3"}]},
     {"V-3"}),
    ("match treats % literally", {"match": [{"key": "name", "value": "%"}]}, set()),
    ("match treats _ literally", {"match": [{"key": "name", "value": "_"}]}, {"V-3"}),
    ("operators are ANDed",
     {"term": [{"key": "category", "value": "truck"}],
      "match": [{"key": "name", "value": "small"}]},
     {"V-2"}),
    ("clauses of one operator are ANDed",
     {"prefix": [{"key": "registrationNumber", "value": "A"},
                 {"key": "name", "value": "Big"}]}, {"V-1"}),
    ("empty query", {}, {"V-1", "V-2", "V-3", "V-4"}),
    ("term with the largest 64-bit number", {"term": [{"key": "version", "value": 2**63 - 1}]},
     set()),
    ("terms with the largest 64-bit number",
     {"terms": [{"key": "version", "values": [2**63 - 1, 1]}]}, {"V-1", "V-2", "V-3"}),
    ("range below the largest 64-bit number",
     {"range": [{"key": "version", "relation": "lt", "value": 2**63 - 1}]},
     {"V-1", "V-2", "V-3", "V-4"}),
    ("range above the smallest 64-bit number",
     {"range": [{"key": "createdAt", "relation": "gt", "value": -(2**63)}]},
     {"V-1", "V-2", "V-3", "V-4"}),
    ("range below a decimal near the limit",
     {"range": [{"key": "createdAt", "relation": "lt", "value": 9.2e18}]},
     {"V-1", "V-2", "V-3", "V-4"}),
    ("term on an attribute with a 64-bit number",
     {"term": [{"key": "registrationNumber", "value": -(2**63)}]}, set()),
    ("50 clauses", {"exists": [{"key": "name"}] * 25,
                    "prefix": [{"key": "registrationNumber", "value": "A"}] * 25}, {"V-1", "V-2"}),
    ("values of the longest length",
     {"terms": [{"key": "name", "values": ["Big Truck", "x" * 1024]}],
      "match": [{"key": "registrationNumber", "value": "%" * 1024}]}, set()),
]


@pytest.mark.parametrize(("query", "expected"), [q[1:] for q in QUERIES],
                         ids=[q[0] for q in QUERIES])
def test_list_query_operators(client, fleet, query, expected):
    """Each OS1 operator selects the right participants of this tenant, and counts them."""
    response = get(client, f"{BASE}/vehicles", query=json.dumps(query))
    assert set(codes(response)) == expected
    assert response.json["data"]["meta"]["totalElements"] == len(expected)


def test_list_without_query_returns_this_tenants_participants(client, fleet):
    """A list with no parameters answers the tenant's participants, newest first by default."""
    response = get(client, f"{BASE}/vehicles")
    listed = response.json["data"]["participants"]
    assert sorted(codes(response)) == ["V-1", "V-2", "V-3", "V-4"]
    assert [p["createdAt"] for p in listed] == sorted((p["createdAt"] for p in listed),
                                                      reverse=True)
    assert {p["id"] for p in listed} == set(fleet.values())
    assert len(get(client, f"{BASE}/vehicles", tenant="b").json["data"]["participants"]) == 1


@pytest.mark.parametrize(("params", "expected"), [
    ({"sortKey": "uniqueCode", "sortBy": "asc"}, ["V-1", "V-2", "V-3", "V-4"]),
    ({"sortKey": "uniqueCode", "sortBy": "desc"}, ["V-4", "V-3", "V-2", "V-1"]),
    ({"sortKey": "uniqueCode", "sortBy": "asc", "limit": 2}, ["V-1", "V-2"]),
    ({"sortKey": "uniqueCode", "sortBy": "asc", "limit": 2, "offset": 1}, ["V-2", "V-3"]),
    ({"sortKey": "uniqueCode", "sortBy": "asc", "offset": 3}, ["V-4"]),
    ({"sortKey": "uniqueCode", "offset": 4}, []),
    ({"sortKey": "registrationNumber", "sortBy": "desc"}, ["V-4", "V-3", "V-2", "V-1"]),
    ({"sortKey": "name", "sortBy": "asc", "limit": 1, "offset": 3}, ["V-2"]),
    ({"sortKey": "version", "sortBy": "desc", "limit": 1}, ["V-4"]),
])
def test_list_sorts_and_pages(client, fleet, params, expected):
    """sortKey/sortBy order the list and limit/offset page it; totalElements counts all."""
    response = get(client, f"{BASE}/vehicles", **params)
    assert codes(response) == expected
    assert response.json["data"]["meta"]["totalElements"] == 4


def test_list_select_returns_only_the_chosen_fields(client, fleet):
    """select[] narrows each participant to its id and the named fields and attributes."""
    response = client.get(f"{BASE}/vehicles?sortKey=uniqueCode&sortBy=asc"
                          "&select[]=name&select[]=fuelType&select[]=state", headers=headers())
    assert response.status_code == 200
    assert response.json["data"]["participants"] == [
        {"id": fleet["V-1"], "name": "Big Truck", "state": "onboarding:pending",
         "properties": {"fuelType": "Diesel"}},
        {"id": fleet["V-2"], "name": "small truck", "state": "onboarding:pending",
         "properties": {"fuelType": "Electric"}},
        {"id": fleet["V-3"], "name": "Bike One_", "state": "onboarding:pending",
         "properties": {"fuelType": "Gasoline"}},
        {"id": fleet["V-4"], "name": None, "state": "onboarding:pending"},
    ]


BAD_LISTS = [
    ("non-indexed attribute", {"query": json.dumps({"term": [{"key": "capacityKg", "value": 1}]})},
     "$.query.term[0].key"),
    ("unknown key", {"query": json.dumps({"exists": [{"key": "colour"}]})},
     "$.query.exists[0].key"),
    ("unknown operator", {"query": json.dumps({"wildcard": [{"key": "name", "value": "a*"}]})},
     "$.query.wildcard"),
    ("operator not an array", {"query": json.dumps({"term": {"key": "name", "value": "a"}})},
     "$.query.term"),
    ("clause without value", {"query": json.dumps({"term": [{"key": "name"}]})},
     "$.query.term[0].value"),
    ("clause with an extra member",
     {"query": json.dumps({"term": [{"key": "name", "value": "a", "boost": 2}]})},
     "$.query.term[0].boost"),
    ("unknown relation",
     {"query": json.dumps({"range": [{"key": "version", "relation": "eq", "value": 1}]})},
     "$.query.range[0].relation"),
    ("empty terms", {"query": json.dumps({"terms": [{"key": "name", "values": []}]})},
     "$.query.terms[0].values"),
    ("object value", {"query": json.dumps({"term": [{"key": "name", "value": {"a": 1}}]})},
     "$.query.term[0].value"),
    ("query not JSON", {"query": "{term:"}, "$.query"),
    ("query not an object", {"query": "[]"}, "$.query"),
    ("query with duplicate keys", {"query": '{"term": [], "term": []}'}, "$.query"),
    ("term with a number beyond 64 bits",
     {"query": json.dumps({"term": [{"key": "version", "value": 2**63}]})},
     "$.query.term[0].value"),
    ("terms with a number beyond 64 bits",
     {"query": json.dumps({"terms": [{"key": "version", "values": [1, -(10**30)]}]})},
     "$.query.terms[0].values[1]"),
    ("range with a number of 401 digits",
     {"query": '{"range": [{"key": "createdAt", "relation": "gt", "value": 1%s}]}' % ("0" * 400)},
     "$.query.range[0].value"),
    ("range with 1e308",
     {"query": json.dumps({"range": [{"key": "version", "relation": "lt", "value": 1e308}]})},
     "$.query.range[0].value"),
    ("51 clauses", {"query": json.dumps({"exists": [{"key": "name"}] * 26,
                                         "term": [{"key": "name", "value": "a"}] * 25})},
     "$.query.term"),
    ("1,000 clauses of one operator",
     {"query": json.dumps({"exists": [{"key": "name"}] * 1000})}, "$.query.exists"),
    ("101 values in terms",
     {"query": json.dumps({"terms": [{"key": "name", "values": list(range(101))}]})},
     "$.query.terms[0].values"),
    ("key of 1,025 characters",
     {"query": json.dumps({"exists": [{"key": "k" * 1025}]})}, "$.query.exists[0].key"),
    ("match value of 1,025 characters",
     {"query": json.dumps({"match": [{"key": "name", "value": "%" * 1025}]})},
     "$.query.match[0].value"),
    ("query over 65,536 characters",
     {"query": json.dumps({"term": [{"key": "name", "value": "x" * 70_000}]})}, "$.query"),
    ("sortKey of 1,025 characters", {"sortKey": "s" * 1025}, "$.sortKey"),
    ("select of an unknown name", {"select[]": ["name", "colour"]}, "$.select[1]"),
    ("101 select names", {"select[]": ["name"] * 101}, "$.select[100]"),
    ("offset over 10^9", {"offset": 10**9 + 1}, "$.offset"),
    ("sortBy", {"sortBy": "up"}, "$.sortBy"),
    ("sortKey non-indexed attribute", {"sortKey": "capacityKg"}, "$.sortKey"),
    ("sortKey unknown", {"sortKey": "colour"}, "$.sortKey"),
    ("limit 0", {"limit": 0}, "$.limit"),
    ("limit 101", {"limit": 101}, "$.limit"),
    ("limit text", {"limit": "ten"}, "$.limit"),
    ("limit superscript digit", {"limit": "\u00b2"}, "$.limit"),
    ("offset negative", {"offset": -1}, "$.offset"),
    ("unknown parameter", {"page": 2}, "$.page"),
]


@pytest.mark.parametrize(("params", "path"), [b[1:] for b in BAD_LISTS],
                         ids=[b[0] for b in BAD_LISTS])
def test_bad_list_requests_are_400(client, fleet, params, path):
    """A malformed or unanswerable list request is a 400 naming the offending part."""
    response = get(client, f"{BASE}/vehicles", **params)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"]["code"] == "101170024000"
    assert path in [e["path"] for e in response.json["error"]["additionalInfo"]["errors"]]


class _RecordingConnection:
    """Runs statements on a real connection and keeps each (sql, parameters) pair."""

    def __init__(self, conn):
        self.conn = conn
        self.statements: list[tuple[str, list]] = []

    def execute(self, sql, parameters=()):
        self.statements.append((sql, list(parameters)))
        return self.conn.execute(sql, parameters)


@pytest.mark.parametrize("query", [
    {"term": [{"key": "registrationNumber", "value": "AAA-111"}]},
    {"terms": [{"key": "fuelType", "values": ["Diesel", "Electric"]}]},
    {"range": [{"key": "registrationNumber", "relation": "gte", "value": "B"}]},
], ids=["term", "terms", "range"])
def test_sqlite_indexed_attribute_lookup_uses_the_attribute_index(sqlite_app, query):
    """The SQL of an attribute query searches attribute_index through attribute_index_lookup
    (SQLite's query plan)."""
    make_fleet(sqlite_app.test_client())
    shared = sqlite_app.extensions["participants"]
    definition = shared.types["vehicles"].definition
    conn = shared.storage.connect()
    try:
        recorder = _RecordingConnection(conn)
        rows, total = run_query(recorder, definition, "tenant-a", ListQuery(query),
                                PARTICIPANT_COLUMNS)
        assert total == len(rows) > 0
        assert len(recorder.statements) == 2   # the count and the page
        for sql, parameters in recorder.statements:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, parameters)]
            lookups = [step for step in plan if "attribute_index " in step + " "]
            assert lookups, plan
            assert all("USING COVERING INDEX attribute_index_lookup" in s for s in lookups), plan
            assert all("tenant_id=? AND type=? AND name=?" in s for s in lookups), plan
            assert not any(s.startswith("SCAN attribute_index") for s in plan), plan
    finally:
        conn.close()


# -- tenancy ------------------------------------------------------------------------------------

def _foreign_operations():
    """(label, method, url template, body) for every per-participant route."""
    event = {"eventCode": "E-022", "timestamp": 1_700_000_000, "source": {"appId": "t"}}
    return [
        ("read", "GET", BASE + "/vehicles/{pid}", None),
        ("read state", "GET", BASE + "/vehicles/{pid}/state", None),
        ("read events", "GET", BASE + "/vehicles/{pid}/events", None),
        ("update", "PUT", BASE + "/vehicles/{pid}", {"properties": {"axles": 3}}),
        ("combined update", "PUT", BASE + "/vehicles/{pid}",
         {"properties": {"verified": True, "capacityKg": 1},
          "stateTransition": {"eventCode": "E-022"}}),
        ("alias update", "PUT", ALIAS + "/vehicles/{pid}", {"properties": {"axles": 3}}),
        ("state event", "PUT", BASE + "/vehicles/{pid}/state/event", event),
    ]


@pytest.mark.parametrize(("method", "url", "body"), [op[1:] for op in _foreign_operations()],
                         ids=[op[0] for op in _foreign_operations()])
def test_other_tenants_participant_is_indistinguishable_from_a_missing_one(
        client, app, method, url, body):
    """Tenant b gets the same 404 for tenant a's participant as for one that never existed."""
    pid = create(client, "V-1")
    missing = "vehicles:00000000-0000-5000-8000-000000000000"
    before = (count(app, "events"), count(app, "participants"), count(app, "idempotency"))
    foreign = client.open(url.format(pid=pid), method=method, json=body, headers=headers("b"))
    absent = client.open(url.format(pid=missing), method=method, json=body, headers=headers("b"))
    assert foreign.status_code == absent.status_code == 404
    assert foreign.json["error"]["code"] == absent.json["error"]["code"] == "101170024042"
    assert foreign.get_data(as_text=True) == absent.get_data(as_text=True).replace(missing, pid)
    assert (count(app, "events"), count(app, "participants"), count(app, "idempotency")) == before
    owner_view = client.get(f"{BASE}/vehicles/{pid}", headers=headers("a")).json["data"]
    assert (owner_view["version"], owner_view["properties"]["registrationNumber"]) == (1, "AB-1234")


def test_list_is_confined_to_the_tenant(client):
    """A tenant's list never shows another tenant's participants, whatever the query."""
    create(client, "V-1", properties={"registrationNumber": "AAA-111"})
    for query in ({}, {"term": [{"key": "registrationNumber", "value": "AAA-111"}]},
                  {"term": [{"key": "uniqueCode", "value": "V-1"}]}):
        response = get(client, f"{BASE}/vehicles", tenant="b", query=json.dumps(query))
        assert response.json["data"] == {"participants": [], "meta": {"totalElements": 0}}


def test_same_unique_code_in_two_tenants_names_two_participants(client):
    """uniqueCode is per tenant: each tenant gets its own participant and id."""
    a = create(client, "V-1")
    b = create(client, "V-1", tenant="b", properties={"registrationNumber": "BB-22"})
    assert a != b
    assert get(client, f"{BASE}/vehicles/{a}").json["data"]["properties"][
        "registrationNumber"] == "AB-1234"
    assert get(client, f"{BASE}/vehicles/{b}", tenant="b").json["data"]["properties"][
        "registrationNumber"] == "BB-22"


# -- headers and access tokens ------------------------------------------------------------------

def _all_routes():
    """(label, method, url template, body) for every route, the pid filled in by the test."""
    return [
        ("types", "GET", BASE + "/participant-types", None),
        ("type", "GET", BASE + "/participant-types/vehicles", None),
        ("list", "GET", BASE + "/vehicles", None),
        ("create", "POST", BASE + "/vehicles",
         {"uniqueCode": "V-9", "properties": {"registrationNumber": "AB-9"}}),
        *_foreign_operations(),
    ]


ROUTES = pytest.mark.parametrize(("method", "url", "body"), [r[1:] for r in _all_routes()],
                                 ids=[r[0] for r in _all_routes()])


@pytest.mark.parametrize("missing", ["X-COREOS-REQUEST-ID", "X-COREOS-TID"])
@ROUTES
def test_missing_request_id_or_tenant_is_400(client, app, method, url, body, missing):
    """Every route needs X-COREOS-REQUEST-ID and X-COREOS-TID: 400 and nothing written."""
    pid = create(client, "V-1")
    before = (count(app, "events"), count(app, "idempotency"))
    sent = {k: v for k, v in headers().items() if k != missing}
    response = client.open(url.format(pid=pid), method=method, json=body, headers=sent)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "101170024000"
    assert response.json["error"]["additionalInfo"]["errors"][0]["path"] == f"$.headers.{missing}"
    assert (count(app, "events"), count(app, "idempotency")) == before


@pytest.mark.parametrize("token", [None, "", "token-x", "token-b", "token-a ", "TOKEN-A"],
                         ids=["missing", "empty", "unknown", "other tenant's", "padded", "case"])
@ROUTES
def test_bad_access_token_is_401(client, app, method, url, body, token):
    """A missing, unknown or other tenant's access token answers 401 and writes nothing."""
    pid = create(client, "V-1")
    before = (count(app, "events"), count(app, "idempotency"))
    sent = {k: v for k, v in headers().items() if k != "X-COREOS-ACCESS"}
    if token is not None:
        sent["X-COREOS-ACCESS"] = token
    response = client.open(url.format(pid=pid), method=method, json=body, headers=sent)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "101170024010"
    assert (count(app, "events"), count(app, "idempotency")) == before


def test_token_valid_for_tenant_b_reaches_only_tenant_b(client):
    """Tenant b's token with tenant b's id works; with tenant a's id it is refused."""
    ok = client.get(f"{BASE}/vehicles", headers=headers("b"))
    assert ok.status_code == 200
    refused = client.get(f"{BASE}/vehicles", headers=headers("a", **{"X-COREOS-ACCESS": "token-b"}))
    assert refused.status_code == 401


def test_user_info_becomes_created_by_and_updated_by(client, app):
    """X-COREOS-USERINFO of the create is createdBy; that of the latest write is updatedBy."""
    creator = {"id": "u-1", "name": "Asha", "appId": "console"}
    editor = {"id": "u-2", "name": "Ravi", "appId": "mobile"}
    response = client.post(f"{BASE}/vehicles", headers=headers(**{
        "X-COREOS-USERINFO": json.dumps(creator)}), json={
        "uniqueCode": "V-1", "properties": {"registrationNumber": "AB-1"}})
    pid = response.json["data"]["id"]
    update(client, pid, {"properties": {"axles": 3}},
           **{"X-COREOS-USERINFO": json.dumps(editor)})
    data = get(client, f"{BASE}/vehicles/{pid}").json["data"]
    assert (data["createdBy"], data["updatedBy"]) == (creator, editor)
    events = get(client, f"{BASE}/vehicles/{pid}/events").json["data"]["events"]
    assert [e["event"]["userInfo"] for e in events] == [creator, editor]
    assert events[1]["entity"]["created_by"] == creator
    assert events[1]["entity"]["updated_by"] == editor


@pytest.mark.parametrize("user_info", [
    "{bad", "[]", "null", '"u-1"', "42", '{"id": 5}', '{"id": "a", "id": "b"}',
    '{"name": ["x"]}', "{}" + "x", '{"id": "\\ud800"}', "x" * 4097,
], ids=["not JSON", "array", "null", "string", "number", "id not text", "duplicate key",
        "name not text", "trailing text", "lone surrogate", "too long"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_malformed_user_info_is_400(client, app, user_info, method):
    """A X-COREOS-USERINFO that is not a JSON object of texts answers 400, writes nothing."""
    body = {"uniqueCode": "V-1", "properties": {"registrationNumber": "AB-1"}}
    response = client.open(f"{BASE}/vehicles", method=method,
                           json=body if method == "POST" else None,
                           headers=headers(**{"X-COREOS-USERINFO": user_info}))
    assert response.status_code == 400
    paths = [e["path"] for e in response.json["error"]["additionalInfo"]["errors"]]
    assert paths, "a 400 must say what is wrong, with its path"
    assert all(p.startswith("$.headers.X-COREOS-USERINFO") for p in paths), paths
    assert (count(app, "events"), count(app, "participants")) == (0, 0)


def test_callback_secret_is_never_echoed_or_logged(client, app):
    """X-COREOS-CALLBACK-SECRET appears in no response body and no event record."""
    secret = "whsec_c2VjcmV0LXZhbHVlLWZvci10ZXN0cw=="
    with_secret = {"X-COREOS-CALLBACK-SECRET": secret}
    callback = {"url": "http://127.0.0.1:9/callback", "meta": {"m": 1}}
    responses = [client.post(f"{BASE}/vehicles", headers=headers(**with_secret), json={
        "uniqueCode": "V-1", "properties": {"registrationNumber": "AB-1"}, "callback": callback})]
    pid = responses[0].json["data"]["id"]
    responses += [
        client.post(f"{BASE}/vehicles", headers=headers(**with_secret), json={
            "uniqueCode": "V-1", "properties": {}, "callback": callback}),
        client.put(f"{BASE}/vehicles/{pid}", headers=headers(**with_secret), json={
            "properties": {"axles": 3}, "callback": callback}),
        client.put(f"{BASE}/vehicles/{pid}", headers=headers(**with_secret), json={
            "stateTransition": {"eventCode": "E-024"}}),
        client.put(f"{BASE}/vehicles/{pid}/state/event", headers=headers(**with_secret), json={
            "eventCode": "E-023", "timestamp": 1, "source": {"appId": "t"}, "callback": callback}),
        client.put(f"{BASE}/vehicles/{pid}", headers=headers(**with_secret), json={"id": "x"}),
        client.get(f"{BASE}/vehicles/{pid}", headers=headers(**with_secret)),
        client.get(f"{BASE}/vehicles/{pid}/events", headers=headers(**with_secret)),
        client.get(f"{BASE}/vehicles", headers=headers(**with_secret)),
    ]
    assert [r.status_code for r in responses] == [202, 202, 202, 202, 202, 400, 200, 200, 200]
    for response in responses:
        assert secret not in response.get_data(as_text=True)
        assert secret not in str(response.headers)
    stored = rows(app, "SELECT * FROM events")
    assert len(stored) == 5
    assert not any(secret in str(value) for row in stored for value in row)
