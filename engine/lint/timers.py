"""Rules about durations: sub-state ttls and the terminal archive delay."""

from __future__ import annotations

from engine.model.definitions import parse_duration

from ._rule import Context, Finding, rule, sequence
from .walk import sub_states

_FORMAT = "durations look like 10d5h3m0s, 2m or 300s (days, hours, minutes, seconds)"


@rule("E501", "Durations look like 10d5h3m0s, 2m or 300s and are longer than zero")
def durations(ctx: Context):
    places = [(("terminalTTL",), ctx.data.get("terminalTTL"))] if "terminalTTL" in ctx.data else []
    places += [(path + ("ttl", "time"), config["ttl"].get("time"))
               for _m, _s, path, config in sub_states(ctx.data)
               if isinstance(config.get("ttl"), dict) and "time" in config["ttl"]]
    for path, text in places:
        if not isinstance(text, str):
            continue  # E001 reports the wrong type
        seconds = parse_duration(text)
        if seconds is None:
            yield Finding(path, f"'{text}' is not a duration: {_FORMAT}")
        elif seconds == 0:
            yield Finding(path, f"'{text}' is zero; a timer needs a positive duration")


@rule("W502", "terminalTTL is set only on a type that has terminal sub-states")
def terminal_ttl_used(ctx: Context):
    if "terminalTTL" not in ctx.data:
        return
    states = ctx.section("states")
    if not any(sequence(c.get("terminalStates")) for c in states.values() if isinstance(c, dict)):
        yield Finding(("terminalTTL",), "terminalTTL has no effect: no sub-state is listed "
                                        "under terminalStates", at_key=True)
