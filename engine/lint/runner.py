"""Runs every rule over a set of files and turns document paths into file:line:col."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.loading.yamlfile import Document, load_file

from . import attributes, codes, states, structure, templates, timers  # noqa: F401
from ._rule import RULES, Context

__all__ = ["Problem", "collect_files", "lint_documents", "lint_paths"]

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    file: str
    line: int
    col: int
    rule: str
    message: str

    @property
    def severity(self) -> str:
        return RULES[self.rule].severity

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.rule} {self.message}"


def collect_files(paths: list[Path]) -> list[Path]:
    """The machine files named, or found in the folders named, plus their folders' codes.yaml."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        else:
            found.append(path)
            for suffix in SUFFIXES:
                codes = path.parent / f"codes{suffix}"
                if codes.is_file():
                    found.append(codes)
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path, None)
    return list(unique)


def _codes_for(doc: Document, docs: list[Document]) -> Document | None:
    for other in docs:
        if other.path.stem == "codes" and other.path.parent == doc.path.parent:
            return other
    return None


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def _one_line(message: str) -> str:
    """Keys and values quoted in a message may hold control characters: escape them."""
    return message.translate(_CONTROL)


def lint_documents(docs: list[Document]) -> list[Problem]:
    """Every problem in `docs`, sorted by file, line and column."""
    problems: set[Problem] = set()
    for doc in docs:
        for p in doc.problems:
            problems.add(Problem(str(doc.path), p.line, p.col, p.rule, _one_line(p.message)))
        if not doc.readable:
            continue
        ctx = Context(doc, _codes_for(doc, docs), docs)
        for rule in RULES.values():
            if rule.check is None or (ctx.is_codes and not rule.applies_to_codes):
                continue
            for finding in rule.check(ctx):
                line, col = doc.position(finding.path, key=finding.at_key)
                problems.add(Problem(str(doc.path), line, col, rule.id,
                                     _one_line(finding.message)))
    return sorted(problems)


def lint_paths(paths: list[Path | str]) -> list[Problem]:
    """Lint the named files and folders."""
    files = collect_files([Path(p) for p in paths])
    return lint_documents([load_file(f) for f in files])
