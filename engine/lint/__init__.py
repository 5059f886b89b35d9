"""The machine-file linter: rules, runner, scenario files and output formats."""

from ._rule import RULES, Rule
from .runner import Problem, lint_documents, lint_paths
from .scenarios import find_scenarios, run_scenarios

__all__ = ["RULES", "Problem", "Rule", "find_scenarios", "lint_documents", "lint_paths",
           "run_scenarios"]
