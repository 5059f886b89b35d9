"""Frozen dataclasses describing one participant type; built from a linted machine file."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "attribute_from_config", "data_item_from_config", "freeze",
    "DATA_TYPES", "NO_DEFAULT", "Attribute", "Category", "Condition",
    "DataItem", "Definition", "Event", "MainState", "SubState", "Template", "Transition", "Ttl",
    "template_from_config",
    "parse_duration", "qualify",
]

DATA_TYPES = ("string", "number", "integer", "boolean", "object", "array")

_DURATION = re.compile(r"^(?=\d)(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


def parse_duration(text: str) -> int | None:
    """Seconds in a duration such as '10d5h3m0s', '2m' or '300s'; None if malformed."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def qualify(states: dict, destination: str) -> str | None:
    """Resolve 'main:sub' or a bare main state to a qualified name, using raw `states` data."""
    if not isinstance(destination, str):
        return None
    main, sep, sub = destination.partition(":")
    config = states.get(main)
    if not isinstance(config, dict):
        return None
    subs = config.get("subStates")
    if not isinstance(subs, dict):
        return None
    if not sep:
        sub = config.get("defaultSubState")
        if sub is None and len(subs) == 1:
            sub = next(iter(subs))
    return f"{main}:{sub}" if isinstance(sub, str) and sub in subs else None


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    data_type: str
    description: str = ""
    indexed: bool = False
    required: bool = False
    default: Any = NO_DEFAULT
    regex: str | None = None
    min: float | None = None
    max: float | None = None
    value_one_of: tuple | None = None
    schema: MappingProxyType | None = None

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT


def freeze(value):
    """Read-only mappings and tuples all the way down."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def _validation_fields(validation: dict) -> dict:
    validation = validation if isinstance(validation, dict) else {}
    bounds = validation.get("range") if isinstance(validation.get("range"), dict) else {}
    one_of = validation.get("valueOneOf")
    return {
        "required": bool(validation.get("required", False)),
        "regex": validation.get("regex"),
        "min": bounds.get("min"),
        "max": bounds.get("max"),
        "value_one_of": tuple(one_of) if isinstance(one_of, list) else None,
    }


def attribute_from_config(name: str, config: dict) -> Attribute:
    """An Attribute from its machine-file entry (assumed to have passed the schema)."""
    schema = config.get("schema")
    return Attribute(
        name=name,
        data_type=config["dataType"],
        description=config.get("description", ""),
        indexed=bool(config.get("indexed", False)),
        default=config.get("defaultValue", NO_DEFAULT),
        schema=freeze(schema) if isinstance(schema, dict) else None,
        **_validation_fields(config.get("validation")),
    )


def data_item_from_config(name: str, config: dict) -> DataItem:
    """A DataItem from an event's dataValidations entry."""
    return DataItem(
        name=name,
        data_type=config["type"],
        description=config.get("description", ""),
        **_validation_fields(config.get("validation")),
    )


@dataclass(frozen=True, slots=True)
class DataItem:
    """A check on one key of the `data` object of the state-event API (OS1 EventDataItem)."""

    name: str
    data_type: str
    description: str = ""
    required: bool = False
    regex: str | None = None
    min: float | None = None
    max: float | None = None
    value_one_of: tuple | None = None


@dataclass(frozen=True, slots=True)
class Event:
    code: str
    description: str
    reason_codes: tuple[str, ...] = ()
    data_validations: tuple[DataItem, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    """A JSON Schema the participant's properties must satisfy (a guard or an invariant)."""

    description: str
    schema: MappingProxyType
    exclusive: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    event_code: str
    source: str        # qualified 'main:sub'
    destination: str   # qualified 'main:sub'
    guard: Condition | None = None


@dataclass(frozen=True, slots=True)
class Ttl:
    seconds: int
    destination: str   # qualified 'main:sub'
    text: str = ""


@dataclass(frozen=True, slots=True)
class SubState:
    main: str
    name: str
    description: str = ""
    terminal: bool = False
    requires: Condition | None = None
    transitions: tuple[Transition, ...] = ()
    ttl: Ttl | None = None

    @property
    def qualified(self) -> str:
        return f"{self.main}:{self.name}"


@dataclass(frozen=True, slots=True)
class MainState:
    name: str
    default_sub_state: str
    sub_states: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Template:
    """Per-category tailoring: attribute overrides that narrow the type's own rules."""

    id: str
    name: str
    description: str = ""
    category: str | None = None
    sub_category: str | None = None
    attributes: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


def template_from_config(template_id: str, config: dict, attributes: dict) -> Template:
    """A Template from its machine-file entry; overrides keep the attribute's dataType."""
    overrides = {}
    for name, raw in (config.get("attributes") or {}).items():
        base = attributes[name]
        overrides[name] = Attribute(
            name=name, data_type=base.data_type, description=base.description,
            default=raw.get("defaultValue", NO_DEFAULT),
            **_validation_fields(raw.get("validation")),
        )
    return Template(template_id, config["name"], config.get("description", ""),
                    config.get("category"), config.get("subCategory"),
                    MappingProxyType(overrides))


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    description: str = ""
    sub_categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Definition:
    """One participant type: attributes, codes and state machine, immutable once loaded."""

    singular: str
    plural: str
    version: str
    description: str
    source: str
    allowed_owners: tuple[str, ...]
    categories: MappingProxyType           # name -> Category; empty: not validated
    attributes: MappingProxyType           # name -> Attribute, in file order
    reasons: MappingProxyType              # code -> description
    events: MappingProxyType               # code -> Event
    main_states: tuple[MainState, ...]
    sub_states: MappingProxyType           # qualified name -> SubState, lifecycle order
    initial_state: str
    terminal_ttl: int | None = None
    terminal_ttl_text: str | None = None
    templates: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    @property
    def indexed_attributes(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes.values() if a.indexed)

    def is_terminal(self, state: str) -> bool:
        sub = self.sub_states.get(state)
        return bool(sub and sub.terminal)
