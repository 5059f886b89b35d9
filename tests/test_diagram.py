"""The state diagram: every state and transition drawn, marks that do not rely on colour, user
text kept inert, nothing drawn over a label or a state, the same bytes every time."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from itertools import combinations

import pytest
import yaml

from engine.lint.runner import lint_documents
from engine.loading.registry import build_definition, load_registry
from engine.loading.yamlfile import load_text
from engine.model.types import ParticipantType
from tests.conftest import ROOT
from webapp.console.diagram import main, render_svg, write_images

MACHINES = ROOT / "machines"
IMAGES = ROOT / "docs" / "diagrams"
SHIPPED = sorted(p.stem for p in MACHINES.glob("*.yaml") if p.stem != "codes")
SVG = "{http://www.w3.org/2000/svg}"

SCRIPT = "<script>alert(1)</script>"
BREAKOUT = '"><img src=x onerror=alert(1)>'

# A small machine with what the shipped ones lack: a self-loop, two transitions between the
# same states, an initial state that is not the first column, and hostile descriptions.
GADGETS = {
    "participantType": {"singular": "gadget", "plural": "gadgets"},
    "version": "1.0.0",
    "description": SCRIPT,
    "attributes": {"ok": {"dataType": "boolean", "description": BREAKOUT}},
    "reasons": {"R-0001": BREAKOUT},
    "events": {
        "E-001": {"description": SCRIPT, "reasonCodes": ["R-0001"]},
        "E-002": {"description": BREAKOUT},
        "E-003": {"description": "Touch"},
    },
    "states": {
        "draft": {
            "description": BREAKOUT,
            "defaultSubState": "fresh",
            "subStates": {
                "held": {"description": SCRIPT,
                         "transitions": [{"eventCode": "E-001", "destination": "draft:fresh"}]},
                "fresh": {
                    "description": BREAKOUT,
                    "transitions": [
                        {"eventCode": "E-001", "destination": "done",
                         "guard": {"description": SCRIPT, "schema": {"required": ["ok"]}}},
                        {"eventCode": "E-002", "destination": "done"},
                        {"eventCode": "E-003", "destination": "draft:fresh"},
                    ],
                    "ttl": {"time": "30m", "destination": "draft:held"},
                },
            },
        },
        "done": {"terminalStates": ["gone"], "subStates": {"gone": {"description": SCRIPT}}},
    },
    "terminalTTL": "1d",
}


@pytest.fixture(scope="module")
def shipped():
    return load_registry(MACHINES)


@pytest.fixture(scope="module")
def gadgets():
    doc = load_text(yaml.safe_dump(GADGETS, sort_keys=False), "gadgets.yaml")
    assert [str(p) for p in lint_documents([doc]) if p.severity == "error"] == []
    return ParticipantType.compile(build_definition(GADGETS, None, "gadgets.yaml"))


def _root(svg: str) -> ET.Element:
    return ET.fromstring(str(svg))


def _classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def _nodes(root: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-state"): g for g in root.iter("g") if g.get("data-state")}


def _edges(root: ET.Element, kind: str | None = None) -> list[ET.Element]:
    return [g for g in root.iter("g") if "edge" in _classes(g)
            and (kind is None or kind in _classes(g))]


def _label(edge: ET.Element) -> str:
    """An edge's label; a straight edge has its event above its line and the rest below."""
    return " ".join("".join(text.itertext()) for text in edge.findall("g/text"))


def _transitions(ptype: ParticipantType) -> Counter:
    return Counter((t.source, t.event_code, t.destination)
                   for sub in ptype.definition.sub_states.values() for t in sub.transitions)


# -- structure -------------------------------------------------------------------------------------

@pytest.mark.parametrize("plural", SHIPPED)
def test_every_sub_state_is_one_node_with_a_title_and_its_name(shipped, plural):
    """Each sub-state is drawn once, as a <g data-state> with a class, a tooltip naming it with
    its description, and its name as text; nothing else carries data-state."""
    ptype = shipped[plural]
    root = _root(render_svg(ptype))
    drawn = Counter(g.get("data-state") for g in root.iter() if g.get("data-state"))
    assert drawn == Counter(list(ptype.definition.sub_states))
    for key, node in _nodes(root).items():
        sub = ptype.definition.sub_states[key]
        assert node.tag == "g" and "state" in _classes(node)
        title = node.find("title").text
        assert title.startswith(key) and sub.description in title
        assert [t.text for t in node.findall("text")][0] == sub.name


