"""Property-based tests (hypothesis) of the engine and the store, against random machines.

A strategy builds random valid machine files (lint-clean, compiled like the registry does). A
rule-based state machine then runs random creates, attribute patches (with nulls), combined
updates, state events, ttl timers, exact replays, request-id reuse and deliberately failing
requests through `Service.execute` on a real store (a SQLite file, and a PostgreSQL schema: a
fresh one per example), and checks after every step that:

- a failure changes nothing but appending exactly one failure event;
- a replay appends nothing and answers the same bytes;
- replaying a participant's success events (their `entity`, and separately their `data` fed back
  through `decide`) reproduces its stored state, properties and version;
- every stored participant satisfies its attributes' validations, required-ness and its
  sub-state's invariant, and every transition taken had its guard hold;
- success versions are 1..N and `sequence` is 1..M over all of a participant's events.

Pure properties: `decide` never raises on arbitrary JSON patches and never returns an outcome
that breaks the type; `merge_patch` is RFC 7396.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import shutil
import string
import tempfile
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine.errors import ParticipantNotFound, RequestIdReused, UnstorableText
from engine.jobs.timers import Timers
from engine.lint.runner import lint_documents
from engine.loading.registry import build_definition
from engine.loading.yamlfile import load_text
from engine.model import failures as F
from engine.model.attributes import thaw
from engine.model.commands import build
from engine.model.conventions import CORE_EDITABLE, compact_json, index_value
from engine.model.decisions import Change, Failure, Outcome, Snapshot, decide, merge_patch
from engine.model.types import ParticipantType
from engine.service.idempotency import fingerprint
from engine.service.participants import Service, participant_id_for
from engine.storage import Storage, open_storage
from tests.conftest import Inspector, migrated_postgres_schema, scale

STATS: Counter = Counter()  # what the suites did, for the figures

SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
)

# -- JSON values ----------------------------------------------------------------------------------

# Text as a JSON body can carry it: any code point but lone surrogates (webapp refuses those).
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
SCALARS = st.none() | st.booleans() | st.integers() | TEXT | st.floats(
    allow_nan=False, allow_infinity=False)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
JSON_OBJECTS = st.dictionaries(TEXT, JSON, max_size=5)
# Machine-file text stays plain, so what the YAML round trip gives back is what was drawn.
PLAIN = string.ascii_letters + string.digits + " -_"

# -- random machines ------------------------------------------------------------------------------

DATA_TYPES = ("string", "number", "integer", "boolean")
# regex -> an alphabet whose every string of the allowed length matches it
REGEXES = {"^[a-z]*$": "abcxyz", "^[A-Z0-9-]*$": "AZ09-", "^[0-9a-f]+$": "0af9"}
TTLS = ("90s", "30m", "1h", "2h30m", "1d")
# Names a careless implementation could trip on: JSON Schema keywords, YAML 1.1 booleans and
# null, words of the transitions library's own vocabulary.
ATTRIBUTE_NAMES = ("attr0", "speed", "type", "required", "enum", "items", "constructor",
                   "toString", "on", "no", "null", "true", "A_1", "state_")
STATE_NAMES = ("pending", "active", "initial", "state", "to_active", "trigger", "on", "None",
               "model", "is_active", "done-1", "A", "source", "dest")
UNKNOWN_EVENT, UNKNOWN_REASON = "E-999", "R-9999"


def _bounds(config: dict) -> tuple:
    bounds = config.get("validation", {}).get("range", {})
    return bounds.get("min"), bounds.get("max")


def base_values(config: dict, *, plain: bool = False) -> st.SearchStrategy:
    """Values of the attribute's dataType within its range and regex (valueOneOf aside)."""
    data_type, (low, high) = config["dataType"], _bounds(config)
    if data_type == "boolean":
        return st.booleans()
    if data_type == "integer":
        ints = st.integers(low, high)
        return ints | ints.filter(lambda v: abs(v) < 2**53).map(float)  # 3.0 is an integer
    if data_type == "number":
        return st.integers(low, high) | st.floats(low, high, allow_nan=False,
                                                  allow_infinity=False)
    regex = config.get("validation", {}).get("regex")
    low = max(low or 0, 1 if regex and regex.endswith("+$") else 0)
    high = high if high is not None else low + 10
    alphabet = REGEXES[regex] if regex else (PLAIN if plain else st.characters(codec="utf-8"))
    return st.text(alphabet, min_size=low, max_size=high)


def valid_values(config: dict) -> st.SearchStrategy:
    options = config.get("validation", {}).get("valueOneOf")
    return st.sampled_from(options) if options else base_values(config)


def _same(a, b) -> bool:
    return (type(a) is type(b) and a == b) or (
        not isinstance(a, bool) and not isinstance(b, bool)
        and isinstance(a, int | float) and isinstance(b, int | float) and a == b)


def invalid_values(config: dict) -> st.SearchStrategy:
    """Values the attribute's validation must refuse (of the wrong type, or out of bounds)."""
    data_type, (low, high) = config["dataType"], _bounds(config)
    validation = config.get("validation", {})
    wrong = {
        "string": st.integers() | st.booleans() | st.lists(st.integers(), max_size=2),
        "number": TEXT | st.booleans() | st.dictionaries(TEXT, st.integers(), max_size=2),
        "integer": TEXT | st.booleans() | st.sampled_from([0.5, -1.25, 1e-9]),
        "boolean": st.integers() | TEXT | st.sampled_from([0.0, 1.0]),
    }[data_type]
    choices = [wrong]
    if data_type in ("number", "integer"):
        if high is not None:
            choices.append(st.integers(high + 1, high + 1000))
        if low is not None:
            choices.append(st.integers(low - 1000, low - 1))
    elif data_type == "string":
        if high is not None:
            choices.append(st.text("abc", min_size=high + 1, max_size=high + 4))
        if low is not None and low > 0:
            choices.append(st.text("abc", max_size=low - 1))
        regex = validation.get("regex")
        if regex:
            choices.append(st.text("!# ", min_size=max(low or 0, 1), max_size=max(low or 0, 1)))
            if high is None or high > max(low or 0, 1):  # `$` is the end of the text, as in ECMA
                size = max(low or 0, 1)
                choices.append(st.text(REGEXES[regex], min_size=size, max_size=size).map(
                    lambda v: v + "\n"))
    options = validation.get("valueOneOf")
    if options and not (data_type == "boolean" and len(set(options)) == 2):
        choices.append(base_values(config).filter(
            lambda v: not any(_same(v, o) for o in options)))
    return st.one_of(choices)


