"""Hostile input: every malformed request gets the right 4xx, never a 5xx, and writes nothing."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest

from tests.conftest import BASE, TEST_MACHINES, close_app, count, headers, make_app

ALIAS = BASE.rsplit("/", 1)[0] + "/participant"
TABLES = ("events", "participants", "idempotency", "attribute_index", "outbox")

# target -> (method, url template, body template with one %s where the hostile value goes)
TARGETS = {
    "create": ("POST", BASE + "/vehicles",
               '{"uniqueCode": "V-2",'
               ' "properties": {"registrationNumber": "AB-2", "address": %s}}'),
    "update": ("PUT", BASE + "/vehicles/{pid}", '{"properties": {"address": %s}}'),
    "alias": ("PUT", ALIAS + "/vehicles/{pid}", '{"name": "n", "properties": {"address": %s}}'),
    "state event": ("PUT", BASE + "/vehicles/{pid}/state/event",
                    '{"eventCode": "E-101", "timestamp": 1, "source": {"appId": "t"},'
                    ' "data": {"inspector": %s}}'),
}
EVERY_TARGET = pytest.mark.parametrize("target", list(TARGETS))


# -- helpers ------------------------------------------------------------------------------------

def ledger(app) -> dict[str, int]:
    """Row counts of every table a write touches."""
    return {t: count(app, t) for t in TABLES}


def assert_envelope(response, status: int) -> dict:
    """The response is the OS1 error envelope with this status; returns its `error`."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data(as_text=True))
    assert set(body) == {"error", "request"}
    error = body["error"]
    assert set(error) == {"code", "description", "additionalInfo"}
    assert re.fullmatch(r"[0-9]{12}", error["code"]), error
    assert isinstance(error["description"], str) and error["description"]
    assert set(error["additionalInfo"]) == {"errors"}
    for issue in error["additionalInfo"]["errors"]:
        assert set(issue) == {"path", "message"}
        assert issue["path"].startswith("$")
        assert isinstance(issue["message"], str) and issue["message"]
    assert set(body["request"]) == {"uri", "method", "queryString", "body"}
    assert body["request"]["uri"] == response.request.path
    assert body["request"]["method"] == response.request.method
    return error


def error_paths(error: dict) -> list[str]:
    return [issue["path"] for issue in error["additionalInfo"]["errors"]]


@pytest.fixture
def pid(client):
    """An existing vehicle of tenant a."""
    response = client.post(f"{BASE}/vehicles", headers=headers(), json={
        "uniqueCode": "V-1", "properties": {"registrationNumber": "AB-1234"}})
    assert response.status_code == 202
    return response.json["data"]["id"]


def send(client, target: str, pid: str, data, content_type="application/json", **extra):
    method, url, _ = TARGETS[target]
    return client.open(url.format(pid=pid), method=method, data=data,
                       content_type=content_type, headers=headers(**extra))


def send_json(client, target: str, pid: str, body: dict, **extra):
    return send(client, target, pid, json.dumps(body), **extra)


def refused(client, app, target, pid, data, status=400, **extra) -> dict:
    """Send raw data; it must be refused with `status` and leave every table as it was."""
    before = ledger(app)
    response = send(client, target, pid, data, **extra)
    error = assert_envelope(response, status)
    assert ledger(app) == before
    return error


# -- JSON that is not acceptable ----------------------------------------------------------------

HOSTILE_VALUES = [
    ("duplicate keys", '{"city": "Pune", "city": "Goa"}'),
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("-Infinity", "-Infinity"),
    ("number overflowing to infinity", "1e400"),
    ("negative number overflowing to infinity", "-1e400"),
    ("lone high surrogate", '"\\ud800"'),
    ("lone low surrogate", '"x\\udc00y"'),
    ("lone surrogate in a key", '{"\\ud800": 1}'),
    ("nesting deeper than 32", "[" * 40 + "]" * 40),
    ("objects nested deeper than 32", '{"a": ' * 40 + "1" + "}" * 40),
    ("integer with too many digits", "1" * 5000),
]


@pytest.mark.parametrize("value", [v[1] for v in HOSTILE_VALUES],
                         ids=[v[0] for v in HOSTILE_VALUES])
