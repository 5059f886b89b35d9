"""The README stays true to the code: every lint rule and failure code is documented."""

from __future__ import annotations

import re

from engine.lint import RULES
from engine.model.failures import CATALOGUE
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _rows(first_cell: str) -> dict[str, list[str]]:
    rows = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_every_lint_rule_is_in_the_readme_table():
    """The README's rule table lists every rule with its severity and summary."""
    rows = _rows(r"[EW]\d{3}")
    assert set(rows) == set(RULES)
    for rule_id, rule in RULES.items():
        assert rows[rule_id] == [rule.severity, rule.summary]


def test_every_failure_code_is_in_the_readme_table():
    """The README's failure-code table lists every code with its reason."""
    rows = _rows(r"`\d{12}`")
    assert set(rows) == {k.code for k in CATALOGUE.values()}
    for kind in CATALOGUE.values():
        assert rows[kind.code] == [kind.reason, kind.summary]


def test_list_limits_in_the_readme_are_the_engines():
    """The README's *List limits* paragraph states engine/service/queries.py LIMITS."""
    from engine.model.conventions import INT64
    from engine.service.queries import LIMITS

    start = README.index("- **List limits.**")
    paragraph = " ".join(README[start:README.index("\n- **", start + 1)].split())
    assert LIMITS.numbers == INT64 == (-(2**63), 2**63 - 1)
    for phrase in (f"`query` parameter at most {LIMITS.query_chars:,} characters",
                   f"at most {LIMITS.clauses} clauses in all operators together",
                   f"at most {LIMITS.terms_values} values per `terms` clause",
                   f"names at most {LIMITS.text:,} characters each",
                   "between −2^63 and 2^63 − 1",
                   f"at most {LIMITS.select} `select[]` names",
                   f"`limit` 1 to {LIMITS.limit}", f"`offset` 0 to {LIMITS.offset:,}"):
        assert phrase in paragraph, phrase
