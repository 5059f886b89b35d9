"""API fuzzing against a real gunicorn server: schemathesis over the OpenAPI document, and a
generated corpus of hostile bodies on every write route.

Schemathesis reads the document the server itself serves (GET …/openapi.json) and generates
requests for every operation in it, schema-valid ones (positive) and schema-violating ones
(negative), with valid headers injected (a fresh X-COREOS-REQUEST-ID per call, tenant-a,
token-a). Every response must be no 5xx, have a documented status and content type, and match
the response schema; every negative request must be refused with a 4xx. A second run sends the
same generated requests with a missing, unknown or other tenant's token: only 401 (or 400 for a
malformed header) may come back.

List queries get schemathesis of their own (GET /{plural} only, many more cases; `query` is
generated from the Query schema as JSON text) and a hostile corpus of query strings: every
operator with extreme numbers (1e308, 2^64, 10^400 as JSON text, NaN), huge, odd and invalid
strings, wrong shapes and odd keys; clause and terms-value counts far past the limits; JSON
10^5 deep or 1,000 wide; megabyte query strings; odd sortKey, sortBy, limit, offset and
select[]. Each must be the 200 or the 400 (naming its path) that the limits call for, fit the
OpenAPI document, and write nothing.

The hostile-body corpus is built from valid bodies of every POST/PUT route of the application's
url_map: truncated at every k-th byte, BOM-prefixed, NaN/Infinity/overflowing numbers in every
value, every key duplicated, lone surrogates in every string and key, 10^5-deep nesting, bodies
over the size limit (with and without Content-Length), invalid UTF-8, wrong content types. Every
one must answer a 4xx error envelope and leave every table of the database as it was.
`tests/test_api_hostile.py` checks single examples of these classes in-process, with exact error
paths; this suite checks the whole generated corpus against gunicorn.

Batch uploads (multipart/form-data with a CSV file) get their own hostile inputs: unreadable or
unknown parts, unusable CSV files (4xx, nothing stored), and hostile cells (never a 5xx, and
nothing a later read answers is anything but strict JSON).
"""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from types import SimpleNamespace

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    BASE,
    LONG,
    Server,
    assert_clean_log,
    close_app,
    headers,
    ledger,
    make_app,
    scale,
)
from webapp.http import OPENAPI

pytestmark = pytest.mark.reliability

TIMEOUT = 60
ALIAS = BASE.rsplit("/", 1)[0] + "/participant"
EXAMPLES = scale(20, 150)  # generated requests per operation and generation mode
AUTH_EXAMPLES = scale(4, 40)  # generated requests per operation for each bad-auth variant


# -- helpers ------------------------------------------------------------------------------------

@pytest.fixture
def server(database, tmp_path):
    """conftest's gunicorn, with no limit on the request line: gunicorn would answer a query
    string over 4,094 bytes itself (414, in HTML), and these suites check the service's own
    limits (engine/service/queries.py LIMITS); its log is checked for tracebacks as there."""
    srv = Server(database, tmp_path / "gunicorn.log",
                 extra_env={"GUNICORN_CMD_ARGS": "--limit-request-line 0"})
    yield srv
    assert_clean_log(srv.stop())


@pytest.fixture(scope="module")
def sx():
    """schemathesis and the checks these tests use (the tests skip when it is not installed)."""
    schemathesis = pytest.importorskip(
        "schemathesis", reason="schemathesis is not installed: pip install -e '.[test]'")
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import AcceptedNegativeData, FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    return SimpleNamespace(
        openapi=schemathesis.openapi, GenerationMode=schemathesis.GenerationMode,
        FailureGroup=FailureGroup, AcceptedNegativeData=AcceptedNegativeData,
        not_a_server_error=not_a_server_error, negative_data_rejection=negative_data_rejection,
        conformance=[status_code_conformance, content_type_conformance,
                     response_schema_conformance])


def _tracebacks(server) -> str:
    """The server log from its first traceback on (empty when there is none)."""
    log = server.log_path.read_text(errors="replace")
    return "\nserver log:\n" + log[log.index("Traceback"):][:4000] if "Traceback" in log else ""


