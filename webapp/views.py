"""How participants, types, events and outcomes look in responses."""

from __future__ import annotations

from engine.model.attributes import thaw
from engine.model.definitions import NO_DEFAULT, Definition
from engine.storage.interface import StoredParticipant

__all__ = ["participant", "participant_type", "state", "event_summary"]


def participant(p: StoredParticipant, select: list[str] | None = None) -> dict:
    full = {
        "id": p.id, "uniqueCode": p.unique_code, "name": p.name, "owner": p.owner,
        "participantType": p.type, "properties": p.properties, "state": p.state,
        "category": p.category, "subCategory": p.sub_category, "templateId": p.template_id,
        "version": p.version, "createdAt": p.created_at, "updatedAt": p.updated_at,
        "createdBy": p.created_by, "updatedBy": p.updated_by,
    }
    if not select:
        return full
    out = {"id": p.id}
    for name in select:
        if name in full:
            out[name] = full[name]
        elif name in p.properties:
            out.setdefault("properties", {})[name] = p.properties[name]
    return out


def state(definition: Definition, p: StoredParticipant) -> dict:
    main, _, sub = p.state.partition(":")
    return {"id": p.id, "state": p.state, "mainState": main, "subState": sub,
            "isTerminal": definition.is_terminal(p.state), "version": p.version,
            "updatedAt": p.updated_at}


def event_summary(record: dict, state: str | None) -> dict:
    summary = {
        "id": record["event"]["id"],
        "commandName": record["commandName"],
        "payloadValidated": record["payloadValidated"],
        "reason": record["reason"],
        "errorCode": record["errorCode"],
        "state": state,
        "version": record["version"],
    }
    if not record["payloadValidated"]:
        summary["errors"] = record["errors"]
    return summary


def _validation(item) -> dict:
    out = {}
    if item.required:
        out["required"] = True
    if item.regex is not None:
        out["regex"] = item.regex
    if item.min is not None or item.max is not None:
        out["range"] = {k: v for k, v in (("min", item.min), ("max", item.max)) if v is not None}
    if item.value_one_of is not None:
        out["valueOneOf"] = list(item.value_one_of)
    return out


def _condition(condition) -> dict | None:
    if condition is None:
        return None
    out = {"description": condition.description, "schema": thaw(condition.schema)}
    if condition.exclusive:
        out["exclusive"] = True
    return out


def _override(attribute) -> dict:
    out = {"validation": _validation(attribute)}
    if attribute.default is not NO_DEFAULT:
        out["defaultValue"] = thaw(attribute.default)
    return out


def participant_type(definition: Definition, diagram: str | None = None) -> dict:
    """The loaded definition: attributes as an OS1 list of {name, dataType, ...}."""
    attributes = []
    for a in definition.attributes.values():
        item = {"name": a.name, "dataType": a.data_type,
                "description": a.description, "indexed": a.indexed,
                "validation": _validation(a)}
        if a.default is not NO_DEFAULT:
            item["defaultValue"] = thaw(a.default)
        if a.schema is not None:
            item["schema"] = thaw(a.schema)
        attributes.append(item)
    states = []
    for main in definition.main_states:
        subs = []
        for name in main.sub_states:
            sub = definition.sub_states[f"{main.name}:{name}"]
            subs.append({
                "name": sub.name, "state": sub.qualified, "description": sub.description,
                "terminal": sub.terminal, "requires": _condition(sub.requires),
                "transitions": [{"eventCode": t.event_code, "destination": t.destination,
                                 "guard": _condition(t.guard)} for t in sub.transitions],
                "ttl": {"time": sub.ttl.text, "destination": sub.ttl.destination}
                if sub.ttl else None,
            })
        states.append({"name": main.name, "description": main.description,
                       "defaultSubState": main.default_sub_state, "subStates": subs})
    out = {
        "singular": definition.singular, "plural": definition.plural,
        "version": definition.version, "description": definition.description,
        "allowedOwners": list(definition.allowed_owners),
        "categories": {c.name: {"description": c.description,
                                "subCategories": list(c.sub_categories)}
                       for c in definition.categories.values()},
        "attributes": attributes,
        "reasons": dict(definition.reasons),
        "events": {
            e.code: {"description": e.description, "reasonCodes": list(e.reason_codes),
                     "dataValidations": {d.name: {"type": d.data_type, "description":
                                                  d.description, "validation": _validation(d)}
                                         for d in e.data_validations}}
            for e in definition.events.values()
        },
        "states": states,
        "initialState": definition.initial_state,
        "terminalTTL": definition.terminal_ttl_text,
        "templates": {
            t.id: {"name": t.name, "description": t.description, "category": t.category,
                   "subCategory": t.sub_category,
                   "attributes": {a.name: _override(a) for a in t.attributes.values()}}
            for t in definition.templates.values()
        },
    }
    if diagram is not None:
        out["diagram"] = diagram
    return out
