"""Draft machine texts: linted by the linter's rules, compiled when clean, cached by text.

A draft is linted as the file `<plural>.yaml` of the machines folder, beside its codes.yaml,
so its problems and positions are the ones the linter would print for that file. A draft is
compiled (its own state machine) once per distinct text: a small cache keeps the last few, so
trying one draft again and again does not build a new Machine each time.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from engine.lint.runner import lint_documents
from engine.loading.registry import build_definition
from engine.loading.yamlfile import Document, load_file, load_text
from engine.model.types import ParticipantType

__all__ = ["DRAFT_CACHE", "compile_draft"]

Compiled = tuple[list[dict], ParticipantType | None]


class _DraftCache:
    """Compiled drafts by the SHA-256 of their text and the codes they were linted with."""

    def __init__(self, size: int = 16):
        self.size = size
        self._items: OrderedDict[bytes, Compiled] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes, build: Callable[[], Compiled]) -> Compiled:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = build()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


DRAFT_CACHE = _DraftCache()


def _codes(machines: Path | None) -> Document | None:
    if machines is None:
        return None
    for suffix in (".yaml", ".yml"):
        path = machines / f"codes{suffix}"
        if path.is_file():
            return load_file(path)
    return None


def _compile(text: str, plural: str, machines: Path | None, codes: Document | None) -> Compiled:
    """The draft's lint problems, and its compiled type when it has no errors."""
    draft = load_text(text, (machines or Path("machines")) / f"{plural}.yaml")
    docs = [draft] + ([codes] if codes is not None else [])
    found = [p for p in lint_documents(docs) if p.file == str(draft.path)]
    lint = [{"rule": p.rule, "severity": p.severity, "line": p.line, "column": p.col,
             "message": p.message} for p in found]
    if any(p.severity == "error" for p in found):
        return lint, None
    # the draft is linted as the file <plural>.yaml: E010 refuses one of another plural
    definition = build_definition(draft.data, codes.data if codes else None, "draft")
    return lint, ParticipantType.compile(definition)


def compile_draft(text: str, plural: str, machines: Path | None) -> Compiled:
    """The draft's lint problems ({rule, severity, line, column, message}), and its compiled
    type when it has no errors (None otherwise)."""
    codes = _codes(machines)
    key = hashlib.sha256(b"\0".join([
        plural.encode(), text.encode("utf-8", "surrogatepass"),
        repr(codes.data if codes else None).encode("utf-8", "surrogatepass")])).digest()
    return DRAFT_CACHE.get(key, lambda: _compile(text, plural, machines, codes))
