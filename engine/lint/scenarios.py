"""Scenario files: executable examples of a machine, run by the linter's command.

A folder of machine files may hold `scenarios/*.yaml`, each a start, steps (the dry run's
request shapes) and the outcome its author expects at each step. Every step is decided by the
write path's own decision code (engine.model.simulation); the first step of a scenario whose
outcome differs from its `expect` is reported at its line, and the scenario stops there (later
steps would start from a participant the author did not mean).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema

from engine.loading.yamlfile import Document, load_file
from engine.model import simulation
from engine.model.types import Registry

from ._rule import describe
from .runner import SUFFIXES, Problem, _one_line
from .structure import schema_findings

__all__ = ["SCENARIO_FOLDER", "find_scenarios", "run_scenarios"]

SCENARIO_FOLDER = "scenarios"

describe("E901", "A scenario file matches the scenario schema and names a loaded type and state")
describe("E902", "Every step of a scenario reaches the outcome its expect names")


@cache
def _validator() -> jsonschema.Draft202012Validator:
    text = resources.files("engine.schemas").joinpath("scenario.schema.json").read_text("utf-8")
    return jsonschema.Draft202012Validator(json.loads(text))


def find_scenarios(folders: list[Path]) -> list[Path]:
    """The scenario files of each machine folder's scenarios/ subfolder, sorted."""
    found = []
    for folder in folders:
        where = folder / SCENARIO_FOLDER
        if where.is_dir():
            found += sorted(p for p in where.iterdir() if p.suffix in SUFFIXES and p.is_file())
    return found


def _problem(doc: Document, path: tuple, rule: str, message: str, *, key: bool = False):
    line, col = doc.position(path, key=key)
    return Problem(str(doc.path), line, col, rule, _one_line(message))


def _mismatches(expect: Mapping | None, answer: Mapping) -> list[str]:
    """How the answer differs from the expectation (no expectation: the step must succeed)."""
    expect = expect or {}
    wanted_success = expect.get("success", "errorCode" not in expect and "errors" not in expect)
    problems = []
    if answer["payloadValidated"] != wanted_success:
        problems.append("expected success" if wanted_success else "expected a failure")
    if "errorCode" in expect and answer["errorCode"] != expect["errorCode"]:
        problems.append(f"expected errorCode {expect['errorCode']}, got {answer['errorCode']}")
    if "state" in expect and answer["to"] != expect["state"]:
        problems.append(f"expected state '{expect['state']}', reached '{answer['to']}'")
    paths = {e["path"] for e in answer["errors"]}
    missing = [p for p in expect.get("errors", ()) if p not in paths]
    if missing:
        problems.append(f"expected errors at {', '.join(missing)}")
    properties = answer["properties"] or {}
    for name, value in (expect.get("properties") or {}).items():
        if properties.get(name, None) != value:
            shown = json.dumps(properties[name]) if name in properties else "absent"
            problems.append(f"expected {name} = {json.dumps(value)}, got {shown}")
    return problems


def _describe(answer: Mapping) -> str:
    """What actually happened, for the author to compare with what they expected."""
    if answer["payloadValidated"]:
        return f"it succeeded and reached '{answer['to']}'"
    errors = "; ".join(f"{e['path']} {e['message']}" for e in answer["errors"][:3])
    return f"it failed with {answer['errorCode']} ({answer['reason']}): {errors}"


def _run(doc: Document, registry: Registry) -> Iterator[Problem]:
    data = doc.data
    schema_problems = [f for e in _validator().iter_errors(data)
                       for f in schema_findings(e, dedicated=False)]
    if schema_problems:
        for finding in schema_problems:
            yield _problem(doc, finding.path, "E901", finding.message, key=finding.at_key)
        return
    ptype = registry.get(data["type"])
    if ptype is None:
        known = ", ".join(registry) or "none"
        yield _problem(doc, ("type",), "E901",
                       f"no participant type '{data['type']}' in this folder (types: {known})")
        return
    start = data.get("start") or {}
    label = "start"
    if "create" in start:
        current, answer = simulation.create(ptype, start["create"])
        answer = {**answer, "from": None}
    elif "state" in start:
        if start["state"] not in ptype.definition.sub_states:
            yield _problem(doc, ("start", "state"), "E901", (
                f"'{start['state']}' is not a state of {ptype.plural} "
                f"(states: {', '.join(ptype.definition.sub_states)})"))
            return
        current, answer = simulation.Simulated(start["state"], dict(start.get("properties") or {}),
                                               {}), None
    else:
        current, answer = simulation.initial(ptype), None
    if answer is not None:
        wrong = _mismatches(start.get("expect"), answer)
        if wrong or current is None:
            where = ("start", "expect") if "expect" in start else ("start",)
            yield _problem(doc, where, "E902", f"{label}: {'; '.join(wrong) or 'expected success'}"
                                               f"; {_describe(answer)}", key=True)
            return
    for index, step in enumerate(data["steps"]):
        request = {k: v for k, v in step.items() if k not in ("expect", "note")}
        answers, after = simulation.run_steps(ptype, current, [request])
        wrong = _mismatches(step.get("expect"), answers[0])
        if wrong:
            event = request.get("eventCode") or (request.get("stateTransition") or {}).get(
                "eventCode")
            what = f"step {index + 1}" + (f" ({event})" if event else "")
            where = ("steps", index, "expect") if "expect" in step else ("steps", index)
            yield _problem(doc, where, "E902",
                           f"{what}: {'; '.join(wrong)}; {_describe(answers[0])}", key=True)
            return
        current = after


def run_scenarios(files: list[Path], registry: Registry) -> list[Problem]:
    """The problems of every scenario file: unreadable or malformed ones, and for each
    scenario the first step whose outcome differs from its expectation."""
    problems: list[Problem] = []
    for path in files:
        doc = load_file(path)
        problems += [Problem(str(doc.path), p.line, p.col, p.rule, _one_line(p.message))
                     for p in doc.problems]
        if doc.readable:
            problems += _run(doc, registry)
    return sorted(problems)
