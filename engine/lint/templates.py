"""Rules about templates: what they name, and that they only narrow the type's rules."""

from __future__ import annotations

import re
from collections.abc import Iterator

import jsonschema

from engine.model.attributes import compile_checks, run_checks
from engine.model.definitions import DATA_TYPES, attribute_from_config

from ._rule import Context, Finding, mapping, rule, sequence
from .codes import suggest


def _overrides(ctx: Context) -> Iterator[tuple[str, str, tuple, dict, dict | None]]:
    """(template id, attribute, path, override, the attribute's own config or None)."""
    attributes = ctx.section("attributes")
    for template_id, template in ctx.section("templates").items():
        for name, override in mapping(mapping(template).get("attributes")).items():
            if isinstance(override, dict):
                own = attributes.get(name)
                yield (template_id, name, ("templates", template_id, "attributes", name),
                       override, own if isinstance(own, dict) else None)


@rule("E601", "A template names only declared attributes, categories and sub-categories")
def template_names(ctx: Context):
    attributes, categories = ctx.section("attributes"), ctx.section("categories")
    for template_id, name, path, _override, own in _overrides(ctx):
        if own is None and name not in attributes:
            yield Finding(path, f"template '{template_id}' overrides '{name}', which is not an "
                                f"attribute{suggest(name, attributes)}", at_key=True)
    for template_id, template in ctx.section("templates").items():
        template = mapping(template)
        category, sub = template.get("category"), template.get("subCategory")
        path = ("templates", template_id)
        if isinstance(category, str) and category not in categories:
            where = suggest(category, categories) if categories else \
                " (the type declares no categories)"
            yield Finding(path + ("category",),
                          f"template '{template_id}' applies to category '{category}', which is "
                          f"not declared{where}")
        elif isinstance(sub, str):
            if category is None:
                yield Finding(path + ("subCategory",),
                              f"template '{template_id}' names a subCategory without a category")
            else:
                allowed = sequence(mapping(categories.get(category)).get("subCategories"))
                if categories and sub not in allowed:
                    yield Finding(path + ("subCategory",),
                                  f"'{sub}' is not a sub-category of '{category}'"
                                  f"{suggest(sub, allowed)}")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@rule("E602", "A template override only narrows the attribute's own validation")
def template_narrows(ctx: Context):
    for template_id, name, path, override, own in _overrides(ctx):
        if own is None:
            continue
        mine, theirs = mapping(override.get("validation")), mapping(own.get("validation"))
        where = path + ("validation",)
        if mine.get("required") is False and theirs.get("required") is True:
            yield Finding(where + ("required",), f"template '{template_id}' cannot make "
                                                 f"{name} optional: the type requires it")
        low, high = mapping(mine.get("range")), mapping(theirs.get("range"))
        if _number(low.get("min")) and _number(high.get("min")) and low["min"] < high["min"]:
            yield Finding(where + ("range", "min"),
                          f"template '{template_id}' lowers the minimum of {name} to "
                          f"{low['min']}, below the type's {high['min']}")
        if _number(low.get("max")) and _number(high.get("max")) and low["max"] > high["max"]:
            yield Finding(where + ("range", "max"),
                          f"template '{template_id}' raises the maximum of {name} to "
                          f"{low['max']}, above the type's {high['max']}")
        allowed = theirs.get("valueOneOf")
        if isinstance(allowed, list):
            for i, value in enumerate(sequence(mine.get("valueOneOf"))):
                if value not in allowed:
                    yield Finding(where + ("valueOneOf", i),
                                  f"template '{template_id}' allows {value!r} for {name}, which "
                                  "the type does not allow")


@rule("E603", "A template's defaultValue satisfies the type's and the template's validation")
def template_defaults(ctx: Context):
    for template_id, name, path, override, own in _overrides(ctx):
        if own is None or "defaultValue" not in override or own.get("dataType") not in DATA_TYPES:
            continue
        narrowed = {**own, "validation": {**mapping(own.get("validation")),
                                          **mapping(override.get("validation"))}}
        value = override["defaultValue"]
        for config in (own, narrowed):
            try:
                message = run_checks(compile_checks(attribute_from_config(name, config)), value)
            except (re.error, jsonschema.SchemaError, TypeError, ValueError):
                break  # E301/E401/E402 report the broken validation itself
            if message:
                yield Finding(path + ("defaultValue",),
                              f"the defaultValue of {name} in template '{template_id}' {message}")
                break