@EVERY_TARGET
def test_unacceptable_json_values_are_400(client, app, pid, target, value):
    """Duplicate keys, non-finite numbers, lone surrogates and deep nesting are 400s."""
    error = refused(client, app, target, pid, TARGETS[target][2] % value)
    assert error["code"] == "101170024000"
    assert error_paths(error) == ["$"]


@pytest.mark.parametrize("value", ['"\\ud83d\\ude9a"', '"\\u00e9t\\u00e9"', "[" * 10 + "]" * 10],
                         ids=["surrogate pair", "escaped accents", "shallow nesting"])
def test_acceptable_json_values_pass_the_parser(client, app, pid, value):
    """Proper surrogate pairs, escapes and shallow nesting reach the type's validation."""
    response = send(client, "update", pid, TARGETS["update"][2] % value)
    assert response.status_code == 202, response.get_data(as_text=True)


WHOLE_BODIES = [
    ("empty", b""),
    ("whitespace", b"  \n"),
    ("array", b"[]"),
    ("array of an object", b'[{"properties": {}}]'),
    ("string", b'"properties"'),
    ("number", b"5"),
    ("null", b"null"),
    ("true", b"true"),
    ("invalid UTF-8", b'{"properties": {"address": "\xff\xfe"}}'),
    ("overlong UTF-8", b'{"properties": {"address": "\xc0\xaf"}}'),
    ("UTF-8 BOM", b'\xef\xbb\xbf{"properties": {}}'),
    ("UTF-16", '{"properties": {}}'.encode("utf-16")),
    ("truncated", b'{"properties": {'),
    ("trailing garbage", b'{"properties": {}} x'),
    ("two objects", b'{"properties": {}}{"properties": {}}'),
    ("single quotes", b"{'properties': {}}"),
    ("trailing comma", b'{"properties": {},}'),
    ("comment", b'{"properties": {} /* c */}'),
    ("top-level duplicate key", b'{"properties": {}, "properties": {"axles": 3}}'),
    ("very deep nesting", b"[" * 100_000 + b"]" * 100_000),
    ("very deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
]


@pytest.mark.parametrize("data", [b[1] for b in WHOLE_BODIES], ids=[b[0] for b in WHOLE_BODIES])
@EVERY_TARGET
def test_bodies_that_are_not_one_json_object_are_400(client, app, pid, target, data):
    """A body that is not exactly one UTF-8 JSON object answers 400 at $."""
    error = refused(client, app, target, pid, data)
    assert error["code"] == "101170024000"
    assert error_paths(error) == ["$"]


CONTENT_TYPES = [None, "", "text/plain", "application/x-www-form-urlencoded", "application/xml",
                 "multipart/form-data; boundary=x", "application/jsonx", "text/json",
                 "application/merge-patch+json"]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@EVERY_TARGET
def test_body_not_declared_json_is_415(client, app, pid, target, content_type):
    """A write whose body is not declared application/json answers 415."""
    data = TARGETS[target][2] % '"x"'
    before = ledger(app)
    method, url, _ = TARGETS[target]
    sent = headers()
    if content_type is not None:
        sent["Content-Type"] = content_type
    response = client.open(url.format(pid=pid), method=method, data=data, headers=sent)
    assert assert_envelope(response, 415)["code"] == "101170024150"
    assert ledger(app) == before


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8",
                                          "Application/JSON", "application/json;charset=UTF-8"])
def test_json_content_type_parameters_are_accepted(client, pid, content_type):
    """application/json with parameters or in another case is JSON."""
    response = send(client, "update", pid, '{"properties": {"axles": 3}}', content_type)
    assert response.status_code == 202, response.get_data(as_text=True)


@pytest.fixture
def small_app(database):
    """The service with PARTICIPANTS_MAX_BODY_BYTES = 1000."""
    application = make_app(database, PARTICIPANTS_MAX_BODY_BYTES=1000)
    yield application
    close_app(application)


@EVERY_TARGET
def test_body_over_the_limit_is_413(small_app, target):
    """A body over PARTICIPANTS_MAX_BODY_BYTES answers 413; one under it is served."""
    client = small_app.test_client()
    pid = client.post(f"{BASE}/vehicles", headers=headers(), json={
        "uniqueCode": "V-1", "properties": {"registrationNumber": "AB-1234"}}).json["data"]["id"]
    before = ledger(small_app)
    large = TARGETS[target][2] % json.dumps("x" * 1000)
    assert len(large.encode()) > 1000
    response = send(client, target, pid, large)
    assert assert_envelope(response, 413)["code"] == "101170024130"
    assert ledger(small_app) == before
    small = TARGETS[target][2] % json.dumps("abc")
    assert send(client, target, pid, small).status_code == 202