@pytest.mark.parametrize("plural", SHIPPED)
def test_main_states_are_labelled_groups_in_file_order(shipped, plural):
    """One labelled group per main state, left to right in the file's order, around its
    sub-states."""
    ptype = shipped[plural]
    root = _root(render_svg(ptype))
    groups = [g for g in root.iter("g") if "main-state" in _classes(g)]
    assert [g.get("data-main") for g in groups] == [m.name for m in ptype.definition.main_states]
    rects = [g.find("rect") for g in groups]
    lefts = [float(r.get("x")) for r in rects]
    assert lefts == sorted(lefts)
    nodes = _nodes(root)
    for state, group, rect in zip(ptype.definition.main_states, groups, rects, strict=True):
        assert group.find("text").text == state.name
        left, right = float(rect.get("x")), float(rect.get("x")) + float(rect.get("width"))
        for sub in state.sub_states:
            box = nodes[f"{state.name}:{sub}"].find("rect")
            assert left < float(box.get("x")) < right - float(box.get("width"))


@pytest.mark.parametrize("plural", SHIPPED)
def test_every_transition_is_an_edge_labelled_with_its_event_code(shipped, plural):
    """Each transition is one edge from its source to its target with an arrowhead, labelled
    with its event code; guarded ones say so and carry the guard in their tooltip."""
    ptype = shipped[plural]
    root = _root(render_svg(ptype))
    edges = _edges(root, "transition")
    drawn = Counter((e.get("data-source"), e.get("data-event"), e.get("data-target"))
                    for e in edges)
    assert drawn == _transitions(ptype)
    guards = {(t.source, t.event_code, t.destination): t.guard
              for sub in ptype.definition.sub_states.values() for t in sub.transitions}
    for edge in edges:
        guard = guards[edge.get("data-source"), edge.get("data-event"), edge.get("data-target")]
        assert edge.find("path").get("marker-end", "").startswith("url(#")
        assert _label(edge) == edge.get("data-event") + (" [guard]" if guard else "")
        if guard:
            assert "guarded" in _classes(edge)
            assert guard.description in edge.find("title").text


@pytest.mark.parametrize("plural", SHIPPED)
def test_ttls_and_the_terminal_ttl_are_dashed_edges(shipped, plural):
    """A sub-state's ttl is a dashed edge labelled "ttl <time>"; terminalTTL is a dashed edge
    from each terminal state to the archive mark."""
    ptype = shipped[plural]
    definition = ptype.definition
    root = _root(render_svg(ptype))
    ttls = {(e.get("data-source"), e.get("data-target"), _label(e)) for e in _edges(root, "ttl")}
    assert ttls == {(k, s.ttl.destination, f"ttl {s.ttl.text}")
                    for k, s in definition.sub_states.items() if s.ttl}
    assert ttls, "every shipped machine has a ttl"
    archived = _edges(root, "archive")
    terminals = [k for k in definition.sub_states if definition.is_terminal(k)]
    if definition.terminal_ttl_text:
        assert [e.get("data-source") for e in archived] == terminals
        assert {_label(e) for e in archived} == {f"terminalTTL {definition.terminal_ttl_text}"}
    else:
        assert archived == []
    for edge in _edges(root, "ttl") + archived:
        assert edge.find("path").get("stroke-dasharray")


@pytest.mark.parametrize("plural", SHIPPED)
def test_initial_terminal_and_default_states_are_marked(shipped, plural):
    """A start dot with an arrow into the initial state; terminal states have a double border;
    a main state's default sub-state says "default"."""
    ptype = shipped[plural]
    definition = ptype.definition
    root = _root(render_svg(ptype))
    assert [e.get("data-target") for e in _edges(root, "initial")] == [definition.initial_state]
    assert len([g for g in root.iter("g") if "initial-marker" in _classes(g)]) == 1
    for key, node in _nodes(root).items():
        main = next(m for m in definition.main_states if m.name == key.split(":")[0])
        rects = node.findall("rect")
        assert len(rects) == (2 if definition.is_terminal(key) else 1)
        default = len(main.sub_states) > 1 and key == f"{main.name}:{main.default_sub_state}"
        assert ("default" in "".join(node.itertext())) is default
        assert ("default" in _classes(node)) is default