@st.composite
def attribute_configs(draw) -> dict:
    data_type = draw(st.sampled_from(DATA_TYPES))
    config: dict = {"dataType": data_type}
    validation: dict = {}
    if data_type in ("number", "integer", "string") and draw(st.booleans()):
        low = draw(st.integers(-50, 50) if data_type != "string" else st.integers(0, 3))
        bounds = draw(st.sampled_from([{"min": low}, {"max": low + 10},
                                       {"min": low, "max": low + draw(st.integers(1, 20))}]))
        validation["range"] = bounds
    if data_type == "string" and draw(st.booleans()):
        validation["regex"] = draw(st.sampled_from(sorted(REGEXES)))
    if draw(st.integers(0, 3)) == 0:
        pool = base_values({"dataType": data_type, "validation": validation}, plain=True)
        options = draw(st.lists(pool, min_size=1, max_size=4, unique_by=json.dumps))
        validation["valueOneOf"] = options
    if draw(st.integers(0, 2)) == 0:
        validation["required"] = True
    if validation:
        config["validation"] = validation
    if draw(st.integers(0, 2)) == 0:
        if validation.get("valueOneOf"):
            config["defaultValue"] = draw(st.sampled_from(validation["valueOneOf"]))
        else:
            config["defaultValue"] = draw(base_values(config, plain=True))
    if draw(st.booleans()):
        config["indexed"] = True
    return config


@st.composite
def conditions(draw, attributes: dict) -> dict:
    """A guard or invariant: JSON Schema over one or two attributes."""
    names = draw(st.lists(st.sampled_from(sorted(attributes)), min_size=1, max_size=2,
                          unique=True))
    schema: dict = {}
    for name in names:
        config = attributes[name]
        low, high = _bounds(config)
        kind = draw(st.sampled_from(("required", "value", "both")))
        if kind in ("required", "both"):
            schema.setdefault("required", []).append(name)
        if kind in ("value", "both"):
            data_type = config["dataType"]
            if data_type in ("number", "integer"):
                lo = low if low is not None else (high - 20 if high is not None else -20)
                k = draw(st.integers(lo, high if high is not None else lo + 40))
                keyword = draw(st.sampled_from(("minimum", "maximum")))
                rule_ = {keyword: k}
            elif data_type == "boolean":
                rule_ = {"const": draw(st.booleans())}
            elif draw(st.booleans()):
                rule_ = {"minLength": draw(st.integers(0, 3))}
            else:
                options = config.get("validation", {}).get("valueOneOf")
                pool = st.sampled_from(options) if options else base_values(config, plain=True)
                rule_ = {"enum": draw(st.lists(pool, min_size=1, max_size=3, unique=True))}
            schema.setdefault("properties", {})[name] = rule_
    condition = {"schema": schema}
    if draw(st.booleans()):
        condition["description"] = f"condition on {', '.join(names)}"
    return condition


