"""Rules about event and reason codes, in a type's file and in the shared codes.yaml."""

from __future__ import annotations

import difflib

from engine.model.conventions import EVENT_CODE, REASON_CODE

from ._rule import Context, Finding, mapping, rule, sequence
from .walk import transitions


def suggest(value: str, known) -> str:
    """A 'did you mean' hint, or the list of known names when nothing is close."""
    known = sorted(map(str, known))
    close = difflib.get_close_matches(str(value), known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if not known:
        return " (none are declared)"
    shown = ", ".join(known[:8]) + (", …" if len(known) > 8 else "")
    return f" (known: {shown})"


@rule("E101", "Event codes look like E-nnn, from E-001 to E-999", codes=True)
def event_code_format(ctx: Context):
    for code in ctx.section("events"):
        if not EVENT_CODE.match(str(code)):
            yield Finding(("events", code), f"event code '{code}' must look like E-nnn "
                                            "(three digits, not E-000)", at_key=True)
    for _source, path, transition in transitions(ctx.data):
        code = transition.get("eventCode")
        if isinstance(code, str) and not EVENT_CODE.match(code):
            yield Finding(path + ("eventCode",), f"event code '{code}' must look like E-nnn "
                                                 "(three digits, not E-000)")


@rule("E102", "Reason codes look like R-nnnn, from R-0001 to R-9999", codes=True)
def reason_code_format(ctx: Context):
    def bad(code) -> bool:
        return not REASON_CODE.match(str(code))

    message = "reason code '{}' must look like R-nnnn (four digits, not R-0000)"
    for code in ctx.section("reasons"):
        if bad(code):
            yield Finding(("reasons", code), message.format(code), at_key=True)
    for code, event in ctx.section("events").items():
        for i, reason in enumerate(sequence(mapping(event).get("reasonCodes"))):
            if isinstance(reason, str) and bad(reason):
                yield Finding(("events", code, "reasonCodes", i), message.format(reason))


@rule("E103", "Every reason code an event allows is declared", codes=True)
def reasons_declared(ctx: Context):
    declared = ctx.declared("reasons")
    for code, event in ctx.section("events").items():
        for i, reason in enumerate(sequence(mapping(event).get("reasonCodes"))):
            if isinstance(reason, str) and REASON_CODE.match(reason) and reason not in declared:
                yield Finding(("events", code, "reasonCodes", i),
                              f"event {code} allows reason '{reason}', which is not declared "
                              f"under reasons:{suggest(reason, declared)}")


@rule("E104", "A type does not redefine a code of codes.yaml differently")
def shared_conflicts(ctx: Context):
    for section in ("reasons", "events"):
        shared = ctx.shared(section)
        for code, value in ctx.section(section).items():
            if code in shared and shared[code] != value:
                yield Finding((section, code),
                              f"{section[:-1]} {code} is already defined in codes.yaml "
                              "differently; remove it here or make it identical", at_key=True)


@rule("W105", "Every event a type declares is used by one of its transitions")
def events_used(ctx: Context):
    used = {t.get("eventCode") for _s, _p, t in transitions(ctx.data)
            if isinstance(t.get("eventCode"), str)}
    for code in ctx.section("events"):
        if code not in used and code not in ctx.shared("events"):
            yield Finding(("events", code),
                          f"event {code} is declared but no transition uses it", at_key=True)