def _create(server, code: str, tenant: str = "a") -> str:
    body = {"uniqueCode": code, "properties": {"registrationNumber": "AB-1234",
                                               "capacityKg": 10, "verified": True}}
    response = requests.post(f"{server.url}{BASE}/vehicles", json=body, headers=headers(tenant),
                             timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    assert response.json()["data"]["event"]["payloadValidated"], response.text
    return response.json()["data"]["id"]


def _load_schema(sx, server):
    return sx.openapi.from_url(f"{server.url}{BASE}/openapi.json", timeout=TIMEOUT)


def _operations(schema) -> list:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the OpenAPI document has no operations"
    return operations


def _strategy(operation, mode, own: str, foreign: str):
    """Cases for `operation`: fully generated, and with a real type and real participant ids
    (own, another tenant's, generated) so the fuzzing reaches past the 404 of a made-up type."""
    names = {p.name for p in operation.path_parameters}
    strategies = [operation.as_strategy(generation_mode=mode)]
    if "plural" in names:
        fixed = [{"plural": "vehicles"}]
        if "id" in names:
            fixed = [{"plural": "vehicles", "id": own}, {"plural": "vehicles", "id": foreign},
                     {"plural": "vehicles"}]
        strategies += [operation.as_strategy(generation_mode=mode, path_parameters=p)
                       for p in fixed]
    return st.one_of(strategies)


WELL_FORMED_OPTIONAL = {"X-COREOS-USERINFO": '{"id": "u-1", "name": "Fuzz", "appId": "fz"}',
                        "X-COREOS-CALLBACK-SECRET": "whsec_c2VjcmV0LWZ1enotMTIzNA==",
                        "If-Match": "*"}


def _negated_headers(case) -> set[str]:
    """Names (lower case) of the headers a negative case deliberately made invalid."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return set()
    data = meta.phase.data
    names = set()
    if getattr(data, "parameter_location", None) == "header":
        names.add((data.parameter or "").lower())
    for mutation in getattr(data, "mutations", ()):
        if mutation.parameter_location == "header":
            names.add((mutation.parameter or "").lower())
    return names


def _injected_headers(case, tenant: str = "a") -> dict:
    """Valid identity headers, except those the negative case is about (all but the token
    when the mutation is on the headers as a whole)."""
    negated = _negated_headers(case)
    sent = headers(tenant)
    if "" in negated:
        return {"X-COREOS-ACCESS": sent["X-COREOS-ACCESS"]}
    return {k: v for k, v in sent.items() if k.lower() not in negated}


def _only_batch_items_negated(case) -> bool:
    """The negative case only spoils items inside a batch's `payload`.

    Documented behaviour (webapp/openapi.yaml, /{plural}/batch): "An item that does not fit
    CreateRequest, or names a refused callback URL, fails on its own; the rest of the batch is
    applied", so such a batch is accepted (202) although the item schema says otherwise.
    """
    meta = case.meta
    if meta is None or not case.operation.path.endswith("/batch"):
        return False
    mutations = getattr(meta.phase.data, "mutations", ())
    return bool(mutations) and all(
        m.parameter_location == "body" and len(m.path) >= 2 and m.path[0] == "payload"
        for m in mutations)


class Tally:
    """What a fuzzing run saw: inputs, statuses, server errors and check failures."""

    def __init__(self, sx):
        self.sx = sx
        self.inputs = 0
        self.statuses: Counter = Counter()
        self.server_errors: list[str] = []
        self.failures: list[str] = []
        self.batch_items_accepted = 0

    def record_failures(self, label: str, group, response, case, sent: dict) -> None:
        for failure in group.exceptions:
            if (isinstance(failure, self.sx.AcceptedNegativeData)
                    and _only_batch_items_negated(case)):
                self.batch_items_accepted += 1
                continue
            self.failures.append(f"{label}: {type(failure).__name__}: {failure.title} "
                                 f"[{response.status_code}] {response.text[:300]}\n    "
                                 f"{case.as_curl_command(headers=sent)[:1000]}")

    def report(self) -> str:
        lines = self.server_errors[:5] + self.failures[:10]
        more = len(self.server_errors) + len(self.failures) - len(lines)
        return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


def _fuzz(strategy, examples: int, call) -> None:
    """Run `call(case)` on `examples` generated cases, without shrinking (failures are tallied,
    not raised, so one bad input does not hide the others)."""

    # The short form (CI's) replays the same examples every run; the long form explores.
    @settings(max_examples=examples, deadline=None, database=None, derandomize=not LONG,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(case=strategy)
    def run(case):
        call(case)

    run()


# -- schemathesis: positive and negative data ---------------------------------------------------

def test_schemathesis_fuzzing_finds_no_5xx_and_no_nonconforming_response(sx, server, figure):
    """Generated requests for every documented operation: no 5xx, every response documented
    (status, content type, schema), and every schema-violating request refused with a 4xx."""
    own, foreign = _create(server, "FZ-A", "a"), _create(server, "FZ-B", "b")
    schema = _load_schema(sx, server)
    operations = _operations(schema)
    session = requests.Session()
    tally = Tally(sx)
    negatives_refused = Counter()

    for operation in operations:
        for mode in (sx.GenerationMode.POSITIVE, sx.GenerationMode.NEGATIVE):
            checks = [sx.not_a_server_error, *sx.conformance]
            if mode.is_negative:
                checks.append(sx.negative_data_rejection)

            def call(case, operation=operation, mode=mode, checks=checks):
                sent = _injected_headers(case)
                if mode.is_positive and tally.inputs % 2:
                    # Every other case: well-formed optional headers too, so the request gets
                    # past header checks to the service (generated ones are mostly a 400).
                    sent.update(WELL_FORMED_OPTIONAL)
                response = case.call(base_url=server.url + BASE, session=session, headers=sent,
                                     timeout=TIMEOUT)
                tally.inputs += 1
                tally.statuses[response.status_code] += 1
                label = f"{operation.label} ({mode.value})"
                if response.status_code >= 500:
                    tally.server_errors.append(f"{label}: {response.status_code} "
                                               f"{case.as_curl_command(headers=sent)}")
                if mode.is_negative and 400 <= response.status_code < 500:
                    negatives_refused[operation.label] += 1
                try:
                    case.validate_response(response, checks=checks, headers=sent)
                except sx.FailureGroup as group:
                    tally.record_failures(label, group, response, case, sent)

            _fuzz(_strategy(operation, mode, own, foreign), EXAMPLES, call)

    assert not tally.server_errors and not tally.failures, tally.report() + _tracebacks(server)
    assert tally.inputs >= len(operations) * 2
    # The run reached past routing and authentication: accepted writes and successful reads.
    assert tally.statuses[202] > 0 and tally.statuses[200] > 0, tally.statuses
    assert sum(negatives_refused.values()) > 0
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(tally.statuses.items()))
    figure("API fuzzing (schemathesis, positive and negative data) finds no 5xx and no "
           "response outside the OpenAPI document",
           f"{tally.inputs} generated requests over {len(operations)} operations "
           f"({statuses}); 5xx: 0; nonconforming responses: 0; schema-violating requests "
           "accepted: 0 (batches whose only invalid items fail one by one, as documented: "
           f"{tally.batch_items_accepted})")


BAD_AUTH = {
    "missing token": lambda h: {k: v for k, v in h.items() if k != "X-COREOS-ACCESS"},
    "empty token": lambda h: {**h, "X-COREOS-ACCESS": ""},
    "unknown token": lambda h: {**h, "X-COREOS-ACCESS": "token-" + "z" * 40},
    "other tenant's token": lambda h: {**h, "X-COREOS-ACCESS": "token-b"},
    "token for another tenant id": lambda h: {**h, "X-COREOS-TID": "tenant-b"},
    "token with a suffix": lambda h: {**h, "X-COREOS-ACCESS": "token-a2"},
    "token prefix": lambda h: {**h, "X-COREOS-ACCESS": "token-"},
    "token differing in case": lambda h: {**h, "X-COREOS-ACCESS": "TOKEN-A"},
}


def test_fuzzed_requests_without_valid_auth_are_refused(sx, server, figure):
    """The same generated requests (schema-valid) with a missing, unknown or other tenant's
    token: every protected operation answers 401 (400 only for a malformed header), never
    data, and nothing is written."""
    own, foreign = _create(server, "FZ-A", "a"), _create(server, "FZ-B", "b")
    schema = _load_schema(sx, server)
    protected = [op for op in _operations(schema) if op.definition.raw.get("security") != []]
    database = server.database
    before = ledger(database)
    session = requests.Session()
    tally = Tally(sx)

    for operation in protected:
        def call(case, operation=operation):
            for variant, spoil in BAD_AUTH.items():
                sent = spoil(headers("a"))
                response = case.call(base_url=server.url + BASE, session=session,
                                     headers=sent, timeout=TIMEOUT)
                tally.inputs += 1
                tally.statuses[response.status_code] += 1
                if response.status_code not in (400, 401):
                    tally.failures.append(f"{operation.label} with {variant}: "
                                          f"{response.status_code} {response.text[:300]}")
                if response.status_code >= 500:
                    tally.server_errors.append(f"{operation.label}: {response.status_code}")
                try:
                    case.validate_response(
                        response, checks=[sx.not_a_server_error, *sx.conformance], headers=sent)
                except sx.FailureGroup as group:
                    tally.record_failures(operation.label, group, response, case, sent)

        strategy = _strategy(operation, sx.GenerationMode.POSITIVE, own, foreign)
        _fuzz(strategy, AUTH_EXAMPLES, call)

    assert not tally.failures and not tally.server_errors, tally.report() + _tracebacks(server)
    assert ledger(database) == before
    assert tally.statuses[401] > 0
    figure("Authentication is never ignored: fuzzed requests with a missing, unknown or other "
           "tenant's token are refused",
           f"{tally.inputs} requests over {len(protected)} protected operations × "
           f"{len(BAD_AUTH)} bad-token variants: 401: {tally.statuses[401]}, "
           f"400: {tally.statuses[400]}, other: 0; rows written: 0")


# -- hostile query strings (list queries) -------------------------------------------------------

LIST_EXAMPLES = scale(40, 1000)  # generated list requests per generation mode
HUGE = scale(10**6, 8 * 10**6)  # characters of the longest query strings


def test_schemathesis_list_query_parameters_find_no_5xx(sx, server, figure):
    """GET /{plural} alone, many more cases: `query` generated from the Query schema (as JSON
    text, positive and negative), with limit, offset, sortKey, sortBy and select[]; no 5xx,
    every response documented, every schema-violating request refused with a 4xx."""
    for code in ("LQ-1", "LQ-2"):
        _create(server, code)
    schema = _load_schema(sx, server)
    operation = next(op for op in _operations(schema) if op.label == "GET /{plural}")
    assert "content" in next(p for p in operation.definition.raw["parameters"]
                             if p.get("name") == "query"), "query is not generated as JSON"
    session = requests.Session()
    tally = Tally(sx)
    for mode in (sx.GenerationMode.POSITIVE, sx.GenerationMode.NEGATIVE):
        checks = [sx.not_a_server_error, *sx.conformance]
        if mode.is_negative:
            checks.append(sx.negative_data_rejection)

        def call(case, mode=mode, checks=checks):
            sent = _injected_headers(case)
            response = case.call(base_url=server.url + BASE, session=session, headers=sent,
                                 timeout=TIMEOUT)
            tally.inputs += 1
            tally.statuses[response.status_code] += 1
            if response.status_code >= 500:
                tally.server_errors.append(f"{mode.value}: {response.status_code} "
                                           f"{case.as_curl_command(headers=sent)[:1000]}")
            try:
                case.validate_response(response, checks=checks, headers=sent)
            except sx.FailureGroup as group:
                tally.record_failures(f"GET /{{plural}} ({mode.value})", group, response, case,
                                      sent)

        strategy = operation.as_strategy(generation_mode=mode,
                                         path_parameters={"plural": "vehicles"})
        _fuzz(strategy, LIST_EXAMPLES, call)

    assert not tally.server_errors and not tally.failures, tally.report() + _tracebacks(server)
    assert tally.statuses[200] > 0 and tally.statuses[400] > 0, tally.statuses
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(tally.statuses.items()))
    figure("List queries generated from the OpenAPI document (schemathesis, positive and "
           "negative) find no 5xx and no response outside the document",
           f"{tally.inputs} generated list requests (query, limit, offset, sortKey, sortBy, "
           f"select[]) ({statuses}); 5xx: 0; nonconforming responses: 0; schema-violating "
           "requests accepted: 0")


# Values as raw JSON text: (label, text, within the limits). A value within the limits may still
# be refused for its operator (a number for prefix) or key; one past them is always a 400.
QUERY_NUMBERS = [
    ("1e308", "1e308", False), ("-1e308", "-1e308", False),
    ("largest double", "1.7976931348623157e308", False), ("1e400", "1e400", False),
    ("-1e999", "-1e999", False), ("2^63", str(2**63), False), ("2^63 - 1", str(2**63 - 1), True),
    ("-2^63", str(-(2**63)), True), ("-2^63 - 1", str(-(2**63) - 1), False),
    ("2^64", str(2**64), False), ("10^400", "1" + "0" * 400, False),
    ("-10^400", "-1" + "0" * 400, False), ("4301 digits", "9" * 4301, False),
    ("2^63 as a decimal", "9.223372036854775808e18", False), ("9.2e18", "9.2e18", True),
    ("1e-400", "1e-400", True), ("5e-324", "5e-324", True), ("-0.0", "-0.0", True),
    ("0.1", "0.1", True), ("NaN", "NaN", False), ("Infinity", "Infinity", False),
    ("-Infinity", "-Infinity", False), ("hex", "0x10", False), ("leading zero", "01", False),
]
QUERY_STRINGS = [
    ("empty", '""', True), ("1,024 characters", json.dumps("x" * 1024), True),
    ("1,025 characters", json.dumps("x" * 1025), False),
    ("1,024 emoji", json.dumps("\U0001F600" * 1024), True),
    ("1,024 wildcards", json.dumps("%" * 1024), True),
    ("1,024 escapes", json.dumps("_\\" * 512), True), ("10^5 characters", json.dumps("y" * 10**5),
                                                      False),
    ("NUL", '"\\u0000"', True), ("NUL inside", json.dumps("a\x00b"), True),
    ("lone surrogate", '"\\ud800"', False), ("swapped surrogates", '"\\udfff\\ud800"', False),
    ("unicode oddities", json.dumps("\u202e\ufeff e\u0301 \uffff \U0010ffff \u2028"), True),
    ("NaN as text", '"NaN"', True), ("SQL", json.dumps("x' OR '1'='1"), True),
    ("control character", '"\x01"', False),
]
QUERY_SHAPES = [
    ("null", "null", False), ("true", "true", True), ("object", '{"a": 1}', False),
    ("empty array", "[]", False), ("array", '["Diesel"]', False),
    ("nested 3 deep", '{"a": {"b": {"c": 1}}}', False),
    ("nested 33 deep", "[" * 33 + "]" * 33, False),
    ("nested 10^4 deep", "[" * 10**4 + "]" * 10**4, False),
]
QUERY_VALUES = QUERY_NUMBERS + QUERY_STRINGS + QUERY_SHAPES
QUERY_KEYS = {"core text": "name", "core number": "version", "indexed": "registrationNumber",
              "unknown": "colour"}
ODD_KEYS = ['""', '"\\u0000"', '"name\\u0000"', json.dumps("k" * 1024), json.dumps("k" * 1025),
            json.dumps("k" * 10**5), "1", "null", "true", '{"a": 1}', '["name"]', '"NAME"',
            '" name"', '"name "', '"properties"', '"tenantId"', '"p.id"', '"id) OR 1=1 --"',
            '"\\u202ename"', '"\\ud800"', '"s.value"']


def _clause(operator: str, key: str, value: str) -> str:
    """One clause of `operator` as JSON text; `key` and `value` are JSON texts."""
    if operator == "terms":
        return f'{{"key":{key},"values":[{value}]}}'
    if operator == "range":
        return f'{{"key":{key},"relation":"gte","value":{value}}}'
    if operator == "exists":
        return f'{{"key":{key}}}'
    return f'{{"key":{key},"value":{value}}}'


def _query(operator: str, *clauses: str) -> str:
    return f'{{"{operator}":[{",".join(clauses)}]}}'


def _answerable(operator: str, key: str, value: str) -> bool:
    """Whether SPEC §3 answers this clause (its value within the limits): a queryable key and a
    value of the operator's type. Written from the spec, as an oracle of
    engine/service/queries.py."""
    if key not in ("name", "version", "registrationNumber"):
        return False
    if operator == "exists":
        return True
    parsed = json.loads(value)
    if operator in ("prefix", "match"):
        return isinstance(parsed, str) and parsed != ""
    return not (operator == "range" and isinstance(parsed, bool))


def hostile_list_requests():
    """(kind, query-string parameters, must be refused) for the list route."""
    from engine.service.queries import LIMITS, OPERATORS

    for operator in OPERATORS:
        for key in QUERY_KEYS.values():
            for label, value, ok in ([("", "", True)] if operator == "exists" else QUERY_VALUES):
                yield f"{operator}: {label or 'key'}", \
                    {"query": _query(operator, _clause(operator, json.dumps(key), value))}, \
                    not ok or not _answerable(operator, key, value)
        for key in ODD_KEYS:
            yield f"{operator}: odd key", \
                {"query": _query(operator, _clause(operator, key, '"Diesel"'))}, True
        # a wide terms list, and wide values for the rest
        values = ",".join(json.dumps(f"v{i}") for i in range(LIMITS.terms_values))
        yield f"{operator}: clause of the longest values", {"query": _query(
            operator, *[_clause(operator, '"name"', json.dumps("%_" * 512))] * 3)}, False
        if operator == "terms":
            for count, refused in ((LIMITS.terms_values, False), (LIMITS.terms_values + 1, True),
                                   (HUGE // 10, True)):
                many = ",".join(str(i) for i in range(count))
                yield f"terms with {count:,} values", \
                    {"query": f'{{"terms":[{{"key":"version","values":[{many}]}}]}}'}, refused
            yield "50 terms clauses of 100 values", {"query": _query(
                "terms", *[f'{{"key":"fuelType","values":[{values}]}}'] * LIMITS.clauses)}, False
    # clause counts, alone and across operators
    exists = '{"key":"name"}'
    for count in (LIMITS.clauses, LIMITS.clauses + 1, 1000, 5000, HUGE // 20):
        yield f"{count:,} clauses", {"query": _query("exists", *[exists] * count)}, \
            count > LIMITS.clauses
    half = LIMITS.clauses // 2
    every = {op: [json.loads(_clause(op, '"name"', '"a"'))] * (half if op == "term" else 1)
             for op in OPERATORS}  # 25 + 1 + 1 + 1 + exists + 1
    yield "every operator, at the limit", {"query": json.dumps({
        **every, "exists": [{"key": "name"}] * (LIMITS.clauses - half - 4)})}, False
    yield "every operator, one past the limit", {"query": json.dumps({
        **every, "exists": [{"key": "name"}] * (LIMITS.clauses - half - 3)})}, True
    # deep and wide JSON, and JSON that is not a query
    for text in ("[" * 10**5 + "]" * 10**5, '{"term":' * 40 + "[]" + "}" * 40,
                 '{"term":[' + "[" * 40 + "]" * 40 + "]}",
                 "{" + ",".join(f'"op{i}":[]' for i in range(1000)) + "}",
                 '{"term":[{"key":"name","value":"a",' + ",".join(
                     f'"m{i}":1' for i in range(1000)) + "}]}",
                 '{"term":[],"term":[]}', "{term:", "'", "\ufeff{}", "{} x", "NaN", "1e999", "[]",
                 "null", '"text"', "0", "{", "\x00", '{"term":null}', '{"term":{}}',
                 '{"term":[null]}', '{"term":[[]]}', '{"exists":[{}]}', '{"": []}',
                 '{"\\ud800": []}', '{"range":[{"key":"name","relation":"eq","value":1}]}'):
        yield "deep, wide or not a query", {"query": text}, True
    # the whole parameter's length: whitespace is JSON too
    small = '{"exists":[{"key":"name"}]}'
    for length, refused in ((LIMITS.query_chars, False), (LIMITS.query_chars + 1, True),
                            (HUGE, True)):
        yield f"query of {length:,} characters", \
            {"query": small[:-1] + " " * (length - len(small)) + "}"}, refused
    # the other parameters
    for key, ok in (("createdAt", True), ("registrationNumber", True), ("version", True),
                    ("capacityKg", False), ("", False), ("\x00", False), ("k" * 1025, False),
                    ("k" * 10**6, False), ("createdAt; DROP TABLE participants", False),
                    ("s.value", False), ("p.id", False), ("tenantId", False),
                    ("properties", False), ("\u202ecreatedAt", False), ("createdAt ", False),
                    ("CREATEDAT", False), ("%FF%FE", False)):
        yield "sortKey", {"sortKey": key}, not ok
    for value, ok in (("asc", True), ("desc", True), ("ASC", False), ("", False),
                      ("\x00", False), ("desc ", False), ("x" * 10**5, False)):
        yield "sortBy", {"sortBy": value}, not ok
    for name, high in (("limit", LIMITS.limit), ("offset", LIMITS.offset)):
        low = 1 if name == "limit" else 0
        for value, ok in ((str(low), True), (str(high), True), (str(high + 1), False),
                          (str(low - 1), False), ("1e2", False), (" 1", False), ("1 ", False),
                          ("+1", False), ("\uff11", False), ("\u0663", False), ("9" * 30, False),
                          ("", False), ("1.0", False), ("0x10", False), ("\x00", False),
                          (str(2**64), False)):
            yield name, {name: value}, not ok
    for names, ok in ((["name"], True), (["properties", "fuelType", "state"], True),
                      (["name"] * LIMITS.select, True), (["name"] * (LIMITS.select + 1), False),
                      (["name"] * 10**4, False), (["colour"], False), ([""], False),
                      (["\x00"], False), (["k" * 1025], False), (["tenantId"], False)):
        yield "select[]", {"select[]": names}, not ok
    yield "select", {"select": ["name", "fuelType"]}, False
    for params in ({"page": "2"}, {"query[]": "{}"}, {"Query": "{}"}, {"": "x"}):
        yield "unknown parameter", params, True
    yield "query twice", [("query", "{}"), ("query", "[]")], False
    yield "limit twice", [("limit", "1"), ("limit", "0")], False


class _Answer:
    """A requests response as tests/test_openapi.py's Contract reads a Flask one."""

    def __init__(self, response):
        self.status_code, self.headers = response.status_code, response.headers
        self.mimetype = response.headers.get("Content-Type", "").split(";")[0].strip()
        self._text = response.text

    def get_data(self, as_text: bool = False):
        return self._text


def test_hostile_list_queries_are_answered_never_a_5xx_and_write_nothing(server, figure):
    """About a thousand hostile list requests (every operator × extreme numbers, huge, odd
    and invalid strings, wrong shapes, odd keys; clause counts and terms values far past the
    limits, JSON 10^5 deep or 1,000 wide, query strings of 1 MB (8 MB in the long form), odd
    sortKey, sortBy, limit, offset and select[]): each is the 200 or the 400 naming its path
    that SPEC §3 and the limits call for, and fits the OpenAPI document; nothing is written and
    the server logs no traceback."""
    from tests.test_openapi import Contract

    for code in ("HQ-1", "HQ-2"):
        _create(server, code)
    database = server.database
    before = ledger(database)
    contract = Contract(OPENAPI)
    session = requests.Session()
    url = f"{server.url}{BASE}/vehicles"
    tried, statuses, kinds, wrong, slowest = 0, Counter(), Counter(), [], 0.0
    for kind, params, refused in hostile_list_requests():
        started = time.monotonic()
        response = session.get(url, params=params, headers=headers("a"), timeout=TIMEOUT)
        slowest = max(slowest, time.monotonic() - started)
        tried += 1
        kinds[kind.split(":")[0]] += 1
        statuses[response.status_code] += 1
        shown = f"{kind} {str(params)[:160]}: {response.status_code} {response.text[:200]}"
        problems = len(contract.problems)
        contract.check("GET", f"{BASE}/vehicles", _Answer(response))
        if response.status_code not in (200, 400) or len(contract.problems) > problems:
            wrong.append(f"{shown} {contract.problems[problems:]}")
        elif refused is True and response.status_code != 400:
            wrong.append(f"{shown}: expected 400")
        elif refused is False and response.status_code != 200:
            wrong.append(f"{shown}: expected 200")
        elif response.status_code == 400:
            paths = [e["path"] for e in response.json()["error"]["additionalInfo"]["errors"]]
            if not paths or not all(re.match(r"\$\.(query|sortKey|sortBy|limit|offset|"
                                              r"select|page|Query|$)", p) for p in paths):
                wrong.append(f"{shown}: no path of the list request named")

    assert not wrong, "\n".join(wrong[:15]) + f"\n({len(wrong)} in all)" + _tracebacks(server)
    assert ledger(database) == before
    assert statuses[200] > 0 and statuses[400] > 0 and tried >= 900
    figure("Hostile list queries (extreme numbers, huge and odd strings, wrong shapes, "
           "thousands of clauses or values, 10^5-deep JSON, megabyte query strings, odd paging, "
           "sorting and select[]) are answered 200 or 400, never a 5xx",
           f"{tried} list requests over all 6 operators "
           f"({', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))}); 5xx: 0; "
           f"inputs past the limits answered 200: 0; nonconforming responses: 0; rows "
           f"written: 0; slowest answer {slowest:.2f} s")


# -- the hostile-body corpus --------------------------------------------------------------------

def _render(value, edit=None, path=()) -> str:
    """Compact JSON of `value`; `edit(path, value)` may return raw text for a node instead."""
    if edit is not None:
        replaced = edit(path, value)
        if replaced is not None:
            return replaced
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_render(v, edit, path + (k,))}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v, edit, path + (i,)) for i, v in enumerate(value)) + "]"
    return json.dumps(value)


