"""A participant type's state diagram as SVG: a small layered layout, then an SVG writer.

The layout is built for machine files rather than for graphs in general, so that the console and
the docs draw without JavaScript or system binaries. Every sub-state gets a column of its own, in
file order, grouped left to right under its main state. An edge to a column further right runs in
a lane above the row of states, an edge back (and a self-loop) in a lane below; the first edge
between two neighbouring columns runs straight between them. Lanes are packed like intervals, and
a label never sits on another edge: the label slides along its lane, or the edge moves up a lane.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from markupsafe import Markup, escape

from engine.errors import DefinitionError
from engine.loading.registry import load_registry
from engine.model.definitions import Definition, MainState
from engine.model.types import ParticipantType

__all__ = ["main", "render_svg", "write_images"]

# -- sizes (px) and colours -----------------------------------------------------------------------

FONT = "Helvetica, Arial, Liberation Sans, DejaVu Sans, sans-serif"
NAME_SIZE, CAPTION_SIZE, LABEL_SIZE, HEADER_SIZE = 13, 10.5, 11, 13
MARGIN = 12
NODE_H, NODE_PAD, NODE_MIN_W = 44, 14, 64
NODE_GAP, GROUP_PAD, GROUP_GAP, HEADER_H = 28, 14, 14, 30
PORT = 9                      # distance between two edge ends on one side of a box
LANE_FIRST, LANE_GAP = 22, 20  # from the row to the first lane, between lanes
LABEL_H, LABEL_PAD = 15, 5
CORNER = 6
LEGEND_ROW, NOTE_ROW = 20, 16

INK, MUTED, PAPER = "#1b1f23", "#4a5560", "#ffffff"
GROUP_FILL, GROUP_LINE = "#f3f5f7", "#7d8a97"
FORWARD, BACKWARD, AUTOMATIC = "#37474f", "#5b3a9e", "#875400"
CURRENT_FILL, PROBLEM = "#fff1bf", "#b00020"

# Advance widths (1/1000 em) of ASCII 32..126: the mean of Liberation Sans (Arial's metrics) and
# DejaVu Sans, so that boxes fit their text in whichever of the usual fonts the viewer has.
_ASCII_WIDTHS = (
    298, 340, 408, 697, 596, 920, 724, 233, 362, 362, 444, 711, 298, 347, 298, 308, 596, 596,
    596, 596, 596, 596, 596, 596, 596, 596, 308, 308, 711, 711, 711, 544, 1008, 676, 676, 710,
    746, 650, 593, 776, 737, 286, 398, 662, 556, 848, 735, 782, 635, 782, 708, 651, 611, 727,
    676, 966, 676, 639, 648, 334, 308, 334, 654, 528, 416, 584, 596, 525, 596, 586, 315, 596,
    595, 250, 250, 540, 250, 904, 595, 584, 596, 596, 372, 510, 335, 595, 546, 770, 546, 546,
    512, 485, 298, 485, 711,
)

CURRENT_MARK, PROBLEM_MARK = "● current", "⚠"


def _text_width(text: str, size: float, bold: bool = False) -> float:
    """An estimate of the rendered width of `text`, the same on every machine."""
    units = 0
    for char in text:
        code = ord(char)
        if 32 <= code < 127:
            units += _ASCII_WIDTHS[code - 32]
        elif unicodedata.combining(char):
            continue
        elif unicodedata.east_asian_width(char) in "WF":
            units += 1000
        else:
            units += 640 if unicodedata.category(char).startswith("L") else 900
    return units * size / 1000 * (1.07 if bold else 1.0)


# -- what is drawn: boxes in columns and edges between them ---------------------------------------

@dataclass(eq=False)
class _Box:
    kind: str                  # "state", "start" (the initial marker) or "archive"
    key: str = ""              # "main:sub" for a state
    group: str | None = None   # its main state
    name: str = ""
    captions: tuple[tuple[str, str], ...] = ()   # (class, text) on the second line
    title: str = ""
    classes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    column: int = 0
    width: float = 0.0
    x: float = 0.0             # left side

    @property
    def cx(self) -> float:
        return self.x + self.width / 2

    @property
    def right(self) -> float:
        return self.x + self.width

    @property
    def radius(self) -> float:  # the markers are circles; a state is its rectangle
        return {"start": 6, "archive": 8}.get(self.kind, 0)


@dataclass(eq=False)
class _Edge:
    index: int
    source: _Box
    target: _Box
    kind: str                  # "transition", "ttl", "archive" or "initial"
    label: str
    title: str
    event: str = ""
    guarded: bool = False
    route: str = ""            # "straight", "above" or "below"
    lane: int = 0
    min_lane: int = 1
    ports: list[float] = field(default_factory=lambda: [0.0, 0.0])   # x at source, at target
    extent: tuple[float, float] = (0.0, 0.0)   # what it takes of its lane, label included
    label_x: float = 0.0

    @property
    def span(self) -> int:
        return abs(self.target.column - self.source.column)

    @property
    def backward(self) -> bool:
        return self.target.column <= self.source.column

    @property
    def label_lines(self) -> list[str]:
        """A straight edge says its event above the line and the rest ("[guard]") below it, so
        that the gap between neighbours stays narrow."""
        if not self.label:
            return []
        return self.label.split(" ", 1) if self.route == "straight" else [self.label]

    @property
    def label_width(self) -> float:
        return max((_text_width(line, LABEL_SIZE) + 2 * LABEL_PAD for line in self.label_lines),
                   default=0.0)

    @property
    def segment(self) -> tuple[float, float]:
        return min(self.ports), max(self.ports)


@dataclass(eq=False)
class _Group:
    name: str
    description: str
    boxes: list[_Box]
    left: float = 0.0
    right: float = 0.0


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _graph(ptype: ParticipantType, highlight: str | None,
           problems: Mapping[str, Sequence[str]]) -> tuple[list[_Box], list[_Group], list[_Edge]]:
    """Boxes and edges of the type: its states from the definition, its transitions from the
    compiled Machine, its ttls and terminalTTL from the definition."""
    definition = ptype.definition
    start = _Box("start", title=f"Initial state: {definition.initial_state}")
    groups = [_Group(main.name, main.description,
                     [_state_box(definition, main, sub, highlight, problems)
                      for sub in main.sub_states])
              for main in definition.main_states]
    boxes = [start, *(box for group in groups for box in group.boxes)]
    states = {box.key: box for box in boxes[1:]}
    terminals = [box for box in boxes if "terminal" in box.classes]
    if definition.terminal_ttl_text and terminals:
        boxes.append(_Box("archive", name="archived",
                          title=f"Archived: terminal states are archived after "
                                f"{definition.terminal_ttl_text}"))
    for column, box in enumerate(boxes):
        box.column = column

    edges = [_Edge(0, start, states[definition.initial_state], "initial", "",
                   f"Initial state: {definition.initial_state}")]

    def add(*args, **kwargs) -> None:
        edges.append(_Edge(len(edges), *args, **kwargs))

    for key, sub in definition.sub_states.items():
        in_file = list(dict.fromkeys(t.event_code for t in sub.transitions))
        for code in sorted(ptype.machine.triggers(key),       # in the file's order
                           key=lambda c: in_file.index(c) if c in in_file else len(in_file)):
            event = definition.events.get(code)
            about = f"{code} {event.description}" if event else code
            for transition in ptype.machine.candidates(key, code):
                guards = [str(c.func) if c.target else f"not: {c.func}"
                          for c in transition.conditions]
                title = "\n".join([about, f"{key} → {transition.dest}",
                                   *(f"guard: {g}" for g in guards)])
                add(states[key], states[transition.dest], "transition",
                    f"{code} [guard]" if guards else code, title, event=code, guarded=bool(guards))
        if sub.ttl is not None:
            add(states[key], states[sub.ttl.destination], "ttl", f"ttl {sub.ttl.text}",
                f"Automatic after {sub.ttl.text} in {key}\n{key} → {sub.ttl.destination}")
    if boxes[-1].kind == "archive":
        for box in terminals:
            add(box, boxes[-1], "archive", f"terminalTTL {definition.terminal_ttl_text}",
                f"Archived {definition.terminal_ttl_text} after reaching {box.key}")
    return boxes, groups, edges


def _state_box(definition: Definition, main: MainState, sub_name: str, highlight: str | None,
               problems: Mapping[str, Sequence[str]]) -> _Box:
    key = f"{main.name}:{sub_name}"
    sub = definition.sub_states[key]
    default = len(main.sub_states) > 1 and sub_name == main.default_sub_state
    initial, current = key == definition.initial_state, key == highlight
    found = tuple(str(p) for p in problems.get(key, ()))
    notes = [sub.description, f"Default sub-state of {main.name}" if default else "",
             "Initial state" if initial else "", "Terminal state" if sub.terminal else "",
             "Current state" if current else ""]
    if found:
        notes += [f"{_plural(len(found), 'problem')}:", *(f"{PROBLEM_MARK} {p}" for p in found)]
    captions = [("default", "default")] if default else []
    if current:
        captions.append(("current", CURRENT_MARK))
    if found:
        captions.append(("problem", f"{PROBLEM_MARK} {len(found)}"))
    classes = {"state": True, "default": default, "initial": initial, "terminal": sub.terminal,
               "reached": current, "has-problems": bool(found)}
    return _Box("state", key, main.name, sub_name, tuple(captions),
                "\n".join([key, *filter(None, notes)]),
                tuple(name for name, on in classes.items() if on), found)


# -- layout ---------------------------------------------------------------------------------------

@dataclass
class _Layout:
    """The vertical measures and the width, once boxes and lanes are placed."""

    row_top: float
    group_bottom: float
    width: float

    @property
    def row_mid(self) -> float:
        return self.row_top + NODE_H / 2

    def lane_y(self, edge: _Edge) -> float:
        if edge.route == "above":
            return self.row_top - LANE_FIRST - (edge.lane - 1) * LANE_GAP
        return self.row_top + NODE_H + LANE_FIRST + (edge.lane - 1) * LANE_GAP

    def end_y(self, box: _Box, route: str) -> float:
        """Where an edge of `route` leaves or enters `box`."""
        reach = box.radius or NODE_H / 2
        return self.row_mid - reach if route == "above" else self.row_mid + reach


def _layout(boxes: list[_Box], groups: list[_Group], edges: list[_Edge]) -> _Layout:
    """Routes, box sizes, columns, edge ends, lanes and labels; then the vertical measures."""
    _choose_routes(edges)
    ends = {key: (items, _offsets(items)) for key, items in _ends(boxes, edges).items()}
    for box in boxes:
        _size(box, max((o[-1] - o[0] for (b, _), (_, o) in ends.items() if b is box), default=0))
    straight = {e.source.column: e.label_width for e in edges if e.route == "straight"}
    _place_columns(boxes, groups, straight)
    for (box, _), (items, offsets) in ends.items():
        for (edge, end), offset in zip(items, offsets, strict=True):
            edge.ports[end] = box.cx + offset
    for route in ("above", "below"):
        _route_lanes([e for e in edges if e.route == route])

    above = max((e.lane for e in edges if e.route == "above"), default=0)
    below = max((e.lane for e in edges if e.route == "below"), default=0)
    row_top = MARGIN + HEADER_H + (
        LABEL_H / 2 + LANE_FIRST + (above - 1) * LANE_GAP if above else 4)
    group_bottom = row_top + NODE_H + (
        LANE_FIRST + (below - 1) * LANE_GAP + LABEL_H / 2 + 6 if below else GROUP_PAD)
    return _Layout(row_top, group_bottom, max(boxes[-1].right, groups[-1].right) + MARGIN)


def _choose_routes(edges: list[_Edge]) -> None:
    """Straight for the first edge between neighbouring columns, else above or below."""
    straight: set[int] = set()
    for edge in edges:
        if edge.target.column == edge.source.column + 1 and edge.source.column not in straight:
            straight.add(edge.source.column)
            edge.route = "straight"
        else:
            edge.route = "below" if edge.backward else "above"


def _ends(boxes: list[_Box], edges: list[_Edge]) -> dict:
    """The edge ends on each side of each box, left to right, so that lanes nest.

    Edges to the left come first, the shortest outermost; then edges to the right, the longest
    innermost; a self-loop takes the two outermost places on the right."""
    sides: dict = {(box, side): ([], [], []) for box in boxes for side in ("above", "below")}
    for edge in edges:
        if edge.route == "straight":
            continue
        if edge.source is edge.target:
            sides[edge.source, edge.route][2].extend([(edge, 0), (edge, 1)])
            continue
        source_left = 0 if edge.backward else 1     # where the edge goes, seen from its source
        sides[edge.source, edge.route][source_left].append((edge, 0))
        sides[edge.target, edge.route][1 - source_left].append((edge, 1))
    ordered = {}
    for key, (left, right, loops) in sides.items():
        left.sort(key=lambda end: (end[0].span, end[0].index))
        right.sort(key=lambda end: (end[0].span, end[0].index), reverse=True)
        if left or right or loops:
            ordered[key] = left + right + loops
    return ordered


def _offsets(items: list) -> list[float]:
    """Where the ends sit along a side, from its middle: PORT apart, a self-loop wide enough to
    show its line on both sides of its label."""
    offsets = [0.0]
    for (before, _), (edge, end) in pairwise(items):
        loop = before is edge and end == 1
        offsets.append(offsets[-1] + (max(3 * PORT, edge.label_width + 2 * CORNER + 8)
                                      if loop else PORT))
    return [o - offsets[-1] / 2 for o in offsets]


def _size(box: _Box, ports: float) -> None:
    if box.kind == "start":
        box.width = 2 * box.radius
        return
    if box.kind == "archive":
        box.width = max(_text_width(box.name, CAPTION_SIZE), 2 * box.radius + ports + PORT)
        return
    # Room for the "current" mark whether or not it is shown: a page that highlights another
    # state draws the same picture.
    captions = [text for _, text in box.captions if text != CURRENT_MARK] + [CURRENT_MARK]
    caption = _text_width(" · ".join(captions), CAPTION_SIZE)
    box.width = max(NODE_MIN_W, _text_width(box.name, NAME_SIZE) + 2 * NODE_PAD,
                    caption + 2 * NODE_PAD, ports + PORT + 2 * CORNER)


def _place_columns(boxes: list[_Box], groups: list[_Group], straight: dict) -> None:
    """Left sides of the boxes and the sides of the main-state groups, left to right; `straight`
    holds the label width of the straight edge leaving a column."""
    by_name = {g.name: g for g in groups}

    def close(group: _Group, last: _Box) -> float:
        header = _text_width(group.name, HEADER_SIZE, bold=True) + 2 * GROUP_PAD
        group.right = max(last.right + GROUP_PAD, group.left + header)
        return group.right

    x = MARGIN
    for prev, box in zip([None, *boxes], boxes, strict=False):
        if prev is not None and box.group is not None and box.group == prev.group:
            x = prev.right + NODE_GAP
        elif prev is not None:
            x = close(by_name[prev.group], prev) if prev.group is not None else prev.right
            x += GROUP_GAP + (GROUP_PAD if box.group is not None else 0)
        if prev is not None and prev.column in straight:   # room for the straight edge's label
            x = max(x, prev.right + straight[prev.column] + 2 * 8)
        box.x = x
        if box.group is not None and by_name[box.group].boxes[0] is box:
            by_name[box.group].left = x - GROUP_PAD
    if boxes[-1].group is not None:
        close(by_name[boxes[-1].group], boxes[-1])


def _route_lanes(edges: list[_Edge]) -> None:
    """Lanes and label positions for the edges on one side of the row."""
    for _ in range(2 * len(edges) + 1):
        _pack(edges)
        stuck = _place_labels(edges)
        if not stuck:
            return
        for edge in stuck:          # fewer edges cross a higher lane
            edge.min_lane = edge.lane + 1


def _pack(edges: list[_Edge]) -> None:
    """Shortest first, each edge in the lowest lane that is free along it and above the edges
    it encloses (nested edges never cross)."""
    placed: list[_Edge] = []
    for edge in sorted(edges, key=lambda e: (e.span, e.index)):
        lo, hi = edge.segment
        half = edge.label_width / 2
        middle = (lo + hi) / 2
        edge.extent = lo, hi = min(lo, middle - half), max(hi, middle + half)
        lane = max([edge.min_lane] + [o.lane + 1 for o in placed
                                      if lo <= o.extent[0] and o.extent[1] <= hi])
        while any(o.lane == lane and o.extent[0] < hi + CORNER and lo < o.extent[1] + CORNER
                  for o in placed):
            lane += 1
        edge.lane = lane
        placed.append(edge)


def _place_labels(edges: list[_Edge]) -> list[_Edge]:
    """Each label as near the middle of its lane as it can be without covering an edge that
    crosses the lane, or a neighbour's line or label; the edges whose label does not fit."""
    stuck, placed = [], []
    for edge in sorted(edges, key=lambda e: (e.lane, e.span, e.index)):
        if not edge.label:
            continue
        lo, hi = edge.segment
        half = edge.label_width / 2 + 2
        blocked = []
        for other in edges:
            if other is edge or other.lane < edge.lane:
                continue
            if other.lane > edge.lane:
                blocked.extend((x, x) for x in other.ports)
            else:
                blocked.append(other.segment)
                if other in placed:
                    w = other.label_width / 2
                    blocked.append((other.label_x - w, other.label_x + w))
        spot = _free_spot((lo + hi) / 2, lo + half + 2, hi - half - 2,
                          [(a - half, b + half) for a, b in blocked])
        edge.label_x = (lo + hi) / 2 if spot is None else spot
        if spot is None:
            stuck.append(edge)
        placed.append(edge)
    return stuck


