"""Security properties: tenant isolation, constant-time token checks, the callback secret kept
out of sight, and protected fields that no request can set.

- A matrix over every route of the application's url_map × tenant (a, b) × token (the tenant's
  own, the other tenant's, missing, garbage) × resource (the tenant's own, the other tenant's,
  one that does not exist): only the own token answers 2xx; another tenant's resource answers
  exactly what a missing one does; no read shows and no write touches the other tenant's data.
- The access token is compared with hmac.compare_digest on SHA-256 digests of equal length, for
  valid and invalid tokens alike (counted by patching compare_digest; no wall-clock timing).
- X-COREOS-CALLBACK-SECRET sent on every write route appears in no response, no callback, no
  server log line and no database column except the two that must hold it to sign callbacks:
  participants.callback_secret, and outbox.secret of deliveries still pending (cleared once a
  delivery succeeds or is given up). batches.callback_secret likewise, until the batch completes.
- Protected fields (id, state, version, timestamps, tenant, …) in every casing, at the top level
  (400), in `properties` (failure event: unknown attribute) or in free-form objects (ignored):
  the stored participant's id, tenant, version, timestamps and state change only through a
  declared transition.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import random
import re
import socket
import uuid
from collections import Counter

import pytest
import requests

from engine.delivery.outbound import OutboundRefused, check_url, parse_literal, send
from tests.conftest import (
    BASE,
    close_app,
    count,
    headers,
    inspect,
    make_app,
    rows,
    scale,
)
from tests.receivers import Receiver, Reply

pytestmark = pytest.mark.reliability

TIMEOUT = 60
TENANTS = ("a", "b")
TOKEN_KINDS = ("own", "other", "missing", "garbage")
MISSING_PID = "vehicles:00000000-0000-5000-8000-000000000000"
MISSING_BATCH = "batch:00000000-0000-4000-8000-000000000000"
UNAUTHORIZED = "101170024010"


def other(tenant: str) -> str:
    return "b" if tenant == "a" else "a"


def marker(tenant: str) -> str:
    """Text stored only in this tenant's participant: it must never reach the other tenant."""
    return f"only-for-tenant-{tenant}-7c1e"


def user(tenant: str) -> str:
    return json.dumps({"id": f"user-of-{tenant}", "name": "Sec", "appId": "sec"})


def identity(tenant: str, token_kind: str, request_id: str | None = None) -> dict:
    sent = headers(tenant, request_id, **{"X-COREOS-USERINFO": user(tenant)})
    if token_kind == "other":
        sent["X-COREOS-ACCESS"] = f"token-{other(tenant)}"
    elif token_kind == "garbage":
        sent["X-COREOS-ACCESS"] = "garbage-" + uuid.uuid4().hex
    elif token_kind == "missing":
        del sent["X-COREOS-ACCESS"]
    return sent


def all_tenant_rows(app) -> dict[str, dict[str, list]]:
    """tenant id -> every row that belongs to it, table by table (batch items and deliveries
    through their batch and outbox row), all read in one snapshot."""
    out: dict[str, dict[str, list]] = {f"tenant-{t}": {} for t in TENANTS}
    db = inspect(app)
    with db.snapshot():
        for table in db.tables():
            if "tenant_id" in db.columns(table):
                sql = f'SELECT tenant_id, * FROM "{table}" {db.order_by(table)}'
            elif table == "batch_items":
                sql = ("SELECT b.tenant_id, i.* FROM batch_items i JOIN batches b"
                       f" ON b.id = i.batch_id {db.order_by('batch_items', 'i')}")
            elif table == "deliveries":
                sql = ("SELECT o.tenant_id, d.* FROM deliveries d JOIN outbox o"
                       f" ON o.id = d.outbox_id {db.order_by('deliveries', 'd')}")
            else:
                continue
            for tenant in out.values():
                tenant[table] = []
            for row in db.rows(sql):
                out.setdefault(row[0], {}).setdefault(table, []).append(row[1:])
    return out


def tenant_rows(app, tenant: str) -> dict[str, list]:
    """Every row that belongs to `tenant`, table by table."""
    return all_tenant_rows(app)[f"tenant-{tenant}"]


def drain(app, rounds: int = 50) -> None:
    """Run the dispatcher (timers, batch items, deliveries) until nothing more is due."""
    dispatcher = app.extensions["participants"].dispatcher()
    for _ in range(rounds):
        if not dispatcher.run_once():
            return
    raise AssertionError("the dispatcher did not settle")


# -- the tenant × token × resource × route matrix ----------------------------------------------

def _participant_body(code: str, tenant: str) -> dict:
    return {"uniqueCode": code, "name": marker(tenant), "properties": {
        "registrationNumber": "AB-1234", "capacityKg": 10, "verified": True,
        "address": {"city": marker(tenant)}}}


