"""Scenario files: run by the linter's command, reported at the step that went differently,
and decided exactly as the real API decides the same requests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.lint.cli import main
from engine.loading.yamlfile import load_file
from tests.conftest import BASE, ROOT, close_app, headers, make_app

MACHINES = ROOT / "machines"
SHIPPED = sorted((MACHINES / "scenarios").glob("*.yaml"))
SMALL = ROOT / "tests" / "lint_cases" / "E902" / "good"


def lint(capsys, *argv: str) -> tuple[int, str]:
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().out


@pytest.fixture
def folder(tmp_path) -> Path:
    """A copy of a small machine folder with one passing scenario."""
    target = tmp_path / "machines"
    shutil.copytree(SMALL, target)
    return target


def test_every_machine_ships_with_scenarios():
    types = {load_file(p).data["type"] for p in SHIPPED}
    plurals = {p.stem for p in MACHINES.glob("*.yaml") if p.stem != "codes"}
    assert types == plurals


def test_the_shipped_scenarios_pass(capsys):
    status, out = lint(capsys, MACHINES)
    assert status == 0, out
    assert out.endswith(f"and {len(SHIPPED)} scenarios\n")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_each_shipped_scenario_can_fail_at_its_own_line(path, tmp_path, capsys):
    """Make the last step expect the impossible: E902 points at that step's line."""
    target = tmp_path / "machines"
    shutil.copytree(MACHINES, target)
    doc = load_file(path)
    last = len(doc.data["steps"]) - 1
    lines = path.read_text().splitlines(keepends=True)
    line, _ = doc.position(("steps", last))
    # a new final step, expecting a state the type does not have
    lines.append("  - properties: {}\n    expect: {state: 'no:where'}\n")
    (target / "scenarios" / path.name).write_text("".join(lines))
    status, out = lint(capsys, target)
    assert status == 1
    problem = out.splitlines()[0]
    step_line = len(lines[:-1]) + 2
    assert problem.startswith(f"{target / 'scenarios' / path.name}:{step_line}:"), out
    assert f"E902 step {last + 2}: expected state 'no:where'" in problem
    assert line < step_line


def _break_first_step(folder: Path) -> Path:
    path = folder / "scenarios" / "activation.yaml"
    path.write_text(path.read_text().replace(
        "expect: {errorCode: '101170021094'", "expect: {errorCode: '101170021090'", 1))
    return path


@pytest.mark.parametrize("fmt", ["text", "json", "github", "sarif"])
def test_the_first_differing_step_in_every_format(folder, capsys, fmt):
    path = _break_first_step(folder)
    status, out = lint(capsys, "--format", fmt, folder)
    assert status == 1
    if fmt == "text":
        assert out.startswith(f"{path}:9:5: E902 step 1 (E-022): expected errorCode 101170021090")
        assert "it failed with 101170021094" in out
        assert len(out.splitlines()) == 2  # one problem: the scenario stops at its first
    elif fmt == "json":
        (problem,) = json.loads(out)["problems"]
        assert (problem["file"], problem["line"], problem["col"], problem["rule"]) == (
            str(path), 9, 5, "E902")
        assert json.loads(out)["summary"] == "1 error, 0 warnings in 1 file and 1 scenario"
    elif fmt == "github":
        assert out.startswith(f"::error file={path},line=9,col=5,title=E902::E902 step 1")
    else:
        (result,) = json.loads(out)["runs"][0]["results"]
        region = result["locations"][0]["physicalLocation"]["region"]
        assert (result["ruleId"], region["startLine"]) == ("E902", 9)


def test_no_scenarios_lints_the_machine_files_only(folder, capsys):
    _break_first_step(folder)
    assert lint(capsys, "--no-scenarios", folder) == (0, "0 errors, 0 warnings in 1 file\n")


def test_scenarios_do_not_run_on_machines_with_errors(folder, capsys):
    machine = folder / "vehicles.yaml"
    machine.write_text(machine.read_text().replace("E-023: {", "E-23: {", 1))
    status, out = lint(capsys, folder)
    assert status == 1
    assert "E902" not in out and "scenario" not in out.splitlines()[-1]


def test_a_single_file_runs_no_scenarios(folder, capsys):
    _break_first_step(folder)
    assert lint(capsys, folder / "vehicles.yaml")[0] == 0