@st.composite
def machines(draw) -> dict:
    """A random machine file (as data) that the linter passes without errors."""
    plural = draw(st.sampled_from(("vehicles", "riders", "hubs", "parcels")))
    names = draw(st.lists(st.sampled_from(ATTRIBUTE_NAMES), min_size=1, max_size=4, unique=True))
    attributes = {name: draw(attribute_configs()) for name in names}
    reasons = {f"R-{i:04d}": f"Reason {i}" for i in range(1, draw(st.integers(1, 3)) + 1)}
    codes = draw(st.lists(st.integers(1, 998), min_size=1, max_size=4, unique=True))
    codes = [f"E-{c:03d}" for c in codes]

    mains = draw(st.lists(st.sampled_from(STATE_NAMES), min_size=1, max_size=4, unique=True))
    subs = {m: draw(st.lists(st.sampled_from(STATE_NAMES), min_size=1, max_size=3, unique=True))
            for m in mains}
    defaults = {m: draw(st.sampled_from(subs[m])) for m in mains}
    initial = f"{mains[0]}:{defaults[mains[0]]}"
    every = [f"{m}:{s}" for m in mains for s in subs[m]]
    candidates = [f"{mains[-1]}:{s}" for s in subs[mains[-1]] if f"{mains[-1]}:{s}" != initial]
    terminals = draw(st.lists(st.sampled_from(candidates), unique=True)) if candidates else []
    middle = draw(st.permutations([s for s in every if s != initial and s not in terminals]))
    order = [initial, *middle, *terminals]  # every state reachable from one before it
    live = [s for s in order if s not in terminals]

    edges = [(draw(st.sampled_from([p for p in order[:i] if p not in terminals])), s)
             for i, s in enumerate(order) if i]
    edges += draw(st.lists(st.tuples(st.sampled_from(live), st.sampled_from(order)),
                           max_size=4))
    for state in live:  # a way out of every non-terminal state
        if not any(source == state for source, _ in edges):
            edges.append((state, draw(st.sampled_from(order))))

    def destination(state: str) -> str:
        main, sub = state.split(":")
        bare = sub == defaults[main] and draw(st.booleans())
        return main if bare else state

    configs: dict[str, dict] = {s: {} for s in every}
    for source, target in edges:
        config = configs[source]
        if "ttl" not in config and draw(st.integers(0, 3)) == 0:
            config["ttl"] = {"time": draw(st.sampled_from(TTLS)),
                             "destination": destination(target)}
            continue
        transition = {"eventCode": draw(st.sampled_from(codes)),
                      "destination": destination(target)}
        if draw(st.integers(0, 2)) == 0:
            transition["guard"] = draw(conditions(attributes))
        config.setdefault("transitions", []).append(transition)
    for state in every:
        if draw(st.integers(0, 3)) == 0:
            configs[state]["requires"] = draw(conditions(attributes))

    events = {}
    for code in codes:
        event: dict = {"description": f"Event {code}"}
        if draw(st.booleans()):
            event["reasonCodes"] = draw(st.lists(st.sampled_from(sorted(reasons)), min_size=1,
                                                 unique=True))
        if draw(st.integers(0, 3)) == 0:
            event["dataValidations"] = {"note": {"type": "string", "validation": {
                "required": draw(st.booleans()), "range": {"max": 8}}}}
        events[code] = event

    states = {}
    for main in mains:
        entry: dict = {}
        if len(subs[main]) > 1 or draw(st.booleans()):
            entry["defaultSubState"] = defaults[main]
        if main == mains[-1] and terminals:
            entry["terminalStates"] = [t.split(":")[1] for t in terminals]
        entry["subStates"] = {s: configs[f"{main}:{s}"] or None for s in subs[main]}
        states[main] = entry
    data = {
        "participantType": {"singular": plural[:-1], "plural": plural},
        "version": "1.0.0",
        "description": "A random machine.",
        "attributes": attributes, "reasons": reasons, "events": events, "states": states,
    }
    if draw(st.booleans()):
        data["categories"] = {"truck": {"subCategories": ["small", "large"]}, "bike": None}
    if draw(st.booleans()):
        data["allowedOwners"] = ["operators", "tenants"]
    if terminals and draw(st.booleans()):
        data["terminalTTL"] = draw(st.sampled_from(TTLS))
    return data


def compile_machine(data: dict) -> ParticipantType:
    """Lint the machine as its YAML file, then build and compile it like the registry does."""
    doc = load_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                    f"{data['participantType']['plural']}.yaml")
    errors = [str(p) for p in lint_documents([doc]) if p.severity == "error"]
    assert not errors, errors
    assert doc.data == data  # the YAML round trip gives back what was drawn
    return ParticipantType.compile(build_definition(data, None, "random"))


# -- checks shared by the suites ------------------------------------------------------------------

def type_problems(ptype: ParticipantType, state: str, properties: dict) -> list:
    """Why stored data would break the type: unknown names, bad values, a failing invariant."""
    found = [i.as_dict() for i in ptype.attributes.unknown(properties)]
    found += [i.as_dict() for i in ptype.attributes.issues(properties)]
    if state not in ptype.definition.sub_states:
        found.append({"path": "$.state", "message": f"unknown state {state}"})
    invariant_ = ptype.machine.invariants.get(state)
    if invariant_ is not None and not invariant_(properties):
        found.append({"path": "$.state", "message": f"invariant of {state} fails"})
    return found


def change_from_data(kind: str, data: dict) -> Change:
    """The Change an event's `data` records (what the request asked for)."""
    if "toState" in data:  # a sub-state ttl moved the participant
        return Change(destination=data["toState"])
    if kind == "state":
        return Change(event_code=data["eventCode"], reason_code=data.get("reasonCode"),
                      event_data=data.get("data") or {}, event_path="$")
    return Change(properties=data.get("properties") or {},
                  core={k: data[k] for k in CORE_EDITABLE if k in data},
                  event_code=data.get("eventCode"), reason_code=data.get("reasonCode"))


def snapshot_of(row: dict) -> Snapshot:
    """What `decide` sees of a stored participants row."""
    return Snapshot(row["state"], json.loads(row["properties"]), {
        "name": row["name"], "owner": row["owner"], "category": row["category"],
        "subCategory": row["sub_category"], "templateId": row["template_id"]})


ENTITY_CORE = {"participant_name": "name", "owner_id": "owner", "category": "category",
               "sub_category": "subCategory", "template_id": "templateId"}
KIND_OF = {"ParticipantCreation": "create", "ParticipantUpdation": "update",
           "ParticipantStateUpdation": "state", "ParticipantAttributeAndStateUpdation": "update"}


def route(kind: str, plural: str, participant_id: str | None) -> tuple[str, str]:
    base = f"/core/api/v2/participants/{plural}"
    if kind == "create":
        return "POST", base
    if kind == "update":
        return "PUT", f"{base}/{participant_id}"
    return "PUT", f"{base}/{participant_id}/state/event"


def render(participant_id: str, record: dict, state: str | None) -> tuple[int, str]:
    """The webapp's 202 answer, minus the request echo."""
    event = {k: record[k] for k in ("commandName", "payloadValidated", "reason", "errorCode",
                                    "version")}
    event.update(id=record["event"]["id"], state=state)
    if not record["payloadValidated"]:
        event["errors"] = record["errors"]
    return 202, compact_json({"data": {"id": participant_id, "event": event}})


# -- the stateful suite ---------------------------------------------------------------------------

