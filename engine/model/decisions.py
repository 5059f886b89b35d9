"""The pure decision: given a participant and a requested change, the outcome or the failure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.errors import Issue
from engine.model import failures as F
from engine.model.attributes import json_path, run_checks
from engine.model.conventions import CORE_EDITABLE
from engine.model.definitions import Definition
from engine.model.failures import FailureKind
from engine.model.types import ParticipantType

__all__ = ["Change", "Failure", "Outcome", "Snapshot", "decide", "merge_patch"]


def merge_patch(target, patch):
    """RFC 7396 JSON merge patch: objects merge recursively, null removes, others replace."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the decision needs of a stored participant."""

    state: str
    properties: Mapping
    core: Mapping = field(default_factory=dict)  # name, owner, category, subCategory, templateId


@dataclass(frozen=True, slots=True)
class Change:
    """A requested change: a properties merge patch, core fields, and optionally an event."""

    properties: Mapping | None = None
    core: Mapping = field(default_factory=dict)
    event_code: str | None = None
    reason_code: str | None = None
    event_data: Mapping | None = None    # the state-event API's `data`, checked if not None
    event_path: str = "$.stateTransition"  # where eventCode and reasonCode sit in the request
    destination: str | None = None       # a timer's move: no event, straight to this sub-state


@dataclass(frozen=True, slots=True)
class Outcome:
    state: str
    properties: dict
    core: dict
    previous_state: str | None
    transitioned: bool

    ok = True


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    issues: tuple[Issue, ...]

    ok = False

    @property
    def reason(self) -> str:
        return self.kind.reason

    @property
    def error_code(self) -> str:
        return self.kind.code


class _Problems:
    """Issues collected by kind; the first kind in catalogue order names the failure."""

    def __init__(self):
        self.by_kind: dict[FailureKind, list[Issue]] = {}

    def add(self, kind: FailureKind, issues) -> None:
        issues = list(issues)
        if issues:
            self.by_kind.setdefault(kind, []).extend(issues)

    def failure(self) -> Failure | None:
        if not self.by_kind:
            return None
        kinds = [k for k in F.PRECEDENCE if k in self.by_kind]
        return Failure(kinds[0], tuple(i for k in kinds for i in self.by_kind[k]))


def _core_issues(definition: Definition, core: Mapping, problems: _Problems) -> None:
    category, sub_category = core.get("category"), core.get("subCategory")
    if definition.categories:
        if category is not None and category not in definition.categories:
            problems.add(F.INVALID_CATEGORY, [Issue("$.category", (
                f"category '{category}' is not one of: {', '.join(definition.categories)}"))])
        elif sub_category is not None:
            allowed = definition.categories[category].sub_categories if category else ()
            if sub_category not in allowed:
                where = f"of category '{category}'" if category else "without a category"
                shown = ", ".join(allowed) or "none"
                problems.add(F.INVALID_CATEGORY, [Issue("$.subCategory", (
                    f"subCategory '{sub_category}' is not allowed {where} (allowed: {shown})"))])
    owner = core.get("owner")
    if owner is not None and definition.allowed_owners:
        prefix = owner.split(":", 1)[0] if ":" in owner else None
        if prefix not in definition.allowed_owners:
            shown = ", ".join(f"{p}:…" for p in definition.allowed_owners)
            problems.add(F.INVALID_OWNER, [Issue("$.owner", (
                f"owner '{owner}' must be the id of one of: {shown}"))])


def _template(definition: Definition, core: Mapping, problems: _Problems):
    """The participant's template, or None (with the reason added when it cannot apply)."""
    template_id = core.get("templateId")
    if template_id is None:
        return None
    template = definition.templates.get(template_id)
    if template is None:
        known = ", ".join(definition.templates) or "none are declared"
        problems.add(F.UNKNOWN_TEMPLATE, [Issue("$.templateId", (
            f"template '{template_id}' is not a template of {definition.plural} "
            f"(known: {known})"))])
        return None
    for name, wanted in (("category", template.category), ("subCategory", template.sub_category)):
        if wanted is not None and core.get(name) != wanted:
            problems.add(F.TEMPLATE_MISMATCH, [Issue(f"$.{name}", (
                f"template '{template_id}' applies to {name} '{wanted}', "
                f"not {core.get(name)!r}"))])
    return template if F.TEMPLATE_MISMATCH not in problems.by_kind else None