def _free_spot(preferred: float, lo: float, hi: float, blocked: list) -> float | None:
    """The point of [lo, hi] nearest `preferred` outside every open interval of `blocked`."""
    if lo > hi:
        lo = hi = preferred
    candidates = [min(max(preferred, lo), hi)] + [x for pair in blocked for x in pair]
    free = [c for c in candidates
            if lo <= c <= hi and not any(a < c < b for a, b in blocked)]
    return min(free, key=lambda c: (abs(c - preferred), c)) if free else None


# -- SVG ------------------------------------------------------------------------------------------

def _num(value: float) -> str:
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _tag(name: str, attrs: dict, body: str | None = None) -> str:
    parts = [name]
    for key, value in attrs.items():
        if value is None:
            continue
        text = _num(value) if isinstance(value, float | int) else str(value)
        parts.append(f'{key}="{escape(text)}"')
    opening = " ".join(parts)
    return f"<{opening}/>" if body is None else f"<{opening}>{body}</{name}>"


def _text(x: float, y: float, text: str, size: float, **attrs) -> str:
    return _tag("text", {"x": x, "y": y, "font-size": size, **attrs}, str(escape(text)))


def _title(text: str) -> str:
    return f"<title>{escape(text)}</title>"


def _colour(edge: _Edge) -> str:
    if edge.kind in ("ttl", "archive"):
        return AUTOMATIC
    return BACKWARD if edge.route == "below" else FORWARD


