"""Rules about the state machine: events, destinations, terminals, ways out, reachability."""

from __future__ import annotations

from collections import defaultdict

from engine.model.conventions import EVENT_CODE
from engine.model.definitions import qualify

from ._rule import Context, Finding, mapping, rule, sequence
from .codes import suggest
from .walk import initial_state, sub_states, transitions


def _known_sub_states(data: dict) -> list[str]:
    return [f"{main}:{sub}" for main, sub, _p, _c in sub_states(data)]


def _terminals(data: dict) -> set[str]:
    found = set()
    for main, config in mapping(data.get("states")).items():
        for name in sequence(mapping(config).get("terminalStates")):
            found.add(f"{main}:{name}")
    return found


def _edges(data: dict) -> dict[str, set[str]]:
    """Qualified source -> qualified destinations, through transitions and ttls."""
    states = mapping(data.get("states"))
    edges: dict[str, set[str]] = defaultdict(set)
    for source, _path, transition in transitions(data):
        target = qualify(states, transition.get("destination"))
        if target:
            edges[source].add(target)
    for main, sub, _path, config in sub_states(data):
        target = qualify(states, mapping(config.get("ttl")).get("destination"))
        if target:
            edges[f"{main}:{sub}"].add(target)
    return edges


@rule("E201", "Every transition's event is declared")
def events_declared(ctx: Context):
    declared = ctx.declared("events")
    for _source, path, transition in transitions(ctx.data):
        code = transition.get("eventCode")
        if isinstance(code, str) and EVENT_CODE.match(code) and code not in declared:
            yield Finding(path + ("eventCode",),
                          f"transition uses event {code}, which is not declared under "
                          f"events:{suggest(code, declared)}")


@rule("E202", "Every destination names a declared sub-state ('main:sub' or a main state)")
def destinations(ctx: Context):
    states, known = ctx.section("states"), _known_sub_states(ctx.data)
    places = [(p + ("destination",), t.get("destination")) for _s, p, t in transitions(ctx.data)]
    places += [(p + ("ttl", "destination"), mapping(c.get("ttl")).get("destination"))
               for _m, _s, p, c in sub_states(ctx.data) if isinstance(c.get("ttl"), dict)]
    for path, destination in places:
        if isinstance(destination, str) and qualify(states, destination) is None:
            what = "transition" if path[-2] != "ttl" else "ttl"
            yield Finding(path, f"{what} goes to unknown sub-state '{destination}'"
                                f"{suggest(destination, known)}")


@rule("E203", "A main state with several sub-states names one of them as defaultSubState")
def default_sub_state(ctx: Context):
    for main, config in ctx.section("states").items():
        config = mapping(config)
        subs = mapping(config.get("subStates"))
        default = config.get("defaultSubState")
        if default is None:
            if len(subs) > 1:
                yield Finding(("states", main),
                              f"main state '{main}' has {len(subs)} sub-states and needs a "
                              "defaultSubState", at_key=True)
        elif isinstance(default, str) and subs and default not in subs:
            yield Finding(("states", main, "defaultSubState"),
                          f"defaultSubState '{default}' is not a sub-state of '{main}'"
                          f"{suggest(default, subs)}")


@rule("E204", "Terminal sub-states are declared sub-states of the last main state")
def terminal_placement(ctx: Context):
    states = ctx.section("states")
    last = list(states)[-1] if states else None
    for main, config in states.items():
        config = mapping(config)
        subs = mapping(config.get("subStates"))
        for i, name in enumerate(sequence(config.get("terminalStates"))):
            path = ("states", main, "terminalStates", i)
            if main != last:
                yield Finding(path, f"only the last main state ('{last}') may declare terminal "
                                    f"sub-states, not '{main}'")
            elif isinstance(name, str) and name not in subs:
                yield Finding(path, f"terminal state '{name}' is not a sub-state of '{main}'"
                                    f"{suggest(name, subs)}")


@rule("E205", "A terminal sub-state has no transitions and no ttl")
def terminal_is_final(ctx: Context):
    terminals = _terminals(ctx.data)
    for main, sub, path, config in sub_states(ctx.data):
        if f"{main}:{sub}" not in terminals:
            continue
        for key in ("transitions", "ttl"):
            if config.get(key):
                yield Finding(path + (key,), f"'{main}:{sub}' is terminal and cannot have {key}",
                              at_key=True)


@rule("E206", "Every non-terminal sub-state has a way out (a transition or a ttl)")
def way_out(ctx: Context):
    terminals, edges = _terminals(ctx.data), _edges(ctx.data)
    for main, sub, path, config in sub_states(ctx.data):
        name = f"{main}:{sub}"
        if name in terminals or config.get("transitions") or config.get("ttl"):
            continue
        if not edges.get(name):
            yield Finding(path, f"sub-state '{name}' has no transition and no ttl, so a "
                                "participant there is stuck; add one, or list it under "
                                f"terminalStates of the last main state", at_key=True)


@rule("E207", "Every sub-state is reachable from the initial state")
def reachable(ctx: Context):
    start = initial_state(ctx.data)
    if start is None:
        return
    edges, seen, todo = _edges(ctx.data), {start}, [start]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    for main, sub, path, _config in sub_states(ctx.data):
        if f"{main}:{sub}" not in seen:
            yield Finding(path, f"sub-state '{main}:{sub}' cannot be reached from the initial "
                                f"state '{start}'", at_key=True)


@rule("W208", "Transitions of one sub-state that share an event have guards marked exclusive")
def shared_events(ctx: Context):
    by_event: dict[tuple, list] = defaultdict(list)
    for source, path, transition in transitions(ctx.data):
        if isinstance(transition.get("eventCode"), str):  # E001 reports a malformed one
            by_event[(source, transition["eventCode"])].append((path, transition))
    for (source, code), group in by_event.items():
        guards = [mapping(t.get("guard")) for _p, t in group]
        if len(group) < 2 or all(g.get("exclusive") is True for g in guards):
            continue
        for path, _transition in group[1:]:
            yield Finding(path, f"'{source}' has {len(group)} transitions on {code}; "
                                "unless their guards are mutually exclusive the first one "
                                "that passes wins; declare each guard `exclusive: true` "
                                "once you have made sure they cannot both hold")