def _path_ys(edge: ET.Element) -> list[float]:
    """Every y an edge's path reaches (its path is M, V, H and Q commands)."""
    ys = []
    for command, args in re.findall(r"([MVHQ])([^MVHQ]*)", edge.find("path").get("d")):
        numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", args)]
        if command != "H":
            ys += numbers if command == "V" else numbers[1::2]
    return ys


@pytest.mark.parametrize("plural", SHIPPED)
def test_backward_edges_run_below_and_forward_ones_above(shipped, plural):
    """Edges to a state earlier in the file (and self-loops) run below the row of states, the
    others straight between neighbours or above the row."""
    ptype = shipped[plural]
    order = list(ptype.definition.sub_states)
    root = _root(render_svg(ptype))
    row = next(iter(_nodes(root).values())).find("rect")
    top, bottom = float(row.get("y")), float(row.get("y")) + float(row.get("height"))
    backward = 0
    for edge in _edges(root):
        source, target = edge.get("data-source"), edge.get("data-target")
        ys = _path_ys(edge)
        if source in order and target in order and order.index(target) <= order.index(source):
            backward += 1
            assert {"backward", "loop"} & _classes(edge)
            assert min(ys) >= bottom - 1 and max(ys) > bottom + 10
        else:
            assert "forward" in _classes(edge)
            assert max(ys) <= top + (bottom - top) / 2 + 1
    assert backward


# -- geometry: nothing drawn over a label or a state -----------------------------------------------

def _segments(edge: ET.Element) -> list[tuple[float, float, float, float]]:
    """The straight pieces of an edge's path (the rounded corners are left out)."""
    d = edge.find("path").get("d")
    tokens = re.findall(r"[MVHQ]|-?\d+(?:\.\d+)?", d)
    segments, x, y, i = [], 0.0, 0.0, 0
    while i < len(tokens):
        command = tokens[i]
        if command == "M":
            x, y = float(tokens[i + 1]), float(tokens[i + 2])
            i += 3
        elif command in "VH":
            value = float(tokens[i + 1])
            end = (x, value) if command == "V" else (value, y)
            segments.append((x, y, *end))
            x, y = end
            i += 2
        else:  # Q: control point, end point
            x, y = float(tokens[i + 3]), float(tokens[i + 4])
            i += 5
    return segments


def _box(rect: ET.Element, inset: float = 0.0) -> tuple[float, float, float, float]:
    x, y = float(rect.get("x")), float(rect.get("y"))
    return (x + inset, y + inset, x + float(rect.get("width")) - inset,
            y + float(rect.get("height")) - inset)


def _meets(segment, box) -> bool:
    x0, y0, x1, y1 = segment
    left, top, right, bottom = box
    return (min(x0, x1) < right and max(x0, x1) > left
            and min(y0, y1) < bottom and max(y0, y1) > top)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _assert_nothing_drawn_over_text(root: ET.Element) -> None:
    labels = [(e, _box(rect, 1)) for e in _edges(root) for rect in e.findall("g/rect")]
    nodes = {key: _box(g.find("rect"), 1) for key, g in _nodes(root).items()}
    for (a, box_a), (b, box_b) in combinations(labels, 2):
        assert not _overlap(box_a, box_b), (_label(a), _label(b))
    assert labels
    for edge, box in labels:
        for key, node in nodes.items():
            assert not _overlap(box, node), (_label(edge), key)
    for edge in _edges(root):
        ends = {edge.get("data-source"), edge.get("data-target")}
        for segment in _segments(edge):
            for key, node in nodes.items():
                if key not in ends:
                    assert not _meets(segment, node), (edge.find("title").text, key)
            for other, box in labels:
                if other is not edge:
                    assert not _meets(segment, box), (edge.find("title").text, _label(other))