HOSTILE = {
    "binary.yaml": b"\x00\x01\x02\xff" * 100,
    "not-a-mapping.yaml": b"- a\n- b\n",
    "empty.yaml": b"",
    "alias-bomb.yaml": b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n".encode()
        for i in range(9)),
    "steps-not-a-list.yaml": b"scenario: s\ntype: vehicles\nsteps: {a: 1}\n",
    "too-many-steps.yaml": b"scenario: s\ntype: vehicles\nsteps:\n" + b"  - {}\n" * 1001,
    "properties-wrong.yaml": b"scenario: s\ntype: vehicles\nsteps:\n  - properties: [1]\n",
    "unknown-state.yaml": b"scenario: s\ntype: vehicles\nstart: {state: 'x:y'}\nsteps: [{}]\n",
    "both-starts.yaml": (b"scenario: s\ntype: vehicles\nstart: {state: 'active:active', "
                         b"create: {uniqueCode: a, properties: {}}}\nsteps: [{}]\n"),
    "deep.yaml": b"scenario: s\ntype: vehicles\nsteps:\n  - properties: " + b"[" * 200 + b"]" * 200,
    "huge.yaml": b"scenario: s\ntype: vehicles\nsteps: []\n# " + b"x" * (3 * 1024 * 1024),
    "control.yaml": b"scenario: \"a\\x1b[31mred\"\ntype: vehicles\nsteps: [{expect: 5}]\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_scenario_files_are_reported_never_a_traceback(folder, name):
    (folder / "scenarios" / name).write_bytes(HOSTILE[name])
    result = subprocess.run([sys.executable, "validate_machines.py", str(folder)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    mine = [line for line in result.stdout.splitlines() if name in line]
    assert mine and all(": E9" in line or ": E0" in line for line in mine), result.stdout
    assert "\x1b" not in result.stdout


# -- the same requests through the real API reach the same outcomes ---------------------------

@pytest.fixture
def shipped_client(app_database):
    application = make_app(app_database, PARTICIPANTS_MACHINES=str(MACHINES))
    yield application.test_client()
    close_app(application)


CREATED = [p for p in SHIPPED if "create" in (load_file(p).data.get("start") or {})]


@pytest.mark.parametrize("path", CREATED, ids=[p.stem for p in CREATED])
def test_a_scenario_replayed_through_the_api_meets_its_expectations(shipped_client, path):
    """Each step sent as a real request (create, PUT, state event) reaches what the scenario
    expects: the linter's verdict is the service's."""
    data = load_file(path).data
    plural, start = data["type"], data["start"]
    response = shipped_client.post(f"{BASE}/{plural}", json=start["create"], headers=headers())
    assert response.status_code == 202, response.get_data(as_text=True)
    pid = response.json["data"]["id"]
    _check(shipped_client, plural, pid, response.json["data"]["event"], start.get("expect"))
    for step in data["steps"]:
        request = {k: v for k, v in step.items() if k not in ("expect", "note")}
        if "eventCode" in request:
            body = {"timestamp": 1_700_000_000, "source": {"appId": "scenario"}, **request}
            response = shipped_client.put(f"{BASE}/{plural}/{pid}/state/event", json=body,
                                          headers=headers())
        else:
            response = shipped_client.put(f"{BASE}/{plural}/{pid}", json=request,
                                          headers=headers())
        assert response.status_code == 202, response.get_data(as_text=True)
        _check(shipped_client, plural, pid, response.json["data"]["event"], step.get("expect"))


def _check(client, plural, pid, event, expect) -> None:
    expect = expect or {}
    success = expect.get("success", "errorCode" not in expect and "errors" not in expect)
    assert event["payloadValidated"] is success, event
    if "errorCode" in expect:
        assert event["errorCode"] == expect["errorCode"], event
    stored = client.get(f"{BASE}/{plural}/{pid}", headers=headers()).json["data"]
    if "state" in expect:
        assert stored["state"] == expect["state"], stored
    for name, value in (expect.get("properties") or {}).items():
        assert stored["properties"].get(name) == value, (name, stored["properties"])
    if "errors" in expect:
        history = client.get(f"{BASE}/{plural}/{pid}/events?limit=1&offset=0",
                             headers=headers()).json["data"]
        total = history["meta"]["totalElements"]
        last = client.get(f"{BASE}/{plural}/{pid}/events?limit=1&offset={total - 1}",
                          headers=headers()).json["data"]["events"][0]
        paths = {e["path"] for e in last["errors"]}
        assert set(expect["errors"]) <= paths, (expect["errors"], paths)
