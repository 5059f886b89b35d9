"""The linter's command line: `python validate_machines.py [--format F] [--strict] [PATH ...]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._rule import RULES
from .formatters import FORMATS
from .runner import collect_files, lint_paths


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
    sys.stdout.write(FORMATS[args.format](problems, len(files)))
    failing = {"error", "warning"} if args.strict else {"error"}
    return 1 if any(p.severity in failing for p in problems) else 0