UPDATE = {"properties": {"axles": 3}}
STATE_EVENT = {"eventCode": "E-101", "reasonCode": "R-7001", "timestamp": 1_700_000_000,
               "data": {"inspector": "sec"}, "source": {"appId": "sec"}}


class World:
    """Each tenant's participant and batch, and what the matrix needs to address them."""

    def __init__(self, client, app):
        self.client, self.app = client, app
        self.pid, self.code, self.batch = {}, {}, {}
        for tenant in TENANTS:
            self.code[tenant] = f"SEC-{tenant.upper()}"
            response = client.post(f"{BASE}/vehicles", json=_participant_body(
                self.code[tenant], tenant), headers=identity(tenant, "own"))
            assert response.json["data"]["event"]["payloadValidated"], response.text
            self.pid[tenant] = response.json["data"]["id"]
        if "batches.batch_status" in {r.endpoint for r in app.url_map.iter_rules()}:
            for tenant in TENANTS:
                response = client.post(f"{BASE}/vehicles/batch", headers=identity(tenant, "own"),
                                       json={"payload": [UPDATE | {"uniqueCode": "x"}]})
                assert response.status_code == 202, response.text
                self.batch[tenant] = response.json["data"]["id"]

    def resources(self, kind: str, tenant: str) -> dict[str, str | None]:
        """own / foreign / missing values of the route's resource for a caller of `tenant`."""
        if kind == "participant":
            return {"own": self.pid[tenant], "foreign": self.pid[other(tenant)],
                    "missing": MISSING_PID}
        if kind == "batch":
            return {"own": self.batch[tenant], "foreign": self.batch[other(tenant)],
                    "missing": MISSING_BATCH}
        if kind == "list":
            return {"own": tenant, "foreign": other(tenant), "missing": "nobody"}
        if kind == "create":
            return {"own": tenant, "foreign": other(tenant)}
        return {"own": None}


def _route(endpoint: str):
    """How to call a route: (resource kind, build(world, tenant, resource, cell) -> request)."""
    def participant(suffix: str, body=None):
        def build(world, tenant, pid, cell):
            return f"{BASE}/vehicles/{pid}{suffix}", None, body
        return "participant", build

    def list_query(world, tenant, whose, cell):
        query = {"term": [{"key": "name", "value": marker(whose)}]} if whose != tenant else {}
        return f"{BASE}/vehicles", {"query": json.dumps(query)} if query else None, None

    def create(world, tenant, whose, cell):
        code = world.code[whose] if whose != tenant else f"SEC-{tenant}-{cell}"
        return f"{BASE}/vehicles", None, _participant_body(code, tenant)

    def create_batch(world, tenant, whose, cell):
        code = world.code[whose] if whose != tenant else f"SEC-{tenant}-{cell}"
        return f"{BASE}/vehicles/batch", None, {"payload": [_participant_body(code, tenant)]}

    def update_batch(world, tenant, pid, cell):
        return f"{BASE}/vehicles/batch", None, {"payload": [{"id": pid, **UPDATE}]}

    def batch_status(world, tenant, batch_id, cell):
        return f"{BASE}/vehicles/batch/status", {"batchId": batch_id}, None

    def fixed(path):
        return lambda world, tenant, resource, cell: (path, None, None)

    table = {
        "static": ("public", fixed("/static/app.js")),
        "participants.openapi": ("public", fixed(f"{BASE}/openapi.json")),
        "participants.list_types": ("none", fixed(f"{BASE}/participant-types")),
        "participants.get_type": ("none", fixed(f"{BASE}/participant-types/vehicles")),
        "participants.dry_run": ("participant", lambda world, tenant, pid, cell: (
            f"{BASE}/participant-types/vehicles/dry-run", None,
            {"replay": {"participantId": pid}})),
        "participants.get_participant": participant(""),
        "participants.get_state": participant("/state"),
        "participants.get_events": participant("/events"),
        "participants.update": participant("", UPDATE),
        "participants.transition": participant("/state/event", STATE_EVENT),
        "participant_alias": ("participant", lambda world, tenant, pid, cell: (
            f"{BASE.rsplit('/', 1)[0]}/participant/vehicles/{pid}", None, UPDATE)),
        "participants.list_participants": ("list", list_query),
        "participants.create": ("create", create),
        "batches.create_batch": ("create", create_batch),
        "batches.update_batch": ("participant", update_batch),
        "batches.batch_status": ("batch", batch_status),
    }
    assert endpoint in table, (f"route {endpoint} is not in the security matrix: describe how "
                               "to call it for own, foreign and missing resources")
    return table[endpoint]


