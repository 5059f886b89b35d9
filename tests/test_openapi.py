"""The OpenAPI document is OpenAPI 3.1, documents every route, and describes every response."""

from __future__ import annotations

import io
import json
import re
from urllib.parse import quote, urlsplit

import jsonschema
import pytest
import referencing
from referencing.jsonschema import DRAFT202012

from engine.jobs.batchworker import BatchWorker
from engine.model.conventions import now_ms
from engine.service import idempotency
from tests.conftest import BASE, headers
from webapp.http import OPENAPI

ALIAS = BASE.rsplit("/", 1)[0] + "/participant"
DOCUMENT_URI = "urn:test:openapi"
IGNORED_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _registry(document: dict) -> referencing.Registry:
    return referencing.Registry().with_resource(DOCUMENT_URI,
                                                DRAFT202012.create_resource(document))


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _resolve(document: dict, pointer: str):
    node = document
    for part in pointer.lstrip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def _refs(node, where="#"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{where}/{i}")


def _shape(template: str) -> str:
    """A path with every parameter replaced by {}, for both Flask rules and OpenAPI paths."""
    return re.sub(r"<(?:[^:>]+:)?[^>]+>|\{[^}]+\}", "{}", template)


# -- the document -------------------------------------------------------------------------------

def test_served_document_is_the_packaged_one(client):
    """GET …/openapi.json answers webapp/openapi.yaml as JSON."""
    response = client.get(f"{BASE}/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert json.loads(response.get_data(as_text=True)) == OPENAPI


def test_document_is_openapi_3_1():
    """The document declares OpenAPI 3.1, its server is the base path, and it has paths."""
    assert re.fullmatch(r"3\.1\.\d+", OPENAPI["openapi"])
    assert OPENAPI["info"]["title"] and OPENAPI["info"]["version"]
    assert [s["url"] for s in OPENAPI["servers"]] == [BASE]
    assert OPENAPI["paths"]
    ids = [op["operationId"] for _, _, op in _operations(OPENAPI)]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("name", sorted(OPENAPI["components"]["schemas"]))
def test_component_schemas_are_valid_json_schema(name):
    """Every component schema is a valid JSON Schema 2020-12 document."""
    jsonschema.Draft202012Validator.check_schema(OPENAPI["components"]["schemas"][name])


def test_every_ref_resolves():
    """Every $ref in the document points at something inside it."""
    resolver = _registry(OPENAPI).resolver(DOCUMENT_URI)
    for where, ref in _refs(OPENAPI):
        assert ref.startswith("#/"), (where, ref)
        resolver.lookup(DOCUMENT_URI + ref)
        _resolve(OPENAPI, ref[1:])


def test_every_operation_documents_its_responses_as_json():
    """Each operation lists responses, each with an application/json schema."""
    for path, method, operation in _operations(OPENAPI):
        assert operation["responses"], (path, method)
        for status, response in operation["responses"].items():
            if "$ref" in response:
                response = _resolve(OPENAPI, response["$ref"][1:])
            assert "schema" in response["content"]["application/json"], (path, method, status)


def test_every_route_under_the_base_path_is_documented(app):
    """Each route the app serves under the base path is an operation of the document."""
    documented = {(_shape(path), method.upper()) for path, method, _ in _operations(OPENAPI)}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(BASE + "/"):
            for method in rule.methods - IGNORED_METHODS:
                served.add((_shape(rule.rule[len(BASE):]), method))
    assert served, "no routes under the base path"
    assert sorted(served - documented) == []


def test_every_documented_operation_is_served(app):
    """Each operation of the document is routed by the app to one of its views."""
    adapter = app.url_map.bind("localhost")
    for path, method, operation in _operations(OPENAPI):
        concrete = re.sub(r"\{[^}]+\}", "vehicles", path)
        endpoint, _ = adapter.match(BASE + concrete, method=method.upper())
        assert endpoint != "static", (path, method)
        assert operation["operationId"]


# -- every response of a realistic scenario fits the document -----------------------------------

class Contract:
    """Validates responses against the document: path, method, status and body schema."""

    def __init__(self, document: dict):
        self.document = document
        self.registry = _registry(document)
        self.templates = sorted(document["paths"], key=lambda p: (p.count("{"), p))
        self.problems: list[str] = []
        self.covered: set[tuple[str, str]] = set()   # (operationId, status)

    def _template(self, path: str) -> str | None:
        for template in self.templates:
            pattern = re.escape(template)
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
            if re.fullmatch(pattern, path):
                return template
        return None

    def check(self, method: str, url: str, response) -> None:
        path = urlsplit(url).path
        label = f"{method} {path} -> {response.status_code}"
        if path.startswith(ALIAS + "/"):   # the seed's alias of the update route
            path = path[len(ALIAS):]
        elif path.startswith(BASE + "/"):
            path = path[len(BASE):]
        else:
            self.problems.append(f"{label}: not under the base path")
            return
        template = self._template(path)
        operation = self.document["paths"].get(template, {}).get(method.lower())
        if operation is None:
            self.problems.append(f"{label}: no documented operation")
            return
        status = str(response.status_code)
        self.covered.add((operation["operationId"], status))
        documented = operation["responses"].get(status)
        if documented is None:
            self.problems.append(f"{label}: status {status} is not documented for "
                                 f"{operation['operationId']} "
                                 f"({response.get_data(as_text=True)[:300]})")
            return
        pointer = _pointer("paths", template, method.lower(), "responses", status)
        if "$ref" in documented:
            pointer = documented["$ref"][1:]
            documented = _resolve(self.document, pointer)
        for name in documented.get("headers", {}):
            if name not in response.headers:
                self.problems.append(f"{label}: documented header {name} is missing")
        if response.mimetype != "application/json":
            self.problems.append(f"{label}: answered {response.mimetype}, not JSON")
            return
        schema_pointer = pointer + _pointer("content", "application/json", "schema")
        validator = jsonschema.Draft202012Validator(
            {"$ref": DOCUMENT_URI + "#" + quote(schema_pointer, safe="/~")},
            registry=self.registry)
        body = json.loads(response.get_data(as_text=True))
        for error in validator.iter_errors(body):
            where = "".join(f"[{p!r}]" for p in error.absolute_path)
            self.problems.append(f"{label}: body{where}: {error.message}")


class Driver:
    """A test client whose every response is checked against the contract."""

    def __init__(self, client, contract: Contract):
        self.client, self.contract = client, contract

    def __call__(self, method: str, url: str, expect: int | None = None, **kwargs):
        response = self.client.open(url, method=method, **kwargs)
        self.contract.check(method, url, response)
        if expect is not None and response.status_code != expect:
            self.contract.problems.append(
                f"{method} {url}: expected {expect}, got {response.status_code} "
                f"({response.get_data(as_text=True)[:200]})")
        return response


def _reserve(app, method: str, url: str, body: dict, request_id: str) -> None:
    """Mark (tenant-a, request_id) as in flight for this request."""
    with app.extensions["participants"].storage.write() as uow:
        uow.idempotency.reserve("tenant-a", request_id,
                                idempotency.fingerprint(method, url, body), now_ms(),
                                now_ms() + 60_000)


def _error_cases(call, app, method: str, url: str, body: dict | None, write: bool):
    """Drive the error statuses every route can answer, and those of writes."""
    h = headers()
    call(method, url, 400, json=body,
         headers={k: v for k, v in h.items() if k != "X-COREOS-REQUEST-ID"})
    call(method, url, 401, json=body, headers=headers(**{"X-COREOS-ACCESS": "token-b"}))
    if not write:
        return
    call(method, url, 400, json={**body, "version": 1}, headers=headers())
    call(method, url, 415, data="{}", headers=headers(), content_type="text/plain")
    call(method, url, 413, json={**body, "padding": "x" * (1024 * 1024)}, headers=headers())
    rid = f"in-flight {method} {url}"
    _reserve(app, method, url, body, rid)
    call(method, url, 409, json=body, headers=headers(request_id=rid))
    rid = f"reused {method} {url}"
    call(method, url, None, json=body, headers=headers(request_id=rid))
    call(method, url, 422, json={**body, "callback": {"url": "http://127.0.0.1:9/x"}},
         headers=headers(request_id=rid))


def _batch_error_cases(call, app, method: str, url: str, body: dict):
    """The refusals of a batch route: as a write's, with its own limit on the item count."""
    h = headers()
    call(method, url, 400, json=body,
         headers={k: v for k, v in h.items() if k != "X-COREOS-REQUEST-ID"})
    call(method, url, 401, json=body, headers=headers(**{"X-COREOS-ACCESS": "token-b"}))
    call(method, url, 400, json={**body, "version": 1}, headers=headers())
    call(method, url, 415, data="{}", headers=headers(), content_type="text/plain")
    call(method, url, 413, json={"payload": [{}] * 10_001}, headers=headers())
    rid = f"in-flight {method} {url}"
    _reserve(app, method, url, body, rid)
    call(method, url, 409, json=body, headers=headers(request_id=rid))
    rid = f"reused {method} {url}"
    call(method, url, 202, json=body, headers=headers(request_id=rid))
    call(method, url, 422, json={**body, "callback": {"url": "http://127.0.0.1:9/x"}},
         headers=headers(request_id=rid))


def test_every_response_of_a_scenario_matches_the_document(client, app):
    """A scenario reaching every documented status of every operation matches the document."""
    contract = Contract(OPENAPI)
    call = Driver(client, contract)
    vehicles = f"{BASE}/vehicles"
    user = {"X-COREOS-USERINFO": json.dumps({"id": "u-1", "name": "Asha", "appId": "console"})}

    # participant types
    call("GET", f"{BASE}/participant-types", 200, headers=headers())
    call("GET", f"{BASE}/participant-types/vehicles", 200, headers=headers())
    call("GET", f"{BASE}/participant-types/trains", 404, headers=headers())
    _error_cases(call, app, "GET", f"{BASE}/participant-types", None, write=False)
    _error_cases(call, app, "GET", f"{BASE}/participant-types/vehicles", None, write=False)

    # create: success, business failures, refusals
    body = {"uniqueCode": "V-1", "name": "Truck", "owner": "operators:1", "category": "truck",
            "subCategory": "large", "templateId": "tpl",
            "properties": {"registrationNumber": "AB-1234", "address": {"city": "Pune"}},
            "callback": {"url": "http://127.0.0.1:9/cb", "meta": {"k": "v"}}}
    created = call("POST", vehicles, 202, json=body, headers=headers(**user))
    pid = created.json["data"]["id"]
    call("POST", vehicles, 202, json=body, headers=headers())                 # already exists
    call("POST", vehicles, 202, json={"uniqueCode": "V-2", "properties": {"axles": 1}},
         headers=headers())                                                   # invalid
    second = call("POST", vehicles, 202, headers=headers(), json={
        "uniqueCode": "V-3", "properties": {"registrationNumber": "CD-5678",
                                            "fuelType": "Electric"}})
    call("POST", f"{BASE}/trains", 404, json=body, headers=headers())
    call("POST", vehicles, 400, json={"uniqueCode": 5, "properties": {}}, headers=headers())
    _error_cases(call, app, "POST", vehicles, {"uniqueCode": "V-4", "properties": {}}, write=True)

    # one participant, its state
    participant = f"{vehicles}/{pid}"
    call("GET", participant, 200, headers=headers())
    call("GET", f"{vehicles}/vehicles:missing", 404, headers=headers())
    call("GET", participant, 404, headers=headers("b"))
    call("GET", f"{participant}/state", 200, headers=headers())
    call("GET", f"{vehicles}/vehicles:missing/state", 404, headers=headers())
    _error_cases(call, app, "GET", participant, None, write=False)
    _error_cases(call, app, "GET", f"{participant}/state", None, write=False)

    # update: attributes, combined, failures, refusals
    call("PUT", participant, 202, json={"properties": {"axles": 3}, "name": None},
         headers=headers(**user, **{"If-Match": '"1"'}))
    call("PUT", participant, 202, json={"properties": {"axles": 1}}, headers=headers())
    call("PUT", participant, 202, headers=headers(), json={
        "properties": {"verified": True, "capacityKg": 10},
        "stateTransition": {"eventCode": "E-022", "reasonCode": "R-0001"}})
    call("PUT", participant, 202, json={"stateTransition": {"eventCode": "E-022"}},
         headers=headers())                                                   # invalid transition
    call("PUT", participant, 412, json={"properties": {}}, headers=headers(**{"If-Match": "1"}))
    call("PUT", f"{vehicles}/vehicles:missing", 404, json={"properties": {}}, headers=headers())
    call("PUT", participant, 400, json={"stateTransition": {"eventCode": "E-0222"}},
         headers=headers())
    _error_cases(call, app, "PUT", participant, {"properties": {"axles": 4}}, write=True)
    call("PUT", f"{ALIAS}/vehicles/{pid}", 202, json={"properties": {"axles": 5}},
         headers=headers())
    call("PUT", f"{ALIAS}/vehicles/vehicles:missing", 404, json={"properties": {}},
         headers=headers())

    # state events
    event = {"eventCode": "E-023", "reasonCode": "R-0001", "timestamp": 1_700_000_000,
             "source": {"appId": "gate", "userId": "u", "locId": "l"},
             "callback": {"url": "http://127.0.0.1:9/cb"}}
    call("PUT", f"{participant}/state/event", 202, json=event, headers=headers())
    call("PUT", f"{participant}/state/event", 202, json=event, headers=headers())  # now invalid
    call("PUT", f"{participant}/state/event", 202, headers=headers(), json={
        **event, "eventCode": "E-101", "data": {"inspector": "B0b"}})
    call("PUT", f"{participant}/state/event", 412, json={**event, "eventCode": "E-024"},
         headers=headers(**{"If-Match": '"2"'}))
    call("PUT", f"{vehicles}/vehicles:missing/state/event", 404, json=event, headers=headers())
    call("PUT", f"{participant}/state/event", 400, json={**event, "timestamp": "now"},
         headers=headers())
    _error_cases(call, app, "PUT", f"{participant}/state/event",
                 {**event, "eventCode": "E-024"}, write=True)
    call("GET", f"{participant}/state", 200, headers=headers())

    # event history
    call("GET", f"{participant}/events", 200, headers=headers())
    call("GET", f"{participant}/events?limit=2&offset=1", 200, headers=headers())
    call("GET", f"{participant}/events?limit=0", 400, headers=headers())
    call("GET", f"{vehicles}/vehicles:missing/events", 404, headers=headers())
    _error_cases(call, app, "GET", f"{participant}/events", None, write=False)

    # dry runs: steps, a draft with errors, a replay, refusals
    dry = f"{BASE}/participant-types/vehicles/dry-run"
    call("POST", dry, 200, headers=headers(), json={
        "start": {"create": {"uniqueCode": "D-1", "properties": {"registrationNumber": "DR-1"}}},
        "steps": [{"properties": {"axles": 3}}, {"eventCode": "E-022"},
                  {"stateTransition": {"eventCode": "E-101"}}]})
    call("POST", dry, 200, json={"machine": "participantType: {"}, headers=headers())
    call("POST", dry, 200, json={"replay": {"participantId": pid}}, headers=headers())
    call("POST", dry, 404, json={"replay": {"participantId": pid}}, headers=headers("b"))
    call("POST", f"{BASE}/participant-types/trains/dry-run", 404, json={}, headers=headers())
    call("POST", dry, 400, json={"steps": [{"eventCode": "nope"}]}, headers=headers())
    call("POST", dry, 415, data="{}", headers=headers(), content_type="text/plain")
    call("POST", dry, 413, json={"machine": "x" * (1024 * 1024)}, headers=headers())
    _error_cases(call, app, "POST", dry, {}, write=False)

    # lists
    call("GET", vehicles, 200, headers=headers())
    query = json.dumps({"term": [{"key": "fuelType", "value": "Electric"}],
                        "range": [{"key": "version", "relation": "gte", "value": 1}]})
    listed = call("GET", vehicles, 200, query_string={
        "query": query, "limit": 10, "offset": 0, "sortKey": "registrationNumber",
        "sortBy": "asc", "select[]": ["name", "fuelType"]}, headers=headers())
    assert [p["id"] for p in listed.json["data"]["participants"]] == [
        second.json["data"]["id"]]
    call("GET", vehicles, 400, query_string={"query": '{"wildcard": []}'}, headers=headers())
    call("GET", vehicles, 400, query_string={"query": json.dumps(
        {"term": [{"key": "capacityKg", "value": 10}]})}, headers=headers())
    call("GET", vehicles, 400, query_string={"sortKey": "capacityKg"}, headers=headers())
    call("GET", f"{BASE}/trains", 404, headers=headers())
    _error_cases(call, app, "GET", vehicles, None, write=False)

    # batches: JSON and CSV, create and update, their status before and after processing
    batch = f"{vehicles}/batch"
    batch_body = {"payload": [{"uniqueCode": "B-1", "properties": {"registrationNumber": "EF-1"}},
                              {"properties": {}}],
                  "callback": {"url": "http://127.0.0.1:9/batch", "meta": {"k": 1}}}
    created_batch = call("POST", batch, 202, json=batch_body, headers=headers(**user))
    csv_file = (io.BytesIO(b"uniqueCode,registrationNumber,axles\nB-2,GH-1234,3\n"), "b.csv")
    call("POST", batch, 202, data={"file": csv_file}, content_type="multipart/form-data",
         headers=headers())
    call("PUT", batch, 202, json={"payload": [{"id": pid, "properties": {"axles": 6}},
                                              {"id": "vehicles:missing"}]}, headers=headers())
    call("POST", f"{BASE}/trains/batch", 404, json=batch_body, headers=headers())
    call("PUT", f"{BASE}/trains/batch", 404, json={"payload": [{"id": pid}]}, headers=headers())
    call("PUT", batch, 400, json={"payload": []}, headers=headers())
    _batch_error_cases(call, app, "POST", batch, batch_body)
    _batch_error_cases(call, app, "PUT", batch, {"payload": [{"id": pid}]})
    batch_status = f"{vehicles}/batch/status"
    query = {"batchId": created_batch.json["data"]["id"]}
    call("GET", batch_status, 200, query_string=query, headers=headers())
    state = app.extensions["participants"]
    worker = BatchWorker(state.types, state.service)
    while worker.run_once():
        pass
    done = call("GET", batch_status, 200, query_string=query, headers=headers())
    assert done.json["data"]["meta"]["status"] == "completed", done.json
    call("GET", batch_status, 404, query_string=query, headers=headers("b"))
    call("GET", batch_status, 400, headers=headers())
    _error_cases(call, app, "GET", f"{batch_status}?batchId=x", None, write=False)

    # the document itself
    call("GET", f"{BASE}/openapi.json", 200)

    assert not contract.problems, "\n".join(contract.problems)
    documented = {(op["operationId"], status) for _, _, op in _operations(OPENAPI)
                  for status in op["responses"]}
    assert sorted(documented - contract.covered) == [], "documented but never exercised"


def test_contract_check_is_not_vacuous():
    """The checker reports undocumented statuses, bodies off the schema and missing headers."""
    from flask import Response

    contract = Contract(OPENAPI)
    wrong = json.dumps({"data": {"id": 1}, "request": {"uri": "/"}})
    contract.check("GET", f"{BASE}/vehicles/vehicles:x",
                   Response(wrong, 200, mimetype="application/json"))
    contract.check("GET", f"{BASE}/participant-types",
                   Response("{}", 418, mimetype="application/json"))
    contract.check("PUT", f"{BASE}/vehicles/vehicles:x/state",
                   Response("{}", 405, mimetype="application/json"))
    problems = "\n".join(contract.problems)
    assert "documented header ETag is missing" in problems
    assert "body['data']['id']: 1 is not of type 'string'" in problems
    assert "body['request']: 'method' is a required property" in problems
    assert "status 418 is not documented" in problems
    assert "PUT /core/api/v2/participants/vehicles/vehicles:x/state -> 405: no documented" \
        in problems