def _chunked(client, target: str, pid: str, data: bytes):
    """Send `data` without Content-Length, as gunicorn passes a chunked request body."""
    method, url, _ = TARGETS[target]
    return client.open(url.format(pid=pid), method=method, input_stream=io.BytesIO(data),
                       headers={**headers(), "Content-Type": "application/json",
                                "Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input_terminated": True})


@pytest.mark.parametrize("padding", ["whitespace after the object", "a long string"])
@EVERY_TARGET
def test_chunked_body_over_the_limit_is_413(small_app, target, padding):
    """A body without Content-Length is held to the same limit: 413, never cut and accepted."""
    client = small_app.test_client()
    pid = client.post(f"{BASE}/vehicles", headers=headers(), json={
        "uniqueCode": "V-1", "properties": {"registrationNumber": "AB-1234"}}).json["data"]["id"]
    before = ledger(small_app)
    if padding == "a long string":
        data = (TARGETS[target][2] % json.dumps("x" * 5000)).encode()
    else:
        data = (TARGETS[target][2] % '"abc"').encode() + b" " * 5000
    response = _chunked(client, target, pid, data)
    assert assert_envelope(response, 413)["code"] == "101170024130"
    assert ledger(small_app) == before
    small = (TARGETS[target][2] % '"abc"').encode()
    assert _chunked(client, target, pid, small).status_code == 202


# -- JSON that does not fit the API -------------------------------------------------------------

SHAPES = [
    ("create", {"uniqueCode": 5, "properties": {}}, "$.uniqueCode"),
    ("create", {"uniqueCode": "V-2", "properties": []}, "$.properties"),
    ("create", {"uniqueCode": "V-2", "properties": "x"}, "$.properties"),
    ("create", {"uniqueCode": "V-2", "properties": None}, "$.properties"),
    ("create", {"uniqueCode": "V-2"}, "$.properties"),
    ("create", {"properties": {}}, "$.uniqueCode"),
    ("create", {"uniqueCode": "", "properties": {}}, "$.uniqueCode"),
    ("create", {"uniqueCode": "x" * 65, "properties": {}}, "$.uniqueCode"),
    ("create", {"uniqueCode": ["V-2"], "properties": {}}, "$.uniqueCode"),
    ("create", {"uniqueCode": "V-2", "properties": {}, "name": "x" * 257}, "$.name"),
    ("create", {"uniqueCode": "V-2", "properties": {}, "name": 5}, "$.name"),
    ("create", {"uniqueCode": "V-2", "properties": {}, "owner": {"id": 1}}, "$.owner"),
    ("create", {"uniqueCode": "V-2", "properties": {}, "callback": "http://x"}, "$.callback"),
    ("create", {"uniqueCode": "V-2", "properties": {}, "callback": {"url": ""}},
     "$.callback.url"),
    ("create", {"uniqueCode": "V-2", "properties": {}, "callback": {"meta": {}}},
     "$.callback.url"),
    ("create", {"uniqueCode": "V-2", "properties": {}, "callback": {"url": "x" * 2049}},
     "$.callback.url"),
    ("create", {"uniqueCode": "V-2", "properties": {},
                "onError": {"url": "http://x", "method": "TRACE"}}, "$.onError.method"),
    ("update", {"stateTransition": "x"}, "$.stateTransition"),
    ("update", {"stateTransition": None}, "$.stateTransition"),
    ("update", {"stateTransition": {}}, "$.stateTransition.eventCode"),
    ("update", {"stateTransition": {"eventCode": 22}}, "$.stateTransition.eventCode"),
    ("update", {"stateTransition": {"eventCode": "E-022", "data": {}}},
     "$.stateTransition.data"),
    ("update", {"properties": []}, "$.properties"),
    ("update", {"properties": None}, "$.properties"),
    ("update", {"name": 5}, "$.name"),
    ("update", {"category": True}, "$.category"),
    ("update", {"templateId": "x" * 257}, "$.templateId"),
    ("alias", {"properties": "x"}, "$.properties"),
    ("state event", {"eventCode": "E-022", "timestamp": "now", "source": {"appId": "t"}},
     "$.timestamp"),
    ("state event", {"eventCode": "E-022", "timestamp": -1, "source": {"appId": "t"}},
     "$.timestamp"),
    ("state event", {"eventCode": "E-022", "timestamp": True, "source": {"appId": "t"}},
     "$.timestamp"),
    ("state event", {"eventCode": "E-022", "timestamp": 10**15, "source": {"appId": "t"}},
     "$.timestamp"),
    ("state event", {"eventCode": "E-022", "source": {"appId": "t"}}, "$.timestamp"),
    ("state event", {"timestamp": 1, "source": {"appId": "t"}}, "$.eventCode"),
    ("state event", {"eventCode": "E-022", "timestamp": 1}, "$.source"),
    ("state event", {"eventCode": "E-022", "timestamp": 1, "source": {}}, "$.source.appId"),
    ("state event", {"eventCode": "E-022", "timestamp": 1, "source": {"appId": ""}},
     "$.source.appId"),
    ("state event", {"eventCode": "E-022", "timestamp": 1, "source": {"appId": "x" * 257}},
     "$.source.appId"),
    ("state event", {"eventCode": "E-022", "timestamp": 1, "source": {"appId": "t", "x": 1}},
     "$.source.x"),
    ("state event", {"eventCode": "E-022", "timestamp": 1, "source": "t"}, "$.source"),
    ("state event", {"eventCode": "E-022", "timestamp": 1, "source": {"appId": "t"},
                     "data": []}, "$.data"),
    ("state event", {"eventCode": "E-022", "timestamp": 1, "source": {"appId": "t"},
                     "data": "x"}, "$.data"),
]