def _routes(app) -> list[tuple[str, str]]:
    """The API's routes. The console's (console.*) sign in with a session cookie instead of
    the headers this matrix varies; tests/test_console.py holds them to the same isolation."""
    return sorted({(rule.endpoint, method) for rule in app.url_map.iter_rules()
                   for method in rule.methods & {"GET", "POST", "PUT", "PATCH", "DELETE"}
                   if not rule.endpoint.startswith("console.")})


def _shows(response, *texts: str) -> bool:
    """The response shows one of `texts` other than in its echo of the caller's own request."""
    try:
        body = json.loads(response.get_data(as_text=True))
    except ValueError:
        body = response.get_data(as_text=True)
    if isinstance(body, dict):
        body.pop("request", None)
    shown = json.dumps(body) + repr(sorted(response.headers.items()))
    return any(t in shown for t in texts)


def _normalized(response, replace: str | None) -> tuple:
    """What a client can observe of a response, with the named id blanked out."""
    text = response.get_data(as_text=True)
    if replace:
        text = text.replace(replace, "<id>")
    names = sorted((k, v.replace(replace, "<id>") if replace else v)
                   for k, v in response.headers.items() if k != "Content-Length")
    return response.status_code, text, names


def test_tenant_token_resource_matrix_has_no_cross_tenant_reads_or_writes(app, client, figure):
    """Every route × tenant × token × own/foreign/missing resource: only the tenant's own token
    answers 2xx; a foreign resource answers exactly like a missing one (status, code, headers,
    body after blanking the id); no response shows, and no write changes, the other tenant's
    data; tenants may use the same request id without meeting each other's responses."""
    world = World(client, app)
    routes = _routes(app)
    cells, leaks, problems = 0, 0, []
    unauthorized_bodies: dict[str, set] = {}

    def fail(message):
        problems.append(message)

    for endpoint, method in routes:
        kind, build = _route(endpoint)
        for tenant in TENANTS:
            resources = world.resources(kind, tenant)
            for token in TOKEN_KINDS:
                seen: dict[str, tuple] = {}
                for which, resource in resources.items():
                    cell = f"{endpoint}.{method}.{which}"
                    path, query, body = build(world, tenant, resource, cell)
                    # Own-token writes of both tenants share request ids: idempotency is scoped
                    # to the tenant, so neither may replay or refuse the other's request.
                    request_id = f"shared-{cell}" if token == "own" else None
                    before = all_tenant_rows(app)
                    mine_before = before[f"tenant-{tenant}"]
                    theirs_before = before[f"tenant-{other(tenant)}"]
                    response = client.open(path, method=method, query_string=query, json=body,
                                           headers=identity(tenant, token, request_id))
                    cells += 1
                    status, text = response.status_code, response.get_data(as_text=True)
                    where = f"{method} {path} tenant {tenant}, {token} token, {which}"
                    if _shows(response, marker(other(tenant)), f"user-of-{other(tenant)}"):
                        leaks += 1
                        fail(f"{where}: the other tenant's data in the response: {text[:300]}")
                    after = all_tenant_rows(app)
                    if after[f"tenant-{other(tenant)}"] != theirs_before:
                        leaks += 1
                        fail(f"{where}: the other tenant's rows changed")
                    if status >= 300 and after[f"tenant-{tenant}"] != mine_before:
                        fail(f"{where}: a refused request wrote rows")
                    if status >= 500:
                        fail(f"{where}: {status}")
                    if kind == "public":
                        seen[which] = _normalized(response, None)
                        if status >= 400 and status != 404:
                            fail(f"{where}: {status}")
                        continue
                    if token != "own":
                        if status != 401 or response.json["error"]["code"] != UNAUTHORIZED:
                            fail(f"{where}: expected 401, got {status} {text[:200]}")
                        else:
                            unauthorized_bodies.setdefault(endpoint, set()).add(
                                (status, response.json["error"]["description"]))
                        continue
                    blank = resource if which != "own" and kind in ("participant", "batch") \
                        else None
                    seen[which] = _normalized(response, blank)
                    if which == "own" and status not in (200, 202):
                        fail(f"{where}: expected 2xx, got {status} {text[:200]}")
                    if which == "own" and status == 202 and kind == "create":
                        assert response.json["data"]["id"] not in world.pid.values()
                    if which == "foreign" and kind in ("participant", "batch") and \
                            endpoint != "batches.update_batch" and status != 404:
                        fail(f"{where}: expected 404, got {status} {text[:200]}")
                    if which == "foreign" and kind == "list":
                        if response.json["data"]["meta"]["totalElements"] != 0:
                            leaks += 1
                            fail(f"{where}: the other tenant's participants are listed")
                    if which == "foreign" and kind == "create" and status == 202:
                        assert response.json["data"]["id"] != world.pid[other(tenant)]
                if token == "own" and kind in ("participant", "batch", "list") and \
                        endpoint != "batches.update_batch":
                    foreign, missing = seen["foreign"], seen["missing"]
                    if kind == "list":  # the query names the marker instead of an id
                        foreign = tuple(json.dumps(x).replace(marker(other(tenant)), "<m>")
                                        for x in foreign)
                        missing = tuple(json.dumps(x).replace(marker("nobody"), "<m>")
                                        for x in missing)
                    if foreign != missing:
                        leaks += 1
                        fail(f"{endpoint} {method} tenant {tenant}: another tenant's resource "
                             f"answers differently from a missing one:\n{foreign}\n{missing}")
                if kind == "public" and len(set(map(repr, seen.values()))) != 1:
                    fail(f"{endpoint}: a public route answers differently per token")

    # Batch items run later, in the dispatcher; they are held to the same tenant.
    drain(app)
    if "batches.batch_status" in {e for e, _ in routes}:
        for tenant in TENANTS:
            reasons = [r[0].replace(world.pid[other(tenant)], "<id>").replace(
                MISSING_PID, "<id>") for r in rows(
                app, "SELECT i.reason FROM batch_items i JOIN batches b ON b.id = i.batch_id"
                     " WHERE b.tenant_id = ? AND b.kind = 'update' AND i.status = 'failed'",
                f"tenant-{tenant}")]
            # A foreign id in a batch item fails exactly like a missing one.
            if len(reasons) != 2 or len(set(reasons)) != 1:
                leaks += 1
                problems.append(f"tenant {tenant}: batch items naming a foreign and a missing "
                                f"participant failed differently: {reasons}")
    # Every write is stamped with its caller's user info (X-COREOS-USERINFO) and every
    # participant with its tenant's marker: neither may turn up in the other tenant's rows.
    for tenant in TENANTS:
        text = repr(tenant_rows(app, tenant))
        if marker(other(tenant)) in text or f"user-of-{other(tenant)}" in text:
            leaks += 1
            problems.append(f"tenant {tenant}'s rows hold the other tenant's data")
    for endpoint, bodies in unauthorized_bodies.items():
        if len(bodies) != 1:
            problems.append(f"{endpoint}: 401 answers differ by token ({bodies}): an oracle")

    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"
    assert leaks == 0
    figure("Tenant isolation: a tenant × token × own/foreign/missing resource × route matrix "
           "shows no cross-tenant read or write",
           f"{cells} cells over {len(routes)} routes (2 tenants × 4 tokens × own/foreign/"
           "missing): 2xx only with the tenant's own token; another tenant's participant or "
           "batch answers exactly like a missing one (404, or a failed batch item); "
           "cross-tenant reads: 0, cross-tenant writes: 0")


