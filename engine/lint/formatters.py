"""Output formats of the linter: text, json, github (workflow commands) and sarif."""

from __future__ import annotations

import json

from ._rule import RULES
from .runner import Problem

__all__ = ["FORMATS", "summary"]


def summary(problems: list[Problem], files: int, scenarios: int = 0) -> str:
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    ran = f" and {plural(scenarios, 'scenario')}" if scenarios else ""
    return (f"{plural(errors, 'error')}, {plural(warnings, 'warning')} "
            f"in {plural(files, 'file')}{ran}")


def text(problems: list[Problem], files: int, scenarios: int = 0) -> str:
    return "".join(f"{p}\n" for p in problems) + summary(problems, files, scenarios) + "\n"


def as_json(problems: list[Problem], files: int, scenarios: int = 0) -> str:
    return json.dumps({
        "problems": [
            {"file": p.file, "line": p.line, "col": p.col, "rule": p.rule,
             "severity": p.severity, "message": p.message}
            for p in problems
        ],
        "summary": summary(problems, files, scenarios),
    }, indent=2) + "\n"


def _escape(value: str, *, prop: bool = False) -> str:
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return value.replace(":", "%3A").replace(",", "%2C") if prop else value


def github(problems: list[Problem], files: int, scenarios: int = 0) -> str:
    lines = [
        f"::{p.severity} file={_escape(p.file, prop=True)},line={p.line},col={p.col},"
        f"title={p.rule}::{_escape(p.rule + ' ' + p.message)}"
        for p in problems
    ]
    return "".join(f"{line}\n" for line in lines) + summary(problems, files, scenarios) + "\n"


def sarif(problems: list[Problem], files: int, scenarios: int = 0) -> str:
    used = sorted({p.rule for p in problems})
    return json.dumps({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "validate_machines",
                "informationUri": "https://github.com/participant-service",
                "rules": [
                    {"id": r, "shortDescription": {"text": RULES[r].summary},
                     "defaultConfiguration": {"level": RULES[r].severity}}
                    for r in used
                ],
            }},
            "results": [
                {
                    "ruleId": p.rule,
                    "level": p.severity,
                    "message": {"text": p.message},
                    "locations": [{"physicalLocation": {
                        "artifactLocation": {"uri": p.file},
                        "region": {"startLine": p.line, "startColumn": p.col},
                    }}],
                }
                for p in problems
            ],
        }],
    }, indent=2) + "\n"


FORMATS = {"text": text, "json": as_json, "github": github, "sarif": sarif}
