"""The linter's command line: `python validate_machines.py [--format F] [--strict] [PATH ...]`.

For every folder it lints, the command also runs the scenario files of its scenarios/ subfolder
(unless --no-scenarios), once the folder's machine files have no errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import DefinitionError
from engine.loading.registry import load_registry

from ._rule import RULES
from .formatters import FORMATS
from .runner import Problem, collect_files, lint_paths
from .scenarios import SCENARIO_FOLDER, find_scenarios, run_scenarios


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit status 2 on usage errors, as argparse does, but quieter
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="validate_machines.py",
        description="Lint participant-type machine files (machines/*.yaml).",
    )
    parser.add_argument("paths", nargs="*", default=["machines"], metavar="PATH",
                        help="machine files or folders of them (default: machines/)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="text",
                        help="output format (default: text)")
    parser.add_argument("--strict", action="store_true", help="warnings fail the run too")
    parser.add_argument("--no-scenarios", action="store_true",
                        help=f"do not run the folders' {SCENARIO_FOLDER}/*.yaml")
    parser.add_argument("--list-rules", action="store_true", help="print the rules and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Lint, print, and return 0 (clean), 1 (errors, or warnings with --strict) or 2 (usage)."""
    args = _parser().parse_args(argv)
    if args.list_rules:
        for rule in sorted(RULES.values(), key=lambda r: (r.id[1:], r.id)):
            print(f"{rule.id}  {rule.summary}")
        return 0
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"validate_machines.py: error: no such file or folder: {', '.join(missing)}",
              file=sys.stderr)
        return 2
    files = collect_files(paths)
    if not files:
        print("validate_machines.py: error: no machine files (*.yaml) found in "
              f"{', '.join(map(str, paths))}", file=sys.stderr)
        return 2
    problems = lint_paths(paths)
    scenarios = 0
    if not args.no_scenarios and not any(p.severity == "error" for p in problems):
        for folder in (p for p in paths if p.is_dir()):
            found = find_scenarios([folder])
            if found:
                problems += _scenario_problems(folder, found)
                scenarios += len(found)
    sys.stdout.write(FORMATS[args.format](sorted(problems), len(files), scenarios))
    failing = {"error", "warning"} if args.strict else {"error"}
    return 1 if any(p.severity in failing for p in problems) else 0


def _scenario_problems(folder: Path, files: list[Path]) -> list[Problem]:
    try:
        registry = load_registry(folder)
    except DefinitionError as error:  # e.g. a folder of only codes.yaml: no types to run
        return [Problem(str(f), 1, 1, "E901", f"cannot run: {error.problems[0]}")
                for f in files]
    return run_scenarios(files, registry)