# -- the token comparison -----------------------------------------------------------------------

@pytest.fixture
def compare_calls(monkeypatch):
    """Every hmac.compare_digest call: its two arguments' lengths."""
    import webapp.http

    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b), type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(webapp.http.hmac, "compare_digest", counting)
    return calls


def _authenticate(app, sent: dict):
    from webapp.errors import Unauthorized
    from webapp.http import authenticate

    with app.test_request_context(headers=sent):
        from flask import request
        try:
            return authenticate(request, app.extensions["participants"].tokens)
        except Unauthorized:
            return None


TOKEN_VARIANTS = {
    "valid": ("token-a", True),
    "unknown": ("token-zz", False),
    "other tenant's": ("token-b", False),
    "prefix of a valid token": ("token-", False),
    "valid token plus a byte": ("token-ab", False),
    "very long": ("t" * 1024, False),
    "empty": ("", False),
    "missing": (None, False),
}


def test_token_comparison_is_constant_time_for_valid_and_invalid_tokens(app, compare_calls,
                                                                        figure):
    """authenticate() looks the token up by its SHA-256 digest and always confirms with
    hmac.compare_digest on two 32-byte digests, whether the token is valid, invalid, empty or
    missing, so the time taken does not depend on how much of a token an attacker guessed
    right."""
    for name, (token, valid) in TOKEN_VARIANTS.items():
        compare_calls.clear()
        sent = headers("a", **{"X-COREOS-ACCESS": token})
        if token is None:
            del sent["X-COREOS-ACCESS"]
        caller = _authenticate(app, sent)
        assert (caller is not None) is valid, name
        assert compare_calls == [(32, 32, bytes, bytes)], (name, compare_calls)
    figure("Access tokens are compared in constant time",
           f"hmac.compare_digest on two 32-byte SHA-256 digests: called once on each of "
           f"{len(TOKEN_VARIANTS)} token variants (valid, unknown, other tenant's, prefix, "
           "longer, 1 KiB, empty, missing); no early exit")