def _marker_id(prefix: str, colour: str) -> str:
    return f"{prefix}-arrow-{colour.lstrip('#')}"


def _defs(prefix: str) -> str:
    markers = "".join(
        _tag("marker", {"id": _marker_id(prefix, c), "viewBox": "0 0 10 10", "refX": 10,
                        "refY": 5, "markerWidth": 9, "markerHeight": 9,
                        "markerUnits": "userSpaceOnUse", "orient": "auto"},
             _tag("path", {"d": "M0,1 L10,5 L0,9 z", "fill": c}))
        for c in (FORWARD, BACKWARD, AUTOMATIC, INK))
    return f"<defs>{markers}</defs>"


def _group_svg(group: _Group, layout: _Layout) -> str:
    title = group.name + (f"\n{group.description}" if group.description else "")
    return _tag("g", {"class": "main-state", "data-main": group.name}, "".join([
        _title(title),
        _tag("rect", {"x": group.left, "y": MARGIN, "width": group.right - group.left,
                      "height": layout.group_bottom - MARGIN, "rx": 10, "fill": GROUP_FILL,
                      "stroke": GROUP_LINE}),
        _text(group.left + GROUP_PAD, MARGIN + 20, group.name, HEADER_SIZE,
              **{"font-weight": "bold", "fill": INK}),
    ]))


