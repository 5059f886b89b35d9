"""The compiled fast path agrees with jsonschema, and is used only where drafts agree."""

from __future__ import annotations

import re

import jsonschema
import pytest

from engine.model.jsonschemas import CompiledSchema, ecma_pattern, ecma_patterns, portable

SCHEMAS = [
    ({"required": ["a"], "properties": {"a": {"const": True}}}, [{"a": True}, {"a": 1}, {}]),
    ({"type": "object", "additionalProperties": False, "properties": {"x": {"type": "integer"}}},
     [{"x": 1}, {"x": 1.0}, {"x": 1.5}, {"y": 1}, []]),
    ({"not": {"required": ["trip"]}}, [{"trip": 1}, {}]),
    ({"items": {"type": "string"}, "minItems": 2, "uniqueItems": True},
     [["a", "b"], ["a"], ["a", "a"], ["a", 1]]),
    ({"type": "string", "pattern": "^[A-Z]{2}$", "format": "email"}, ["AB", "ab", "A"]),
    ({"if": {"properties": {"k": {"const": 1}}}, "then": {"required": ["v"]}},
     [{"k": 1}, {"k": 1, "v": 0}, {"k": 2}]),
    ({"prefixItems": [{"type": "string"}], "items": False}, [["a"], ["a", "b"], [1]]),
    ({"dependentRequired": {"a": ["b"]}}, [{"a": 1}, {"a": 1, "b": 2}]),
    ({"$defs": {"n": {"type": "number"}}, "properties": {"x": {"$ref": "#/$defs/n"}}},
     [{"x": 1}, {"x": "1"}]),
    ({"unevaluatedProperties": False, "properties": {"a": True}}, [{"a": 1}, {"b": 1}]),
]


@pytest.mark.parametrize(("schema", "instances"), SCHEMAS)
def test_compiled_schema_agrees_with_jsonschema(schema, instances):
    """Every instance gets the verdict and the errors jsonschema gives."""
    compiled = CompiledSchema(schema)
    reference = jsonschema.Draft202012Validator(ecma_patterns(schema))
    for instance in instances:
        assert compiled.is_valid(instance) == reference.is_valid(instance), instance
        assert [e.message for e in compiled.iter_errors(instance)] == \
            [e.message for e in reference.iter_errors(instance)]


@pytest.mark.parametrize(("schema", "expected"), [
    ({"required": ["a"]}, True),
    ({"items": {"type": "string"}}, True),
    ({"items": [{"type": "string"}]}, False),
    ({"prefixItems": []}, False),
    ({"dependentRequired": {}}, False),
    ({"$ref": "#/$defs/x"}, False),
    ({"properties": {"a": {"unevaluatedItems": False}}}, False),
    ({"anyOf": [{"type": "string"}, {"minContains": 2}]}, False),
])
def test_only_portable_schemas_take_the_fast_path(schema, expected):
    """Keywords that differ between draft-07 and 2020-12 keep a schema on jsonschema alone."""
    assert portable(schema) is expected


@pytest.mark.parametrize(("pattern", "text", "matches"), [
    ("^[A-Z]{2}$", "AB", True),
    ("^[A-Z]{2}$", "AB\n", False),
    ("^a[$]$", "a$", True),
    ("^a\\$$", "a$", True),
    ("^a\\$$", "a$\n", False),
])
def test_dollar_means_end_of_text_as_in_ecma_262(pattern, text, matches):
    """A JSON Schema `$` does not match before a trailing newline."""
    assert bool(re.search(ecma_pattern(pattern), text)) is matches
    assert CompiledSchema({"pattern": pattern}).is_valid(text) is matches
