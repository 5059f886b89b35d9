"""Loads the machine files into participant types; refuses files that have lint errors."""

from __future__ import annotations

import logging
from pathlib import Path
from types import MappingProxyType

from engine.errors import DefinitionError
from engine.lint.runner import collect_files, lint_documents
from engine.loading.yamlfile import load_file
from engine.model.definitions import (
    Category,
    Condition,
    Definition,
    Event,
    MainState,
    SubState,
    Transition,
    Ttl,
    attribute_from_config,
    data_item_from_config,
    freeze,
    parse_duration,
    qualify,
    template_from_config,
)
from engine.model.types import ParticipantType, Registry

__all__ = ["build_definition", "load_registry"]

log = logging.getLogger(__name__)


def _condition(raw: dict | None) -> Condition | None:
    if raw is None:
        return None
    return Condition(raw.get("description", ""), freeze(raw["schema"]),
                     bool(raw.get("exclusive", False)))


def build_definition(data: dict, codes: dict | None, source: str = "") -> Definition:
    """A Definition from a machine file's data (already linted clean) and the shared codes."""
    codes = codes or {}
    states = data["states"]
    reasons = {**codes.get("reasons", {}), **data.get("reasons", {})}
    events = {}
    for code, raw in {**codes.get("events", {}), **data.get("events", {})}.items():
        items = tuple(data_item_from_config(n, c)
                      for n, c in (raw.get("dataValidations") or {}).items())
        events[code] = Event(code, raw["description"], tuple(raw.get("reasonCodes", ())), items)

    main_states, sub_states = [], {}
    last = list(states)[-1]
    for main, config in states.items():
        subs = config["subStates"]
        default = config.get("defaultSubState") or next(iter(subs))
        main_states.append(MainState(main, default, tuple(subs), config.get("description", "")))
        terminal = set(config.get("terminalStates", ())) if main == last else set()
        for sub, raw in subs.items():
            raw = raw or {}
            name = f"{main}:{sub}"
            ttl = raw.get("ttl")
            sub_states[name] = SubState(
                main=main, name=sub, description=raw.get("description", ""),
                terminal=sub in terminal,
                requires=_condition(raw.get("requires")),
                transitions=tuple(
                    Transition(t["eventCode"], name, qualify(states, t["destination"]),
                               _condition(t.get("guard")))
                    for t in raw.get("transitions") or ()
                ),
                ttl=Ttl(parse_duration(ttl["time"]), qualify(states, ttl["destination"]),
                        ttl["time"]) if ttl else None,
            )
    categories = {
        name: Category(name, (raw or {}).get("description", ""),
                       tuple((raw or {}).get("subCategories", ())))
        for name, raw in (data.get("categories") or {}).items()
    }
    terminal_ttl = data.get("terminalTTL")
    attributes = {n: attribute_from_config(n, c) for n, c in data["attributes"].items()}
    templates = {t: template_from_config(t, c, attributes)
                 for t, c in (data.get("templates") or {}).items()}
    return Definition(
        singular=data["participantType"]["singular"],
        plural=data["participantType"]["plural"],
        version=data["version"],
        description=data.get("description", ""),
        source=source,
        allowed_owners=tuple(data.get("allowedOwners", ())),
        categories=MappingProxyType(categories),
        attributes=MappingProxyType(attributes),
        reasons=MappingProxyType(reasons),
        events=MappingProxyType(events),
        main_states=tuple(main_states),
        sub_states=MappingProxyType(sub_states),
        initial_state=qualify(states, next(iter(states))),
        terminal_ttl=parse_duration(terminal_ttl) if terminal_ttl else None,
        terminal_ttl_text=terminal_ttl,
        templates=MappingProxyType(templates),
    )


def load_registry(folder: Path | str) -> Registry:
    """Lint and load every machine file of `folder`; raise DefinitionError on lint errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DefinitionError([f"{folder}: no such folder of machine files"])
    docs = [load_file(p) for p in collect_files([folder])]
    errors = [str(p) for p in lint_documents(docs) if p.severity == "error"]
    if errors:
        raise DefinitionError(errors)
    codes = next((d.data for d in docs if d.path.stem == "codes"), None)
    types = {}
    for doc in docs:
        if doc.path.stem == "codes":
            continue
        definition = build_definition(doc.data, codes, str(doc.path))
        types[definition.plural] = ParticipantType.compile(definition)
    if not types:
        raise DefinitionError([f"{folder}: no participant types found"])
    log.info("loaded %d participant types from %s: %s", len(types), folder, ", ".join(types))
    return Registry(types)