def _box_svg(box: _Box, layout: _Layout) -> str:
    mid = layout.row_mid
    if box.kind == "start":
        return _tag("g", {"class": "initial-marker"}, _title(box.title) + _tag(
            "circle", {"cx": box.cx, "cy": mid, "r": box.radius, "fill": INK}))
    if box.kind == "archive":
        return _tag("g", {"class": "archive"}, "".join([
            _title(box.title),
            _tag("circle", {"cx": box.cx, "cy": mid, "r": box.radius, "fill": PAPER,
                            "stroke": INK, "stroke-width": 1.5}),
            _tag("circle", {"cx": box.cx, "cy": mid, "r": box.radius - 4, "fill": INK}),
            _text(box.cx, mid + box.radius + 12, box.name, CAPTION_SIZE,
                  **{"text-anchor": "middle", "fill": MUTED}),
        ]))
    reached, problems = "reached" in box.classes, len(box.problems)
    stroke = PROBLEM if problems else INK
    parts = [_title(box.title),
             _tag("rect", {"x": box.x, "y": layout.row_top, "width": box.width,
                           "height": NODE_H, "rx": 8,
                           "fill": CURRENT_FILL if reached else PAPER, "stroke": stroke,
                           "stroke-width": 3 if reached else 1.5})]
    if "terminal" in box.classes:
        parts.append(_tag("rect", {"x": box.x + 3.5, "y": layout.row_top + 3.5,
                                   "width": box.width - 7, "height": NODE_H - 7, "rx": 5,
                                   "fill": "none", "stroke": stroke, "stroke-width": 1.2}))
    has_caption = bool(box.captions)
    parts.append(_text(box.cx, layout.row_top + (19 if has_caption else 27), box.name,
                       NAME_SIZE, **{"text-anchor": "middle", "fill": INK}))
    if has_caption:
        spans = []
        for i, (kind, text) in enumerate(box.captions):
            attrs = {"class": kind, "fill": PROBLEM if kind == "problem" else MUTED}
            if kind == "current":
                attrs.update({"fill": INK, "font-weight": "bold"})
            spans.append(_tag("tspan", attrs, str(escape((" · " if i else "") + text))))
        parts.append(_tag("text", {"x": box.cx, "y": layout.row_top + 35,
                                   "font-size": CAPTION_SIZE, "text-anchor": "middle"},
                          "".join(spans)))
    attrs = {"class": " ".join(box.classes), "data-state": box.key,
             "data-highlighted": "true" if reached else None,
             "data-problems": problems or None}
    return _tag("g", attrs, "".join(parts))