# -- the callback secret ------------------------------------------------------------------------

# Columns that must hold the secret to sign callbacks, and while when.
SECRET_ALLOWED = {
    ("participants", "callback_secret"): "always (signs later callbacks of the participant)",
    ("outbox", "secret"): "while status = 'pending' (cleared when delivered or given up)",
    ("batches", "callback_secret"): "while the batch is not completed",
}


def _secret_columns(database, secrets: list[str]) -> list[tuple[str, str, str]]:
    """(table, column, row status) of every database value holding one of `secrets`."""
    found = []
    db = inspect(database)
    with db.snapshot():
        for table in db.tables():
            for values in db.dicts(f'SELECT * FROM "{table}"'):
                for column, value in values.items():
                    if value is None:
                        continue
                    text = value.decode("utf-8", "replace") if isinstance(value, bytes) \
                        else str(value)
                    if any(s in text for s in secrets):
                        found.append((table, column, str(values.get("status"))))
    return found


def test_callback_secret_appears_in_no_response_log_event_or_callback(server, figure, caplog):
    """A different X-COREOS-CALLBACK-SECRET on every request to every write route (accepted,
    failed, refused, replayed): the secret is in no response, no callback request, no log line,
    and in the database only where it signs callbacks still to be delivered."""
    database = server.database
    secrets: list[str] = []
    responses: list[requests.Response] = []
    routes: set[tuple[str, str]] = set()
    with Receiver() as receiver:
        receiver.program("/gone", Reply(410))
        receiver.program("/later", Reply(503))

        def call(method, path, body, secret=None, tenant="a", request_id=None, **extra):
            secret = secret or f"s3cr3t-{uuid.uuid4().hex}"
            secrets.append(secret)
            sent = headers(tenant, request_id, **{"X-COREOS-CALLBACK-SECRET": secret}, **extra)
            url = server.url + (path if path.startswith("/core/") else BASE + path)
            response = requests.request(method, url, headers=sent, timeout=TIMEOUT,
                                        **({"data": body} if isinstance(body, bytes | str)
                                           else {"json": body}))
            responses.append(response)
            routes.add((method, re.sub(r"vehicles:[0-9a-f-]{36}", "{id}", path)))
            assert response.status_code < 500, response.text
            return response

        cb = {"url": receiver.url("/cb"), "meta": {"m": 1}}
        whsec = "whsec_" + base64.b64encode(uuid.uuid4().bytes).decode()
        created = call("POST", "/vehicles", {
            "uniqueCode": "SECRET-1", "callback": cb,
            "properties": {"registrationNumber": "AB-1234", "capacityKg": 5, "verified": True}},
            secret=whsec)
        pid = created.json()["data"]["id"]
        second = call("POST", "/vehicles", {"uniqueCode": "SECRET-2", "callback": {
            "url": receiver.url("/gone")}, "properties": {"registrationNumber": "AB-1235"}})
        pid2 = second.json()["data"]["id"]
        call("POST", "/vehicles", {"uniqueCode": "SECRET-3", "callback": {
            "url": receiver.url("/later")}, "properties": {"registrationNumber": "AB-1236"}})
        call("PUT", f"/vehicles/{pid}", {"properties": {"axles": 3}, "callback": cb})
        call("PUT", f"/vehicles/{pid}", {"properties": {"axles": 1},  # a failure: onError
                                         "onError": {"url": receiver.url("/on-error")}})
        call("PUT", f"/vehicles/{pid2}", {"properties": {"axles": 4}})  # stored secret → 410
        call("PUT", f"/vehicles/{pid}/state/event", {**STATE_EVENT, "callback": cb,
                                                     "onRequest": {"url": receiver.url("/hook"),
                                                                   "onResponse": {"wait": True}}})
        call("PUT", f"{BASE.rsplit('/', 1)[0]}/participant/vehicles/{pid}",
             {"stateTransition": {"eventCode": "E-022", "reasonCode": "R-0001"}})
        replayed = call("PUT", f"/vehicles/{pid}", {"properties": {"axles": 5}},
                        request_id="secret-replay")
        again = call("PUT", f"/vehicles/{pid}", {"properties": {"axles": 5}},
                     request_id="secret-replay")
        assert again.content == replayed.content
        assert call("PUT", f"/vehicles/{pid}", {"properties": {"axles": 6}},
                    request_id="secret-replay").status_code == 422
        assert call("PUT", f"/vehicles/{pid}", {"properties": {}, "version": 9}
                    ).status_code == 400
        assert call("PUT", f"/vehicles/{pid}", "x", **{"Content-Type": "text/plain"}
                    ).status_code == 415
        assert call("PUT", f"/vehicles/{pid}", {"properties": {}}, tenant="b"
                    ).status_code == 404
        assert call("PUT", f"/vehicles/{pid}", {"properties": {}},
                    **{"X-COREOS-ACCESS": "nope"}).status_code == 401
        call("GET", f"/vehicles/{pid}", None)
        call("GET", f"/vehicles/{pid}/events", None)
        call("POST", "/vehicles/batch", {"payload": [{"uniqueCode": "SECRET-B1", "properties": {
            "registrationNumber": "AB-1237"}}], "callback": cb})
        call("PUT", "/vehicles/batch", {"payload": [{"id": pid, "properties": {"axles": 7}}],
                                        "callback": cb})
        for response in responses:
            assert not any(s in response.text for s in secrets), response.text
            assert not any(s in repr(dict(response.headers)) for s in secrets)

        # Before delivery the secret waits where it is needed, and nowhere else.
        for table, column, _ in _secret_columns(database, secrets):
            assert (table, column) in SECRET_ALLOWED, (table, column)

        delivery_app = make_app(database)
        try:
            with caplog.at_level(logging.DEBUG):
                drain(delivery_app)
        finally:
            close_app(delivery_app)
        receiver.wait_for(1, "/cb")
        statuses = Counter(r[0] for r in _outbox_statuses(database))
        assert statuses["delivered"] and statuses["failed"] and statuses["pending"], statuses
        stored = _secret_columns(database, secrets)
        for table, column, status in stored:
            assert (table, column) in SECRET_ALLOWED, (table, column)
            if table == "outbox":
                assert status == "pending", "a delivered or failed delivery kept its secret"
            if table == "batches":
                assert status != "completed", "a completed batch kept its secret"
        received = receiver.received()
        assert received
        for got in received:
            assert not any(s in got.body.decode("utf-8", "replace") for s in secrets)
            assert not any(s in repr(got.headers) for s in secrets), got.headers

    log = server.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    in_log = sum(log.count(s) + logged.count(s) for s in secrets)
    assert in_log == 0
    figure("The callback secret is never echoed, logged or stored beyond signing",
           f"{len(secrets)} distinct secrets on {len(responses)} requests ({len(routes)} "
           "routes; 202, 400, 401, 404, 415, 422, replay): 0 in responses, 0 in "
           f"{len(received)} callbacks and hooks, 0 in server and dispatcher logs; in the "
           "database only in participants.callback_secret and undelivered outbox rows "
           f"({len(stored)} values)")


