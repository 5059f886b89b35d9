"""Tolerant walks over raw machine-file data: malformed parts are skipped, never raised on."""

from __future__ import annotations

from collections.abc import Iterator

from engine.model.definitions import qualify

from ._rule import mapping, sequence


def sub_states(data: dict) -> Iterator[tuple[str, str, tuple, dict]]:
    """(main, sub, path, config) for every sub-state, in file order."""
    for main, config in mapping(data.get("states")).items():
        for sub, sub_config in mapping(mapping(config).get("subStates")).items():
            yield main, sub, ("states", main, "subStates", sub), mapping(sub_config)


def transitions(data: dict) -> Iterator[tuple[str, tuple, dict]]:
    """(qualified source, path, transition) for every well-shaped transition."""
    for main, sub, path, config in sub_states(data):
        for i, transition in enumerate(sequence(config.get("transitions"))):
            if isinstance(transition, dict):
                yield f"{main}:{sub}", path + ("transitions", i), transition


def conditions(data: dict) -> Iterator[tuple[tuple, dict]]:
    """(path, condition) for every guard and invariant."""
    for _main, _sub, path, config in sub_states(data):
        if isinstance(config.get("requires"), dict):
            yield path + ("requires",), config["requires"]
        for i, transition in enumerate(sequence(config.get("transitions"))):
            if isinstance(mapping(transition).get("guard"), dict):
                yield path + ("transitions", i, "guard"), transition["guard"]


def initial_state(data: dict) -> str | None:
    """The first main state's default sub-state, qualified."""
    states = mapping(data.get("states"))
    if not states:
        return None
    return qualify(states, next(iter(states)))