def _edge_path(edge: _Edge, layout: _Layout) -> str:
    source, target = edge.source, edge.target
    if edge.route == "straight":
        mid = layout.row_mid
        x0 = source.cx + source.radius if source.radius else source.right
        x1 = target.cx - target.radius if target.radius else target.x
        return f"M{_num(x0)},{_num(mid)} H{_num(x1 - 1)}"
    (x0, x1), lane = edge.ports, layout.lane_y(edge)
    y0, y1 = layout.end_y(source, edge.route), layout.end_y(target, edge.route)
    up = -1 if edge.route == "above" else 1            # from the row toward the lane
    r = min(CORNER, abs(x1 - x0) / 2)
    dx = 1 if x1 >= x0 else -1
    n = _num
    return (f"M{n(x0)},{n(y0)} V{n(lane - up * r)} Q{n(x0)},{n(lane)} {n(x0 + dx * r)},{n(lane)}"
            f" H{n(x1 - dx * r)} Q{n(x1)},{n(lane)} {n(x1)},{n(lane - up * r)}"
            f" V{n(y1 - up)}")


def _edge_svg(edge: _Edge, layout: _Layout, prefix: str) -> str:
    colour = _colour(edge)
    direction = {"straight": "forward", "above": "forward", "below": "backward"}[edge.route]
    if edge.source is edge.target:
        direction = "loop"
    classes = ["edge", edge.kind, direction, "guarded" if edge.guarded else ""]
    parts = [_title(edge.title), _tag("path", {
        "d": _edge_path(edge, layout), "fill": "none", "stroke": colour,
        "stroke-width": 1.4, "stroke-dasharray": "6 4" if colour == AUTOMATIC else None,
        "marker-end": f"url(#{_marker_id(prefix, INK if edge.kind == 'initial' else colour)})"})]
    if edge.label:
        if edge.route == "straight":
            x = (edge.source.right + edge.target.x) / 2
            spots = [layout.row_mid - LABEL_H / 2 - 2.5, layout.row_mid + LABEL_H / 2 + 2.5]
        else:
            x, spots = edge.label_x, [layout.lane_y(edge)]
        pieces = []
        for line, y in zip(edge.label_lines, spots, strict=False):
            w = _text_width(line, LABEL_SIZE) + 2 * LABEL_PAD
            pieces.append(_tag("rect", {"x": x - w / 2, "y": y - LABEL_H / 2, "width": w,
                                        "height": LABEL_H, "rx": 3, "fill": PAPER,
                                        "fill-opacity": 0.92}))
            pieces.append(_text(x, y + 4, line, LABEL_SIZE,
                                **{"text-anchor": "middle", "fill": INK}))
        parts.append(_tag("g", {"class": "edge-label"}, "".join(pieces)))
    attrs = {"class": " ".join(filter(None, classes)), "data-event": edge.event or None,
             "data-source": edge.source.key or None, "data-target": edge.target.key or None}
    return _tag("g", attrs, "".join(parts))