def _nodes(value, path=()):
    """(path, value) of every node, the root included."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nodes(item, path + (i,))


def _at(target, text):
    return lambda path, value: text if path == target else None


def _with_key_at(target, raw_key):
    """The object at `target` with one more member whose key is the raw JSON text `raw_key`."""
    def edit(path, value):
        if path != target:
            return None
        members = [f"{json.dumps(k)}:{_render(v)}" for k, v in value.items()]
        return "{" + ",".join([f"{raw_key}:1", *members]) + "}"
    return edit


def _duplicated_at(target):
    def edit(path, value):
        if path != target or not value:
            return None
        members = [f"{json.dumps(k)}:{_render(v)}" for k, v in value.items()]
        key, item = next(iter(value.items()))
        return "{" + ",".join([*members, f"{json.dumps(key)}:{_render(item)}"]) + "}"
    return edit


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "9" * 100_000,
              "-" + "1" * 5000]
LONE_SURROGATES = ['"\\ud800"', '"x\\udbff"', '"\\udc00y"', '"\\udfff\\ud800"']
DEEP = 100_000
BOMS = [b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf"]
INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]
WRONG_TYPES = [None, "text/plain", "application/x-www-form-urlencoded", "application/xml",
               "text/json", "application/jsonx", "application/merge-patch+json",
               "multipart/form-data; boundary=x"]


def hostile_bodies(base: dict, *, limit: int, multipart_ok: bool):
    """(kind, body bytes, content type, expected status) for every hostile variant of `base`."""
    text = _render(base)
    raw = text.encode()
    nodes = list(_nodes(base))
    leaves = [p for p, v in nodes if not isinstance(v, dict | list)]
    objects = [p for p, v in nodes if isinstance(v, dict) and v]
    strings = [p for p, v in nodes if isinstance(v, str)]
    json_type = "application/json"

    step = max(1, len(raw) // scale(25, 200))
    for cut in range(0, len(raw), step):
        yield "truncated", raw[:cut], json_type, 400
    for bom in BOMS:
        yield "BOM", bom + raw, json_type, 400
    for codec in ("utf-16", "utf-16-be", "utf-32"):
        yield "UTF-16/32", text.encode(codec), json_type, 400
    for path in leaves:
        for constant in NON_FINITE:
            yield "non-finite or huge number", _render(base, _at(path, constant)).encode(), \
                json_type, 400
    for path in objects:
        yield "duplicate key", _render(base, _duplicated_at(path)).encode(), json_type, 400
        for surrogate in LONE_SURROGATES[:2]:
            yield "lone surrogate in a key", \
                _render(base, _with_key_at(path, surrogate)).encode(), json_type, 400
    for path in strings:
        for surrogate in LONE_SURROGATES:
            yield "lone surrogate", _render(base, _at(path, surrogate)).encode(), json_type, 400
    for path in leaves:
        yield "nesting 33 deep", _render(base, _at(path, "[" * 33 + "]" * 33)).encode(), \
            json_type, 400
    for path in leaves[:2]:
        yield f"nesting {DEEP} deep", \
            _render(base, _at(path, "[" * DEEP + "]" * DEEP)).encode(), json_type, 400
        yield f"objects nested {DEEP // 2} deep", _render(base, _at(
            path, '{"a":' * (DEEP // 2) + "1" + "}" * (DEEP // 2))).encode(), json_type, 400
    for bad in INVALID_UTF8:
        middle = raw.index(b'"', 2) + 1
        yield "invalid UTF-8", raw[:middle] + bad + raw[middle:], json_type, 400
    if strings:
        huge = json.dumps("x" * max(10 * 1024 * 1024, limit + 1))
        yield "10 MB string", _render(base, _at(strings[0], huge)).encode(), json_type, 413
        yield "10 MB string, chunked", _render(base, _at(strings[0], huge)).encode(), \
            json_type + "+chunked", 413
    for content_type in WRONG_TYPES:
        if content_type and content_type.startswith("multipart/") and multipart_ok:
            continue
        yield "wrong content type", raw, content_type, 415


def _write_routes(database) -> tuple[list[tuple[str, str, str]], dict]:
    """(endpoint, method, rule) of every write route the application serves, and its body
    size limits."""
    app = make_app(database)
    try:
        # The console's forms (console.*) take form posts with a session and a CSRF token, not
        # JSON: tests/test_console.py tries them with hostile input.
        routes = [(rule.endpoint, method, rule.rule) for rule in app.url_map.iter_rules()
                  for method in sorted(rule.methods & {"POST", "PUT", "PATCH", "DELETE"})
                  if not rule.endpoint.startswith("console.")]
        limits = {"default": app.config["MAX_CONTENT_LENGTH"],
                  "batch": getattr(app.extensions["participants"], "max_batch_bytes", None)}
    finally:
        close_app(app)
    return routes, limits


CREATE = {"uniqueCode": "HB-1", "name": "Hostile", "owner": "operators:fz", "category": "truck",
          "properties": {"registrationNumber": "AB-12", "capacityKg": 12.5, "verified": True,
                         "documents": ["rc", "ins"], "address": {"city": "Pune", "zip": "411"}},
          "callback": {"url": "http://127.0.0.1:9/cb", "meta": {"k": "v"}}}
UPDATE = {"name": "n", "properties": {"axles": 3, "address": {"city": "Goa"}},
          "stateTransition": {"eventCode": "E-101", "reasonCode": "R-7001"}}
STATE_EVENT = {"eventCode": "E-101", "reasonCode": "R-7001", "timestamp": 1_700_000_000,
               "data": {"inspector": "bob", "score": 7}, "source": {"appId": "fz", "userId": "u"}}


def _base_body(endpoint: str, pid: str) -> dict:
    return {
        "participants.create": CREATE,
        "participants.update": UPDATE,
        "participant_alias": UPDATE,
        "participants.transition": STATE_EVENT,
        "batches.create_batch": {"payload": [CREATE]},
        "batches.update_batch": {"payload": [{"id": pid, **UPDATE}]},
        "participants.dry_run": {"start": {"participantId": pid}, "steps": [
            UPDATE, {k: v for k, v in STATE_EVENT.items() if k != "timestamp"}]},
    }.get(endpoint, {"name": "n", "properties": {"axles": 3}})


def _send(session, method: str, url: str, body: bytes, content_type: str | None):
    sent = headers("a")
    if content_type and content_type.endswith("+chunked"):
        content_type = content_type.removesuffix("+chunked")
        data = (body[i:i + 65536] for i in range(0, len(body), 65536))  # no Content-Length
    else:
        data = body
    if content_type is not None:
        sent["Content-Type"] = content_type
    try:
        return session.request(method, url, data=data, headers=sent, timeout=TIMEOUT)
    except requests.ConnectionError:
        # The server may answer 413 and close before reading a huge body; ask once more
        # with a fresh connection so the answer can be read.
        return requests.request(method, url, data=body, headers=sent, timeout=TIMEOUT)


def test_hostile_bodies_on_every_write_route_are_4xx_and_write_nothing(server, figure):
    """Hundreds of generated hostile bodies per write route: each answers the 4xx the class
    calls for (400 malformed, 413 too large, 415 not JSON) in the error envelope, never a 5xx,
    and no table of the database gains or loses a row."""
    pid = _create(server, "HB-0")
    routes, limits = _write_routes(server.database)
    assert {"participants.create", "participants.update", "participants.transition",
            "participant_alias"} <= {endpoint for endpoint, _, _ in routes}
    database = server.database
    session = requests.Session()

    # The unmutated bodies are valid (so any refusal below is the mutation's doing).
    for endpoint, method, rule in routes:
        url = server.url + rule.replace("<plural>", "vehicles").replace("<pid>", pid)
        body = _base_body(endpoint, pid)
        if endpoint == "participants.create":
            body = {**body, "uniqueCode": "HB-VALID"}
        response = session.request(method, url, json=body, headers=headers("a"),
                                   timeout=TIMEOUT)
        assert response.status_code == (200 if endpoint.endswith("dry_run") else 202), (
            endpoint, response.text)

    before = ledger(database)
    tried, kinds, statuses, wrong, slowest = 0, Counter(), Counter(), [], 0.0
    for endpoint, method, rule in routes:
        url = server.url + rule.replace("<plural>", "vehicles").replace("<pid>", pid)
        batch = endpoint.startswith("batches.")
        limit = (limits["batch"] if batch else None) or limits["default"]
        for kind, body, content_type, expected in hostile_bodies(
                _base_body(endpoint, pid), limit=limit, multipart_ok=batch):
            started = time.monotonic()
            response = _send(session, method, url, body, content_type)
            slowest = max(slowest, time.monotonic() - started)
            tried += 1
            kinds[kind] += 1
            statuses[response.status_code] += 1
            problem = None
            if response.status_code != expected:
                problem = f"expected {expected}"
            else:
                try:
                    error = response.json()["error"]
                    assert re.fullmatch(r"[0-9]{12}", error["code"])
                except (ValueError, KeyError, TypeError, AssertionError):
                    problem = "not the error envelope"
            if problem:
                wrong.append(f"{method} {rule} {kind} ({len(body)} bytes, {content_type}): "
                             f"{problem}, got {response.status_code} {response.text[:200]}")

    assert not wrong, "\n".join(wrong[:15]) + f"\n({len(wrong)} in all)"
    assert ledger(database) == before
    assert not any(s >= 500 for s in statuses)
    assert tried >= 300
    figure("Hostile request bodies (truncated, BOMs, NaN, duplicate keys, lone surrogates, "
           "10^5-deep nesting, oversized, wrong content type) are refused with a 4xx",
           f"{tried} generated bodies over {len(routes)} write routes "
           f"({', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))}); 5xx: 0; "
           f"rows written: 0; slowest answer {slowest:.2f} s")


# -- hostile CSV cells (batch uploads) ----------------------------------------------------------

CSV_CELLS = [
    pytest.param("axles", "1" * 5000, id="integer of 5000 digits"),
    pytest.param("capacityKg", "-" + "9" * 4301,
                 id="number of 4301 digits"),
    pytest.param("address", '{"city": "\\ud800"}',
                 id="lone surrogate in an object cell"),
    pytest.param("address", '{"\\udc00": "x"}',
                 id="lone surrogate in a key"),
    pytest.param("address", '{"other": 1e999}',
                 id="overflowing number in an object cell"),
    pytest.param("address", '{"other": NaN}', id="NaN in an object cell"),
    pytest.param("documents", "[-Infinity]", id="-Infinity in an array cell"),
    pytest.param("documents", "[" * 100_000 + "]" * 100_000, id="array nested 10^5 deep"),
    pytest.param("address", '{"a":' * 5000 + "1" + "}" * 5000, id="object nested 5000 deep"),
    pytest.param("capacityKg", "1e999", id="overflowing number"),
    pytest.param("capacityKg", "nan", id="nan"),
    pytest.param("verified", "maybe", id="not a boolean"),
    pytest.param("name", "a\x00b", id="NUL byte"),
    pytest.param("name", "x" * 200_000, id="cell over the csv field limit"),
    pytest.param("name", '"unbalanced', id="unbalanced quote"),
]


def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity and lone surrogates, as a strict client would."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    value = json.loads(text, parse_constant=refuse)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # lone surrogates raise here
    return value


@pytest.mark.parametrize(("column", "cell"), CSV_CELLS)
def test_hostile_csv_cells_are_refused_or_stored_as_valid_json(app, client, column, cell):
    """A hostile cell in a CSV batch upload is a 4xx or an item that fails on its own; never a
    5xx, and nothing a later read answers is anything but strict JSON."""
    if "batches.create_batch" not in {r.endpoint for r in app.url_map.iter_rules()}:
        pytest.skip("no batch routes")
    raw = cell.startswith('"')  # the unbalanced quote goes in as written
    quoted = cell if raw else '"' + cell.replace('"', '""') + '"'
    csv_text = f"uniqueCode,registrationNumber,{column}\nCSV-1,AB-1234,{quoted}\n"
    response = client.post(f"{BASE}/vehicles/batch", headers=headers(),
                           data={"file": (io.BytesIO(csv_text.encode()), "v.csv")},
                           content_type="multipart/form-data")
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    dispatcher = app.extensions["participants"].dispatcher()
    while dispatcher.run_once():
        pass
    listed = client.get(f"{BASE}/vehicles", headers=headers())
    for participant in _strict_json(listed.get_data(as_text=True))["data"]["participants"]:
        for path in ("", "/events", "/state"):
            got = client.get(f"{BASE}/vehicles/{participant['id']}{path}", headers=headers())
            assert got.status_code == 200
            _strict_json(got.get_data(as_text=True))
    if response.status_code == 202:
        status = client.get(f"{BASE}/vehicles/batch/status", headers=headers(),
                            query_string={"batchId": response.json["data"]["id"]})
        _strict_json(status.get_data(as_text=True))


# -- hostile multipart uploads (batch routes) ---------------------------------------------------

CSV = b"uniqueCode,registrationNumber\r\nMP-1,AB-1234\r\n"


def _part(disposition: bytes, content: bytes) -> bytes:
    return b"--b\r\nContent-Disposition: form-data" + disposition + b"\r\n\r\n" + content + b"\r\n"


MULTIPART = [
    pytest.param(_part(b'; name="x\\"', b"v") + _part(b'; name="file"', CSV),
                 id="part name with an escaped closing quote"),
    pytest.param(_part(b"", b"v") + _part(b'; name="file"', CSV),
                 id="part without a name"),
    pytest.param(_part(b'; name="other"', b"v") + _part(b'; name="file"', CSV),
                 id="unknown part"),
    pytest.param(_part(b'; name="callback"', b"{}"), id="no file part"),
    pytest.param(_part(b'; name="file"', b""), id="empty file"),
    pytest.param(_part(b'; name="file"', b"\xff\xfe" + CSV), id="file not UTF-8"),
    pytest.param(_part(b'; name="file"', CSV) + _part(b'; name="callback"', b"{nope"),
                 id="callback not JSON"),
    pytest.param(_part(b'; name="file"', CSV) + _part(b'; name="callback"', b'{"url": 1}'),
                 id="callback of the wrong shape"),
    pytest.param(_part(b'; name="file"', b"uniqueCode,colour\r\nMP-1,red\r\n"),
                 id="unknown column"),
    pytest.param(_part(b'; name="file"', b"registrationNumber\r\nAB-1234\r\n"),
                 id="no key column"),
    pytest.param(_part(b'; name="file"', b"uniqueCode\r\n"), id="header without rows"),
    pytest.param(_part(b'; name="file"', b'"' * 7 + b"\r\n"), id="broken quoting"),
    pytest.param(_part(b'; name="file"', b"uniqueCode,uniqueCode\r\nA,B\r\n"),
                 id="duplicate columns"),
]


@pytest.mark.parametrize("parts", MULTIPART)
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_hostile_multipart_batches_are_4xx_and_write_nothing(app, client, parts, method):
    """A batch upload whose parts are missing, unknown, unreadable or not a usable CSV file is
    a 4xx error envelope, and nothing is stored."""
    if "batches.create_batch" not in {r.endpoint for r in app.url_map.iter_rules()}:
        pytest.skip("no batch routes")
    before = ledger(app)
    response = client.open(f"{BASE}/vehicles/batch", method=method, headers=headers(),
                           data=parts + b"--b--\r\n",
                           content_type="multipart/form-data; boundary=b")
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:300]
    assert re.fullmatch(r"[0-9]{12}", response.json["error"]["code"])
    assert ledger(app) == before
