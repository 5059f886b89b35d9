"""One transitions.Machine per participant type, built once; decisions made without a model."""

from __future__ import annotations

from collections.abc import Mapping

from transitions.extensions import GraphMachine

from engine.errors import Issue
from engine.model.attributes import json_path, thaw
from engine.model.definitions import Condition, Definition
from engine.model.jsonschemas import CompiledSchema

__all__ = ["CompiledCondition", "StateMachine"]


class CompiledCondition:
    """A guard or invariant, its JSON Schema compiled once; callable as a transitions condition."""

    __slots__ = ("condition", "validator")

    def __init__(self, condition: Condition):
        self.condition = condition
        self.validator = CompiledSchema(thaw(condition.schema))

    def __call__(self, properties: Mapping) -> bool:
        return self.validator.is_valid(properties)

    def __repr__(self) -> str:  # shown on diagram edges
        return self.condition.description or "guard"

    def issues(self, properties: Mapping, prefix: str = "$.properties") -> list[Issue]:
        """Why the condition does not hold, one issue per schema error."""
        found = []
        for error in self.validator.iter_errors(properties):
            path = list(error.absolute_path)
            if error.validator == "required" and not path:
                missing = error.message.split("'")[1] if "'" in error.message else ""
                path = [missing] if missing else []
            found.append(Issue(json_path(prefix, *path), error.message))
        return found


class StateMachine:
    """The graph of one type: qualified `main:sub` states, event codes as triggers, guards."""

    def __init__(self, definition: Definition):
        self.definition = definition
        self.invariants = {
            name: CompiledCondition(sub.requires)
            for name, sub in definition.sub_states.items() if sub.requires is not None
        }
        transitions = [
            {
                "trigger": t.event_code,
                "source": t.source,
                "dest": t.destination,
                "conditions": [CompiledCondition(t.guard)] if t.guard else [],
            }
            for sub in definition.sub_states.values() for t in sub.transitions
        ]
        # No model is bound: participants live in the database, and the service asks the
        # machine to decide for a state it passes in (see `candidates`).
        self.machine = GraphMachine(
            model=None,
            states=list(definition.sub_states),
            initial=definition.initial_state,
            transitions=transitions,
            auto_transitions=False,
            send_event=False,
            graph_engine="mermaid",
            show_conditions=True,
            title=definition.plural,
        )

    def candidates(self, state: str, event_code: str) -> list:
        """The transitions.Transition objects `event_code` may take from `state`, in order."""
        event = self.machine.events.get(event_code)
        return event.transitions.get(state, []) if event else []

    def triggers(self, state: str) -> list[str]:
        """Event codes that have a transition from `state`."""
        return self.machine.get_triggers(state)

    def diagram(self) -> str:
        """A Mermaid state diagram of the type."""
        return self.machine.graph_cls(self.machine).get_graph(title=self.definition.plural).source
