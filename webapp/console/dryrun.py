"""The dry-run page (SPEC §7 through a form): YAML or JSON in, each step's outcome out.

The form's texts are parsed by the one YAML loader (bounded, safe, with line numbers; JSON is
YAML), assembled into the API's DryRunRequest body, checked against the same schema, and
decided by the service's dry run, which writes nothing.
"""

from __future__ import annotations

import yaml
from flask import render_template, request

from engine.errors import InvalidDryRun, ParticipantNotFound, UnstorableText
from engine.loading.yamlfile import Document, load_text
from engine.model.attributes import thaw
from engine.model.types import ParticipantType

from ..errors import BadRequest
from ..http import validate
from .blueprint import bp, participants, tenant
from .diagram import render_svg
from .pages import participant_type

__all__ = ["FIELDS", "example", "parse_field"]

FIELDS = ("start", "steps", "machine", "replay")
LABELS = {"start": "Start", "steps": "Steps", "machine": "Draft machine",
          "replay": "Replay participant id"}
_MAX_REPLAY_ID = 512


def _dump(value) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=88)


def example(ptype: ParticipantType) -> dict[str, str]:
    """A form a domain expert can run at once: the initial state with the defaults, and the
    first event it allows, with that event's first reason code."""
    definition = ptype.definition
    defaults = {a.name: thaw(a.default) for a in definition.attributes.values()
                if a.has_default}
    start = {"state": definition.initial_state, "properties": defaults}
    steps = []
    events = ptype.machine.triggers(definition.initial_state)
    if events:
        transition = {"eventCode": events[0]}
        reasons = definition.events[events[0]].reason_codes if events[0] in \
            definition.events else ()
        if reasons:
            transition["reasonCode"] = reasons[0]
        steps.append({"properties": {}, "stateTransition": transition})
    return {"start": _dump(start), "steps": _dump(steps), "machine": "", "replay": ""}


def _kind_problem(doc: Document, problem) -> bool:
    """The loader's own 'must be a mapping' problem (a form field may hold a list)."""
    return (problem.rule == "E000" and problem.path == () and not isinstance(doc.data, dict)
            and doc.values.get(()) == (problem.line, problem.col))


def parse_field(name: str, text: str, kind: type) -> tuple[object, list[str], list[str]]:
    """The value of a YAML or JSON form field, the errors that stop the run (with line and
    column), and warnings (YAML 1.1 booleans)."""
    label = LABELS[name]
    doc = load_text(text, name)
    errors, warnings = [], []
    for problem in doc.problems:
        if _kind_problem(doc, problem):
            continue
        where = f"{label}, line {problem.line}, column {problem.col}: {problem.message}"
        (warnings if problem.rule.startswith("W") else errors).append(where)
    if errors:
        return None, errors, warnings
    if not isinstance(doc.data, kind):
        if kind is list:
            return None, [f"{label} must be a list of steps: start each step with '- ' (YAML) "
                          "or write a JSON array."], warnings
        return None, [f"{label} must be a mapping, e.g. 'state: …' and 'properties: …' "
                      "(YAML) or a JSON object."], warnings
    return doc.data, [], warnings


def _body(form: dict[str, str]) -> tuple[dict, list[str], list[str]]:
    """The DryRunRequest body the form describes, what stops it, and warnings."""
    body: dict = {}
    errors: list[str] = []
    warnings: list[str] = []
    if form["machine"].strip():
        body["machine"] = form["machine"]
    replay = form["replay"].strip()
    if replay:
        if len(replay) > _MAX_REPLAY_ID:
            errors.append(f"{LABELS['replay']} has {len(replay):,} characters; at most "
                          f"{_MAX_REPLAY_ID}.")
        body["replay"] = {"participantId": replay}
        if form["start"].strip() or form["steps"].strip():
            warnings.append("Replay re-decides the participant's recorded history: Start and "
                            "Steps are not used.")
        return body, errors, warnings
    for name, kind in (("start", dict), ("steps", list)):
        if not form[name].strip():
            continue
        value, found, cautions = parse_field(name, form[name], kind)
        errors += found
        warnings += cautions
        if value is not None:
            body[name] = value
    body.setdefault("steps", [])
    return body, errors, warnings


def _submitted_event(step) -> str | None:
    """The event code a submitted step asks for (None: attributes only)."""
    if not isinstance(step, dict):
        return None
    if "eventCode" in step:
        return step["eventCode"]
    transition = step.get("stateTransition")
    return transition.get("eventCode") if isinstance(transition, dict) else None


@bp.route("/types/<plural>/dry-run", methods=["GET", "POST"])
def dry_run(plural):
    loaded = participant_type(plural)
    context = dict(ptype=loaded, definition=loaded.definition, errors=[], issues=[],
                   warnings=[], result=None, decided=None, events=[], replay=False)
    if request.method == "GET":
        return render_template("console/dry_run.html", form=example(loaded),
                               diagram=render_svg(loaded), **context)
    form = {name: request.form.get(name, "") for name in FIELDS}
    context["form"] = form
    context["diagram"] = render_svg(loaded)
    body, errors, warnings = _body(form)
    context.update(errors=errors, warnings=warnings, replay="replay" in body)
    if errors:
        return render_template("console/dry_run.html", **context), 400
    try:
        validate("DryRunRequest", body)
        dry = participants().service.dry_run(tenant(), plural, body, loaded)
    except (BadRequest, InvalidDryRun, UnstorableText) as error:
        context["issues"] = [i.as_dict() for i in error.issues]
        return render_template("console/dry_run.html", **context), 400
    except ParticipantNotFound as error:
        context["errors"] = [f"There is no participant '{error.participant_id[:200]}' of this "
                             "type in this tenant."]
        return render_template("console/dry_run.html", **context), 404
    final = dry.data.get("final") or None
    context.update(
        result=dry.data, decided=dry.ptype,
        events=[_submitted_event(s) for s in body.get("steps") or []],
        diagram=render_svg(dry.ptype or loaded,
                           highlight=final["state"] if final and dry.ptype else None))
    return render_template("console/dry_run.html", **context)