def holds_nul(value) -> bool:
    """Whether a string or key anywhere in a JSON value holds U+0000 (PostgreSQL's text cannot
    store it, so the service refuses such a request on both backends)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_nul(v) for v in value)
    return False


TENANTS = ("tenant-a", "tenant-b")
CORE_VALUES = {"name": ("Truck 1", "", "Ünïcode ✓"), "owner": ("operators:1", "drivers:9", "x"),
               "category": ("truck", "bike", "plane"), "subCategory": ("small", "large", "huge")}
UNIQUE_CODES = tuple(f"U{i}" for i in range(6))


class Lifecycle(RuleBasedStateMachine):
    """Random writes against one random machine, on a real Store, checked after every step."""

    BACKEND = "sqlite"  # set per run by the test

    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="properties-")
        self.store: Storage | None = None
        self.inspector: Inspector | None = None
        self.resources = contextlib.ExitStack()

    def teardown(self):
        if self.inspector is not None:
            self.inspector.close()
        if self.store is not None:
            self.store.close()
        self.resources.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def fresh_database(self) -> str:
        if self.BACKEND == "postgres":  # migrated ahead, so examples cost what they test
            return self.resources.enter_context(migrated_postgres_schema())
        return str(Path(self.folder) / "participants.db")

    @initialize(data=machines())
    def load(self, data):
        self.machine_data = data
        self.ptype = compile_machine(data)
        self.plural = self.ptype.plural
        self.attributes = data["attributes"]
        database = self.fresh_database()
        self.store = open_storage(database, synchronous="OFF")
        self.inspector = Inspector(database)
        self.now = 1_700_000_000.0
        self.service = Service(self.store, clock=lambda: self.now)
        self.timers = Timers({self.plural: self.ptype}, self.service)
        self.request_ids = itertools.count(1)
        self.answered: list[dict] = []  # requests that got an answer, to replay or reuse
        self.used: set[tuple[str, str]] = set()  # (tenant, request id) with a stored answer
        STATS["machines"] += 1

    # -- reading the database -----------------------------------------------------------------

    def db(self) -> Inspector:
        return self.inspector

    def rows(self) -> dict:
        found = self.db().dicts("SELECT * FROM participants ORDER BY tenant_id, id")
        return {(r["tenant_id"], r["id"]): r for r in found}

    def dump(self) -> dict:
        db = self.db()
        return {
            "participants": self.rows(),
            "index": sorted(map(repr, db.rows("SELECT * FROM attribute_index"))),
            "events": db.rows("SELECT seq, body FROM events ORDER BY seq"),
            "idempotency": sorted(map(repr, db.rows("SELECT * FROM idempotency"))),
            "outbox": db.count("outbox"),
        }

    def existing(self, archived: bool = False) -> list[tuple[str, str]]:
        return sorted(key for key, row in self.rows().items()
                      if archived or row["archived_at"] is None)

    # -- one write and its checks ---------------------------------------------------------------

    def submit(self, kind: str, tenant: str, body: dict, participant_id: str | None = None,
               *, must_fail: bool = False, request_id: str | None = None) -> None:
        request_id = request_id or f"req-{next(self.request_ids)}"
        method, path = route(kind, self.plural, participant_id)
        command = build(kind, body, tenant_id=tenant, request_id=request_id,
                        fingerprint=fingerprint(method, path, body),
                        participant_id=participant_id)
        target = participant_id if kind != "create" else participant_id_for(
            tenant, self.plural, body["uniqueCode"])
        before = self.dump()
        row = before["participants"].get((tenant, target))
        live = row is not None and row["archived_at"] is None
        if kind == "create":
            expected = Failure(F.ALREADY_EXISTS, ()) if row is not None else decide(
                self.ptype, None, command.change)
        elif live:
            expected = decide(self.ptype, snapshot_of(row), command.change)
        else:
            expected = None
        note(f"{kind} {tenant} {target} {body} -> expected {expected}")
        nul = holds_nul(body)
        try:
            result = self.service.execute(self.ptype, command, render)
        except UnstorableText:  # a 400 over HTTP, on either backend
            assert nul, "a request without U+0000 refused as unstorable"
            assert self.dump() == before, "an unstorable request wrote something"
            STATS["unstorable"] += 1
            return
        except ParticipantNotFound:
            assert expected is None, "404 for a participant that exists"
            assert self.dump() == before, "a 404 wrote something"
            STATS["not found"] += 1
            return
        assert not nul, "a request holding U+0000 (which PostgreSQL cannot store) was accepted"
        assert expected is not None, "a write to a missing participant was accepted"
        assert not result.replayed and result.status == 202
        after = self.dump()
        new = after["events"][len(before["events"]):]
        assert after["events"][:len(before["events"])] == before["events"]
        assert len(new) == 1, f"{len(new)} events appended by one write"
        record = json.loads(new[0][1])
        answer = json.loads(result.body)["data"]
        assert answer["id"] == target and answer["event"]["id"] == record["event"]["id"]
        assert record["payloadValidated"] is expected.ok, (record, expected)
        stored = after["participants"].get((tenant, target))
        if expected.ok:
            version = 1 if row is None else row["version"] + 1
            assert stored["version"] == record["version"] == answer["event"]["version"] == version
            assert stored["state"] == expected.state == answer["event"]["state"]
            assert json.loads(stored["properties"]) == expected.properties
            assert record["entity"]["state"] == expected.state
            assert not must_fail, f"a request meant to fail succeeded: {body}"
            STATS["successes"] += 1
            STATS["transitions"] += expected.previous_state not in (None, expected.state)
        else:
            assert record["errorCode"] == expected.error_code, (record["errors"], expected)
            if expected.kind is not F.ALREADY_EXISTS:
                assert record["errors"] == [i.as_dict() for i in expected.issues]
            # (a) a failure changes nothing but the log
            for name in ("participants", "index", "outbox"):
                assert after[name] == before[name], f"a failure changed {name}"
            assert record["entity"] == {} and record["version"] == (row["version"] if row else 0)
            assert answer["event"]["state"] == (row["state"] if row else None)
            STATS["failures"] += 1
        STATS["operations"] += 1
        self.used.add((tenant, request_id))
        self.answered.append({"kind": kind, "tenant": tenant, "body": body,
                              "participant_id": participant_id, "request_id": request_id,
                              "status": result.status, "response": result.body})

    # -- drawing requests -------------------------------------------------------------------------

    def draw_patch(self, data, *, create: bool = False) -> dict:
        names = sorted(self.attributes)
        keys = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
        if create and data.draw(st.integers(0, 4)):  # mostly: what a create needs
            keys += [n for n, c in self.attributes.items() if n not in keys
                     and c.get("validation", {}).get("required") and "defaultValue" not in c]
        patch = {}
        for name in keys:
            how = data.draw(st.sampled_from(("valid",) * 8 + ("null", "invalid")))
            config = self.attributes[name]
            patch[name] = None if how == "null" else data.draw(
                valid_values(config) if how == "valid" else invalid_values(config))
        return patch

    def draw_core(self, data, *, create: bool = False) -> dict:
        """Some core fields: declared or not (category, owner), or cleared with null."""
        core = {}
        for name, pool in CORE_VALUES.items():
            if data.draw(st.integers(0, 3)) == 0:
                core[name] = data.draw(st.sampled_from(pool) if create else
                                       st.none() | st.sampled_from(pool))
        return core

    def draw_participant(self, data) -> tuple[str, str]:
        return data.draw(st.sampled_from(self.existing()))

    def draw_event(self, data, state: str) -> tuple[str, str | None]:
        triggers = self.ptype.machine.triggers(state)
        declared = sorted(self.ptype.definition.events)
        code = data.draw(st.sampled_from(triggers) if triggers and data.draw(
            st.integers(0, 4)) else st.sampled_from([*declared, UNKNOWN_EVENT]))
        event = self.ptype.definition.events.get(code)
        allowed = list(event.reason_codes) if event and event.reason_codes else sorted(
            self.ptype.definition.reasons)
        reason = data.draw(st.none() | st.sampled_from(allowed) | st.just(UNKNOWN_REASON))
        return code, reason

    def state_body(self, data, code: str, reason: str | None) -> dict:
        body = {"eventCode": code, "timestamp": int(self.now), "source": {"appId": "props"}}
        if reason is not None:
            body["reasonCode"] = reason
        if data.draw(st.booleans()):
            body["data"] = {"note": data.draw(st.text("abc", max_size=10) | st.integers())}
        return body

    # -- rules ------------------------------------------------------------------------------------

    def aim(self, data, kind: str, tenant: str, participant_id: str | None, draw_body) -> dict:
        """A body from `draw_body`; mostly redrawn a few times until it would succeed."""
        tries = data.draw(st.sampled_from((1, 8, 8, 8)))
        for _ in range(tries):
            body = draw_body()
            command = build(kind, body, tenant_id=tenant, request_id="-", fingerprint="-",
                            participant_id=participant_id)
            row = self.rows().get((tenant, participant_id or participant_id_for(
                tenant, self.plural, body.get("uniqueCode", ""))))
            if kind == "create" and row is None:
                if decide(self.ptype, None, command.change).ok:
                    break
            elif kind != "create" and decide(self.ptype, snapshot_of(row), command.change).ok:
                break
        return body

    @rule(data=st.data(), tenant=st.sampled_from(TENANTS), code=st.sampled_from(UNIQUE_CODES))
    def create(self, data, tenant, code):
        def draw_body():
            body = {"uniqueCode": code, "properties": self.draw_patch(data, create=True)}
            return {**body, **self.draw_core(data, create=True)}

        self.submit("create", tenant, self.aim(data, "create", tenant, None, draw_body))

    @precondition(lambda self: self.existing())
    @rule(data=st.data())
    def update(self, data):
        tenant, pid = self.draw_participant(data)
        combined = data.draw(st.booleans())

        def draw_body():
            body: dict = {"properties": self.draw_patch(data), **self.draw_core(data)}
            if combined:
                code, reason = self.draw_event(data, self.rows()[(tenant, pid)]["state"])
                body["stateTransition"] = {"eventCode": code}
                if reason is not None:
                    body["stateTransition"]["reasonCode"] = reason
            return body

        self.submit("update", tenant, self.aim(data, "update", tenant, pid, draw_body), pid)

    @precondition(lambda self: self.existing())
    @rule(data=st.data())
    def state_event(self, data):
        tenant, pid = self.draw_participant(data)

        def draw_body():
            code, reason = self.draw_event(data, self.rows()[(tenant, pid)]["state"])
            return self.state_body(data, code, reason)

        self.submit("state", tenant, self.aim(data, "state", tenant, pid, draw_body), pid)

    @precondition(lambda self: self.existing())
    @rule(data=st.data())
    def deliberate_failure(self, data):
        """A request built to fail: each kind of business failure, or a 404."""
        existing = self.existing()
        kinds = ["unknown attribute", "missing participant", "invalid value"]
        if existing:
            kinds += ["unknown event", "bad reason", "no transition"]
        if self.existing(archived=True):
            kinds.append("duplicate create")
        kind = data.draw(st.sampled_from(kinds))
        tenant, pid = self.draw_participant(data) if existing else (TENANTS[0], None)
        state = self.rows()[(tenant, pid)]["state"] if pid else None
        STATS["deliberate failures"] += 1
        if kind == "unknown attribute":
            patch = {**self.draw_patch(data), "notAnAttribute": data.draw(JSON)}
            if pid and data.draw(st.booleans()):
                return self.submit("update", tenant, {"properties": patch}, pid, must_fail=True)
            code = data.draw(st.sampled_from(UNIQUE_CODES))
            return self.submit("create", tenant, {"uniqueCode": code, "properties": patch},
                               must_fail=True)
        if kind == "invalid value":
            name = data.draw(st.sampled_from(sorted(self.attributes)))
            patch = {**self.draw_patch(data),
                     name: data.draw(invalid_values(self.attributes[name]))}
            if pid and data.draw(st.booleans()):
                return self.submit("update", tenant, {"properties": patch}, pid, must_fail=True)
            code = data.draw(st.sampled_from(UNIQUE_CODES))
            return self.submit("create", tenant, {"uniqueCode": code, "properties": patch},
                               must_fail=True)
        if kind == "missing participant":
            ghost = participant_id_for(tenant, self.plural, "never-created")
            body = {"properties": self.draw_patch(data)}
            return self.submit("update", tenant, body, ghost, must_fail=True)
        if kind == "duplicate create":
            tenant, pid = data.draw(st.sampled_from(self.existing(archived=True)))
            code = self.rows()[(tenant, pid)]["unique_code"]
            body = {"uniqueCode": code, "properties": self.draw_patch(data)}
            return self.submit("create", tenant, body, must_fail=True)
        if kind == "unknown event":
            code, reason = UNKNOWN_EVENT, None
        elif kind == "bad reason":
            code, reason = self.draw_event(data, state)[0], UNKNOWN_REASON
        else:
            possible = set(self.ptype.machine.triggers(state))
            impossible = sorted(set(self.ptype.definition.events) - possible) or [UNKNOWN_EVENT]
            code, reason = data.draw(st.sampled_from(impossible)), None
        if data.draw(st.booleans()):
            body = {"properties": self.draw_patch(data), "stateTransition": {"eventCode": code}}
            if reason is not None:
                body["stateTransition"]["reasonCode"] = reason
            return self.submit("update", tenant, body, pid, must_fail=True)
        return self.submit("state", tenant, self.state_body(data, code, reason), pid,
                           must_fail=True)

    @precondition(lambda self: self.answered)
    @rule(data=st.data())
    def replay(self, data):
        """(b) The same request id and body: the same bytes, and nothing written."""
        first = data.draw(st.sampled_from(self.answered))
        method, path = route(first["kind"], self.plural, first["participant_id"])
        command = build(first["kind"], copy.deepcopy(first["body"]),
                        tenant_id=first["tenant"], request_id=first["request_id"],
                        fingerprint=fingerprint(method, path, first["body"]),
                        participant_id=first["participant_id"])
        before = self.dump()
        result = self.service.execute(self.ptype, command, render)
        assert result.replayed and result.status == first["status"]
        assert result.body == first["response"], "a replay answered different bytes"
        assert self.dump() == before, "a replay wrote something"
        STATS["replays"] += 1

    @precondition(lambda self: self.answered)
    @rule(data=st.data())
    def reuse(self, data):
        """A request id used again for a different request: refused, and nothing written."""
        first = data.draw(st.sampled_from(self.answered))
        kind, pid, body = first["kind"], first["participant_id"], copy.deepcopy(first["body"])
        how = data.draw(st.sampled_from(("body", "path", "other tenant")))
        if how == "other tenant":  # request ids are scoped to the tenant: a fresh request
            other = TENANTS[1 - TENANTS.index(first["tenant"])]
            if (other, first["request_id"]) in self.used:
                return None
            if kind == "create":
                return self.submit(kind, other, body, request_id=first["request_id"])
            return self.submit(kind, other, body, participant_id_for(
                other, self.plural, "never-created"), request_id=first["request_id"],
                must_fail=True)
        if how == "body":
            if kind == "state":
                body["timestamp"] += 1
            else:
                body["name"] = f"{body.get('name')}-changed"
        else:
            kind = "update" if kind != "update" else "state"
            pid = pid or participant_id_for(first["tenant"], self.plural, body["uniqueCode"])
        method, path = route(kind, self.plural, pid)
        if kind == "state" and "eventCode" not in body:
            body = {"eventCode": UNKNOWN_EVENT, "timestamp": 1, "source": {"appId": "x"}}
        command = build(kind, body, tenant_id=first["tenant"], request_id=first["request_id"],
                        fingerprint=fingerprint(method, path, body), participant_id=pid)
        before = self.dump()
        with pytest.raises(RequestIdReused):
            self.service.execute(self.ptype, command, render)
        assert self.dump() == before, "a refused request id reuse wrote something"
        STATS["request id reuses"] += 1

    @precondition(lambda self: self.existing())
    @rule(seconds=st.sampled_from((60, 1800, 3600, 5400, 86_400)))
    def tick(self, seconds):
        """Time passes; due ttls move participants, and terminal ones may be archived."""
        before = self.dump()
        self.now += seconds
        self.timers.run_due(self.now)
        after = self.dump()
        new = [json.loads(body) for _seq, body in after["events"][len(before["events"]):]]
        moved = {(e["tenantId"], e["entityInstanceId"]): e for e in new if e["payloadValidated"]}
        assert len(new) == len({(e["tenantId"], e["entityInstanceId"]) for e in new})
        for key, old in before["participants"].items():
            row = after["participants"][key]
            sub = self.ptype.definition.sub_states[old["state"]]
            if key in moved:  # a ttl fired: straight to its destination
                assert old["archived_at"] is None and sub.ttl is not None
                assert row["state"] == sub.ttl.destination == moved[key]["entity"]["state"]
                assert row["version"] == old["version"] + 1
                assert old["state_entered_at"] + sub.ttl.seconds * 1000 <= self.now * 1000
                STATS["ttl moves"] += 1
                continue
            ignore = ("timer_blocked_version", "archived_at")
            assert {k: v for k, v in row.items() if k not in ignore} == {
                k: v for k, v in old.items() if k not in ignore}, "a failed timer changed data"
            if row["archived_at"] != old["archived_at"]:
                assert old["archived_at"] is None and sub.terminal
                STATS["archived"] += 1
        STATS["ttl failures"] += len(new) - len(moved)
        STATS["ticks"] += 1

    # -- invariants checked after every step ------------------------------------------------------

    @invariant()
    def stored_data_is_consistent(self):
        if self.store is None:
            return
        ptype, definition = self.ptype, self.ptype.definition
        rows = self.rows()
        by_participant: dict[tuple, list] = {}
        for version, sequence, success, body in self.db().rows(
                "SELECT version, sequence, success, body FROM events ORDER BY seq"):
            record = json.loads(body)
            assert (record["version"], record["sequence"], record["payloadValidated"]) == (
                version, sequence, bool(success))
            key = (record["tenantId"], record["entityInstanceId"])
            by_participant.setdefault(key, []).append(record)
        assert set(rows) <= set(by_participant), "a participant without events"
        index = {}
        for _t, _type, name, value, pid in self.db().index_rows():
            index.setdefault(pid, set()).add((name, value))
        for key, records in by_participant.items():
            # (e) sequence is 1..M over all events, versions 1..N over the successes
            assert [r["sequence"] for r in records] == list(range(1, len(records) + 1))
            successes = [r for r in records if r["payloadValidated"]]
            assert [r["version"] for r in successes] == list(range(1, len(successes) + 1))
            row = rows.get(key)
            if row is None:
                assert not successes, "success events for a participant that is not stored"
                assert all(r["version"] == 0 for r in records)
                continue
            # (c) replay the success events: through `entity`, and through `data` + decide
            version, state, properties, core = 0, None, None, {}
            for record in records:
                if not record["payloadValidated"]:
                    assert record["version"] == version and record["entity"] == {}
                    continue
                kind = KIND_OF[record["commandName"].removesuffix("SuccessEvent")]
                change = change_from_data(kind, record["data"])
                snapshot = None if state is None else Snapshot(state, properties, core)
                outcome = decide(ptype, snapshot, change)
                assert isinstance(outcome, Outcome), (record["data"], outcome)
                entity = record["entity"]
                version, state, properties, core = (
                    record["version"], outcome.state, outcome.properties, outcome.core)
                assert entity["state"] == state and entity["version"] == version
                assert {**entity["indexed_attributes"], **entity["non_indexed_attributes"]} == \
                    properties
                assert set(entity["indexed_attributes"]) <= set(definition.indexed_attributes)
                assert {k: entity[k] for k in ENTITY_CORE} == {
                    k: core.get(name) for k, name in ENTITY_CORE.items()}
                if change.event_code is not None:  # the guard of the transition taken held
                    taken = next(t for t in ptype.machine.candidates(
                        snapshot.state, change.event_code)
                        if all(c.func(properties) for c in t.conditions))
                    assert taken.dest == state
            stored = json.loads(row["properties"])
            assert (row["version"], row["state"], stored) == (version, state, properties), \
                "replaying the success events does not give the stored participant"
            assert snapshot_of(row).core == {k: core.get(k) for k in CORE_EDITABLE}
            # (d) the stored participant satisfies its type and its sub-state's invariant
            assert type_problems(ptype, row["state"], stored) == []
            expected_index = {(n, index_value(v)) for n, v in stored.items()
                              if n in definition.indexed_attributes}
            assert index.get(row["id"], set()) == expected_index
            if row["archived_at"] is not None:
                assert definition.is_terminal(row["state"])
        STATS["checks"] += 1


@pytest.mark.reliability
def test_random_operations_keep_the_store_consistent(backend, figure):
    """Random machines, random writes: the log replays to the rows; failures change nothing."""
    before = Counter(STATS)
    # A fresh PostgreSQL schema per example costs a migration: fewer examples in the short form.
    examples = scale(100, 500) if backend == "sqlite" else scale(25, 500)
    run_state_machine_as_test(type("Lifecycle", (Lifecycle,), {"BACKEND": backend}),
                              settings=settings(max_examples=examples,
                                                stateful_step_count=scale(30, 60), **SETTINGS))
    done = Counter(STATS)
    done.subtract(before)
    assert done["successes"] and done["failures"] and done["replays"]
    figure("Replaying a participant's success events reproduces it; failures change nothing",
           f"{done['machines']} random machines, {done['operations']} writes "
           f"({done['successes']} successes incl. {done['transitions']} state changes, "
           f"{done['failures']} failure events), {done['replays']} replays, "
           f"{done['request id reuses']} request-id reuses, {done['ttl moves']} ttl moves, "
           f"{done['checks']} full-store checks: 0 violations")
    figure("Guards, invariants and attribute validations always hold in the stored data",
           f"{done['checks']} checks of every stored participant and every success event "
           f"over {done['machines']} random machines: 0 violations")


# -- pure decision properties ---------------------------------------------------------------------

def _patches(machine: dict) -> st.SearchStrategy:
    """Arbitrary JSON objects, or patches of the type's attributes (valid, invalid or null)."""
    names = sorted(machine["attributes"])
    typed = st.fixed_dictionaries({}, optional={
        n: valid_values(c) | valid_values(c) | invalid_values(c) | st.none()
        for n, c in machine["attributes"].items()})
    return st.dictionaries(st.sampled_from(names) | TEXT, JSON, max_size=5) | typed | typed


