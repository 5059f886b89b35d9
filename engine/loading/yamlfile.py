"""The only YAML loader: safe, refuses duplicate keys, keeps line and column for every node."""

from __future__ import annotations

import codecs
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["Document", "YamlProblem", "load_file", "load_text", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 2 * 1024 * 1024
# Aliases can make a tiny file expand exponentially ("billion laughs"); stop well before that.
MAX_NODES = 200_000
MAX_DEPTH = 64

# YAML 1.1 booleans PyYAML resolves that a reader rarely means as booleans.
_YAML11_BOOL = re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$")

_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
_SCALAR_TAGS = tuple(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null"))
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_NOT_A_KEY = object()
_KINDS = {list: "a list", str: "text", int: "a number", float: "a number", bool: "a boolean",
          type(None): "null"}


@dataclass(frozen=True, slots=True)
class YamlProblem:
    """A problem found while reading the file, before any rule runs."""

    rule: str  # E000 unreadable, E002 duplicate key, E003 boolean key, W004 boolean value
    path: tuple
    line: int
    col: int
    message: str


@dataclass
class Document:
    """A parsed YAML file: its data and where every node of it stands."""

    path: Path
    data: object = None
    problems: list[YamlProblem] = field(default_factory=list)
    # document path -> (line, col) of the value, and of the key for mapping entries; 1-based
    values: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    keys: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    @property
    def readable(self) -> bool:
        return not any(p.rule == "E000" for p in self.problems)

    def position(self, path: tuple, *, key: bool = False) -> tuple[int, int]:
        """Line and column of the node at `path`, or of its nearest existing ancestor."""
        path = tuple(path)
        while True:
            if key and path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
            if not path:
                return (1, 1)
            path = path[:-1]


class _TooLarge(Exception):
    pass


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    """Turns a composed node tree into Python data, recording positions and problems."""

    def __init__(self, doc: Document):
        self.doc = doc
        self.count = 0
        self.constructor = yaml.SafeLoader("")  # used only to construct scalars
        self.merged: dict[int, dict] = {}  # id(mapping node) -> its entries, merges resolved

    def build(self, node: yaml.Node, path: tuple, depth: int = 0):
        self.count += 1
        if self.count > MAX_NODES or depth > MAX_DEPTH:
            raise _TooLarge
        self.doc.values.setdefault(path, _mark(node))
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _COLLECTION_TAGS:
            raise yaml.constructor.ConstructorError(
                None, None, f"the tag {node.tag} is not allowed", node.start_mark)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        if node.tag == _TIMESTAMP:
            return node.value  # machine files hold JSON values: a date stays the text written
        if node.tag not in _SCALAR_TAGS:
            raise yaml.constructor.ConstructorError(
                None, None, f"the tag {node.tag} is not allowed", node.start_mark)
        value = self._scalar(node)
        if isinstance(value, float) and not math.isfinite(value):
            raise yaml.constructor.ConstructorError(
                None, None, f"'{node.value}' is not a JSON number", node.start_mark)
        if isinstance(value, bool) and node.style is None and _YAML11_BOOL.match(node.value):
            line, col = _mark(node)
            self.doc.problems.append(YamlProblem(
                "W004", path, line, col,
                f"'{node.value}' is read as the boolean {str(value).lower()} (YAML 1.1); "
                f"write {str(value).lower()}, or quote it if you mean the text",
            ))
        return value

    def _scalar(self, node: yaml.ScalarNode):
        try:
            return self.constructor.construct_object(node, deep=True)
        except (ValueError, TypeError, KeyError, IndexError):  # e.g. `!!int abc`, `!!bool maybe`
            raise yaml.constructor.ConstructorError(
                None, None, f"'{node.value}' is not a valid {node.tag.rsplit(':', 1)[-1]}",
                node.start_mark) from None

    def _key(self, key_node: yaml.Node, path: tuple, *, report: bool = True):
        """The key as text, reporting keys that are not plain names or that YAML 1.1 misreads."""
        line, col = _mark(key_node)
        if not isinstance(key_node, yaml.ScalarNode):
            if report:
                self.doc.problems.append(YamlProblem(
                    "E000", path, line, col, "a mapping key must be a plain name"))
            return _NOT_A_KEY
        key = self._scalar(key_node)
        if isinstance(key, bool) or key is None:
            what = "null" if key is None else f"the boolean {str(key).lower()}"
            if report:
                self.doc.problems.append(YamlProblem(
                    "E003", path + (key_node.value,), line, col,
                    f"key '{key_node.value}' is read as {what} (YAML 1.1); quote it: "
                    f"'{key_node.value}':",
                ))
            return key_node.value
        if not isinstance(key, str):
            return key_node.value  # numbers as keys: keep the text the author wrote
        return key

    def _sources(self, node: yaml.MappingNode) -> list[yaml.MappingNode]:
        """The mappings that the `<<:` keys of `node` merge in, in the order written."""
        sources = []
        merges = [value for key, value in node.value if key.tag == _MERGE]
        for value_node in merges[:1]:  # only the first counts; a second is a duplicate key
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) \
                else [value_node]
            for item in items:
                if not isinstance(item, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        None, None, "a merge key '<<' takes a mapping or a list of mappings",
                        item.start_mark)
                sources.append(item)
        return sources

    def _effective(self, node: yaml.MappingNode, active: set) -> dict:
        """key -> (key node, value node) of `node` once its merges are resolved.

        The loader resolves merge keys itself instead of asking PyYAML to flatten the node tree,
        and counts every entry it resolves against MAX_NODES, so a file gets the same verdict
        whatever PyYAML version reads it. Each mapping is resolved once (an alias is the same
        node), which keeps a mapping merged twice at every level linear, not exponential.
        """
        cached = self.merged.get(id(node))
        if cached is not None:
            return cached
        if id(node) in active:
            raise yaml.constructor.ConstructorError(
                None, None, "a merge key '<<' refers back to the mapping it is in",
                node.start_mark)
        active.add(id(node))
        result: dict = {}
        for source in self._sources(node):  # an earlier source wins over a later one
            for key, entry in self._effective(source, active).items():
                result.setdefault(key, entry)
        for key_node, value_node in node.value:  # the mapping's own keys win over merged ones
            if key_node.tag != _MERGE:
                key = self._key(key_node, (), report=False)
                if key is not _NOT_A_KEY:
                    result[key] = (key_node, value_node)
        active.discard(id(node))
        self.count += len(result)
        if self.count > MAX_NODES:
            raise _TooLarge
        self.merged[id(node)] = result
        return result

    def _mapping(self, node: yaml.MappingNode, path: tuple, depth: int) -> dict:
        own = [(k, v) for k, v in node.value if k.tag != _MERGE]
        merges = [k for k, _v in node.value if k.tag == _MERGE]
        for key_node in merges[1:]:  # PyYAML versions disagree on what a second one means
            line, col = _mark(key_node)
            first = _mark(merges[0])[0]
            self.doc.problems.append(YamlProblem(
                "E002", path + ("<<",), line, col,
                f"duplicate merge key '<<' (first on line {first}); merge several mappings "
                "with one key: '<<: [*a, *b]'"))
        merged: dict = {}
        if merges:
            for source in self._sources(node):
                for key, entry in self._effective(source, {id(node)}).items():
                    merged.setdefault(key, entry)
        keys = [self._key(key_node, path) for key_node, _value in own]
        own_keys = set(keys)
        result: dict = {}
        for key, (key_node, value_node) in merged.items():
            if key in own_keys:
                continue  # a merged entry gives way to the mapping's own: that is what `<<:` is for
            self.doc.keys[path + (key,)] = _mark(key_node)
            result[key] = self.build(value_node, path + (key,), depth + 1)
        for (key_node, value_node), key in zip(own, keys, strict=True):
            if key is _NOT_A_KEY:
                continue
            line, col = _mark(key_node)
            if key in result:
                first = self.doc.keys.get(path + (key,), (0, 0))[0]
                self.doc.problems.append(YamlProblem(
                    "E002", path + (key,), line, col,
                    f"duplicate key '{key}' (first defined on line {first}); "
                    "YAML would silently keep only the last one",
                ))
                continue
            self.doc.keys[path + (key,)] = (line, col)
            result[key] = self.build(value_node, path + (key,), depth + 1)
        return result


def _syntax_problem(exc: yaml.MarkedYAMLError) -> YamlProblem:
    """E000 at the problem, saying what the parser was in the middle of (its own wording)."""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    context = ""
    if exc.context:  # "while parsing a flow sequence", "expected a single document", ...
        start = exc.context_mark
        context = exc.context + (f" (line {start.line + 1}, column {start.column + 1})"
                                 if start and (start.line + 1, start.column + 1) != (line, col)
                                 else "") + ", "
    return YamlProblem("E000", (), line, col, f"not valid YAML: {context}{exc.problem}")


def load_text(text: str, path: Path | str = "<string>") -> Document:
    """Parse YAML text into a Document; problems are recorded, never raised."""
    doc = Document(Path(path))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        doc.problems.append(_syntax_problem(exc))
        return doc
    except yaml.reader.ReaderError as exc:
        line, col = _text_position(text[:exc.position])
        doc.problems.append(YamlProblem(
            "E000", (), line, col, f"not valid YAML: the character U+{exc.character:04X} is not "
                                   "allowed here" if isinstance(exc.character, int) else
                                   f"not valid YAML: {exc.reason}"))
        return doc
    except yaml.YAMLError as exc:
        doc.problems.append(YamlProblem("E000", (), 1, 1, f"not valid YAML: {exc}"))
        return doc
    except RecursionError:
        doc.problems.append(YamlProblem("E000", (), 1, 1, "not valid YAML: nested too deeply"))
        return doc
    if node is None:
        doc.problems.append(YamlProblem("E000", (), 1, 1, "the file is empty"))
        return doc
    try:
        doc.data = _Builder(doc).build(node, ())
    except _TooLarge:
        doc.values.clear()
        doc.keys.clear()
        doc.problems[:] = [YamlProblem(
            "E000", (), 1, 1,
            f"the document is too large or nested too deeply (more than {MAX_NODES} nodes "
            f"or {MAX_DEPTH} levels, aliases included)",
        )]
        return doc
    except yaml.MarkedYAMLError as exc:
        doc.problems.append(_syntax_problem(exc))
        return doc
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        doc.problems.append(YamlProblem("E000", (), 1, 1, f"not valid YAML: {exc}"))
        return doc
    if not isinstance(doc.data, dict):
        line, col = _mark(node)
        doc.problems.append(YamlProblem(
            "E000", (), line, col,
            f"the file must be a mapping of keys to values, not {_KINDS[type(doc.data)]}",
        ))
    return doc


def load_file(path: Path | str) -> Document:
    """Read and parse one YAML file; unreadable, binary or oversized files are problems."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        doc = Document(path)
        doc.problems.append(YamlProblem("E000", (), 1, 1, f"cannot read the file: {exc.strerror}"))
        return doc
    if len(raw) > MAX_FILE_BYTES:
        doc = Document(path)
        doc.problems.append(YamlProblem(
            "E000", (), 1, 1, f"the file is larger than {MAX_FILE_BYTES // 1024} KiB"))
        return doc
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        doc = Document(path)
        line, col = _text_position(raw[:exc.start].decode("utf-8"))
        doc.problems.append(YamlProblem(
            "E000", (), line, col, f"not a UTF-8 text file (byte 0x{raw[exc.start]:02x} here "
                                   "is not UTF-8; save the file as UTF-8)"))
        return doc
    if "\x00" in text:
        doc = Document(path)
        line, col = _text_position(text[:text.index("\x00")])
        doc.problems.append(YamlProblem("E000", (), line, col,
                                        "not a text file (it contains NUL bytes)"))
        return doc
    return load_text(text, path)


def _text_position(before: str) -> tuple[int, int]:
    """Line and column, from 1, of the character that follows `before`."""
    return before.count("\n") + 1, len(before) - before.rfind("\n")