@pytest.mark.parametrize("plural", SHIPPED)
def test_no_edge_crosses_a_label_or_a_state_and_no_labels_overlap(shipped, plural):
    """Labels are apart from each other and from the states, and no edge runs through another
    edge's label or through a state it does not join."""
    _assert_nothing_drawn_over_text(_root(render_svg(shipped[plural])))


def test_self_loops_and_parallel_edges_keep_apart(gadgets):
    """A self-loop is a loop below its state, and two transitions between the same states get
    their own lines and labels."""
    root = _root(render_svg(gadgets))
    _assert_nothing_drawn_over_text(root)
    loop = next(e for e in _edges(root) if "loop" in _classes(e))
    assert loop.get("data-source") == loop.get("data-target") == "draft:fresh"
    xs = {s[0] for s in _segments(loop) if s[0] == s[2]}
    assert len(xs) == 2                                   # down on one side, up on the other
    parallel = [e for e in _edges(root, "transition")
                if (e.get("data-source"), e.get("data-target")) == ("draft:fresh", "done:gone")]
    assert sorted(_label(e) for e in parallel) == ["E-001 [guard]", "E-002"]
    assert parallel[0].find("path").get("d") != parallel[1].find("path").get("d")
    assert [e.get("data-target") for e in _edges(root, "initial")] == ["draft:fresh"]


# -- highlight and problems ------------------------------------------------------------------------

def test_the_highlighted_state_is_marked_without_relying_on_colour(shipped):
    """The reached state gets class "reached", data-highlighted, a thicker border and the text
    "● current", and the description names it; nothing else moves."""
    ptype = shipped["vehicles"]
    plain, marked = _root(render_svg(ptype)), _root(render_svg(ptype, highlight="active:onTrip"))
    nodes = _nodes(marked)
    reached = [k for k, g in nodes.items() if "reached" in _classes(g)]
    assert reached == ["active:onTrip"]
    node = nodes["active:onTrip"]
    assert node.get("data-highlighted") == "true"
    assert float(node.find("rect").get("stroke-width")) > float(
        nodes["active:available"].find("rect").get("stroke-width"))
    assert "● current" in "".join(node.itertext())
    assert "Current state" in node.find("title").text
    assert "Current state: active:onTrip." in marked.find("desc").text
    assert [g.get("data-highlighted") for k, g in nodes.items() if k != "active:onTrip"] == [
        None] * (len(nodes) - 1)
    for key, g in _nodes(plain).items():
        assert _box(g.find("rect")) == _box(nodes[key].find("rect"))


def test_problems_show_an_icon_a_count_and_their_messages(shipped):
    """A state with problems has data-problems, a ⚠ with the count, the messages in its
    tooltip, and the messages in words under the diagram; so do problems of unknown states."""
    problems = {"onboarding:failedInspection": ["W012 first problem", "E004 second problem"],
                "ghost:state": ["a state the type does not have"]}
    root = _root(render_svg(shipped["vehicles"], problems=problems))
    node = _nodes(root)["onboarding:failedInspection"]
    assert node.get("data-problems") == "2" and "has-problems" in _classes(node)
    assert "⚠ 2" in "".join(node.itertext())
    assert "W012 first problem" in node.find("title").text
    assert "E004 second problem" in node.find("title").text
    legend = "\n".join("".join(t.itertext()) for t in root.iter("text")
                       if "problem" in _classes(t))
    for key, messages in problems.items():
        for message in messages:
            assert f"⚠ {key}: {message}" in legend
    assert [k for k, g in _nodes(root).items() if g.get("data-problems")] == [
        "onboarding:failedInspection"]


# -- escaping, determinism, markup -----------------------------------------------------------------