@pytest.mark.parametrize(("target", "body", "path"), SHAPES,
                         ids=[f"{t} {p} {i}" for i, (t, _, p) in enumerate(SHAPES)])
def test_wrong_shapes_of_api_fields_are_400(client, app, pid, target, body, path):
    """A field of the API's own request schema with the wrong type or size answers 400."""
    error = refused(client, app, target, pid, json.dumps(body))
    assert error["code"] == "101170024000"
    assert path in error_paths(error)


UNKNOWN_FIELDS = [
    *[("create", name) for name in ("id", "state", "version", "createdAt", "updatedAt",
                                     "tenantId", "createdBy", "participantType", "colour",
                                     "stateTransition", "mainState")],
    *[(target, name) for target in ("update", "alias")
      for name in ("id", "state", "version", "createdAt", "updatedAt", "tenantId",
                   "uniqueCode", "updatedBy", "participantType", "colour")],
    *[("state event", name) for name in ("id", "state", "version", "properties",
                                          "stateTransition", "tenantId", "colour")],
]
VALID_BODIES = {
    "create": {"uniqueCode": "V-2", "properties": {"registrationNumber": "AB-2"}},
    "update": {"properties": {"axles": 3}},
    "alias": {"properties": {"axles": 3}},
    "state event": {"eventCode": "E-101", "timestamp": 1, "source": {"appId": "t"},
                    "data": {"inspector": "bob"}},
}


@pytest.mark.parametrize(("target", "field"), UNKNOWN_FIELDS,
                         ids=[f"{t}.{f}" for t, f in UNKNOWN_FIELDS])
def test_unknown_and_protected_top_level_fields_are_400(client, app, pid, target, field):
    """Unknown top-level fields, protected ones included, answer 400 naming the field."""
    body = {**VALID_BODIES[target], field: "x"}
    error = refused(client, app, target, pid, json.dumps(body))
    assert f"$.{field}" in error_paths(error)


@EVERY_TARGET
def test_every_unknown_field_is_reported_at_once(client, app, pid, target):
    """All unknown fields of one request are listed together, each with its path."""
    body = {**VALID_BODIES[target], "id": "x", "version": 9, "colour": "red"}
    error = refused(client, app, target, pid, json.dumps(body))
    assert {"$.id", "$.version", "$.colour"} <= set(error_paths(error))


def test_the_valid_bodies_are_valid(client, pid):
    """The bodies the hostile cases start from are accepted as they are."""
    for target, body in VALID_BODIES.items():
        response = send_json(client, target, pid, body)
        assert response.status_code == 202, (target, response.get_data(as_text=True))


