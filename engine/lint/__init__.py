"""The machine-file linter: rules, runner and output formats."""

from ._rule import RULES, Rule
from .runner import Problem, lint_documents, lint_paths

__all__ = ["RULES", "Problem", "Rule", "lint_documents", "lint_paths"]