@pytest.mark.reliability
def test_decide_never_raises_and_never_breaks_the_type(figure):
    """Arbitrary JSON patches, events, reasons and data: an Outcome that fits, or a Failure."""
    counts = Counter()

    @settings(max_examples=scale(40, 1000), **SETTINGS)
    @given(machine=machines(), data=st.data())
    def run(machine, data):
        ptype = compile_machine(machine)
        definition = ptype.definition
        counts["machines"] += 1
        for _ in range(8):
            state = data.draw(st.sampled_from(sorted(definition.sub_states)) | st.none())
            # stored properties name only attributes (their values may be anything)
            current = None if state is None else Snapshot(
                state, data.draw(st.fixed_dictionaries({}, optional={
                    n: JSON for n in definition.attributes}) | st.fixed_dictionaries(
                    {n: valid_values(c) for n, c in machine["attributes"].items()})),
                data.draw(st.fixed_dictionaries({}, optional={"name": TEXT | st.none()})))
            codes = sorted(definition.events)
            change = Change(
                properties=data.draw(_patches(machine) | st.none()),
                core=data.draw(st.fixed_dictionaries({}, optional={"name": TEXT | st.none()})),
                event_code=data.draw(st.none() | st.none() | st.sampled_from(codes) | TEXT
                                     | st.sampled_from(
                    ptype.machine.triggers(state or definition.initial_state) or codes)),
                reason_code=data.draw(st.none() | st.none() | st.sampled_from(sorted(
                    definition.reasons)) | TEXT),
                event_data=data.draw(st.none() | JSON_OBJECTS),
            )
            frozen = copy.deepcopy((current, change))
            result = decide(ptype, current, change)
            assert copy.deepcopy((current, change)) == frozen, "decide changed its inputs"
            assert decide(ptype, current, change) == result, "decide is not deterministic"
            if isinstance(result, Failure):
                assert result.issues and result.kind in F.CATALOGUE.values()
                assert len(result.error_code) == 12 and result.error_code.isdigit()
                counts["failures"] += 1
                continue
            assert isinstance(result, Outcome)
            assert type_problems(ptype, result.state, result.properties) == []
            start = definition.initial_state if current is None else current.state
            if change.event_code is None:
                assert result.state == start
            else:
                taken = [t.dest for t in ptype.machine.candidates(start, change.event_code)
                         if all(c.func(result.properties) for c in t.conditions)]
                assert taken and taken[0] == result.state
            counts["outcomes"] += 1
        # guards and invariants agree with jsonschema itself (the compiled fast path included)
        conditions_ = [c for t in ptype.machine.machine.events.values()
                       for ts in t.transitions.values() for tr in ts for c in tr.conditions]
        conditions_ = [c.func for c in conditions_] + list(ptype.machine.invariants.values())
        for compiled in conditions_:
            reference = jsonschema.Draft202012Validator(thaw(compiled.condition.schema))
            for _ in range(2):
                properties = data.draw(JSON_OBJECTS | st.fixed_dictionaries(
                    {}, optional={n: JSON for n in definition.attributes}))
                holds = reference.is_valid(properties)
                assert compiled(properties) is holds, (compiled.condition.schema, properties)
                assert (compiled.issues(properties) == []) is holds
                counts["condition checks"] += 1

    run()
    figure("decide never raises; its outcomes always satisfy the type",
           f"{counts['machines']} random machines, {counts['outcomes'] + counts['failures']} "
           f"arbitrary JSON changes ({counts['outcomes']} outcomes, {counts['failures']} "
           f"failures), {counts['condition checks']} guard/invariant checks against jsonschema:"
           " 0 exceptions, 0 violations")