BAD_CODES = [
    *[("eventCode", code) for code in ("E-0222", "E-22", "E-000", "e-022", "E022", "E-02a",
                                       " E-022", "E-022 ", "E-022\n", "", "E-\u0662\u0662\u0662")],
    *[("reasonCode", code) for code in ("R-12", "R-0000", "R-00001", "r-0001", "R-001a",
                                        "R-0001\n", "")],
]


@pytest.mark.parametrize(("field", "code"), BAD_CODES, ids=[repr(c) for _, c in BAD_CODES])
@pytest.mark.parametrize("target", ["update", "state event"])
def test_malformed_event_and_reason_codes_are_400(client, app, pid, target, field, code):
    """Codes that are not E-nnn / R-nnnn (E-001..E-999, R-0001..R-9999) answer 400."""
    if target == "update":
        transition = {"eventCode": "E-022", "reasonCode": "R-0001", field: code}
        body, path = {"stateTransition": transition}, f"$.stateTransition.{field}"
    else:
        body = {"eventCode": "E-022", "reasonCode": "R-0001", "timestamp": 1,
                "source": {"appId": "t"}, field: code}
        path = f"$.{field}"
    error = refused(client, app, target, pid, json.dumps(body))
    assert path in error_paths(error)


@pytest.mark.parametrize(("target", "body", "reason", "path"), [
    ("update", {"stateTransition": {"eventCode": "E-999"}}, "unknown event",
     "$.stateTransition.eventCode"),
    ("state event", {"eventCode": "E-999", "timestamp": 1, "source": {"appId": "t"}},
     "unknown event", "$.eventCode"),
    ("state event", {"eventCode": "E-022", "reasonCode": "R-9999", "timestamp": 1,
                     "source": {"appId": "t"}}, "reason code not allowed", "$.reasonCode"),
    ("update", {"properties": {"colour": "red"}}, "unknown attribute", "$.properties.colour"),
    ("update", {"properties": {"state": "active:active"}}, "unknown attribute",
     "$.properties.state"),
    ("update", {"properties": {"version": 99}}, "unknown attribute", "$.properties.version"),
    ("update", {"properties": {"id": "vehicles:x"}}, "unknown attribute", "$.properties.id"),
    ("alias", {"properties": {"tenantId": "tenant-b"}}, "unknown attribute",
     "$.properties.tenantId"),
    ("update", {"properties": {"capacityKg": "heavy"}}, "invalid attributes",
     "$.properties.capacityKg"),
    ("create", {"uniqueCode": "V-2", "properties": {"registrationNumber": "AB-2",
                                                   "colour": "red"}},
     "unknown attribute", "$.properties.colour"),
    ("create", {"uniqueCode": "V-2", "properties": {"registrationNumber": "AB-2",
                                                   "state": "inactive:dead"}},
     "unknown attribute", "$.properties.state"),
], ids=["undeclared event on update", "undeclared event on state event", "undeclared reason",
        "unknown attribute", "protected name state", "protected name version",
        "protected name id", "protected name tenantId", "attribute of the wrong type",
        "unknown attribute on create", "protected name on create"])
def test_well_formed_but_undeclared_is_a_failure_event(client, app, pid, target, body, reason,
                                                       path):
    """What only the type's definition can refuse is a 202 failure event, not a 400."""
    participant = client.get(f"{BASE}/vehicles/{pid}", headers=headers()).json["data"]
    before = ledger(app)
    response = send_json(client, target, pid, body)
    assert response.status_code == 202, response.get_data(as_text=True)
    event = response.json["data"]["event"]
    assert (event["payloadValidated"], event["reason"]) == (False, reason)
    assert path in [e["path"] for e in event["errors"]]
    after = ledger(app)
    assert after["events"] == before["events"] + 1
    assert after["participants"] == before["participants"]
    assert client.get(f"{BASE}/vehicles/{pid}", headers=headers()).json["data"] == participant


@pytest.mark.parametrize("value", ["AB-1234\n", "\nAB-1234", "AB-1234\r", "ab-1234", "AB 1234"])
def test_attribute_regex_matches_the_whole_value(client, pid, value):
    """An attribute regex anchored with ^…$ refuses a value with a trailing newline."""
    response = send_json(client, "update", pid, {"properties": {"registrationNumber": value}})
    event = response.json["data"]["event"]
    assert (event["payloadValidated"], event["reason"]) == (False, "invalid attributes")
    assert client.get(f"{BASE}/vehicles/{pid}", headers=headers()).json["data"][
        "properties"]["registrationNumber"] == "AB-1234"