def _outbox_statuses(database) -> list[tuple]:
    return rows(database, "SELECT status FROM outbox")


# -- protected fields ---------------------------------------------------------------------------

RANDOM_CASINGS = scale(3, 30)  # per protected name, besides the systematic spellings
# Written out from SPEC §3, not taken from webapp/http.py: an independent oracle.
PROTECTED = ["id", "state", "version", "createdAt", "updatedAt", "tenantId", "createdBy",
             "updatedBy", "participantType", "uniqueCode", "mainState", "subState"]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def spellings(name: str) -> list[str]:
    """The name in every casing and spelling a client might try, plus random casings."""
    rng = random.Random(name)
    mixed = ["".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)
             for _ in range(RANDOM_CASINGS)]
    snake = _snake(name)
    camel_upper = name[0].upper() + name[1:]
    variants = [name, name.lower(), name.upper(), camel_upper, name.swapcase(), snake,
                snake.upper(), snake.replace("_", "-"), snake.replace("_", ""),
                snake.replace("_", " "), f" {name}", f"{name} ", f"{name}\u200b",
                "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c
                        for c in name), *mixed]  # fullwidth, then random casings
    return list(dict.fromkeys(variants))


VALUES = {"id": "vehicles:00000000-0000-5000-8000-000000000001", "state": "inactive:dead",
          "version": 999, "createdAt": 1, "updatedAt": 2, "tenantId": "tenant-b",
          "createdBy": {"id": "mallory"}, "updatedBy": {"id": "mallory"},
          "participantType": "riders", "uniqueCode": "HIJACK", "mainState": "inactive",
          "subState": "dead"}

CORE = ("tenant_id", "id", "type", "unique_code", "created_at", "created_by")


def _stored(app, pid: str) -> dict:
    row = rows(app, "SELECT tenant_id, id, type, unique_code, created_at, created_by, version,"
                    " updated_at, state, state_entered_at FROM participants WHERE id = ?", pid)
    assert len(row) == 1, row
    return dict(zip(("tenant_id", "id", "type", "unique_code", "created_at", "created_by",
                     "version", "updated_at", "state", "state_entered_at"), row[0], strict=True))


