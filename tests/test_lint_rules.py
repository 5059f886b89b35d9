"""Golden tests, one folder per lint rule: tests/lint_cases/<RULE>/{bad/, bad.expected, good/}.

`bad/` is a small machine folder with one kind of defect; `bad.expected` is the exact text output
of `validate_machines.py bad` run from inside the rule's folder. `good/` is the same folder with
the defect corrected, and lints clean.

To regenerate the golden files after a deliberate change of messages or positions, run
`UPDATE_GOLDEN=1 python -m pytest tests/test_lint_rules.py`, then read every changed
`bad.expected` by hand: the rule must still be there, each line:col must still point at the
offending key or value, and each message must still make sense to the author of the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.lint import RULES
from engine.lint.cli import main

CASES_DIR = Path(__file__).resolve().parent / "lint_cases"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"


def lint(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().out


@pytest.mark.parametrize("case", CASES)
def test_bad_case_matches_golden(case, monkeypatch, capsys):
    """A bad folder prints exactly its golden output and exits with its rule's severity."""
    monkeypatch.chdir(CASES_DIR / case)
    status, out = lint(capsys, "bad")
    golden = Path("bad.expected")
    if UPDATE_GOLDEN:
        golden.write_text(out, encoding="utf-8")
    assert out == golden.read_text(encoding="utf-8")
    assert f": {case} " in out, f"bad/ does not trigger {case}"
    if case.startswith("E"):
        assert status == 1
    else:
        assert status == 0
        assert lint(capsys, "--strict", "bad")[0] == 1


@pytest.mark.parametrize("case", CASES)
def test_good_case_is_clean(case, monkeypatch, capsys):
    """A rule's good folder lints without any error or warning."""
    monkeypatch.chdir(CASES_DIR / case)
    files = len([p for p in Path("good").iterdir() if p.suffix in (".yaml", ".yml")])
    scenarios = len(list(Path("good").glob("scenarios/*.yaml")))
    status, out = lint(capsys, "good")
    assert status == 0
    ran = f" and {scenarios} scenario{'' if scenarios == 1 else 's'}" if scenarios else ""
    assert out == f"0 errors, 0 warnings in {files} file{'' if files == 1 else 's'}{ran}\n"


def test_every_rule_has_a_case():
    """Every rule the linter knows has a golden case folder, and every folder names a rule."""
    assert set(CASES) == set(RULES)