# -- headers ------------------------------------------------------------------------------------

BAD_HEADERS = [
    ("request id of 256 characters", {"X-COREOS-REQUEST-ID": "r" * 256},
     "$.headers.X-COREOS-REQUEST-ID"),
    ("request id with a control character", {"X-COREOS-REQUEST-ID": "r\x01"},
     "$.headers.X-COREOS-REQUEST-ID"),
    ("request id with a non-ASCII character", {"X-COREOS-REQUEST-ID": "r\u00e9"},
     "$.headers.X-COREOS-REQUEST-ID"),
    ("tenant id of 129 characters", {"X-COREOS-TID": "t" * 129}, "$.headers.X-COREOS-TID"),
    ("user info of 4097 characters", {"X-COREOS-USERINFO": "u" * 4097},
     "$.headers.X-COREOS-USERINFO"),
    ("callback secret of 1025 characters", {"X-COREOS-CALLBACK-SECRET": "s" * 1025},
     "$.headers.X-COREOS-CALLBACK-SECRET"),
    ("If-Match not a version", {"If-Match": '"abc"'}, "$.headers.If-Match"),
    ("If-Match negative", {"If-Match": '"-1"'}, "$.headers.If-Match"),
    ("If-Match fraction", {"If-Match": "1.5"}, "$.headers.If-Match"),
    ("If-Match too large", {"If-Match": "9" * 19}, "$.headers.If-Match"),
    ("If-Match superscript digit", {"If-Match": "\u00b2"}, "$.headers.If-Match"),
]


@pytest.mark.parametrize(("extra", "path"), [b[1:] for b in BAD_HEADERS],
                         ids=[b[0] for b in BAD_HEADERS])
@pytest.mark.parametrize("target", ["update", "state event"])
def test_malformed_headers_are_400(client, app, pid, target, extra, path):
    """Over-long or malformed headers answer 400 naming the header, and write nothing."""
    before = ledger(app)
    response = send_json(client, target, pid, VALID_BODIES[target], **extra)
    error = assert_envelope(response, 400)
    assert path in error_paths(error)
    assert ledger(app) == before


def test_request_id_of_255_characters_is_accepted(client, pid):
    """255 characters is the longest request id."""
    response = send_json(client, "update", pid, VALID_BODIES["update"],
                         **{"X-COREOS-REQUEST-ID": "r" * 255})
    assert response.status_code == 202


# -- routes and methods -------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "/", "/nope", "/core/api/v2", BASE + "/vehicles/{pid}/state/event/more",
    BASE + "/vehicles/{pid}/history", BASE + "/participant-types/vehicles/extra",
    "/core/api/v1/participants/vehicles",
])
def test_unknown_route_is_a_404_envelope(client, pid, url):
    """A path no route serves answers the JSON error envelope with 404."""
    response = client.get(url.format(pid=pid), headers=headers())
    assert assert_envelope(response, 404)["code"] == "101170024040"


@pytest.mark.parametrize(("method", "url", "allowed"), [
    ("DELETE", BASE + "/vehicles/{pid}", {"GET", "PUT"}),
    ("POST", BASE + "/vehicles/{pid}", {"GET", "PUT"}),
    ("PATCH", BASE + "/vehicles/{pid}", {"GET", "PUT"}),
    ("DELETE", BASE + "/vehicles", {"GET", "POST"}),
    ("PUT", BASE + "/vehicles", {"GET", "POST"}),
    ("GET", BASE + "/vehicles/{pid}/state/event", {"PUT"}),
    ("POST", BASE + "/vehicles/{pid}/state/event", {"PUT"}),
    ("PUT", BASE + "/vehicles/{pid}/state", {"GET"}),
    ("POST", BASE + "/vehicles/{pid}/events", {"GET"}),
    ("GET", ALIAS + "/vehicles/{pid}", {"PUT"}),
    ("DELETE", ALIAS + "/vehicles/{pid}", {"PUT"}),
    ("POST", BASE + "/participant-types/vehicles", {"GET", "PUT"}),
])
def test_wrong_method_is_a_405_envelope(client, app, pid, method, url, allowed):
    """A method the route does not serve answers 405 with Allow and the error envelope."""
    before = ledger(app)
    response = client.open(url.format(pid=pid), method=method, json={"properties": {}},
                           headers=headers())
    assert assert_envelope(response, 405)["code"] == "101170024050"
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert ledger(app) == before