def test_protected_fields_cannot_be_set_through_any_field_or_casing(app, client, figure):
    """Every protected name in every spelling, wherever a request can carry a name: 400 at the
    top level or inside the API's own objects, a failure event (unknown attribute) inside
    `properties`, ignored inside free-form objects; the participant's id, tenant, type,
    uniqueCode and creation never change, and its version, timestamps and state change only by a
    successful write (state only to the declared destination)."""
    def create(code):
        response = client.post(f"{BASE}/vehicles", headers=headers(), json={
            "uniqueCode": code, "properties": {"registrationNumber": "AB-1234", "capacityKg": 9,
                                               "verified": True}})
        assert response.json["data"]["event"]["payloadValidated"], response.text
        return response.json["data"]["id"]

    pid = create("PROT-1")
    toggler = create("PROT-2")  # active:active <-> inactive:inactive through E-023 / E-022
    assert client.put(f"{BASE}/vehicles/{toggler}", headers=headers(), json={
        "stateTransition": {"eventCode": "E-022"}}).json["data"]["event"]["payloadValidated"]
    alias = f"{BASE.rsplit('/', 1)[0]}/participant/vehicles"
    event = {"eventCode": "E-101", "timestamp": 1_700_000_000, "source": {"appId": "p"},
             "data": {"inspector": "bob"}}
    attempts, changes, outcomes, problems = 0, 0, Counter(), []
    next_event = {"active:active": ("E-023", "inactive:inactive"),
                  "inactive:inactive": ("E-022", "active:active")}

    def attempt(target, method, path, body, expect, **extra):
        nonlocal attempts, changes
        who = toggler if target == "data" else pid
        before = _stored(app, who)
        count = _event_count(app)
        response = client.open(path, method=method, json=body, headers=headers(**extra))
        attempts += 1
        after = _stored(app, who)
        status = response.status_code
        accepted = status == 202 and response.json["data"]["event"]["payloadValidated"]
        outcomes[(target, status, accepted)] += 1
        where = f"{target}: {json.dumps(body)[:160]}"
        if expect == 400 and status != 400:
            problems.append(f"{where}: expected 400, got {status}")
        if expect == "unknown attribute":
            event_ = response.json["data"]["event"] if status == 202 else {}
            if status != 202 or event_.get("reason") != "unknown attribute":
                problems.append(f"{where}: expected an unknown-attribute failure event, got "
                                f"{status} {response.get_data(as_text=True)[:200]}")
        if expect == "ignored" and not accepted:
            problems.append(f"{where}: expected the write to succeed, got {status} "
                            f"{response.get_data(as_text=True)[:200]}")
        if any(before[k] != after[k] for k in CORE):
            changes += 1
            problems.append(f"{where}: core field changed {before} -> {after}")
        if not accepted and after != before:
            changes += 1
            problems.append(f"{where}: a refused or failed write changed {before} -> {after}")
        if status >= 300 and _event_count(app) != count:
            problems.append(f"{where}: a refused request wrote an event")
        if accepted:
            if after["version"] != before["version"] + 1:
                changes += 1
                problems.append(f"{where}: version {before['version']} -> {after['version']}")
            declared = next_event.get(before["state"], (None, before["state"]))[1] \
                if target == "data" else before["state"]
            if after["state"] != declared:
                changes += 1
                problems.append(f"{where}: state {before['state']} -> {after['state']}, "
                                f"declared {declared}")
        return response

    for name in PROTECTED:
        value = VALUES[name]
        for spelled in spellings(name):
            create_body = {"uniqueCode": f"PROT-NEW-{attempts}", "properties": {
                "registrationNumber": "AB-1234"}}
            if spelled != "uniqueCode":  # uniqueCode is a create field (and only there)
                attempt("create top level", "POST", f"{BASE}/vehicles",
                        {**create_body, spelled: value}, 400)
            for target, path in (("update top level", f"{BASE}/vehicles/{pid}"),
                                 ("alias top level", f"{alias}/{pid}")):
                attempt(target, "PUT", path, {"properties": {}, spelled: value}, 400)
            attempt("state event top level", "PUT", f"{BASE}/vehicles/{pid}/state/event",
                    {**event, spelled: value}, 400)
            attempt("stateTransition", "PUT", f"{BASE}/vehicles/{pid}",
                    {"stateTransition": {"eventCode": "E-101", spelled: value}}, 400)
            attempt("source", "PUT", f"{BASE}/vehicles/{pid}/state/event",
                    {**event, "source": {"appId": "p", spelled: value}}, 400)
            attempt("create properties", "POST", f"{BASE}/vehicles", {
                **create_body, "properties": {**create_body["properties"], spelled: value}},
                "unknown attribute")
            attempt("update properties", "PUT", f"{BASE}/vehicles/{pid}",
                    {"properties": {spelled: value}}, "unknown attribute")
            attempt("update properties with a transition", "PUT", f"{BASE}/vehicles/{pid}",
                    {"properties": {spelled: value}, "stateTransition": {"eventCode": "E-022"}},
                    "unknown attribute")
            attempt("callback meta", "PUT", f"{BASE}/vehicles/{pid}", {
                "properties": {"axles": 3}, "callback": {"url": "http://127.0.0.1:9/cb",
                                                         "meta": {spelled: value}}}, "ignored")
            attempt("user info header", "PUT", f"{BASE}/vehicles/{pid}",
                    {"properties": {"axles": 4}}, "ignored",
                    **{"X-COREOS-USERINFO": json.dumps({"id": "u", spelled: value})})
            state = _stored(app, toggler)["state"]
            code = next_event[state][0]
            attempt("data", "PUT", f"{BASE}/vehicles/{toggler}/state/event",
                    {"eventCode": code, "reasonCode": "R-0001", "timestamp": 1_700_000_000,
                     "source": {"appId": "p"}, "data": {spelled: value, "state": value}},
                    "ignored")

    for query in ("tenantId=tenant-b&version=99&state=inactive:dead&id=x",):
        attempt("query string", "PUT", f"{BASE}/vehicles/{pid}?{query}",
                {"properties": {"axles": 5}}, "ignored")
    batch_items = 0
    if "batches.update_batch" in {r.endpoint for r in app.url_map.iter_rules()}:
        items = [{"id": pid, spelled: VALUES[name]} for name in PROTECTED
                 for spelled in spellings(name) if spelled != "id"]
        before = _stored(app, pid)
        response = client.put(f"{BASE}/vehicles/batch", headers=headers(),
                              json={"payload": items})
        assert response.status_code == 202, response.get_data(as_text=True)
        drain(app)
        batch_items = len(items)
        attempts += batch_items
        if _stored(app, pid) != before:
            changes += 1
            problems.append(f"batch items with protected fields changed {pid}")

    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"
    assert changes == 0
    total_spellings = sum(len(spellings(n)) for n in PROTECTED)
    figure("Protected fields cannot be set through any field or casing",
           f"{attempts} attempts ({total_spellings} spellings of {len(PROTECTED)} protected "
           "names at the top level, in stateTransition, source, properties, callback.meta, "
           f"user info, state-event data, query string{', batch items' if batch_items else ''})"
           f": top level → 400, properties → unknown-attribute failure; protected-field "
           "changes outside a declared transition: 0")


