"""The linter's command line: formats, exit statuses, usage errors, whole-folder runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from engine.lint.cli import main
from tests.conftest import ROOT, TEST_MACHINES

BROKEN = """\
participantType: {singular: vehicle, plural: vehicles}
version: '1.0.0'
attributes: {}
events:
  E-001: {description: Go}
states:
  open:
    subStates:
      open:
        transitions:
          - {eventCode: E-001, destination: closed:gon}
  closed:
    terminalStates: [gone]
    subStates: {gone: {}}
"""


@pytest.fixture
def broken(tmp_path):
    (tmp_path / "vehicles.yaml").write_text(BROKEN)
    return tmp_path


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_clean_folder_exits_zero(capsys):
    """A clean folder prints only the summary and exits 0."""
    status, out, _ = run(capsys, str(TEST_MACHINES))
    assert (status, out) == (0, "0 errors, 0 warnings in 2 files\n")


def test_errors_exit_one_with_file_line_col(capsys, broken, monkeypatch):
    """Errors are printed as file:line:col: RULE message and the exit status is 1."""
    monkeypatch.chdir(broken)
    status, out, _ = run(capsys, "vehicles.yaml")
    assert status == 1
    assert out == (
        "vehicles.yaml:11:45: E202 transition goes to unknown sub-state 'closed:gon' "
        "(did you mean 'closed:gone'?)\n"
        "vehicles.yaml:14:17: E207 sub-state 'closed:gone' cannot be reached from the initial "
        "state 'open:open'\n"
        "2 errors, 0 warnings in 1 file\n"
    )


def test_json_format_is_machine_readable(capsys, broken):
    """--format json lists each problem with file, line, col, rule, severity and message."""
    status, out, _ = run(capsys, "--format", "json", str(broken))
    report = json.loads(out)
    assert status == 1
    assert report["problems"][0]["rule"] == "E202"
    assert report["problems"][0]["severity"] == "error"
    assert set(report["problems"][0]) == {"file", "line", "col", "rule", "severity", "message"}


def test_github_format_emits_workflow_commands(capsys, broken):
    """--format github prints ::error annotations with file, line and col."""
    _, out, _ = run(capsys, "--format", "github", str(broken))
    assert out.startswith(f"::error file={broken / 'vehicles.yaml'},line=11,col=45,title=E202::")


def test_sarif_format_is_valid_sarif_shape(capsys, broken):
    """--format sarif produces a SARIF 2.1.0 log whose results point at the region."""
    _, out, _ = run(capsys, "--format", "sarif", str(broken))
    log = json.loads(out)
    assert log["version"] == "2.1.0"
    result = log["runs"][0]["results"][0]
    assert result["ruleId"] == "E202"
    assert result["locations"][0]["physicalLocation"]["region"] == {
        "startLine": 11, "startColumn": 45}
    assert log["runs"][0]["tool"]["driver"]["rules"][0]["id"] == "E202"


def test_warnings_exit_zero_unless_strict(capsys, tmp_path):
    """Warnings are printed with exit 0, and exit 1 with --strict."""
    shutil.copy(TEST_MACHINES / "vehicles.yaml", tmp_path)
    shutil.copy(TEST_MACHINES / "codes.yaml", tmp_path)
    path = tmp_path / "vehicles.yaml"
    path.write_text(path.read_text().replace("verified: {dataType: boolean, defaultValue: false}",
                                             "verified: {dataType: boolean, defaultValue: no}"))
    status, out, _ = run(capsys, str(tmp_path))
    assert status == 0 and " W004 " in out
    status, _, _ = run(capsys, "--strict", str(tmp_path))
    assert status == 1


@pytest.mark.parametrize("argv", [["--format", "xml"], ["--bogus"], ["/no/such/place"]])
def test_usage_errors_exit_two(capsys, argv):
    """Bad options and missing paths are usage errors with exit status 2."""
    status = None
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2
    assert "error" in capsys.readouterr().err


def test_empty_folder_is_a_usage_error(capsys, tmp_path):
    """A folder without machine files is a usage error, not a silent success."""
    status, _, err = run(capsys, str(tmp_path))
    assert status == 2 and "no machine files" in err


def test_all_files_are_reported_in_one_run(capsys, tmp_path):
    """Problems of every file come out in one sorted run."""
    (tmp_path / "aaa.yaml").write_text("[")
    (tmp_path / "bbb.yaml").write_text("- 1\n")
    (tmp_path / "ccc.yaml").write_bytes(b"\x00\x00")
    status, out, _ = run(capsys, str(tmp_path))
    files = [line.split(":")[0] for line in out.splitlines()[:-1]]
    assert status == 1
    assert [f.rsplit("/", 1)[-1] for f in files] == ["aaa.yaml", "bbb.yaml", "ccc.yaml"]
    assert out.splitlines()[-1] == "3 errors, 0 warnings in 3 files"


def test_single_file_finds_codes_yaml_beside_it(capsys):
    """Linting one file uses the codes.yaml of its folder."""
    status, out, _ = run(capsys, str(TEST_MACHINES / "vehicles.yaml"))
    assert (status, out) == (0, "0 errors, 0 warnings in 2 files\n")


def test_list_rules_prints_every_rule(capsys):
    """--list-rules prints one line per rule id."""
    from engine.lint import RULES

    status, out, _ = run(capsys, "--list-rules")
    assert status == 0
    assert {line.split()[0] for line in out.splitlines()} == set(RULES)


def test_script_runs_as_a_subprocess():
    """validate_machines.py at the repository root lints machines/ by default."""
    result = subprocess.run([sys.executable, "validate_machines.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    scenarios = len(list((ROOT / "machines" / "scenarios").glob("*.yaml")))
    assert scenarios >= 2
    assert result.stdout.endswith(f"0 errors, 0 warnings in 5 files and {scenarios} scenarios\n")