@pytest.mark.parametrize(("request_", "status"), [
    (lambda c, pid: c.get(f"{BASE}/vehicles/vehicles:none", headers=headers()), 404),
    (lambda c, pid: c.get(f"{BASE}/trains", headers=headers()), 404),
    (lambda c, pid: c.get(f"{BASE}/vehicles", headers={"X-COREOS-TID": "tenant-a"}), 400),
    (lambda c, pid: c.get(f"{BASE}/vehicles", headers=headers(**{"X-COREOS-ACCESS": "x"})), 401),
    (lambda c, pid: c.put(f"{BASE}/vehicles/{pid}", json={"properties": {}},
                          headers=headers(**{"If-Match": "7"})), 412),
    (lambda c, pid: c.put(f"{BASE}/vehicles/{pid}", data="x", headers=headers()), 415),
    (lambda c, pid: c.put(f"{BASE}/vehicles/{pid}", json={"properties": {}, "id": 1},
                          headers=headers()), 400),
], ids=["missing participant", "unknown type", "missing request id", "bad token", "stale If-Match",
        "not JSON", "protected field"])
def test_error_envelope_shape(client, pid, request_, status):
    """Every refusal uses {"error": {code, description, additionalInfo.errors}, "request"}."""
    assert_envelope(request_(client, pid), status)


def test_error_envelope_echoes_the_parsed_body(client, pid):
    """Once the body is parsed, the error's request.body is that body."""
    body = {"properties": {}, "version": 5}
    response = client.put(f"{BASE}/vehicles/{pid}", json=body, headers=headers())
    assert_envelope(response, 400)
    assert response.json["request"]["body"] == body
    assert response.json["request"]["uri"] == f"{BASE}/vehicles/{pid}"


def test_refused_request_id_can_be_used_again(client, app, pid):
    """A request refused with a 4xx stored nothing, so its request id stays free."""
    rid = "refused-then-fine"
    bad = client.put(f"{BASE}/vehicles/{pid}", json={"properties": {}, "version": 5},
                     headers=headers(request_id=rid))
    assert bad.status_code == 400
    good = client.put(f"{BASE}/vehicles/{pid}", json={"properties": {"axles": 3}},
                      headers=headers(request_id=rid))
    assert good.status_code == 202
    assert good.json["data"]["event"]["payloadValidated"] is True


def test_an_indexed_number_past_the_largest_double_is_stored_and_found(tmp_path, database):
    """An integer of 401 digits in an indexed number attribute without a range is indexed as
    infinity (engine/model/conventions.py index_value) — it was a 500 — and a range query finds
    it."""
    machines = tmp_path / "machines"
    shutil.copytree(TEST_MACHINES, machines)
    text = (machines / "vehicles.yaml").read_text()
    assert text.count("  verified: {dataType: boolean") == 1
    (machines / "vehicles.yaml").write_text(text.replace(
        "  verified: {dataType: boolean", "  score: {dataType: number, indexed: true}\n"
        "  verified: {dataType: boolean"))
    application = make_app(database, PARTICIPANTS_MACHINES=str(machines))
    try:
        client = application.test_client()
        body = ('{"uniqueCode": "V-HUGE", "properties": {"registrationNumber": "AB-1",'
                ' "score": 1%s}}' % ("0" * 400))
        created = client.post(f"{BASE}/vehicles", data=body, content_type="application/json",
                              headers=headers())
        assert created.status_code == 202, created.get_data(as_text=True)
        assert created.json["data"]["event"]["payloadValidated"] is True
        query = {"range": [{"key": "score", "relation": "gt", "value": 9.2e18}]}
        listed = client.get(f"{BASE}/vehicles", query_string={"query": json.dumps(query)},
                            headers=headers())
        assert listed.status_code == 200, listed.get_data(as_text=True)
        assert [p["uniqueCode"] for p in listed.json["data"]["participants"]] == ["V-HUGE"]
    finally:
        close_app(application)