def test_hostile_descriptions_and_messages_come_out_as_text(gadgets):
    """Descriptions, guards and problem messages are escaped: no markup gets in, and the text
    reads back exactly."""
    svg = str(render_svg(gadgets, highlight="draft:held",
                         problems={"draft:fresh": [SCRIPT, BREAKOUT]}))
    assert "<script" not in svg and "<img" not in svg and 'onerror=alert(1)"' not in svg
    root = _root(svg)
    tags = {element.tag for element in root.iter()}
    assert tags <= {"svg", "title", "desc", "defs", "marker", "path", "rect", "circle", "g",
                    "text", "tspan"}
    assert all(not k.startswith("on") for e in root.iter() for k in e.attrib)
    titles = [t.text for t in root.iter("title")]
    assert any(SCRIPT in t for t in titles) and any(BREAKOUT in t for t in titles)
    held = _nodes(root)["draft:held"].find("title").text
    assert held.startswith(f"draft:held\n{SCRIPT}")
    guarded = next(e for e in _edges(root) if _label(e) == "E-001 [guard]")
    assert f"guard: {SCRIPT}" in guarded.find("title").text
    assert SCRIPT in root.find("desc").text and BREAKOUT in root.find("desc").text


def test_the_same_type_draws_the_same_bytes(shipped):
    """Two renderings, and one in another interpreter with another hash seed, are identical."""
    first = str(render_svg(shipped["vehicles"], highlight="active:onTrip"))
    assert first == str(render_svg(shipped["vehicles"], highlight="active:onTrip"))
    code = ("import sys; from engine.loading.registry import load_registry; "
            "from webapp.console.diagram import render_svg; "
            "sys.stdout.write(render_svg(load_registry(sys.argv[1])['vehicles'], "
            "highlight='active:onTrip'))")
    other = subprocess.run([sys.executable, "-c", code, str(MACHINES)], cwd=ROOT, check=True,
                           capture_output=True, text=True, env={"PYTHONHASHSEED": "7"}).stdout
    assert other == first


@pytest.mark.parametrize("plural", SHIPPED)
def test_inline_svg_is_well_formed_and_labelled(shipped, plural):
    """Inline SVG without prolog: role="img", aria-labelledby naming its <title> and <desc>,
    width and height equal to the viewBox, everything drawn inside it."""
    svg = str(render_svg(shipped[plural]))
    assert svg.startswith("<svg ") and "<?xml" not in svg
    root = _root(svg)
    assert root.tag == "svg" and root.get("role") == "img"
    ids = {e.get("id"): e.tag for e in root.iter() if e.get("id")}
    assert [ids[i] for i in root.get("aria-labelledby").split()] == ["title", "desc"]
    width, height = float(root.get("width")), float(root.get("height"))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    for rect in root.iter("rect"):
        if rect.get("x") is not None:
            left, top, right, bottom = _box(rect)
            assert 0 <= left and right <= width and 0 <= top and bottom <= height


# -- images ----------------------------------------------------------------------------------------

def test_write_images_writes_one_standalone_file_per_type(shipped, tmp_path):
    """write_images writes <plural>.svg for every type: an XML prolog, then an SVG element in
    the SVG namespace."""
    written = write_images(shipped, tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(f"{p}.svg" for p in shipped)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)
    for path in written:
        text = path.read_text("utf-8")
        assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns=')
        root = ET.parse(path).getroot()
        assert root.tag == f"{SVG}svg"
        assert len([g for g in root.iter(f"{SVG}g") if g.get("data-state")]) == len(
            shipped[path.stem].definition.sub_states)


def test_the_command_writes_the_images_and_reports_bad_folders(tmp_path, capsys):
    """`python -m webapp.console.diagram MACHINES OUT` prints what it wrote and exits 0; a
    folder that does not load exits 1 with the reason on stderr."""
    assert main([str(MACHINES), str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {tmp_path / f'{p}.svg'}" for p in load_registry(MACHINES)]
    assert main([str(tmp_path / "missing"), str(tmp_path)]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_the_images_in_docs_are_up_to_date(shipped, tmp_path):
    """docs/diagrams/ holds the current drawing of every shipped type (regenerate them with
    `python -m webapp.console.diagram`)."""
    for path in write_images(shipped, tmp_path):
        shipped_image = IMAGES / path.name
        assert shipped_image.is_file(), f"{shipped_image} is missing"
        assert shipped_image.read_text("utf-8") == path.read_text("utf-8"), (
            f"{shipped_image} is out of date: run python -m webapp.console.diagram")