def rfc7396(target, patch):
    """The pseudo-code of RFC 7396, section 2, transcribed."""
    if isinstance(patch, dict):
        if not isinstance(target, dict):
            target = {}
        target = dict(target)
        for name, value in patch.items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = rfc7396(target.get(name), value)
        return target
    return patch


def _assert_nulls_removed(merged, patch) -> None:
    """Keys a patch sets to null are absent, at every depth; other keys are present."""
    for key, value in patch.items():
        if value is None:
            assert key not in merged, f"{key!r} patched with null is still there"
        else:
            assert key in merged, f"{key!r} patched with a value is missing"
            if isinstance(value, dict):
                _assert_nulls_removed(merged[key], value)


# RFC 7396, Appendix A: (original, patch, result)
RFC_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.reliability
@pytest.mark.parametrize(("original", "patch", "result"), RFC_EXAMPLES)
def test_merge_patch_rfc7396_examples(original, patch, result):
    assert merge_patch(original, patch) == result


@pytest.mark.reliability
def test_merge_patch_follows_rfc7396(figure):
    counts = Counter()

    @settings(max_examples=scale(300, 5000), **SETTINGS)
    @given(target=JSON, patch=JSON)
    @example(target={"a": {"b": 1}}, patch={"a": {"b": None, "c": {"d": None}}})
    def run(target, patch):
        frozen = copy.deepcopy((target, patch))
        merged = merge_patch(target, patch)
        assert (target, patch) == frozen, "merge_patch changed its inputs"
        assert merged == rfc7396(target, patch)
        assert merge_patch(merged, patch) == merged, "applying a patch twice differs"
        if isinstance(patch, dict):
            assert isinstance(merged, dict)
            for key, value in patch.items():
                if value is None:
                    assert key not in merged, "a key patched with null is still there"
                else:
                    assert merged[key] == merge_patch(
                        target.get(key) if isinstance(target, dict) else None, value)
            if isinstance(target, dict):
                for key in target.keys() - patch.keys():
                    assert merged[key] == target[key], "a key the patch omits changed"
            _assert_nulls_removed(merged, patch)
        else:
            assert merged == patch, "a non-object patch replaces the target"
        counts["pairs"] += 1

    run()
    figure("Attribute updates are RFC 7396 merge patches",
           f"{counts['pairs']} random (target, patch) pairs against the RFC's algorithm, "
           f"{len(RFC_EXAMPLES)} RFC examples: 0 differences")
