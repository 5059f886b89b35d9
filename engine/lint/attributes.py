"""Rules about attributes, event data checks, guards and invariants."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import jsonschema
import referencing
import referencing.exceptions
from referencing.jsonschema import DRAFT202012

from engine.model.attributes import compile_checks, run_checks
from engine.model.conventions import CORE_FIELDS
from engine.model.definitions import DATA_TYPES, attribute_from_config

from ._rule import Context, Finding, mapping, rule, sequence
from .codes import suggest
from .walk import conditions

_SCALARS = ("string", "number", "integer", "boolean")


def _attributes(ctx: Context) -> Iterator[tuple[str, tuple, dict]]:
    for name, config in ctx.section("attributes").items():
        if isinstance(config, dict):
            yield name, ("attributes", name), config


def _validations(ctx: Context) -> Iterator[tuple[tuple, str, dict]]:
    """(path, dataType, validation) of every attribute and every event data item."""
    for _name, path, config in _attributes(ctx):
        if isinstance(config.get("validation"), dict):
            yield path + ("validation",), config.get("dataType"), config["validation"]
    for code, event in ctx.section("events").items():
        for name, item in mapping(mapping(event).get("dataValidations")).items():
            item = mapping(item)
            if isinstance(item.get("validation"), dict):
                yield (("events", code, "dataValidations", name, "validation"),
                       item.get("type"), item["validation"])
    attributes = ctx.section("attributes")
    for template_id, template in ctx.section("templates").items():
        for name, override in mapping(mapping(template).get("attributes")).items():
            validation = mapping(override).get("validation")
            if isinstance(validation, dict) and isinstance(attributes.get(name), dict):
                yield (("templates", template_id, "attributes", name, "validation"),
                       attributes[name].get("dataType"), validation)


def _schema_problems(schema: dict) -> Iterator[tuple[tuple, str]]:
    """(path inside the schema, message) if `schema` is not a usable JSON Schema."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        yield tuple(error.path), f"not a valid JSON Schema: {error.message}"
        return
    resource = DRAFT202012.create_resource(schema)
    base = resource.id() or ""
    resolver = referencing.Registry().with_resource(base, resource).resolver(base)
    for path, ref in _refs(schema, ()):
        if not ref.startswith("#"):
            yield path, f"'$ref: {ref}' points outside the file; only local references are allowed"
            continue
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:  # it would fail at run time, not here
            yield path, f"'$ref: {ref}' points to nothing in this schema"