def _wrap(text: str, width: float, size: float) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if line and _text_width(candidate, size) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def _legend(layout: _Layout, highlight: bool, notes: list[tuple[str, str]],
            prefix: str) -> tuple[str, float, float]:
    """The key to the symbols and the problems in words; its markup, width and height."""
    items = [("start", "initial state"), ("terminal", "terminal state"),
             ("default", "marks a main state's default sub-state"),
             ("forward", "transition: forward above, back below"),
             ("automatic", "automatic after a time (ttl)"),
             ("guard", "marks a guarded transition (condition in its tooltip)")]
    if highlight:
        items.append(("current", "current state"))
    width = max(layout.width - 2 * MARGIN, 420.0)
    top = layout.group_bottom + 14
    x, y, parts, used = MARGIN, top, [], 0.0
    for kind, text in items:
        item = 34 + _text_width(text, LABEL_SIZE)
        if x > MARGIN and x + item > MARGIN + width:
            x, y = MARGIN, y + LEGEND_ROW
        parts.append(_legend_symbol(kind, x, y + LEGEND_ROW / 2, prefix))
        parts.append(_text(x + 34, y + LEGEND_ROW / 2 + 4, text, LABEL_SIZE, fill=INK))
        used = max(used, x + item - MARGIN)
        x += item + 18
    y += LEGEND_ROW + 4
    indent = _text_width(f"{PROBLEM_MARK} ", LABEL_SIZE)
    for key, message in notes:
        for i, line in enumerate(_wrap(f"{key}: {message}", width - indent, LABEL_SIZE)):
            y += NOTE_ROW
            icon = _tag("tspan", {"fill": PROBLEM}, f"{PROBLEM_MARK} ") if not i else ""
            parts.append(_tag("text", {"class": "problem", "x": MARGIN + (indent if i else 0),
                                       "y": y - 4, "font-size": LABEL_SIZE, "fill": INK},
                              icon + str(escape(line))))
            used = max(used, _text_width(line, LABEL_SIZE) + indent)
    markup = _tag("g", {"class": "legend"}, "".join(parts))
    return markup, used + 2 * MARGIN, y - top


