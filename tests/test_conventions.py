"""The shared rules have one home: the files that cannot import it (JSON Schemas, the OpenAPI
document) agree with engine/model/conventions.py and engine/service/queries.py, and no module
re-writes them."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from engine.model.conventions import (
    CORE_EDITABLE,
    CORE_FIELDS,
    EVENT_CODE,
    EVENT_CODE_PATTERN,
    REASON_CODE,
    REASON_CODE_PATTERN,
    compact_json,
    index_value,
)
from engine.service.queries import (
    ANSWERED_FIELDS,
    CORE_COLUMNS,
    LIMITS,
    MEMBERS,
    OPERATORS,
    RELATIONS,
)
from engine.storage.interface import StoredParticipant
from tests.conftest import ROOT
from webapp import views
from webapp.http import OPENAPI

SCHEMAS = OPENAPI["components"]["schemas"]


def _machine_schema() -> dict:
    text = resources.files("engine.schemas").joinpath("machine.schema.json").read_text("utf-8")
    return json.loads(text)


def test_code_patterns_of_the_json_schemas_and_the_openapi_document_are_the_engines():
    """machine.schema.json (codes.schema.json refers to it) and openapi.yaml repeat the code
    patterns; they are the texts of engine/model/conventions.py."""
    defs = _machine_schema()["$defs"]
    assert defs["eventCode"]["pattern"] == EVENT_CODE_PATTERN
    assert defs["reasonCode"]["pattern"] == REASON_CODE_PATTERN
    assert SCHEMAS["EventCode"]["pattern"] == EVENT_CODE_PATTERN
    assert SCHEMAS["ReasonCode"]["pattern"] == REASON_CODE_PATTERN


@pytest.mark.parametrize(("code", "event", "reason"), [
    ("E-001", True, False), ("E-999", True, False), ("E-000", False, False),
    ("E-1000", False, False), ("R-0001", False, True), ("R-0000", False, False),
    ("R-001", False, False), ("e-001", False, False), ("E-001\n", False, False),
])
def test_code_patterns(code, event, reason):
    """E-001..E-999 and R-0001..R-9999, nothing else (a trailing newline neither)."""
    assert bool(EVENT_CODE.match(code)) is event
    assert bool(REASON_CODE.match(code)) is reason


def test_no_module_writes_the_code_patterns_again():
    """The pattern texts appear in Python only in engine/model/conventions.py."""
    needles = ("(?!000)", "(?!0000)")
    found = [str(path.relative_to(ROOT)) for folder in ("engine", "webapp", "tests")
             for path in (ROOT / folder).rglob("*.py")
             if path.name != "test_conventions.py"
             and any(n in path.read_text("utf-8") for n in needles)]
    assert found == ["engine/model/conventions.py"]


# Literal cases, not a second implementation: the rule as the index has always applied it.
@pytest.mark.parametrize(("value", "stored"), [
    (True, 1), (False, 0), (0, 0), (2**63 - 1, 2**63 - 1), (-(2**63), -(2**63)),
    (2**63, 9.223372036854775808e18), (-(2**63) - 1, -9.223372036854775808e18),
    (10**308, 1e308), (10**400, math.inf), (-(10**400), -math.inf), (1.5, 1.5), ("x", "x"),
])
def test_index_value(value, stored):
    """Booleans are 0/1; integers beyond 64 bits are floats (infinite past the largest)."""
    got = index_value(value)
    assert got == stored and type(got) is type(stored)


def test_compact_json():
    """No spaces, non-ASCII as is, keys sorted only when asked."""
    assert compact_json({"b": [1, 2], "a": "é"}) == '{"b":[1,2],"a":"é"}'
    assert compact_json({"b": 1, "a": 2}, sort_keys=True) == '{"a":2,"b":1}'


def test_core_field_names_are_one_set():
    """Editable fields, queryable core fields and the fields of an answered participant are all
    core fields; the answer has every core field but the tenant; a stored participant's core
    is the editable fields."""
    assert set(CORE_EDITABLE) <= CORE_FIELDS
    assert set(CORE_COLUMNS) <= CORE_FIELDS
    participant = StoredParticipant("t", "vehicles:1", "vehicles", "U", None, None, None, None,
                                    None, "a:b", {}, 1, 0, 0, 0, None, None, None)
    assert set(views.participant(participant)) == ANSWERED_FIELDS == CORE_FIELDS - {"tenantId"}
    assert tuple(participant.core) == CORE_EDITABLE


# -- the OpenAPI document states the engine's list limits ----------------------------------------

def _resolve(schema: dict) -> dict:
    ref = schema.get("$ref")
    return SCHEMAS[ref.rsplit("/", 1)[1]] if ref else schema


def _list_parameters() -> dict:
    operation = OPENAPI["paths"]["/{plural}"]["get"]
    out = {}
    for parameter in operation["parameters"]:
        if "$ref" in parameter:
            parameter = OPENAPI["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        out[parameter["name"]] = parameter
    return out


def test_openapi_query_schema_has_the_engines_operators_members_and_limits():
    """Query in openapi.yaml: the operators and clause members of engine/service/queries.py MEMBERS,
    and LIMITS on clause counts, terms values, string lengths and numbers."""
    query = SCHEMAS["Query"]
    assert query["additionalProperties"] is False
    assert list(query["properties"]) == list(OPERATORS) == list(MEMBERS)
    for operator, members in MEMBERS.items():
        clauses = query["properties"][operator]
        assert clauses["maxItems"] == LIMITS.clauses
        clause = clauses["items"]
        assert clause["additionalProperties"] is False
        assert list(clause["properties"]) == list(members)
        assert clause["required"] == list(members)
        for name, kind in members.items():
            schema = _resolve(clause["properties"][name])
            if kind == "relation":
                assert schema["enum"] == list(RELATIONS)
                continue
            if kind == "scalars":
                assert (schema["minItems"], schema["maxItems"]) == (1, LIMITS.terms_values)
                schema = _resolve(schema["items"])
            assert schema["maxLength"] == LIMITS.text
            expected_types = {"key": "string", "text": "string", "scalar": [
                "string", "number", "boolean"], "scalars": ["string", "number", "boolean"],
                "bound": ["string", "number"]}[kind]
            assert schema["type"] == expected_types
            if kind == "text":
                assert schema["minLength"] == 1
            if "number" in expected_types:
                assert (schema["minimum"], schema["maximum"]) == LIMITS.numbers


def test_openapi_list_parameters_have_the_engines_limits():
    """limit, offset, sortKey, select[] and the query text carry LIMITS."""
    parameters = _list_parameters()
    assert parameters["limit"]["schema"]["maximum"] == LIMITS.limit
    assert parameters["offset"]["schema"]["maximum"] == LIMITS.offset
    assert parameters["sortKey"]["schema"]["maxLength"] == LIMITS.text
    select = parameters["select[]"]["schema"]
    assert (select["maxItems"], select["items"]["maxLength"]) == (LIMITS.select, LIMITS.text)
    query = parameters["query"]
    assert query["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Query"}
    assert f"{LIMITS.query_chars:,} characters" in query["description"]