def _event_count(app) -> int:
    return count(app, "events")


# -- SSRF vectors (from tests/test_outbound.py) -------------------------------------------------

def test_ssrf_vectors_are_refused_and_never_reach_the_canary(monkeypatch, database, figure):
    """Every URL vector of tests/test_outbound.py is refused by check_url, by send() (with every
    name resolving to a loopback canary) and by the API with private addresses disallowed; the
    canary sees no connection."""
    test_outbound = pytest.importorskip("tests.test_outbound")
    vectors = [p.values[0] for p in test_outbound.VECTORS]

    with Receiver() as canary:
        real = socket.getaddrinfo

        def resolve_to_canary(host, port, *args, **kwargs):
            if parse_literal(str(host)) is not None:
                return real(host, port, *args, **kwargs)
            return real("127.0.0.1", canary.port, *args, **kwargs)

        monkeypatch.setattr("socket.getaddrinfo", resolve_to_canary)
        strict = make_app(database, PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS="0")
        try:
            client = strict.test_client()
            refused = 0
            for url in vectors:
                with pytest.raises(OutboundRefused):
                    check_url(url, allow_private=False)
                with pytest.raises(OutboundRefused):
                    send(url, body=b"{}", connect_timeout=0.5, read_timeout=0.5)
                response = client.post(f"{BASE}/vehicles", headers=headers(), json={
                    "uniqueCode": "SSRF", "properties": {"registrationNumber": "AB-1234"},
                    "callback": {"url": url}, "onError": {"url": url}})
                assert response.status_code == 400, (url, response.get_data(as_text=True))
                refused += 1
            assert _event_count(strict) == 0
        finally:
            close_app(strict)
        assert canary.connections == 0
    figure("Outbound URLs (callbacks, hooks) never reach private or loopback addresses",
           f"SSRF vectors of tests/test_outbound.py refused by check_url, send() and the API: "
           f"{refused} of {len(vectors)}; connections reaching the loopback canary: 0")


