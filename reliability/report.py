"""Run the reliability suites and write their figures into the README's Reliability table.

Usage (from the repository root, with the project's environment):

    python reliability/report.py            # long form: RELIABILITY_LONG=1 (minutes)
    python reliability/report.py --short    # the short form CI runs inside `make test`

Every test marked `reliability` records rows (guarantee, figure) through the `figure` fixture;
this script runs them with RELIABILITY_FIGURES pointing at a temporary file, then replaces the
table between the README's `reliability:start` and `reliability:end` markers. It exits with
pytest's status, and leaves the README alone when a suite failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"


def render(rows: list[dict], mode: str) -> str:
    today = datetime.date.today().isoformat()
    command = "python reliability/report.py" + (" --short" if mode == "short" else "")
    lines = [START, "", f"Figures from `{command}` on {today} ({mode} form).", "",
             "| Guarantee | Checked by | Figure from the latest run |", "|---|---|---|"]
    for row in rows:
        test = row["test"].split("::")
        where = f"`{Path(test[0]).name}::{test[-1].split('[')[0]}`"
        lines.append(f"| {row['guarantee']} | {where} | {row['figure']} |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the short form (CI's)")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        figures = Path(folder) / "figures.json"
        env = {**os.environ, "RELIABILITY_FIGURES": str(figures)}
        if not args.short:
            env["RELIABILITY_LONG"] = "1"
        status = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "reliability",
             *args.pytest_args], cwd=ROOT, env=env)
        rows = json.loads(figures.read_text()) if figures.exists() else []
    if status != 0:
        print("reliability/report.py: a suite failed; README left unchanged", file=sys.stderr)
        return status
    readme = ROOT / "README.md"
    text = readme.read_text()
    table = render(rows, "short" if args.short else "long")
    if START in text and END in text:
        text = text[:text.index(START)] + table + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Reliability\n\n" + table + "\n"
    readme.write_text(text)
    print(f"README.md: {len(rows)} reliability rows written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