def _event_data_issues(ptype: ParticipantType, code: str, data: Mapping) -> list[Issue]:
    issues = []
    for item, checks in ptype.event_data[code]:
        if item.name not in data:
            if item.required:
                issues.append(Issue(json_path("$.data", item.name), f"{item.name} is required"))
            continue
        message = run_checks(checks, data[item.name])
        if message:
            issues.append(Issue(json_path("$.data", item.name), f"{item.name} {message}"))
    return issues


def _transition(ptype: ParticipantType, state: str, change: Change, properties: Mapping,
                problems: _Problems) -> str | None:
    """The destination of the change's event, or None (with the reason added to problems)."""
    definition, code = ptype.definition, change.event_code
    path = change.event_path
    event = definition.events.get(code)
    if event is None:
        problems.add(F.UNKNOWN_EVENT, [Issue(f"{path}.eventCode", (
            f"event {code} is not declared for {definition.plural}"))])
        return None
    reason = change.reason_code
    if reason is not None:
        if reason not in definition.reasons:
            problems.add(F.REASON_NOT_ALLOWED, [Issue(f"{path}.reasonCode", (
                f"reason {reason} is not declared for {definition.plural}"))])
        elif event.reason_codes and reason not in event.reason_codes:
            problems.add(F.REASON_NOT_ALLOWED, [Issue(f"{path}.reasonCode", (
                f"reason {reason} is not allowed for event {code} "
                f"(allowed: {', '.join(event.reason_codes)})"))])
    if change.event_data is not None:
        problems.add(F.INVALID_EVENT_DATA, _event_data_issues(ptype, code, change.event_data))
    candidates = ptype.machine.candidates(state, code)
    if not candidates:
        possible = ", ".join(ptype.machine.triggers(state)) or "none"
        problems.add(F.INVALID_STATE_TRANSITION, [Issue(f"{path}.eventCode", (
            f"event {code} has no transition from state '{state}' (possible: {possible})"))])
        return None
    for transition in candidates:
        if all(c.func(properties) == c.target for c in transition.conditions):
            return transition.dest
    for transition in candidates:
        for condition in transition.conditions:
            guard = condition.func
            label = guard.condition.description or f"guard of {code} to {transition.dest}"
            problems.add(F.GUARD_FAILED, [Issue(i.path, f"{label}: {i.message}")
                                          for i in guard.issues(properties)])
    return None


def decide(ptype: ParticipantType, current: Snapshot | None, change: Change) -> Outcome | Failure:
    """Validate the change against the type and decide its outcome, all problems together.

    `current` is None for a create: the participant starts in the initial state with the
    attributes' defaultValues. Guards and invariants see the properties after the patch.
    """
    definition = ptype.definition
    problems = _Problems()
    patch = change.properties or {}
    if current is None:
        state = definition.initial_state
        base = {n: a.default for n, a in definition.attributes.items() if a.has_default}
        core = {}
    else:
        state, base, core = current.state, current.properties, dict(current.core)
    previous_template = core.get("templateId")
    core.update({k: change.core[k] for k in CORE_EDITABLE if k in change.core})
    template = _template(definition, core, problems)
    if template is not None and (current is None or core["templateId"] != previous_template):
        # Taking a template brings its defaults: over the type's on create, and only for
        # attributes the participant lacks when an update switches templates.
        defaults = {n: a.default for n, a in template.attributes.items() if a.has_default}
        base = {**base, **defaults} if current is None else {**defaults, **base}
    problems.add(F.UNKNOWN_ATTRIBUTE, ptype.attributes.unknown(patch))
    properties = merge_patch(base, {k: v for k, v in patch.items()
                                    if k in definition.attributes})
    problems.add(F.INVALID_ATTRIBUTES, ptype.attributes.issues(properties))
    if template is not None:
        problems.add(F.INVALID_ATTRIBUTES, [
            Issue(i.path, f"{i.message} (template '{template.id}')")
            for i in ptype.templates[template.id].issues(properties)])
    _core_issues(definition, core, problems)

    destination = change.destination or state
    if change.event_code is not None:
        destination = _transition(ptype, state, change, properties, problems)
    if destination is not None:
        invariant = ptype.machine.invariants.get(destination)
        if invariant is not None:
            label = invariant.condition.description or f"requirement of '{destination}'"
            problems.add(F.INVARIANT_FAILED, [Issue(i.path, f"{label}: {i.message}")
                                              for i in invariant.issues(properties)])
    failure = problems.failure()
    if failure is not None:
        return failure
    return Outcome(destination, properties, core, state if current else None,
                   destination != state or change.event_code is not None)
