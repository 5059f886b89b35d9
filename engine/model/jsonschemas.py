"""JSON Schema validators compiled once: a fast compiled check first, jsonschema for the errors.

fastjsonschema turns a schema into Python code (about 40x faster than jsonschema's validation)
but speaks draft-07 and stops at the first error. It is used only for schemas whose keywords mean
the same in draft-07 and draft 2020-12; its "invalid" is then confirmed, and every error listed,
by jsonschema, which stays the authority.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import fastjsonschema
import jsonschema

__all__ = ["CompiledSchema", "ecma_pattern", "ecma_patterns"]

_SAME_IN_BOTH_DRAFTS = frozenset({
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
    "uniqueItems", "maxProperties", "minProperties", "required", "properties",
    "patternProperties", "additionalProperties", "propertyNames", "contains", "allOf", "anyOf",
    "oneOf", "not", "if", "then", "else", "description", "title", "default", "examples",
    "$comment", "readOnly", "writeOnly", "deprecated",
})
_SUBSCHEMA_MAPS = ("properties", "patternProperties")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SUBSCHEMAS = ("additionalProperties", "propertyNames", "contains", "not", "if", "then", "else",
               "items")


def ecma_pattern(pattern: str) -> str:
    """A Python regex where `$` means the end of the text, as in JSON Schema's ECMA-262 regexes.

    Python's `$` also matches before a final newline, so '^[A-Z]+$' would accept "AB\\n".
    """
    out, escaped, in_class = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        elif char == "$":
            # \Z outside a class; inside one an escaped $ (the same, and safe for re-writers)
            out.append(r"\$" if in_class else r"\Z")
            continue
        out.append(char)
    return "".join(out)


def ecma_patterns(schema):
    """A copy of `schema` whose `pattern`s and `patternProperties` keys use `ecma_pattern`."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                out[key] = ecma_pattern(value)
            elif key == "patternProperties" and isinstance(value, dict):
                out[key] = {ecma_pattern(k): ecma_patterns(v) for k, v in value.items()}
            elif key in ("enum", "const", "default", "examples"):
                out[key] = value
            else:
                out[key] = ecma_patterns(value)
        return out
    if isinstance(schema, list):
        return [ecma_patterns(item) for item in schema]
    return schema


def portable(schema) -> bool:
    """Whether `schema` uses only keywords with the same meaning in draft-07 and 2020-12."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for key, value in schema.items():
        if key == "items":
            if not isinstance(value, dict | bool) or not portable(value):
                return False
        elif key not in _SAME_IN_BOTH_DRAFTS:
            return False
        elif key in _SUBSCHEMA_MAPS:
            if not isinstance(value, dict) or not all(portable(s) for s in value.values()):
                return False
        elif key in _SUBSCHEMA_LISTS:
            if not isinstance(value, list) or not all(portable(s) for s in value):
                return False
        elif key in _SUBSCHEMAS and not portable(value):
            return False
    return True


class CompiledSchema:
    """A draft 2020-12 schema, compiled once for repeated validation."""

    __slots__ = ("validator", "_fast")

    def __init__(self, schema: dict, *, validator: jsonschema.Validator | None = None,
                 fast_schema: dict | None = None):
        schema = ecma_patterns(schema)
        self.validator = validator or jsonschema.Draft202012Validator(schema)
        self._fast = None
        if fast_schema is not None or portable(schema):
            draft07 = {"$schema": "http://json-schema.org/draft-07/schema#",
                       **ecma_patterns(fast_schema if fast_schema is not None else schema)}
            try:
                self._fast = fastjsonschema.compile(draft07, use_formats=False)
            except (fastjsonschema.JsonSchemaDefinitionException, re.error, ValueError):
                self._fast = None  # jsonschema alone, then

    def is_valid(self, instance) -> bool:
        if self._fast is not None:
            try:
                self._fast(instance)
                return True
            except fastjsonschema.JsonSchemaValueException:
                pass
        return self.validator.is_valid(instance)

    def iter_errors(self, instance) -> Iterator[jsonschema.ValidationError]:
        if self._fast is not None:
            try:
                self._fast(instance)
                return iter(())
            except fastjsonschema.JsonSchemaValueException:
                pass
        return self.validator.iter_errors(instance)