def _refs(node, path: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path + (key,), value
            else:
                yield from _refs(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, path + (i,))


def _named_attributes(schema: dict, path: tuple) -> Iterator[tuple[tuple, str]]:
    """Attribute names a condition schema mentions at the level of the properties object."""
    for i, name in enumerate(sequence(schema.get("required"))):
        yield path + ("required", i), name
    for key in ("properties", "dependentRequired", "dependentSchemas"):
        for name in mapping(schema.get(key)):
            yield path + (key, name), name
    for name, needed in mapping(schema.get("dependentRequired")).items():
        for i, other in enumerate(sequence(needed)):
            yield path + ("dependentRequired", name, i), other
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(sequence(schema.get(key))):
            if isinstance(sub, dict):
                yield from _named_attributes(sub, path + (key, i))
    for key in ("not", "if", "then", "else"):
        if isinstance(schema.get(key), dict):
            yield from _named_attributes(schema[key], path + (key,))


@rule("E301", "Guard, invariant and attribute schemas are valid JSON Schema")
def valid_schemas(ctx: Context):
    places = [(path + ("schema",), c.get("schema")) for path, c in conditions(ctx.data)]
    places += [(path + ("schema",), c.get("schema")) for _n, path, c in _attributes(ctx)]
    for path, schema in places:
        if isinstance(schema, dict):
            for inner, message in _schema_problems(schema):
                yield Finding(path + inner, message)


@rule("E302", "Guard and invariant schemas name only declared attributes")
def conditions_name_attributes(ctx: Context):
    declared = ctx.section("attributes")
    for path, condition in conditions(ctx.data):
        schema = condition.get("schema")
        if not isinstance(schema, dict):
            continue
        for where, name in _named_attributes(schema, path + ("schema",)):
            if isinstance(name, str) and name not in declared:
                yield Finding(where, f"'{name}' is not a declared attribute"
                                     f"{suggest(name, declared)}", at_key=where[-2] != "required")


@rule("E401", "Validations suit the dataType (regex for text; range for numbers, text, lists)")
def validations_fit(ctx: Context):
    for path, data_type, validation in _validations(ctx):
        if data_type not in DATA_TYPES:
            continue
        if "regex" in validation and data_type != "string":
            yield Finding(path + ("regex",), f"regex applies only to strings, not to {data_type}",
                          at_key=True)
        bounds = mapping(validation.get("range"))
        if bounds and data_type in ("boolean", "object"):
            yield Finding(path + ("range",), f"range does not apply to {data_type}", at_key=True)
        low, high = bounds.get("min"), bounds.get("max")
        if isinstance(low, int | float) and isinstance(high, int | float) and low > high:
            yield Finding(path + ("range",), f"range min {low} is greater than max {high}")
        if data_type != "number":
            for key in ("min", "max"):
                value = bounds.get(key)
                if isinstance(value, float) and not value.is_integer():
                    yield Finding(path + ("range", key),
                                  f"a {data_type} range needs whole numbers, not {value}")
        for i, option in enumerate(sequence(validation.get("valueOneOf"))):
            spec = attribute_from_config("x", {"dataType": data_type})
            if run_checks(compile_checks(spec)[:1], option):
                yield Finding(path + ("valueOneOf", i),
                              f"valueOneOf entry {option!r} is not of dataType {data_type}")


@rule("E402", "Every regex is a valid regular expression")
def regexes_compile(ctx: Context):
    for path, _data_type, validation in _validations(ctx):
        regex = validation.get("regex")
        if isinstance(regex, str):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # e.g. POSIX classes: "possible nested set"
                try:
                    re.compile(regex)
                except re.error as error:
                    yield Finding(path + ("regex",), f"regex {regex!r} is not valid: {error}")
                except Warning as warning:
                    yield Finding(path + ("regex",), f"regex {regex!r} is ambiguous: {warning}")


def _checkable(config: dict) -> bool:
    """Whether an attribute's range and schema are sound enough to run on its defaultValue."""
    bounds = mapping(mapping(config.get("validation")).get("range"))
    if any(not isinstance(bounds.get(key, 0), int | float) for key in ("min", "max")):
        return False
    schema = config.get("schema")
    return not (isinstance(schema, dict) and any(_schema_problems(schema)))


@rule("E403", "A defaultValue satisfies its own attribute's validation")
def defaults_valid(ctx: Context):
    for name, path, config in _attributes(ctx):
        if "defaultValue" not in config or config.get("dataType") not in DATA_TYPES:
            continue
        if not _checkable(config):
            continue  # E001/E301 report the malformed range or schema itself
        try:
            checks = compile_checks(attribute_from_config(name, config))
        except (re.error, jsonschema.SchemaError, TypeError, ValueError):
            continue  # E301/E402 report the broken validation itself
        message = run_checks(checks, config["defaultValue"])
        if message:
            yield Finding(path + ("defaultValue",), f"the defaultValue of {name} {message}")


@rule("E404", "Attribute names are not core field names")
def core_field_names(ctx: Context):
    for name, path, _config in _attributes(ctx):
        if name in CORE_FIELDS:
            yield Finding(path, f"'{name}' is a core field of every participant and cannot be "
                                "an attribute; choose another name", at_key=True)


@rule("E405", "Only string, number, integer and boolean attributes are indexed")
def scalar_indexes(ctx: Context):
    for name, path, config in _attributes(ctx):
        data_type = config.get("dataType")  # E001 reports a missing or unknown one
        if config.get("indexed") is True and data_type in DATA_TYPES and data_type not in _SCALARS:
            yield Finding(path + ("indexed",),
                          f"{name} is {config.get('dataType')}; only scalar attributes can be "
                          "indexed", at_key=True)
