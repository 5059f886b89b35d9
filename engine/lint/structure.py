"""Rules about the file as a whole: its schema, its name, and its place among the others."""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources

import jsonschema
import referencing
from referencing.jsonschema import DRAFT202012

from engine.model.conventions import EVENT_CODE_PATTERN, REASON_CODE_PATTERN

from ._rule import Context, Finding, mapping, rule

# Patterns reported by their own rules, with better messages (E101, E102, E501).
_DEDICATED_PATTERNS = {
    EVENT_CODE_PATTERN,
    REASON_CODE_PATTERN,
    "^(?=[0-9])([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$",
}
_PATTERN_NAMES = {
    "^[a-z][a-z0-9]{2,31}$": "3 to 32 lower-case letters and digits, starting with a letter",
    "^[A-Za-z][A-Za-z0-9_]{0,63}$": "a letter, then up to 63 letters, digits or '_'",
    "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$": "up to 64 letters, digits, '_' or '-'",
    "^[A-Za-z][A-Za-z0-9_-]{0,63}$": "a letter, then up to 63 letters, digits, '_' or '-'",
    "^[a-z][A-Za-z0-9_-]{1,63}$": "a lower-case letter, then 1 to 63 letters, digits, '_' or '-'",
    "^[0-9]+\\.[0-9]+\\.[0-9]+$": "three numbers such as '1.0.0'",
}


def _load(name: str) -> dict:
    return json.loads(resources.files("engine.schemas").joinpath(name).read_text("utf-8"))


@cache
def validators() -> tuple[jsonschema.Draft202012Validator, jsonschema.Draft202012Validator]:
    """The compiled schemas of a machine file and of codes.yaml."""
    machine, codes = _load("machine.schema.json"), _load("codes.schema.json")
    registry = referencing.Registry().with_resources([
        (machine["$id"], DRAFT202012.create_resource(machine)),
        (codes["$id"], DRAFT202012.create_resource(codes)),
    ])
    return (
        jsonschema.Draft202012Validator(machine, registry=registry),
        jsonschema.Draft202012Validator(codes, registry=registry),
    )


_TYPE_NAMES = {
    str: "text", int: "a number", float: "a number", bool: "a boolean", type(None): "empty",
    list: "a list", dict: "a mapping",
}


def _what(value) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _expected(types) -> str:
    names = {"string": "text", "object": "a mapping", "array": "a list", "number": "a number",
             "integer": "a whole number", "boolean": "true or false", "null": "empty"}
    types = types if isinstance(types, list) else [types]
    return " or ".join(names.get(t, t) for t in types)


_CODE_NAMES = {EVENT_CODE_PATTERN: "E-nnn, from E-001 to E-999",
               REASON_CODE_PATTERN: "R-nnnn, from R-0001 to R-9999",
               "^[0-9]{12}$": "a 12-digit error code such as '101170021090'"}


def schema_findings(error: jsonschema.ValidationError, *, dedicated: bool = True):
    """Findings of one schema error; `dedicated`: leave patterns that rules of their own
    report (E101, E102, E501) to those rules."""
    path = tuple(error.absolute_path)
    where = f"'{path[-1]}'" if path else "the file"
    if error.validator == "pattern":
        if dedicated and error.validator_value in _DEDICATED_PATTERNS:
            return
        rule_text = _PATTERN_NAMES.get(error.validator_value) or _CODE_NAMES.get(
            error.validator_value, error.validator_value)
        if "propertyNames" in error.schema_path:
            yield Finding(path + (error.instance,),
                          f"'{error.instance}' is not a valid name here: use {rule_text}",
                          at_key=True)
        else:
            yield Finding(path, f"{where} is '{error.instance}'; expected {rule_text}")
    elif error.validator == "additionalProperties":
        allowed = list(mapping(error.schema.get("properties")))
        for key in sorted(set(error.instance) - set(allowed)):
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            tail = f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(allowed)})"
            yield Finding(path + (key,), f"unknown key '{key}'{tail}", at_key=True)
    elif error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        yield Finding(path, f"{where} is missing the required key '{missing}'")
    elif error.validator == "type":
        hint = ""
        if "string" in (error.validator_value if isinstance(error.validator_value, list)
                        else [error.validator_value]) and isinstance(error.instance, int | float) \
                and not isinstance(error.instance, bool):
            hint = f": quote it, '{error.instance}'"
        yield Finding(path, f"{where} must be {_expected(error.validator_value)}, "
                            f"not {_what(error.instance)}{hint}")
    elif error.validator == "enum":
        options = ", ".join(map(str, error.validator_value))
        yield Finding(path, f"{where} is '{error.instance}', which is not one of: {options}")
    elif error.validator in ("minProperties", "minItems"):
        yield Finding(path, f"{where} must not be empty")
    elif error.validator == "uniqueItems":
        yield Finding(path, f"{where} lists the same item twice")
    else:
        yield Finding(path, f"{where}: {error.message}")


@rule("E001", "The file matches the machine-file schema (keys, types, required entries)",
      codes=True)
def schema(ctx: Context):
    machine, codes = validators()
    validator = codes if ctx.is_codes else machine
    for error in validator.iter_errors(ctx.doc.data):
        yield from schema_findings(error)


@rule("E010", "The file name equals participantType.plural")
def file_name(ctx: Context):
    plural = mapping(ctx.data.get("participantType")).get("plural")
    if isinstance(plural, str) and ctx.doc.path.stem != plural:
        yield Finding(("participantType", "plural"),
                      f"the file is named '{ctx.doc.path.name}' but declares the plural "
                      f"'{plural}'; name it '{plural}{ctx.doc.path.suffix}'")


@rule("E011", "Plural names are unique across files")
def unique_plural(ctx: Context):
    plural = mapping(ctx.data.get("participantType")).get("plural")
    if not isinstance(plural, str):
        return
    for other in ctx.others:
        if other is ctx.doc or other.path.stem == "codes":
            continue
        theirs = mapping(mapping(other.data).get("participantType")).get("plural")
        if theirs == plural:
            yield Finding(("participantType", "plural"),
                          f"the plural name '{plural}' is also used by {other.path}")