def _legend_symbol(kind: str, x: float, y: float, prefix: str) -> str:
    if kind == "start":
        return _tag("circle", {"cx": x + 13, "cy": y, "r": 5, "fill": INK})
    if kind in ("terminal", "current"):
        rect = {"x": x + 2, "y": y - 7, "width": 24, "height": 14, "rx": 3,
                "fill": CURRENT_FILL if kind == "current" else PAPER, "stroke": INK,
                "stroke-width": 3 if kind == "current" else 1.2}
        inner = {"x": x + 5, "y": y - 4, "width": 18, "height": 8, "rx": 2, "fill": "none",
                 "stroke": INK, "stroke-width": 1}
        return _tag("rect", rect) + (_tag("rect", inner) if kind == "terminal" else "")
    if kind in ("forward", "automatic"):
        colour = FORWARD if kind == "forward" else AUTOMATIC
        return _tag("path", {"d": f"M{_num(x)},{_num(y)} H{_num(x + 27)}", "stroke": colour,
                             "stroke-width": 1.4, "fill": "none",
                             "stroke-dasharray": "6 4" if kind == "automatic" else None,
                             "marker-end": f"url(#{_marker_id(prefix, colour)})"})
    text = {"default": "default", "guard": "[guard]"}[kind]
    return _text(x, y + 4, text, CAPTION_SIZE if kind == "default" else LABEL_SIZE - 1,
                 fill=MUTED if kind == "default" else INK)


