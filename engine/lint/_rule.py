"""What a lint rule is: an id, a one-line summary and a check that yields findings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from engine.loading.yamlfile import Document


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem a check found: where (a document path) and what."""

    path: tuple
    message: str
    at_key: bool = False  # point at the key of `path` rather than at its value


@dataclass
class Context:
    """Everything a check may look at: the file, the shared codes, and the other files."""

    doc: Document
    codes: Document | None = None
    others: list[Document] = field(default_factory=list)

    @property
    def data(self) -> dict:
        return self.doc.data if isinstance(self.doc.data, dict) else {}

    @property
    def is_codes(self) -> bool:
        return self.doc.path.stem == "codes"

    def section(self, name: str) -> dict:
        value = self.data.get(name)
        return value if isinstance(value, dict) else {}

    def shared(self, name: str) -> dict:
        """The `reasons` or `events` of codes.yaml, if there is one."""
        if self.codes is None or self.codes is self.doc or not isinstance(self.codes.data, dict):
            return {}
        value = self.codes.data.get(name)
        return value if isinstance(value, dict) else {}

    def declared(self, name: str) -> dict:
        """Shared codes extended by the file's own."""
        return {**self.shared(name), **self.section(name)}


Check = Callable[[Context], Iterator[Finding]]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    summary: str
    check: Check | None
    applies_to_codes: bool = False

    @property
    def severity(self) -> str:
        return "error" if self.id.startswith("E") else "warning"


RULES: dict[str, Rule] = {}


def rule(rule_id: str, summary: str, *, codes: bool = False) -> Callable[[Check], Check]:
    """Register a check function as the rule `rule_id`."""

    def register(check: Check) -> Check:
        assert rule_id not in RULES, rule_id
        RULES[rule_id] = Rule(rule_id, summary, check, codes)
        return check

    return register


def describe(rule_id: str, summary: str) -> None:
    """Register a rule whose findings come from the YAML loader rather than from a check."""
    RULES[rule_id] = Rule(rule_id, summary, None, True)


describe("E000", "The file can be read as a YAML mapping")
describe("E002", "No key appears twice in one mapping")
describe("E003", "No key is a YAML 1.1 boolean or null such as on:, yes: or no:")
describe("W004", "No value is an unquoted YAML 1.1 boolean such as yes, no, on or off")


def mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def sequence(value) -> list:
    return value if isinstance(value, list) else []