def _description(ptype: ParticipantType, edges: list[_Edge], highlight: str | None,
                 notes: list[tuple[str, str]]) -> str:
    """The diagram in words, for screen readers (role="img" hides the drawing's own texts)."""
    definition = ptype.definition
    mains = ", ".join(m.name for m in definition.main_states)
    sentences = [f"{_plural(len(definition.main_states), 'main state')} ({mains}) with "
                 f"{_plural(len(definition.sub_states), 'sub-state')}.",
                 f"Initial state: {definition.initial_state}."]
    terminals = [k for k in definition.sub_states if definition.is_terminal(k)]
    if terminals:
        archived = definition.terminal_ttl_text
        sentences.append(f"Terminal states: {', '.join(terminals)}"
                         + (f", archived after {archived}." if archived else "."))
    if highlight in definition.sub_states:
        sentences.append(f"Current state: {highlight}.")
    for key in definition.sub_states:
        ways = [f"{e.label} to {e.target.key}" for e in edges
                if e.source.key == key and e.kind in ("transition", "ttl")]
        if ways:
            sentences.append(f"From {key}: {'; '.join(ways)}.")
    sentences.extend(f"Problem in {key}: {message}" for key, message in notes)
    return " ".join(sentences)


def _svg(ptype: ParticipantType, highlight: str | None,
         problems: Mapping[str, Sequence[str]], standalone: bool) -> str:
    boxes, groups, edges = _graph(ptype, highlight, problems)
    layout = _layout(boxes, groups, edges)
    prefix = f"state-diagram-{ptype.plural}"
    notes = [(key, str(m)) for key, messages in problems.items() for m in messages]
    legend, legend_width, legend_height = _legend(layout, highlight is not None and any(
        "reached" in b.classes for b in boxes), notes, prefix)
    width = max(layout.width, legend_width)
    height = layout.group_bottom + 14 + legend_height + MARGIN
    attrs = {"xmlns": "http://www.w3.org/2000/svg" if standalone else None,
             "class": "state-diagram", "role": "img",
             "aria-labelledby": f"{prefix}-title {prefix}-desc", "data-type": ptype.plural,
             "width": _num(width), "height": _num(height),
             "viewBox": f"0 0 {_num(width)} {_num(height)}", "font-family": FONT}
    body = "".join([
        _tag("title", {"id": f"{prefix}-title"},
             str(escape(f"State diagram of {ptype.plural}"))),
        _tag("desc", {"id": f"{prefix}-desc"},
             str(escape(_description(ptype, edges, highlight, notes)))),
        _defs(prefix),
        _tag("rect", {"class": "background", "width": width, "height": height,
                      "fill": PAPER}),
        "".join(_group_svg(g, layout) for g in groups),
        _tag("g", {"class": "edges"}, "".join(_edge_svg(e, layout, prefix) for e in edges)),
        _tag("g", {"class": "states"}, "".join(_box_svg(b, layout) for b in boxes)),
        legend,
    ])
    return _tag("svg", attrs, body)


# -- the API --------------------------------------------------------------------------------------

def render_svg(ptype: ParticipantType, *, highlight: str | None = None,
               problems: Mapping[str, Sequence[str]] | None = None) -> Markup:
    """The type's state diagram as inline SVG; `highlight` a "main:sub" state reached,
    `problems` lint messages by "main:sub" state."""
    return Markup(_svg(ptype, highlight, problems or {}, standalone=False))


def write_images(registry: Mapping[str, ParticipantType], folder: Path | str) -> list[Path]:
    """Write <plural>.svg, a standalone SVG file, for every type of `registry` into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for plural, ptype in registry.items():
        path = folder / f"{plural}.svg"
        text = _svg(ptype, None, {}, standalone=True)
        path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n', encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Draw the state diagram of every machine file; 0 when written, 1 on definition errors."""
    parser = argparse.ArgumentParser(
        prog="python -m webapp.console.diagram",
        description="Write docs/diagrams/<plural>.svg for every participant type.")
    parser.add_argument("machines", nargs="?", default="machines",
                        help="folder of machine files (default: machines/)")
    parser.add_argument("out", nargs="?", default="docs/diagrams",
                        help="folder for the images (default: docs/diagrams/)")
    args = parser.parse_args(argv)
    try:
        registry = load_registry(args.machines)
    except DefinitionError as error:
        print(error, file=sys.stderr)
        return 1
    for path in write_images(registry, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
